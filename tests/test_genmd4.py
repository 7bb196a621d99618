"""GenMD4 (paper Sec. 6): an unbiased gradient for the learned exponents, the reduction to MD4, exactness with
the true posterior, the first GenMD4 sampler, and its errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from cli_runs import cli
from oracle import StateDependentOracle

from md4 import MD4, get_schedule, sample
from md4.core.genmd4 import GenMD4, GenMD4Options
from md4.core.kind_contract import CONTINUOUS
from md4.core.token_schedule import TokenPolynomialSchedule
from md4.nn.contract import DenoiserCapabilities

V, D = 3, 3


class FixedDenoiser:
    """Arbitrary logits that depend on the whole of z (a fixed random map of its one-hot), in float64."""

    capabilities = DenoiserCapabilities(time_independent=True)

    def __init__(self, seed: int = 0, scale: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        self.table = scale * torch.randn(D * (V + 1), D * V, generator=g, dtype=torch.float64)

    def __call__(self, z, t):
        onehot = torch.nn.functional.one_hot(z, V + 1).flatten(1).double()
        return (onehot @ self.table).reshape(*z.shape, V)


def exact_expected_integrand(denoiser, x, theta, t, eps=1e-4):
    """E_q(z_t | x)[sum_v (-w_v / t) sum_{masked n} g_n[v]] by enumerating the 2^D mask patterns (float64)."""
    w = torch.nn.functional.softplus(theta)
    total = torch.zeros((), dtype=torch.float64)
    for pattern in itertools.product([False, True], repeat=D):
        masked = torch.tensor(pattern)
        z = torch.where(masked, torch.full_like(x, V), x)
        p_masked = (1 - eps) * t ** w[x]
        q = torch.where(masked, p_masked, 1 - p_masked).prod()
        logp = torch.log_softmax(denoiser(z[None], None)[0], -1)
        logp_x = logp[torch.arange(D), x]
        per_position = ((logp.exp() * w).sum(-1) - w[x] * (logp_x + 1)) / t
        total = total + q * (per_position * masked).sum()
    return total


def surrogate_gradient(model, x, t, draws, chunks, reinforce=True):
    """Mean and standard error of d(surrogate)/d(theta) over ``draws`` draws, in ``chunks`` independent chunks."""
    g = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(chunks):
        xs = x[None].expand(draws // chunks, -1)
        mean, surrogate = model.two_draws(xs, torch.full((len(xs),), t), generator=g)
        model.zero_grad()
        (surrogate if reinforce else mean).mean().backward()
        grads.append(model.schedule.theta.grad.double().clone())
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / math.sqrt(chunks)


@pytest.mark.parametrize("reinforce", [True, False])
def test_rloo_surrogate_gives_an_unbiased_gradient_for_the_exponents(reinforce):
    """The surrogate's gradient matches finite differences of the exact expectation; without REINFORCE it does not."""
    denoiser = FixedDenoiser()
    model = GenMD4(denoiser, V, data_shape=(D,))
    with torch.no_grad():
        model.schedule.theta.copy_(torch.tensor([0.2, -0.4, 0.9]))
    x, t = torch.tensor([0, 1, 2]), 0.45
    theta = model.schedule.theta.detach().double()
    h = 1e-5
    fd = torch.stack(
        [
            (
                exact_expected_integrand(denoiser, x, theta + h * e, t)
                - exact_expected_integrand(denoiser, x, theta - h * e, t)
            )
            / (2 * h)
            for e in torch.eye(V, dtype=torch.float64)
        ]
    )
    mean, se = surrogate_gradient(model, x, t, draws=80_000, chunks=40, reinforce=reinforce)
    within = ((mean - fd).abs() < 4 * se + 1e-3).all()
    assert bool(within) == reinforce, (mean, fd, se)


def test_equal_exponents_reduce_to_md4_polyK():
    """With every w = K the integrand equals MD4's polyK one, w(t) log mu summed over masked positions, for the same
    z; MD4's polyK weight tends to -K / t as its eps -> 0. The expectations of the two NELBOs then differ only by
    the conventions at small t: MD4 clamps alpha with eps and integrates from 0, GenMD4 integrates from t1 and pays
    a reconstruction term, so |E[GenMD4] - E[MD4]| <= D t1^K (log V + max CE) + the Monte-Carlo error."""
    K = 2.0
    denoiser = FixedDenoiser(seed=3)
    gen = GenMD4(denoiser, V, w_init=K, data_shape=(D,))
    md4 = MD4(denoiser, V, schedule=f"poly{K:g}", data_shape=(D,))
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([2, 0, 1])[None].expand(20000, -1)
    t = gen.times(len(x), generator=g)
    z = gen.forward_sample(x, t, g)
    with torch.no_grad():
        generalised = gen.diffusion_term(x, z, t)
        plain = -K / t * md4._masked_log_likelihood(x, z, t, None)
    assert torch.allclose(generalised, plain.to(generalised.dtype), rtol=1e-4, atol=1e-4)
    tt = torch.linspace(0.05, 1, 20, dtype=torch.float64)
    assert torch.allclose(get_schedule(f"poly{K:g}", eps=1e-12).weight(tt), -K / tt)

    with torch.no_grad():
        a = gen.nelbo(x, generator=g).double()
        b = md4.nelbo(x, generator=g).double()
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    all_z = torch.tensor(list(itertools.product(range(V + 1), repeat=D)))
    max_ce = float(-torch.log_softmax(denoiser(all_z, None), -1).min())
    conventions = D * gen.t1**K * (math.log(V) + max_ce)
    assert abs(float(a.mean() - b.mean())) < conventions + 4 * se, (float(a.mean()), float(b.mean()), conventions, se)


@pytest.mark.parametrize("w", [[1.0, 1.0, 1.0], [1.0, 2.0, 1.5], [3.0, 1.2, 2.0], [0.5, 1.0, 2.0]])
def test_bound_is_exact_with_the_true_posterior(w):
    """With mu = the exact posterior marginals under the per-token schedule, the continuous bound is -log p(x),
    up to the reconstruction term at t1 (its uniform decoder is not the true posterior): -log p(x) <= E[NELBO]
    <= -log p(x) + reconstruction."""
    oracle = StateDependentOracle(w, vocab_size=3, length=4)
    model = GenMD4(oracle, 3, data_shape=(4,))
    with torch.no_grad():
        model.schedule.theta.copy_(torch.log(torch.expm1(torch.tensor(w))))
    g = torch.Generator().manual_seed(1)
    for x in (torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 0, 0])):
        xs = x[None].expand(20000, -1)
        with torch.no_grad():
            draws = model.nelbo(xs, generator=g).double()
            recon = float(model.reconstruction_loss(x[None]))
        mean, se = float(draws.mean()), float(draws.std() / math.sqrt(len(draws)))
        target = float(-oracle.log_prob(x[None])[0])
        assert target - 4 * se - 1e-3 < mean < target + recon + 4 * se + 1e-3, (w, mean, target, recon, se)


def _tv(oracle, tokens):
    index = (tokens * (3 ** torch.arange(3, -1, -1))).sum(-1)
    counts = torch.bincount(index, minlength=len(oracle.probs)).double()
    return 0.5 * float((counts / counts.sum() - oracle.probs).abs().sum())


def _tolerance(oracle, n):
    return 1.5 * float(torch.sqrt(oracle.probs * (1 - oracle.probs) / n).sum())


# the ancestral case (~25 s on 2 cores) runs with the slow tests: the exact sampler checks the same joint fast
@pytest.mark.parametrize("sampler, steps", [pytest.param("ancestral", 200, marks=pytest.mark.slow), ("exact", None)])
def test_genmd4_sampler_reproduces_the_joint(sampler, steps):
    """A non-constant w and the time-dependent true posterior: grid and exact (thinning) samplers match the joint."""
    w = [0.6, 1.0, 2.5]
    oracle = StateDependentOracle(w, vocab_size=3, length=4)
    model = GenMD4(oracle, 3, data_shape=(4,))
    with torch.no_grad():
        model.schedule.theta.copy_(torch.log(torch.expm1(torch.tensor(w))))
    n = 20000
    out = sample(model, n, steps=steps or 1, sampler=sampler, seed=0)
    assert _tv(oracle, out.tokens) < _tolerance(oracle, n)
    if sampler == "exact":
        assert out.nfe >= 4  # one call per accepted event at least, more for rejected candidates


def test_one_step_does_not_reproduce_the_joint():
    w = [0.6, 1.0, 2.5]
    oracle = StateDependentOracle(w, vocab_size=3, length=4)
    model = GenMD4(oracle, 3, data_shape=(4,))
    with torch.no_grad():
        model.schedule.theta.copy_(torch.log(torch.expm1(torch.tensor(w))))
    out = sample(model, 20000, steps=1, seed=0)
    assert _tv(oracle, out.tokens) > 5 * _tolerance(oracle, 20000)


@pytest.mark.parametrize("sampler", ["ancestral", "top_p", "mean", "exact"])
def test_conditioned_tokens_never_change(sampler):
    model = GenMD4(lambda z, t: torch.randn(*z.shape, 5), 5, w_init=1.7)
    init = torch.full((6, 10), 5)
    init[:, 0], init[:, 4], init[:, 9] = 4, 2, 0
    out = sample(model, init=init, steps=6, sampler=sampler, seed=0)
    assert torch.all(out.tokens[:, [0, 4, 9]] == torch.tensor([4, 2, 0])) and out.tokens.max() < 5


def test_the_schedule_is_learned_saved_and_averaged_like_a_weight():
    model = GenMD4(FixedDenoiser(), V, data_shape=(D,), theta_lr=0.5)
    assert "schedule.theta" in model.state_dict()
    x = torch.tensor([[0, 1, 2], [2, 2, 1]])
    loss, metrics = model.loss(x)
    loss.backward()
    assert model.schedule.theta.grad is not None and model.schedule.theta.grad.abs().sum() > 0
    assert set(metrics) >= {"loss", "nelbo", "bits_per_token", "surrogate", "w_min", "w_mean", "w_max"}
    assert float(metrics["w_min"]) == pytest.approx(1.0)
    [(parameters, lr)] = model.own_learning_rates()
    assert parameters == [model.schedule.theta] and lr == 0.5
    assert GenMD4(FixedDenoiser(), V).own_learning_rates() == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"w_init": 0.0}, r"initial exponent w must be in \(0, 1000\]"),
        ({"w_init": -1.0}, r"initial exponent w must be in \(0, 1000\]"),
        ({"w_init": float("inf")}, r"initial exponent w must be in \(0, 1000\]"),  # issue 16, item 17
        ({"w_init": float("nan")}, r"initial exponent w must be in \(0, 1000\]"),
        ({"w_init": 1001.0}, r"initial exponent w must be in \(0, 1000\]"),
        ({"t1": 0.0}, r"t1 must be in \(0, 1\)"),
        ({"t1": 1.0}, r"t1 must be in \(0, 1\)"),
        ({"eps": 0.0}, r"eps must be in \(0, 0.5\)"),
        ({"theta_lr": -1.0}, "theta_lr must be a positive finite number"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenMD4Options(**kwargs)


def test_large_initial_exponents_are_exact():
    """Issue 16, item 17: softplus^-1 of a large w_init no longer overflows (it did above about 710)."""
    for w in (1e-3, 1.0, 709.0, 800.0, 1000.0):
        schedule = TokenPolynomialSchedule(2, w)
        assert torch.allclose(schedule.exponents.detach(), torch.full((2,), w), rtol=1e-6)


def test_no_discrete_bound_and_a_clear_refusal():
    model = GenMD4(FixedDenoiser(), V)
    assert model.kind == "genmd4" and model.bounds == (CONTINUOUS,)
    with pytest.raises(ValueError, match="only a continuous-time bound"):
        model.nelbo(torch.zeros(2, D, dtype=torch.long), num_steps=10)


def test_schedule_alpha_and_weight_closed_forms():
    schedule = TokenPolynomialSchedule(3, w_init=2.0, eps=1e-3)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert torch.allclose(schedule.alpha(t), (1 - (1 - 1e-3) * t**2)[:, None].expand(-1, 3))
    assert torch.allclose(schedule.weight(t[1:]), (-2.0 / t[1:])[:, None].expand(-1, 3))
    assert torch.allclose(schedule.exponents, torch.full((3,), 2.0))


TINY = [
    "net.dim=32",
    "net.n_layers=1",
    "net.n_heads=2",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.log_every=1",
    "train.eval_every=4",
    "train.eval_batches=1",
    "train.sample_every=4",
    "train.sample_steps=4",
    "train.checkpoint_every=4",
    "train.warmup_steps=1",
    "train.steps=4",
    "train.ema_decay=0.5",
]


def test_genmd4_through_train_sample_eval_and_inspect(corpus, tmp_path, capsys):
    import json

    from md4.runs.checkpoints import read_checkpoint

    run = tmp_path / "run"
    code, _, err = cli(
        capsys,
        "train",
        "--preset",
        "genmd4-shakespeare-char",
        "--data",
        corpus,
        "--out",
        run,
        "--no-progress",
        *TINY,
        "model.theta_lr=0.05",
    )
    assert code == 0 and "a genmd4 model" in err, err
    train = [json.loads(line) for line in open(run / "metrics.jsonl") if '"train"' in line]
    assert {"surrogate", "nelbo", "w_min", "w_mean", "w_max"} <= set(train[-1])
    assert train[-1]["w_min"] < 1.0 < train[-1]["w_max"]  # 4 steps at 0.05 moved the exponents
    ckpt = read_checkpoint(run)
    assert not torch.equal(ckpt.model["schedule.theta"], ckpt.ema["schedule.theta"])  # averaged by the EMA

    for sampler in ("ancestral", "exact"):
        code, out, err = cli(capsys, "sample", run, "--num", 2, "--steps", 8, "--sampler", sampler, "--prompt", "To")
        assert code == 0 and out.count("=== sample") == 2 and "network calls" in err
    code, out, err = cli(capsys, "sample", run, "--num", 1, "--steps", 4, "--infill", "To be, or ___ to be")
    assert code == 0 and out.split("\n", 1)[1].startswith("To be, or ")
    code, out, _ = cli(capsys, "eval", run, "--max-batches", 1, "--draws", 2)
    assert code == 0 and "continuous bound" in out and "discrete" not in out
    code, _, err = cli(capsys, "inspect", run, "--out", tmp_path / "w.png")
    assert code == 0 and (tmp_path / "w.png").stat().st_size > 10_000

    code, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "model.kind=md4")
    assert code == 2 and "Cannot resume" in err and "model.kind ('genmd4' -> 'md4')" in err
    config = json.loads((run / "config.json").read_text())
    config["model"] = {"kind": "md4", "net": "transformer", "schedule": "linear", "eps": 1e-4}
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "sample", run, "--num", 1)
    assert code == 2 and "do not fit the model" in err


def test_inspect_refuses_a_shared_schedule(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", corpus, "--out", run, "--no-progress", *TINY)[0] == 0
    code, _, err = cli(capsys, "inspect", run)
    assert code == 2 and "shared by every token" in err and "model.kind=genmd4" in err


def test_schedule_parameters_get_their_own_learning_rate():
    from md4.training.trainer import parameter_groups

    model = GenMD4(FixedDenoiser(), V, theta_lr=0.5)
    model.extra = torch.nn.Linear(2, 2)
    groups = parameter_groups(model, 0.1, "all", 1e-3)
    theta = model.schedule.theta
    schedule_group = next(g for g in groups if any(p is theta for p in g["params"]))
    assert schedule_group["lr_scale"] == pytest.approx(500.0) and schedule_group["weight_decay"] == 0.1
    assert len(schedule_group["params"]) == 1
    matrices = parameter_groups(model, 0.1, "matrices", 1e-3)
    assert next(g for g in matrices if any(p is theta for p in g["params"]))["weight_decay"] == 0.0


def test_genmd4_presets():
    from md4 import models
    from md4.config import build_config, data_spec_guess

    config = build_config("genmd4-text8", [])
    assert {k: config.model[k] for k in ("kind", "w_init", "t1", "eps", "theta_lr")} == {
        "kind": "genmd4",
        "w_init": 1.0,
        "t1": 1e-3,
        "eps": 1e-4,
        "theta_lr": None,
    }
    assert models.count_parameters(config, data_spec_guess(config)) == 88_734_272 + 27  # the network + w
    assert config.train.weight_decay_scope == "all" and config.train.weight_decay == 0.03
    demo = build_config("genmd4-shakespeare-char", [])
    assert (
        demo.net == build_config("shakespeare-char", []).net
        and demo.train == build_config("shakespeare-char", []).train
    )
    with pytest.raises(
        ValueError, match="Unknown config key model.schedule; valid keys in \\[model\\] for kind genmd4"
    ):
        build_config("genmd4-shakespeare-char", ["model.schedule=cosine"])


def test_the_thinning_sampler_keeps_no_float64_copy_of_the_probabilities():
    """Only the drawn rows [B, V] go to float64; the [B, L, V] probabilities stay in the network's float32."""
    from torch.utils._python_dispatch import TorchDispatchMode

    batch, length, vocab = 3, 16, 11

    class LargeFloat64(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.found = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.numel() >= batch * length * vocab:
                    self.found.append(str(func))
            return out

    model = GenMD4(lambda z, t: torch.randn(*z.shape, vocab, generator=torch.Generator().manual_seed(1)), vocab)
    with LargeFloat64() as mode:
        out = sample(model, batch, shape=(length,), sampler="exact", seed=0)
    assert out.tokens.shape == (batch, length) and mode.found == []
