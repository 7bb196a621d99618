import math

import pytest
import torch

from md4.core.md4 import MD4
from md4.core.noise import antithetic_times
from md4.core.tokens import check_tokens
from md4.core.units import bits_per_token, perplexity

SCHEDULES = ["linear", "cosine", "poly2", "poly0.5", "geometric"]


def _repeat(x, n):
    return x[None].expand(n, -1).clone()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_continuous_nelbo_is_exact_for_the_true_conditionals(oracle, schedule):
    """With mu = p(x_n | unmasked), E[L_inf] = -log p(x) for every schedule (paper Sec. 3)."""
    model = MD4(oracle, vocab_size=3, schedule=schedule)
    g = torch.Generator().manual_seed(1)
    for x in (torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 0, 0])):
        draws = model.nelbo(_repeat(x, 20000), generator=g).double()
        mean, se = draws.mean(), draws.std() / math.sqrt(len(draws))
        target = -oracle.log_prob(x[None])[0]
        assert abs(mean - target) < 4 * se + 1e-3, (schedule, float(mean), float(target), float(se))


def test_continuous_nelbo_detects_a_wrong_denoiser(oracle):
    """With the marginals only (a worse denoiser) E_p[NELBO] is clearly above the entropy H(p)."""

    def marginal_only(z, t):
        return oracle(torch.full_like(z, 3), t)

    model = MD4(marginal_only, vocab_size=3)
    g = torch.Generator().manual_seed(0)
    x = oracle.configs[torch.multinomial(oracle.probs, 20000, replacement=True, generator=g)]
    draws = model.nelbo(x, generator=g).double()
    se = draws.std() / math.sqrt(len(draws))
    assert draws.mean() > oracle.entropy() + 4 * se
    exact = MD4(oracle, vocab_size=3).nelbo(x, generator=g).double()
    assert abs(exact.mean() - oracle.entropy()) < 4 * exact.std() / math.sqrt(len(exact))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_discrete_nelbo_matches_enumeration_and_falls_to_the_entropy(oracle, schedule):
    """E_p[L_T] >= H(p), falling towards it as T grows (nested grids); the estimator matches enumeration."""
    model = MD4(oracle, vocab_size=3, schedule=schedule)
    exact = {T: oracle.exact_discrete_nelbo(model.schedule, T) for T in (1, 2, 4, 16, 64, 256)}
    expected = [float((oracle.probs * v).sum()) for v in exact.values()]
    entropy = oracle.entropy()
    assert all(a > b for a, b in zip(expected, expected[1:]))
    assert expected[-1] >= entropy and expected[-1] - entropy < 0.02 * (expected[0] - entropy)
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([0, 1, 2, 1])
    row = int((oracle.configs == x).all(-1).nonzero())
    for T in (1, 4, 64):
        draws = model.nelbo(_repeat(x, 20000), num_steps=T, generator=g).double()
        se = draws.std() / math.sqrt(len(draws))
        assert abs(draws.mean() - exact[T][row]) < 4 * se + 1e-3, (T, float(draws.mean()), float(exact[T][row]))


def test_antithetic_times_are_stratified():
    t = antithetic_times(8, generator=torch.Generator().manual_seed(0))
    assert t.shape == (8,) and torch.all((t >= 0) & (t < 1))
    assert torch.allclose(torch.sort(torch.remainder(t - t[0], 1.0)).values, torch.arange(8) / 8, atol=1e-6)


def test_forward_sample_masks_with_probability_one_minus_alpha():
    model = MD4(lambda z, t: None, vocab_size=5)
    x = torch.randint(0, 5, (4, 50000))
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    z = model.forward_sample(x, t, torch.Generator().manual_seed(0))
    frac = (z == 5).float().mean(1)
    assert torch.allclose(frac, 1 - model.schedule.alpha(t), atol=0.01)
    assert torch.all((z == x) | (z == 5))


@pytest.mark.parametrize("schedule", SCHEDULES + ["poly0.01", "poly20"])
def test_loss_finite_at_every_time(schedule):
    logits = torch.randn(6, 10, 7, requires_grad=True)
    model = MD4(lambda z, t: logits, vocab_size=7, schedule=schedule)
    x = torch.randint(0, 7, (6, 10))
    t = torch.tensor([0.0, 1e-7, 0.5, 0.999, 1.0, 1.0])
    value = model.continuous_loss(x, t) + model.reconstruction_loss(x)
    assert torch.isfinite(value).all() and torch.all(value >= 0)
    value.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.isfinite(model.discrete_loss(x, num_steps=10)).all()


def test_loss_units_and_metrics():
    model = MD4(lambda z, t: torch.zeros(*z.shape, 4), vocab_size=4)
    x = torch.randint(0, 4, (16, 32))
    loss, metrics = model.loss(x)
    # A uniform denoiser: E[L_inf] = D log V exactly (the integral of w(t)(1 - alpha) log V over t).
    assert loss.dim() == 0
    assert metrics["bits_per_token"] == pytest.approx(float(metrics["nelbo"]) / (32 * math.log(2)))
    assert 1.5 < float(metrics["bits_per_token"]) < 2.5
    assert bits_per_token(32 * math.log(2), 32) == pytest.approx(1.0)
    assert perplexity(32 * math.log(7), 32) == pytest.approx(7.0)


def test_reconstruction_term_closed_form():
    model = MD4(lambda z, t: None, vocab_size=27, eps=1e-4)
    x = torch.zeros(2, 256, dtype=torch.long)
    expected = 256 * 1e-4 * math.log(27)
    assert torch.allclose(model.reconstruction_loss(x), torch.full((2,), expected), rtol=1e-6)


def test_labels_are_passed_to_the_denoiser():
    seen = {}

    def denoiser(z, t, labels=None):
        seen["labels"] = labels
        return torch.zeros(*z.shape, 3)

    model = MD4(denoiser, vocab_size=3)
    labels = torch.tensor([1, 0])
    model.loss(torch.zeros(2, 5, dtype=torch.long), labels=labels)
    assert seen["labels"] is labels


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.zeros(2, 5), "integer tensor"),
        (torch.zeros(5, dtype=torch.long), "batch"),
        (torch.full((2, 5), 3), r"\[0, 2\]"),
        (torch.full((2, 5), -1), r"\[0, 2\]"),
    ],
)
def test_bad_tokens(x, message):
    model = MD4(lambda z, t: torch.zeros(*z.shape, 3), vocab_size=3)
    with pytest.raises(ValueError, match=message):
        model.loss(x)


def test_bad_times_shape_and_data_shape():
    model = MD4(lambda z, t: torch.zeros(*z.shape, 3), vocab_size=3, data_shape=(5,))
    x = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.continuous_loss(x, t=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="shape"):
        model.continuous_loss(x, t=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="expects"):
        model.loss(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="logits of shape"):
        MD4(lambda z, t: torch.zeros(2, 3), vocab_size=3).loss(x)
    with pytest.raises(ValueError, match="Unknown masking schedule"):
        MD4(lambda z, t: None, vocab_size=3, schedule="sigmoid")
    with pytest.raises(ValueError, match="eps"):
        MD4(lambda z, t: None, vocab_size=3, eps=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        model.nelbo(x, num_steps=0)
    assert check_tokens(torch.full((1, 2), 3), 3, allow_mask=True) is None


def _full_logits_reference(model, x, z, t):
    """The loss's sum over masked n of log mu[n, x_n] from the full float32 log-softmax (the slow reference)."""
    logp = torch.log_softmax(model.denoiser(z, t).float(), -1).gather(-1, x.unsqueeze(-1)).squeeze(-1)
    return torch.where(z == model.mask_id, logp, torch.zeros_like(logp)).sum(1)


def test_masked_only_logits_give_the_full_logits_loss():
    """The output layer at masked positions only (``select``) and indexing the full logits both give the loss
    computed from every position's log-softmax, and the same gradients."""
    from md4.nn.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    net = Transformer(TransformerConfig(vocab_size=11, dim=32, n_layers=2, n_heads=2))
    torch.nn.init.normal_(net.logits.weight, std=0.5)  # a non-zero output layer, so the test can fail
    for block in net.blocks:
        torch.nn.init.normal_(block.modulation[1].weight, std=0.1)
    model = MD4(net, vocab_size=11)
    x = torch.randint(0, 11, (6, 24), generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.05, 0.95, 6)
    z = model.forward_sample(x, t, torch.Generator().manual_seed(2))
    assert 0 < int((z == 11).sum()) < z.numel()
    reference = _full_logits_reference(model, x, z, t)
    selected = model._masked_log_likelihood(x, z, t, None)
    indexed = MD4(lambda z_, t_: net(z_, t_), vocab_size=11)._masked_log_likelihood(x, z, t, None)
    torch.testing.assert_close(selected, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(indexed, reference, rtol=1e-5, atol=1e-5)
    grads = []
    for value in (selected, reference):
        net.zero_grad()
        value.sum().backward(retain_graph=True)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_selected_logits_need_the_inputs_shape():
    from md4.nn.transformer import Transformer, TransformerConfig

    net = Transformer(TransformerConfig(vocab_size=5, dim=16, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match="select must have z's shape"):
        net(torch.zeros(2, 8, dtype=torch.long), torch.rand(2), select=torch.ones(2, 7, dtype=torch.bool))
