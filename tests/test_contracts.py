"""The three declared contracts, driven by toys that implement only them: a shared schedule alpha(t) = 1 - t^2 and a
per-token schedule with two different hazards (md4.core.schedule_contract), denoisers that declare capabilities
(md4.nn.contract), and a model kind written from md4.core.kind_contract alone. The losses, every sampler the
contract lets apply, the refusals and the evaluation run on them unchanged."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from oracle import OracleDenoiser
from torch import nn

from md4 import MD4, SAMPLERS, GenMD4, get_schedule, sample
from md4.core.kind_contract import CONTINUOUS, DISCRETE, ModelKindContract
from md4.core.noise import antithetic_times, uniform_rows
from md4.core.schedule_contract import Schedule
from md4.evaluate import estimate_nelbo
from md4.nn.contract import NO_CAPABILITIES, DenoiserCapabilities, capabilities_of

EPS = 1e-3


class SquareSchedule(Schedule):
    """alpha(t) = (1 - 2 eps)(1 - t^2) + eps, shared by every token (MD4's poly2, written from the contract)."""

    per_token = False
    name = "square"
    eps = EPS

    def _masked(self, t):  # 1 - alpha(t)
        return (1 - 2 * self.eps) * t**2 + self.eps

    def alpha(self, t):
        return 1 - self._masked(t)

    def weight(self, t):
        return -(1 - 2 * self.eps) * 2 * t / self._masked(t)

    def hazard_bound(self, t):
        return self.hazard(t)

    def candidate_time(self, t, count, u):
        masked_s = self._masked(t) * u ** (1.0 / count.clamp_min(1).double())
        return torch.minimum(((masked_s - self.eps) / (1 - 2 * self.eps)).clamp_min(0).sqrt(), t)

    def time_of_masked_fraction(self, fraction):
        return ((fraction - self.eps) / (1 - 2 * self.eps)).clamp(0, 1).sqrt()


class SquareOrCosineSchedule(Schedule):
    """Per token, V = 2: value 0 has 1 - alpha_0 = t^2 (hazard 2 / t), value 1 has 1 - alpha_1 = sin^2(pi t / 2)
    (hazard pi cot(pi t / 2) <= 2 / t, 0 at t = 1). Both are 1 at t = 1 and 0 at t = 0."""

    per_token = True
    name = "square-or-cosine"
    eps = 0.0

    def alpha(self, t):
        return torch.stack([1 - t**2, torch.cos(0.5 * math.pi * t) ** 2], dim=-1)

    def weight(self, t):
        return -torch.stack([2 / t, math.pi / torch.tan(0.5 * math.pi * t)], dim=-1)

    def hazard_bound(self, t):
        return 2 / t

    def candidate_time(self, t, count, u):  # 2 count log(t / s) = -log u
        return t * u ** (1.0 / (2 * count.clamp_min(1).double()))

    def time_of_masked_fraction(self, fraction):
        return fraction.sqrt()


class PosteriorDenoiser:
    """The exact posterior marginals p(x_n | z_t) of a random joint over V^D under ``schedule``: a configuration c
    consistent with z_t weighs p(c) prod_{masked n} (1 - alpha_{c_n}(t))."""

    def __init__(self, schedule: Schedule, vocab_size: int, length: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.schedule, self.vocab_size = schedule, vocab_size
        self.configs = torch.tensor(list(itertools.product(range(vocab_size), repeat=length)))
        probs = torch.rand(len(self.configs), dtype=torch.float64, generator=g) ** 3 + 1e-3
        self.probs = probs / probs.sum()
        time_independent = not schedule.per_token  # a shared factor (1 - alpha)^|masked| cancels
        self.capabilities = DenoiserCapabilities(time_independent=time_independent)

    def __call__(self, z, t):
        masked = z == self.vocab_size
        consistent = (masked[:, None, :] | (z[:, None, :] == self.configs[None])).all(-1)  # [B, C]
        one_minus = 1 - self.schedule.alpha(t.double())
        if not self.schedule.per_token:
            one_minus = one_minus[:, None].expand(-1, self.vocab_size)
        log_masked = torch.where(masked[:, None, :], torch.log(one_minus[:, self.configs]), 0.0).sum(-1)  # [B, C]
        log_weight = torch.where(consistent, torch.log(self.probs) + log_masked, -math.inf)
        weights = torch.exp(log_weight - log_weight.amax(-1, keepdim=True))
        marginals = torch.einsum("bc,cdv->bdv", weights, F.one_hot(self.configs, self.vocab_size).double())
        return torch.log(marginals / marginals.sum(-1, keepdim=True)).clamp_min(-1e4).float()

    def tv(self, tokens):
        index = (tokens * (self.vocab_size ** torch.arange(tokens.shape[1] - 1, -1, -1))).sum(-1)
        counts = torch.bincount(index, minlength=len(self.probs)).double()
        return 0.5 * float((counts / counts.sum() - self.probs).abs().sum())

    def tolerance(self, n):  # 3 x the bound 1/2 sum sqrt(p (1 - p) / n) of E[TV]
        return 1.5 * float(torch.sqrt(self.probs * (1 - self.probs) / n).sum())


class ToyKind(nn.Module, ModelKindContract):
    """A model kind from the contract alone: the continuous-time bound of any schedule, shared or per token,
    int_0^1 sum_{masked n} (sum_v h_v mu_n[v] - h_{x_n} (log mu_n[x_n] + 1)) dt + reconstruction at t = 0, with
    mu from a denoiser whose logits a learnable scale multiplies (trained at its own learning rate)."""

    kind = "toy"
    bounds = (CONTINUOUS,)
    samplers = ("ancestral", "top_p", "mean", "exact")

    def __init__(self, denoiser, vocab_size: int, schedule: Schedule, data_shape: tuple[int, ...]):
        super().__init__()
        self.denoiser, self.vocab_size, self.schedule, self.data_shape = denoiser, vocab_size, schedule, data_shape
        self.num_classes = None
        self.logit_scale = nn.Parameter(torch.ones(()))

    forward = ModelKindContract.training_objective

    def own_learning_rates(self):
        return [([self.logit_scale], 0.5)]

    def logits(self, z, t, labels=None):
        return self.logit_scale * self.denoiser(z, t)

    def _per_value(self, a):  # [B] or [B, V] -> [B, V]
        return a if self.schedule.per_token else a[:, None].expand(-1, self.vocab_size)

    def nelbo(self, x, labels=None, num_steps=None, generator=None, shard=None):
        self.check_bound(num_steps)
        t = antithetic_times(x.shape[0], x.device, generator, shard).double().clamp_min(1e-6)
        keep = self._per_value(self.schedule.alpha(t)).gather(1, x)  # alpha_{x_n}(t)
        masked = uniform_rows(x.shape, x.device, generator, shard) >= keep
        z = torch.where(masked, self.vocab_size, x)
        logp = F.log_softmax(self.logits(z, t.float()).double(), -1)
        hazard = self._per_value(self.schedule.hazard(t))
        mean_hazard = (logp.exp() * hazard[:, None, :]).sum(-1)
        integrand = mean_hazard - hazard.gather(1, x) * (logp.gather(-1, x[..., None])[..., 0] + 1)
        alpha0 = self._per_value(self.schedule.alpha(torch.zeros_like(t)))
        reconstruction = (1 - alpha0.gather(1, x)) * math.log(self.vocab_size)
        return (integrand * masked).sum(1) + reconstruction.sum(1)

    def loss(self, x, labels=None, generator=None, shard=None):
        nelbo = self.nelbo(x, generator=generator, shard=shard)
        loss = nelbo.mean() / x[0].numel()
        return loss, {
            "loss": loss.detach(),
            "nelbo": nelbo.detach().mean(),
            "bits_per_token": loss.detach() / math.log(2),
        }


class SelectingDenoiser(nn.Module):
    """A denoiser that declares ``select``: the logits of the selected positions alone (and counts those calls)."""

    capabilities = DenoiserCapabilities(select=True)

    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size + 1, vocab_size)
        self.selected = 0

    def forward(self, z, t, labels=None, select=None):
        logits = self.embed(z).cumsum(1) * (1 + t[:, None, None])
        if select is None:
            return logits
        self.selected += 1
        return logits[select]


def applicable(kind) -> list[str]:
    return [name for name in SAMPLERS if kind.samplers is None or name in kind.samplers]


# ------------------------------------------------------------------------------------------------ the schedule
def test_the_toy_schedule_is_md4s_poly2_through_the_contract():
    toy, poly2 = SquareSchedule(), get_schedule("poly2", eps=EPS)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(toy.alpha(t), poly2.alpha(t)) and torch.allclose(toy.weight(t[1:]), poly2.weight(t[1:]))
    assert torch.allclose(toy.hazard_bound(t), poly2.hazard_bound(t))
    u, count = torch.rand(101, dtype=torch.float64), torch.randint(1, 9, (101,))
    assert torch.allclose(toy.candidate_time(t, count, u), poly2.candidate_time(t, count, u), atol=1e-9)
    fraction = torch.linspace(0.05, 1, 20, dtype=torch.float64)
    assert torch.allclose(toy.time_of_masked_fraction(fraction), poly2.time_of_masked_fraction(fraction), atol=1e-9)


def test_the_per_token_toy_bounds_its_hazards():
    schedule = SquareOrCosineSchedule()
    t = torch.linspace(0.01, 1, 100, dtype=torch.float64)
    hazard = schedule.hazard(t)
    assert hazard.shape == (100, 2) and torch.all(hazard >= 0)
    assert torch.all(hazard <= schedule.hazard_bound(t)[:, None] + 1e-12) and float(hazard[-1, 1]) < 1e-12


def test_md4_losses_ask_only_the_contract(oracle):
    """MD4 around the toy schedule gives poly2's bounds, continuous and discrete, draw for draw."""
    x = torch.randint(0, 3, (64, 4), generator=torch.Generator().manual_seed(0))
    toy, poly2 = MD4(oracle, 3, schedule=SquareSchedule()), MD4(oracle, 3, schedule="poly2", eps=EPS)
    for num_steps in (None, 10):
        a = toy.nelbo(x, num_steps=num_steps, generator=torch.Generator().manual_seed(1))
        b = poly2.nelbo(x, num_steps=num_steps, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(a, b, rtol=1e-5), num_steps
    with pytest.raises(ValueError, match="MD4 needs a schedule shared by every token"):
        MD4(oracle, 2, schedule=SquareOrCosineSchedule())


def test_the_exact_sampler_draws_the_same_tokens_with_the_toy_and_poly2(oracle):
    """A time-independent denoiser: the candidate times differ by rounding only, every random draw is the same."""
    toy = sample(MD4(oracle, 3, schedule=SquareSchedule()), 256, shape=(4,), sampler="exact", seed=3)
    poly2 = sample(MD4(oracle, 3, schedule="poly2", eps=EPS), 256, shape=(4,), sampler="exact", seed=3)
    assert torch.equal(toy.tokens, poly2.tokens) and toy.nfe == poly2.nfe == 4


# ------------------------------------------------------------------------------------------------- the kind
@pytest.mark.parametrize("schedule", [SquareSchedule(), SquareOrCosineSchedule()], ids=lambda s: s.name)
def test_every_applicable_sampler_runs_on_the_toy_kind(schedule):
    vocab = 2 if schedule.per_token else 3
    denoiser = SelectingDenoiser(vocab)
    model = ToyKind(denoiser, vocab, schedule, (6,))
    init = torch.full((5, 6), vocab)
    init[:, 2] = 1
    for name in applicable(ToyKind):
        out = sample(model, init=init, steps=8, sampler=name, seed=0)
        assert out.tokens.shape == (5, 6) and out.tokens.max() < vocab and torch.all(out.tokens[:, 2] == 1), name
    assert sample(model, 5, sampler="exact", seed=0).tokens.max() < vocab  # data_shape from the kind


@pytest.mark.parametrize("schedule", [SquareSchedule(), SquareOrCosineSchedule()], ids=lambda s: s.name)
def test_the_exact_sampler_follows_the_joint_with_the_true_posterior(schedule):
    """Per token: thinning with the schedule's own hazards, a time-dependent posterior; shared: first hitting."""
    vocab, length = (2, 4) if schedule.per_token else (3, 3)
    posterior = PosteriorDenoiser(schedule, vocab, length)
    n = 20000
    out = sample(ToyKind(posterior, vocab, schedule, (length,)), n, sampler="exact", seed=0)
    assert posterior.tv(out.tokens) < posterior.tolerance(n)
    assert out.nfe > length if schedule.per_token else out.nfe == length  # rejected candidates cost a call


@pytest.mark.parametrize("schedule", [SquareSchedule(), SquareOrCosineSchedule()], ids=lambda s: s.name)
def test_the_toy_bound_is_tight_with_the_true_posterior(schedule):
    """-log p(x) <= E[NELBO] <= -log p(x) + the reconstruction term (0 for the per-token toy, alpha(0) = 1)."""
    vocab, length = (2, 4) if schedule.per_token else (3, 3)
    posterior = PosteriorDenoiser(schedule, vocab, length, seed=2)
    model = ToyKind(posterior, vocab, schedule, (length,))
    g = torch.Generator().manual_seed(0)
    for row in (0, len(posterior.configs) - 1):
        x = posterior.configs[row][None].expand(20000, -1)
        with torch.no_grad():
            draws = model.nelbo(x, generator=g).double()
        mean, se = float(draws.mean()), float(draws.std() / math.sqrt(len(draws)))
        target = -math.log(float(posterior.probs[row]))
        recon = length * float((1 - schedule.alpha(torch.zeros((), dtype=torch.float64))).max()) * math.log(vocab)
        assert target - 4 * se - 1e-3 < mean < target + recon + 4 * se + 1e-3, (mean, target, se)


def test_the_toy_kind_trains_and_evaluates():
    model = ToyKind(SelectingDenoiser(3), 3, SquareSchedule(), (5,))
    x = torch.randint(0, 3, (8, 5), generator=torch.Generator().manual_seed(0))
    loss, metrics = model.loss(x, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and {"loss", "nelbo", "bits_per_token"} <= set(metrics)
    [(parameters, lr)] = model.own_learning_rates()
    assert parameters == [model.logit_scale] and lr == 0.5 and model.logit_scale.grad is not None
    estimate = estimate_nelbo(model, [(x, None), (x.flip(0), None)], draws=2)
    assert math.isfinite(estimate.nelbo) and estimate.num_sequences == 16 and estimate.num_steps is None
    with pytest.raises(ValueError, match="only the continuous bound"):
        estimate_nelbo(model, [(x, None)], num_steps=5)


def test_refusals_in_one_sentence():
    model = ToyKind(SelectingDenoiser(3), 3, SquareSchedule(), (5,))
    with pytest.raises(ValueError) as bound:
        model.nelbo(torch.zeros(2, 5, dtype=torch.long), num_steps=4)
    assert str(bound.value) == (
        "A toy model has only the continuous bound, not the discrete-time one; leave the number of steps out."
    )
    with pytest.raises(ValueError) as sampler:
        sample(model, 2, sampler="confident")
    assert str(sampler.value) == (
        "The confident sampler does not apply to toy models; use one of ancestral, top_p, mean, exact."
    )
    for message in (str(bound.value), str(sampler.value)):
        assert message.count(". ") == 0 and message.endswith(".")
    with pytest.raises(ValueError, match="GenMD4 has only a continuous-time bound; leave num_steps out."):
        GenMD4.check_bound(10)


def test_the_kinds_declare_their_bounds_samplers_and_learning_rates(oracle):
    md4, genmd4 = MD4(oracle, 3), GenMD4(oracle, 3, theta_lr=0.01)
    assert isinstance(md4, ModelKindContract) and isinstance(genmd4, ModelKindContract)
    assert (md4.kind, md4.bounds, md4.samplers) == ("md4", (CONTINUOUS, DISCRETE), None)
    assert (genmd4.kind, genmd4.bounds, genmd4.samplers) == ("genmd4", (CONTINUOUS,), None)
    MD4.check_bound(None), MD4.check_bound(10), GenMD4.check_bound(None)
    for name in SAMPLERS:
        MD4.check_sampler(name), GenMD4.check_sampler(name)
    assert md4.own_learning_rates() == [] and genmd4.own_learning_rates() == [([genmd4.schedule.theta], 0.01)]


def test_a_duck_typed_model_samples_without_the_kind_contract(oracle):
    class Plain:
        vocab_size, schedule, data_shape, num_classes, denoiser = 3, SquareSchedule(), (4,), None, oracle

        def logits(self, z, t, labels=None):
            return self.denoiser(z, t)

    for name in SAMPLERS:
        assert sample(Plain(), 8, steps=4, sampler=name, seed=0).tokens.max() < 3


# --------------------------------------------------------------------------------------------- the denoiser
def test_a_declared_select_computes_only_the_masked_logits():
    denoiser = SelectingDenoiser(3)
    model = MD4(denoiser, 3, schedule=SquareSchedule())
    plain = MD4(lambda z, t, labels=None: denoiser(z, t), 3, schedule=SquareSchedule())
    x = torch.randint(0, 3, (6, 5), generator=torch.Generator().manual_seed(0))
    a = model.nelbo(x, generator=torch.Generator().manual_seed(2))
    b = plain.nelbo(x, generator=torch.Generator().manual_seed(2))
    assert denoiser.selected == 1 and torch.allclose(a, b)


def test_a_declared_time_independence_lets_the_sampler_reuse_mu(oracle):
    kwargs = dict(shape=(4,), steps=200, seed=3, categorical="float32-gumbel")
    declared = sample(MD4(oracle, 3, schedule=SquareSchedule()), 64, **kwargs)
    undeclared = sample(MD4(lambda z, t: oracle(z, t), 3, schedule=SquareSchedule()), 64, **kwargs)
    assert torch.equal(declared.tokens, undeclared.tokens) and declared.nfe < undeclared.nfe


def test_capabilities_are_declared_never_guessed():
    assert capabilities_of(lambda z, t: z) == NO_CAPABILITIES
    assert capabilities_of(OracleDenoiser()).time_independent

    class Wrong:
        capabilities = {"select": True}

    with pytest.raises(TypeError, match="must be a DenoiserCapabilities"):
        capabilities_of(Wrong())


@pytest.mark.parametrize(
    "schedule, vocab", [(SquareSchedule(), 3), (SquareOrCosineSchedule(), 2)], ids=["shared", "per-token"]
)
def test_the_toy_kind_goes_through_the_trainer(schedule, vocab, tmp_path):
    """The Trainer asks only the kind contract: the toy kind trains (its own learning rate in its own group, in the
    same warm-up and decay), is evaluated and sampled by the loop, and checkpoints."""
    from tiny_training import tiny_config, tiny_data

    from md4.runs.checkpoints import list_checkpoints
    from md4.training import Trainer

    config = tiny_config("train.steps=4", "train.eval_every=2", "train.sample_every=2", "train.checkpoint_every=2")
    data = tiny_data(vocab_size=vocab)
    model = ToyKind(SelectingDenoiser(vocab), vocab, schedule, data.data_shape)
    trainer = Trainer(config, model, data, tmp_path / "run", progress=False)
    own = [g for g in trainer.optimizer.param_groups if any(p is trainer.model.logit_scale for p in g["params"])]
    assert len(own) == 1 and own[0]["lr_scale"] == pytest.approx(0.5 / config.train.lr)
    before = trainer.model.logit_scale.detach().clone()
    result = trainer.fit()
    assert result.step == 4 and math.isfinite(result.valid_bits_per_token)
    assert not torch.equal(trainer.model.logit_scale.detach(), before)
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "step_00000004"
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "step_00000002.txt",
        "step_00000004.txt",
    ]
