import math

import pytest
import torch
import torch.nn.functional as F

from md4.core.md4 import MD4
from md4.core.schedule_contract import Schedule
from md4.core.schedules import get_schedule
from md4.sampling import SAMPLER_NAMES, SAMPLERS, categorical, nucleus, prefix_init, sample, time_grid


def model_of(denoiser, schedule="linear", vocab_size=3):
    return MD4(denoiser, vocab_size=vocab_size, schedule=schedule)


def _empirical_tv(oracle, tokens):
    index = (tokens * (3 ** torch.arange(3, -1, -1))).sum(-1)
    counts = torch.bincount(index, minlength=len(oracle.probs)).double()
    return 0.5 * float((counts / counts.sum() - oracle.probs).abs().sum())


def _tv_tolerance(oracle, n):
    # E[TV] <= 1/2 sum sqrt(p (1 - p) / n); allow 3x that.
    return 1.5 * float(torch.sqrt(oracle.probs * (1 - oracle.probs) / n).sum())


@pytest.mark.parametrize(
    "sampler, precision", [("ancestral", "float64"), ("mean", "float64"), ("ancestral", "float32-gumbel")]
)
def test_many_steps_reproduce_the_joint(oracle, sampler, precision):
    n = 20000
    out = sample(model_of(oracle, "linear"), n, shape=(4,), steps=200, sampler=sampler, categorical=precision, seed=0)
    assert _empirical_tv(oracle, out.tokens) < _tv_tolerance(oracle, n)


def test_one_step_gives_the_product_of_marginals_not_the_joint(oracle):
    """The test above can fail: one step unmasks all tokens independently."""
    n = 20000
    out = sample(model_of(oracle, "linear"), n, shape=(4,), steps=1, seed=0)
    assert _empirical_tv(oracle, out.tokens) > 5 * _tv_tolerance(oracle, n)


def test_cosine_grid_and_top_p_one_also_match(oracle):
    n = 20000
    out = sample(
        model_of(oracle, "cosine"), n, shape=(4,), steps=200, grid="cosine", sampler="top_p", top_p=1.0, seed=1
    )
    assert _empirical_tv(oracle, out.tokens) < _tv_tolerance(oracle, n)


def test_cached_sampler_equals_uncached_with_fewer_calls(oracle):
    """The release's draw over V + 1 outcomes calls the network at every step, unless it ignores t."""
    kwargs = dict(steps=200, seed=3, categorical="float32-gumbel")
    cached = sample(model_of(oracle, "cosine"), 64, shape=(4,), **kwargs)
    uncached = sample(model_of(lambda z, t: oracle(z, t), "cosine"), 64, shape=(4,), **kwargs)  # hides the flag
    assert torch.equal(cached.tokens, uncached.tokens)
    assert uncached.nfe == 200 and cached.nfe < uncached.nfe


@pytest.mark.parametrize("time_independent", [True, False])
def test_a_step_that_unmasks_nothing_calls_no_network(oracle, time_independent):
    """Batch of one, shared schedule: at most D calls for D positions, whatever the number of steps, also for a
    network that depends on t (the unmasking positions are drawn before mu is needed)."""
    net = oracle if time_independent else (lambda z, t: oracle(z, t))
    out = sample(model_of(net, "linear"), 1, shape=(4,), steps=10000, seed=0)
    assert out.nfe <= 4 and out.tokens.max() < 3


@pytest.mark.slow  # ~40 s on 2 cores; test_contracts checks the reuse of mu for a time-independent network fast
def test_skipping_calls_keeps_the_joint_for_a_time_dependent_network(oracle):
    n = 20000
    out = sample(model_of(lambda z, t: oracle(z, t), "cosine"), n, shape=(4,), steps=1000, seed=4)
    assert out.nfe < 1000
    assert _empirical_tv(oracle, out.tokens) < _tv_tolerance(oracle, n)


@pytest.mark.parametrize("sampler", list(SAMPLER_NAMES))
def test_conditioning_tokens_never_change_and_no_mask_left(sampler):
    calls = []

    def denoiser(z, t):
        calls.append(t)
        return torch.randn(*z.shape, 5)

    init = torch.full((8, 12), 5)
    init[:, 0] = 4
    init[:, 5] = 2
    init[:, -1] = 0
    out = sample(
        model_of(denoiser, "linear", vocab_size=5), 8, shape=(12,), steps=7, sampler=sampler, init=init, seed=0
    )
    assert torch.all(out.tokens[:, [0, 5, 11]] == torch.tensor([4, 2, 0]))
    assert out.tokens.max() < 5 and out.tokens.min() >= 0
    assert out.nfe == len(calls) == 9 if sampler == "exact" else out.nfe == len(calls) <= 8  # 9 free positions


def test_prefix_infilling_respects_the_oracle_conditional(oracle):
    """Prefix [2, 2]: the samples follow p(x_3, x_4 | x_1 = 2, x_2 = 2)."""
    n = 20000
    init = prefix_init(torch.tensor([2, 2]), (n, 4), mask_id=3)
    out = sample(model_of(oracle, "linear"), n, shape=(4,), steps=200, init=init, seed=0)
    assert torch.all(out.tokens[:, :2] == 2)
    rows = (oracle.configs[:, :2] == 2).all(-1)
    cond = oracle.probs[rows] / oracle.probs[rows].sum()
    index = out.tokens[:, 2] * 3 + out.tokens[:, 3]
    freq = torch.bincount(index, minlength=9).double() / n
    assert 0.5 * float((freq - cond).abs().sum()) < 1.5 * float(torch.sqrt(cond * (1 - cond) / n).sum())


def test_final_decode_takes_the_argmax():
    """eps = 0.4: one step unmasks a third of the positions (draws from mu), the rest take argmax mu at t = 0."""
    logits = torch.log(torch.tensor([0.3, 0.6, 0.1]))
    model = MD4(lambda z, t: logits.expand(*z.shape, 3), vocab_size=3, schedule=get_schedule("linear", eps=0.4))
    out = sample(model, 100, shape=(100,), steps=1, seed=0)
    assert float((out.tokens == 1).double().mean()) == pytest.approx(2 / 3 + 0.6 / 3, abs=0.01)


def test_same_seed_same_samples_and_generator_advances():
    def denoiser(z, t):
        return torch.linspace(0, 1, 6).expand(*z.shape, 6)

    a = sample(model_of(denoiser, "linear", vocab_size=6), 4, shape=(16,), steps=10, seed=11)
    b = sample(model_of(denoiser, "linear", vocab_size=6), 4, shape=(16,), steps=10, seed=11)
    assert torch.equal(a.tokens, b.tokens)
    g = torch.Generator().manual_seed(11)
    c = sample(model_of(denoiser, "linear", vocab_size=6), 4, shape=(16,), steps=10, generator=g)
    d = sample(model_of(denoiser, "linear", vocab_size=6), 4, shape=(16,), steps=10, generator=g)
    assert torch.equal(a.tokens, c.tokens) and not torch.equal(c.tokens, d.tokens)


def test_time_grids():
    u = time_grid(4)
    assert torch.allclose(u, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    c = time_grid(4, "cosine")
    assert c[0] == 1 and c[-1] == 0 and torch.all(c[1:] < c[:-1])
    assert torch.allclose(c[1:-1], torch.cos(math.pi / 2 * (1 - u[1:-1])))


def test_categorical_precisions_draw_the_right_frequencies():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0]]).expand(200000, -1)
    for precision in ("float64", "float32-gumbel"):
        draws = categorical(probs, torch.Generator().manual_seed(0), precision)
        freq = torch.bincount(draws, minlength=4).double() / len(draws)
        assert torch.allclose(freq, probs[0].double(), atol=0.005)
        assert freq[3] == 0


def test_float32_gumbel_truncates_tiny_probabilities(monkeypatch):
    """Even with the most favourable float32 uniforms, Gumbel-max never draws a 1e-10 token; float64 inverse-CDF can."""
    probs = torch.tensor([[1 - 1e-10, 1e-10]])

    def extreme_rand(shape, dtype=None, **kwargs):
        if dtype == torch.float32:  # the largest noise on the tiny token, the smallest on the big one
            return torch.tensor([[0.0, 1.0 - 2**-24]], dtype=dtype).expand(shape)
        return torch.full(shape, 1.0 - 5e-11, dtype=dtype)  # lands in the tiny token's CDF interval

    monkeypatch.setattr(torch, "rand", extreme_rand)
    assert int(categorical(probs, None, "float32-gumbel")[0]) == 0
    assert int(categorical(probs, None, "float64")[0]) == 1


def test_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert torch.allclose(nucleus(probs, 0.8), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert torch.allclose(nucleus(probs, 0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(nucleus(probs, 1.0), probs)


def _nucleus_by_sorting(probs, top_p):
    sorted_p, order = probs.sort(-1, descending=True)
    sorted_p = torch.where(sorted_p.cumsum(-1) - sorted_p < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


@pytest.mark.parametrize("vocab", [5, 300, 5000])
def test_nucleus_by_top_k_equals_sorting_every_row(vocab):
    """Peaked rows have their nucleus in the top k, flat rows need the full sort: both equal sorting exactly."""
    g = torch.Generator().manual_seed(vocab)
    sharpness = torch.tensor([1.0, 30.0]).repeat(8)[:, None, None]
    probs = torch.softmax(sharpness * torch.randn(16, 3, vocab, generator=g), -1)
    for top_p in (0.5, 0.9, 0.98, 1.0):
        assert torch.equal(nucleus(probs, top_p), _nucleus_by_sorting(probs, top_p))


def test_top_p_removes_the_tail():
    logits = torch.log(torch.tensor([0.6, 0.39, 0.01]))
    out = sample(
        model_of(lambda z, t: logits.expand(*z.shape, 3), "linear"), 64, shape=(64,), sampler="top_p", top_p=0.9, seed=0
    )
    assert not (out.tokens == 2).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="beam"), "valid samplers are: ancestral, top_p, mean, exact, confident"),
        (dict(grid="log"), "valid grids are: uniform, cosine"),
        (dict(categorical="float16"), "valid options are"),
        (dict(steps=0), "steps must be"),
        (dict(top_p=0.0), "top_p"),
        (dict(init=torch.zeros(2, 4)), "integer"),
        (dict(init=torch.full((2, 4), 9)), r"\[0, 3\]"),
        (dict(init=torch.full((3, 4), 3)), "shape"),
        (dict(seed=1, generator=torch.Generator()), "either generator or seed"),
    ],
)
def test_bad_sampler_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(model_of(lambda z, t: torch.zeros(*z.shape, 3), "linear"), 2, shape=(4,), **kwargs)


def test_prefix_longer_than_sample():
    with pytest.raises(ValueError, match="prefix"):
        prefix_init(torch.arange(5), (1, 4), mask_id=9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_exact_sampler_reproduces_the_joint_with_one_call_per_token(oracle, schedule):
    n = 20000
    out = sample(model_of(oracle, schedule), n, shape=(4,), sampler="exact", seed=0)
    assert out.nfe == 4
    assert _empirical_tv(oracle, out.tokens) < _tv_tolerance(oracle, n)


def test_exact_sampler_conditioning_and_decreasing_times():
    seen = []

    def denoiser(z, t):
        seen.append(t.clone())
        return torch.randn(*z.shape, 5)

    init = torch.full((3, 6), 5)
    init[0] = torch.tensor([1, 2, 3, 4, 0, 1])  # nothing to generate in row 0
    init[1, :4] = 2
    out = sample(model_of(denoiser, "poly2", vocab_size=5), 3, shape=(6,), sampler="exact", init=init, seed=0)
    assert torch.equal(out.tokens[0], init[0]) and torch.all(out.tokens[1, :4] == 2)
    assert out.tokens.max() < 5 and out.nfe == 6 == len(seen)
    times = torch.stack(seen)  # [calls, B]; row 2 unmasks one token per call, at decreasing times
    assert torch.all(times[1:, 2] <= times[:-1, 2]) and torch.all((times > 0) & (times <= 1))


def test_next_unmask_time_is_the_latest_of_m_uniform_times():
    """Linear schedule: given masked at t = 1, each position's time is ~U(0, 1); the next event is their max."""
    from md4.sampling import next_unmask_time

    g = torch.Generator().manual_seed(0)
    schedule = get_schedule("linear", eps=1e-9)
    for m in (1, 3, 10):
        s = next_unmask_time(schedule, torch.ones(100000, dtype=torch.float64), torch.full((100000,), m), g)
        assert abs(float(s.mean()) - m / (m + 1)) < 0.005


class PerTokenPoly(Schedule):
    """A fixed per-token schedule alpha_v(t) = 1 - (1 - eps) t^{w_v} (GenMD4's family), alpha [..., V]."""

    per_token = True
    name = "per-token-poly"
    eps = 1e-4

    def __init__(self, w):
        super().__init__()
        self.w = torch.as_tensor(w, dtype=torch.float64)

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * t[..., None] ** self.w

    def weight(self, t):
        return -self.w / t[..., None]

    def hazard_bound(self, t):
        return self.w.max() / t

    def candidate_time(self, t, count, u):
        return t * u ** (1.0 / (count * self.w.max()))

    def time_of_masked_fraction(self, fraction):
        return fraction


@pytest.mark.parametrize("precision", ["float64", "float32-gumbel"])
def test_shared_step_matches_the_reverse_transition(precision):
    """p(z_s = v) = mu_v (a_s - a_t) / (1 - a_t), the rest stays masked (a shared schedule, both draws)."""
    schedule = get_schedule("cosine")
    mu = torch.tensor([0.2, 0.3, 0.5]).expand(200000, -1)
    a_t, a_s = schedule.alpha(torch.tensor(0.8, dtype=torch.float64)), schedule.alpha(torch.tensor(0.5))
    draws = SAMPLERS["ancestral"].step(mu, a_s, a_t, 3, torch.Generator().manual_seed(0), precision)
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    expected = mu[0].double() * (a_s - a_t) / (1 - a_t)
    assert torch.allclose(freq[:3], expected, atol=0.004)
    assert freq[3] == pytest.approx(1 - float(expected.sum()), abs=0.004)


def test_the_sampler_draws_tiny_probabilities_from_float32_mu(monkeypatch):
    """mu is float32, but its 1e-10 token keeps its share of the float64 inverse CDF: no implicit top-p."""
    draws = iter([0.0, 1 - 5e-11])  # unmask the position, then land in the tiny token's CDF interval
    monkeypatch.setattr(torch, "rand", lambda shape, dtype=None, **kw: torch.full(shape, next(draws), dtype=dtype))
    logits = torch.tensor([0.0, -23.03])
    out = sample(model_of(lambda z, t: logits.expand(*z.shape, 2), "linear", vocab_size=2), 1, shape=(1,), steps=1)
    assert out.tokens.item() == 1


@pytest.mark.parametrize("name", ["ancestral", "mean"])
def test_per_token_step_matches_the_reverse_transition(name):
    """p(z_s = v) = mu_v (a_v(s) - a_v(t)) / (1 - a_v(t)), the rest stays masked (a per-token schedule)."""
    schedule = PerTokenPoly([0.5, 1.0, 3.0])
    mu = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).expand(200000, -1)
    a_t, a_s = schedule.alpha(torch.tensor(0.8, dtype=torch.float64)), schedule.alpha(torch.tensor(0.5))
    draws = SAMPLERS[name].step(mu, a_s, a_t, 3, torch.Generator().manual_seed(0), "float64")
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    expected = mu[0] * (a_s - a_t) / (1 - a_t)
    assert torch.allclose(freq[:3], expected, atol=0.004)
    assert freq[3] == pytest.approx(1 - float(expected.sum()), abs=0.004)


def test_every_sampler_runs_with_any_per_token_schedule():
    """The exact sampler thins with the schedule's own hazards: no sampler knows GenMD4's family."""
    model = model_of(lambda z, t: torch.zeros(*z.shape, 3))
    model.schedule = PerTokenPoly([0.5, 1.0, 3.0])
    for name in SAMPLER_NAMES:
        out = sample(model, 16, shape=(10,), steps=8, sampler=name, seed=0)
        assert out.tokens.shape == (16, 10) and out.tokens.max() < 3


def test_the_sampler_uses_the_schedule_the_model_was_trained_with():
    """eps = 0.2: one step unmasks with probability (a(0) - a(1)) / (1 - a(1)) = 0.75; the rest takes argmax mu."""
    logits = torch.log(torch.tensor([0.6, 0.4]))
    model = MD4(lambda z, t: logits.expand(*z.shape, 2), vocab_size=2, schedule=get_schedule("linear", eps=0.2))
    out = sample(model, 400, shape=(100,), steps=1, seed=0)
    assert float((out.tokens == 1).double().mean()) == pytest.approx(0.75 * 0.4, abs=0.01)


def test_every_registered_sampler_is_a_whole_sampler(oracle):
    for name, sampler in SAMPLERS.items():
        out = sample(model_of(oracle), 64, shape=(4,), steps=16, sampler=name, seed=0)
        assert out.tokens.shape == (64, 4) and out.tokens.max() < 3 and sampler.description
        assert out.nfe == 4 if not sampler.uses_grid else out.nfe <= 17


class Recorder:
    """A denoiser that remembers the z and t of every call (and hides any time independence)."""

    def __init__(self, denoiser):
        self.denoiser, self.seen = denoiser, []

    def __call__(self, z, t):
        self.seen.append((z.clone(), t.clone()))
        return self.denoiser(z, t)


def test_confident_unmasks_the_most_confident_position_one_per_call(oracle):
    """steps = L: each call unmasks one position per row, the masked one with the largest max_v mu[v]."""
    recorder = Recorder(oracle)
    out = sample(model_of(recorder, "cosine"), 32, shape=(4,), steps=4, sampler="confident", seed=0)
    assert out.nfe == len(recorder.seen) == 4 and out.tokens.max() < 3
    states = [z for z, _ in recorder.seen] + [out.tokens]
    for (z, t), after in zip(recorder.seen, states[1:]):
        masked = z == 3
        fraction = masked.double().mean(1)  # 1 - alpha(t), or t = 1 where it is out of alpha's range
        noise = 1 - get_schedule("cosine").alpha(t.double())
        assert torch.allclose(torch.where(fraction < 1, noise, t.double()), fraction, atol=1e-6)
        changed = after != z
        assert torch.all(changed.sum(1) == 1) and not (changed & ~masked).any()
        confidence = torch.where(masked, oracle(z, t).softmax(-1).amax(-1), -1.0)
        assert torch.equal(changed.float().argmax(1), confidence.argmax(1))


@pytest.mark.parametrize("steps, nfe", [(1, 1), (5, 5), (12, 12), (40, 12)])
def test_confident_makes_min_steps_length_calls_and_keeps_fixed_tokens(steps, nfe):
    """Rows with 12, 3 and 0 masked positions: all unmasked after min(steps, 12) calls, fixed tokens unchanged."""
    init = torch.randint(0, 5, (3, 12), generator=torch.Generator().manual_seed(0))
    init[0] = 5
    init[1, [2, 7, 11]] = 5
    recorder = Recorder(lambda z, t: torch.randn(*z.shape, 5))
    model = model_of(recorder, "linear", vocab_size=5)
    out = sample(model, 3, shape=(12,), steps=steps, sampler="confident", init=init, seed=0)
    assert out.nfe == nfe == len(recorder.seen)
    fixed = init != 5
    assert torch.equal(out.tokens[fixed], init[fixed]) and out.tokens.max() < 5
    left = torch.stack([(z == 5).sum(1) for z, _ in recorder.seen] + [(out.tokens == 5).sum(1)])
    expected = [torch.tensor([12, 3, 0])]
    for i in range(nfe):  # ceil(m / r) unmasked with r calls left
        expected.append(expected[-1] - (expected[-1] + nfe - i - 1) // (nfe - i))
    assert torch.equal(left, torch.stack(expected)) and torch.all(left[-1] == 0)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_confident_is_deterministic_with_a_seed_and_follows_labels(guidance):
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))

    def denoiser(z, t, labels):  # the label's token is likely (4, "no label", favours none); fixed noise elsewhere
        return noise + 3.0 * F.one_hot(labels, 5)[:, None, :4]

    model = MD4(denoiser, vocab_size=4, schedule="linear", num_classes=4)
    labels = torch.tensor([0, 3])
    a = sample(model, 2, shape=(64,), steps=8, sampler="confident", labels=labels, guidance=guidance, seed=4)
    b = sample(model, 2, shape=(64,), steps=8, sampler="confident", labels=labels, guidance=guidance, seed=4)
    assert torch.equal(a.tokens, b.tokens) and a.nfe == 8
    assert torch.equal(a.tokens.mode(1).values, labels)


def test_confident_runs_with_a_per_token_schedule():
    """GenMD4: the schedule is ignored; the network sees the masked fraction as t."""
    recorder = Recorder(lambda z, t: torch.randn(*z.shape, 3))
    model = model_of(recorder)
    model.schedule = PerTokenPoly([0.5, 1.0, 3.0])
    out = sample(model, 4, shape=(10,), steps=4, sampler="confident", seed=0)
    assert out.nfe == 4 and out.tokens.max() < 3
    times = torch.stack([t for _, t in recorder.seen])
    assert torch.allclose(times[:, 0], torch.tensor([1.0, 0.7, 0.4, 0.2]))
