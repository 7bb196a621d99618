"""The autoregressive baseline (model.kind=ar): a causal transformer, the exact negative log-likelihood against a
hand computation, left-to-right sampling with a KV cache against full passes, temperature and top-p against their
closed forms, the md4 command end to end, and bad input in one sentence each."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from cli_runs import cli, one_error
from torch import nn

from md4 import MD4, Autoregressive, generate, sample
from md4.core.ar import AROptions
from md4.data import CharTokenizer
from md4.nn.attention import attention, dropped_attention, keep_mask
from md4.nn.contract import DenoiserCapabilities
from md4.nn.kv_cache import KVCache
from md4.nn.transformer import Transformer, TransformerConfig
from md4.sampling.autoregressive import left_to_right
from md4.sampling.options import SamplingOptions

V = 6


def causal_net(seed: int = 0, **overrides) -> Transformer:
    """A small causal transformer with random weights everywhere (the logits layer starts at zero otherwise)."""
    torch.manual_seed(seed)
    fields = {"vocab_size": V, "dim": 16, "n_layers": 2, "n_heads": 2, "time_conditioning": "none", "causal": True}
    net = Transformer(TransformerConfig(**{**fields, **overrides}))
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    return net.eval()


class Bigram(nn.Module):
    """A causal denoiser with known conditionals: the logits at a position are the row of ``table`` [V + 1, V] of
    the input id there (the previous token, or BOS = V), so p(x_n | x_<n) = softmax(table[x_{n-1}])[x_n]."""

    capabilities = DenoiserCapabilities(causal=True, time_independent=True)

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, ids, t, labels=None):
        return self.table[ids]


# ---------------------------------------------------------------------------------------------- the network
def test_changing_a_later_token_never_changes_an_earlier_positions_logits():
    net = causal_net()
    x = torch.randint(0, V + 1, (3, 12), generator=torch.Generator().manual_seed(1))
    t = torch.zeros(3)
    base = net(x, t)
    for k in (0, 5, 11):
        changed = x.clone()
        changed[:, k:] = (changed[:, k:] + 1) % (V + 1)
        out = net(changed, t)
        torch.testing.assert_close(out[:, :k], base[:, :k], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, k], base[:, k])
    bidirectional = causal_net(causal=False)
    changed = x.clone()
    changed[:, -1] = (changed[:, -1] + 1) % (V + 1)
    assert not torch.allclose(bidirectional(changed, t)[:, 0], bidirectional(x, t)[:, 0])


def test_causal_attention_with_dropout_on_the_cpu_masks_the_future():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    keep, scale = keep_mask((2, 2, 5, 5), 0.3, torch.device("cpu"))
    scores = q @ k.transpose(-2, -1) / 2.0
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    reference = (torch.softmax(scores, -1) * keep * scale) @ v
    torch.testing.assert_close(dropped_attention(q, k, v, keep, scale, causal=True), reference)
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attention(q, k, v, 0.0, training=True, causal=True), fused)
    # new queries after a cache: the last 2 of 5 positions, each seeing itself and everything before it
    torch.testing.assert_close(attention(q[:, :, 3:], k, v, 0.0, False, causal=True), fused[:, :, 3:])


@pytest.mark.parametrize("overrides", [{}, {"max_positions": 16}], ids=["rope", "absolute"])
def test_decoding_with_a_kv_cache_gives_the_full_pass_logits(overrides):
    net = causal_net(3, **overrides)
    x = torch.randint(0, V + 1, (2, 10), generator=torch.Generator().manual_seed(4))
    t = torch.zeros(2)
    full = net(x, t)
    cache = KVCache(10)
    pieces = [net(x[:, :4], t, cache=cache)] + [net(x[:, n : n + 1], t, cache=cache) for n in range(4, 10)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 10
    with pytest.raises(ValueError, match="The cache holds 10 positions but 11 were asked for"):
        net(x[:, :1], t, cache=cache)


# ---------------------------------------------------------------------------------------------- the kind
def test_the_exact_nll_is_the_sum_of_log_softmax_at_the_shifted_targets():
    """A bigram table, computed by hand in float64: -log p(x) = -sum_n log softmax(table[x_{n-1}])[x_n], x_{-1} = BOS."""
    table = torch.randn(V + 1, V, generator=torch.Generator().manual_seed(5))
    model = Autoregressive(Bigram(table.clone()), V, (7,))
    x = torch.randint(0, V, (4, 7), generator=torch.Generator().manual_seed(6))
    logp = torch.log_softmax(table.double(), -1)
    previous = torch.cat([torch.full((4, 1), V), x[:, :-1]], 1)
    expected = -logp[previous, x].sum(1)
    nll = model.nelbo(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nll.double(), expected, rtol=1e-6, atol=1e-5)
    assert torch.equal(nll, model.nelbo(x, generator=torch.Generator().manual_seed(9)))  # no randomness
    loss, metrics = model.loss(x)
    torch.testing.assert_close(loss.double(), expected.mean() / 7, rtol=1e-6, atol=1e-6)
    assert metrics["bits_per_token"].item() == pytest.approx(expected.mean().item() / 7 / math.log(2), rel=1e-5)
    assert set(metrics) == {"loss", "nelbo", "bits_per_token"}


def test_the_nll_of_the_transformer_is_the_chain_rule_over_prefixes():
    """Each conditional from its own pass over the prefix alone, in float64: the shift and the causality at once."""
    model = Autoregressive(causal_net(7), V, (8,))
    x = torch.randint(0, V, (3, 8), generator=torch.Generator().manual_seed(8))
    expected = torch.zeros(3, dtype=torch.float64)
    for n in range(8):
        prefix = torch.cat([torch.full((3, 1), V), x[:, :n]], 1)
        logits = model.denoiser(prefix, torch.zeros(3))[:, -1]
        expected -= torch.log_softmax(logits.double(), -1).gather(1, x[:, n : n + 1]).squeeze(1)
    with torch.no_grad():
        torch.testing.assert_close(model.nelbo(x).double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("prefix", [0, 3])
@pytest.mark.parametrize("options", [{}, {"top_p": 0.7, "temperature": 0.8}, {"categorical": "float32-gumbel"}])
def test_kv_cache_sampling_draws_the_uncached_tokens(prefix, options):
    model = Autoregressive(causal_net(9), V, (12,))
    init = torch.full((5, 12), V)
    init[:, :prefix] = torch.arange(prefix)
    settings = SamplingOptions(**{"top_p": 1.0, **options})
    runs = [
        left_to_right(model, init, settings, torch.Generator().manual_seed(10), lambda z: None, use_cache=cached)
        for cached in (True, False)
    ]
    (cached, nfe), (uncached, full_nfe) = runs
    assert torch.equal(cached, uncached) and nfe == full_nfe == 12 - prefix
    assert torch.equal(cached[:, :prefix], init[:, :prefix]) and cached.max() < V
    out = sample(model, init=init, seed=10, **options)  # the library's entry: the kind's default sampler
    assert torch.equal(out.tokens, cached) and out.nfe == nfe


def test_images_are_sequences_in_raster_order_with_axial_positions():
    shape = (2, 3, 2)  # H, W, C
    model = Autoregressive(causal_net(15, axial_positions=True, data_shape=shape), V, shape)
    init = torch.full((4, *shape), V)
    init[:, 0] = 1  # the first row given: a raster-order prefix
    settings = SamplingOptions(top_p=1.0)
    (cached, nfe), (uncached, _) = (
        left_to_right(model, init, settings, torch.Generator().manual_seed(16), lambda z: None, use_cache=cached)
        for cached in (True, False)
    )
    assert torch.equal(cached, uncached) and cached.shape == (4, *shape) and nfe == 6
    assert torch.equal(cached[:, 0], init[:, 0])
    with pytest.raises(ValueError, match="no holes to infill"):
        sample(model, init=torch.where(torch.arange(12).view(shape) % 2 == 0, 1, V)[None])


def first_token_frequencies(model, n: int, **options) -> torch.Tensor:
    tokens = sample(model, n, seed=11, **options).tokens[:, 0]
    return torch.bincount(tokens, minlength=V).double() / n


def test_temperature_and_top_p_draw_from_their_closed_forms():
    table = torch.tensor([[0.0] * V] * V + [[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])  # the BOS row sets the first token
    model = Autoregressive(Bigram(table), V, (2,))
    n = 20000
    for temperature in (1.0, 0.5, 3.0):
        expected = torch.softmax(table[V].double() / temperature, -1)
        frequencies = first_token_frequencies(model, n, temperature=temperature)
        assert (frequencies - expected).abs().max() < 5 * (expected * (1 - expected) / n).sqrt().max()
    probs = torch.softmax(table[V].double(), -1)  # 0.57, 0.21, 0.13, 0.08, ...: a 0.85 nucleus holds three
    nucleus = torch.where(torch.arange(V) < 3, probs, 0.0)
    nucleus /= nucleus.sum()
    frequencies = first_token_frequencies(model, n, top_p=0.85)
    assert frequencies[3:].sum() == 0 and (frequencies - nucleus).abs().max() < 0.02


def test_temperature_towards_zero_gives_the_argmax():
    model = Autoregressive(causal_net(12), V, (10,))
    greedy = torch.full((3, 10), V)
    with torch.no_grad():
        for n in range(10):
            greedy[:, n] = model.logits(greedy)[:, n].argmax(-1)
    for temperature in (0.0, 1e-6):
        assert torch.equal(sample(model, 3, temperature=temperature, seed=13).tokens, greedy), temperature
    assert torch.equal(sample(model, 3, top_p=1e-9, seed=14).tokens, greedy)
    assert not torch.equal(sample(model, 3, temperature=1.0, seed=13).tokens, greedy)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_in_one_sentence(oracle):
    model = Autoregressive(causal_net(), V, (8,))
    cases = [
        (lambda: AROptions(conditional=True), "model.kind=ar has no class conditioning"),
        (lambda: Autoregressive(causal_net(causal=False), V), "model.kind=ar needs a causal network"),
        (lambda: Autoregressive(Transformer(TransformerConfig(V, 8, 1, 2, causal=True)), V), "without time input"),
        (lambda: model.nelbo(torch.zeros(2, 8, dtype=torch.long), num_steps=10), "not a discrete-time bound"),
        (lambda: sample(model, 2, sampler="exact"), "The exact sampler does not apply to ar models"),
        (lambda: sample(MD4(oracle, 3), 2, shape=(4,), sampler="autoregressive"), "draws from ar models"),
        (lambda: sample(MD4(oracle, 3), 2, shape=(4,), temperature=0.5), "temperature applies to"),
        (lambda: sample(model, init=torch.tensor([[1, V, 2, V, V, V, V, V]])), "no holes to infill"),
        (lambda: sample(model, 2, temperature=-1.0), "temperature must be a finite number"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert str(error.value).count(". ") == 0 and str(error.value).endswith("."), str(error.value)
    codec = CharTokenizer("abcdef")
    with pytest.raises(ValueError, match="no holes to infill"):
        generate(model, codec, 1, infill="ab__cd")


# ---------------------------------------------------------------------------------------------- the command
TINY_AR = [
    "net.dim=32",
    "net.n_layers=1",
    "net.n_heads=2",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.sample_every=2",
    "train.checkpoint_every=2",
    "train.warmup_steps=1",
]


def test_train_eval_and_sample_an_ar_run_through_the_command(corpus, tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = ("train", "--preset", "ar-shakespeare-char", "--data", corpus, "--out", out_dir, "--no-progress")
    code, out, err = cli(capsys, *argv, "train.steps=2", *TINY_AR)
    assert code == 0 and "finished at step 2" in out, err
    assert any((out_dir / "samples").iterdir())  # samples in training come left to right

    code, out, err = cli(capsys, "eval", out_dir, "--max-batches", 2, "--no-progress")
    assert code == 0 and "NLL (exact)" in out and "continuous bound" not in out, out
    values = []
    for draws in (1, 3):
        code, out, _ = cli(capsys, "eval", out_dir, "--max-batches", 2, "--draws", draws, "--json")
        result = json.loads(out)
        assert code == 0 and set(result) >= {"exact"} and "continuous" not in result and "discrete" not in result
        values.append(result["exact"]["nelbo"])
    assert values[0] == values[1] > 0

    code, out, err = cli(capsys, "sample", out_dir, "--num", 2, "--prompt", "To be", "--top-p", 0.9)
    assert code == 0 and out.count("=== sample") == 2 and "autoregressive sampler, left to right" in err, err
    samples = [block.split("\n", 1)[1] for block in out.split("=== sample")[1:]]
    assert all(text.startswith("To be") and len(text.rstrip("\n")) == 32 for text in samples)
    assert "27 network calls" in err  # one pass per drawn token (the first is the prompt's pass)

    code, _, err = cli(capsys, "sample", out_dir, "--infill", "To ___ be")
    assert code == 2 and "--infill fills holes anywhere" in one_error(err)
    code, _, err = cli(capsys, "sample", out_dir, "--sampler", "top_p")
    assert code == 2 and "The top_p sampler does not apply to ar models" in one_error(err)
    code, _, err = cli(capsys, *argv[:-2], tmp_path / "other", "--no-progress", "model.conditional=true", *TINY_AR)
    assert code == 2 and "model.kind=ar has no class conditioning" in one_error(err)
