"""The loss's masked positions: the chunked log-softmax-and-gather (same values and gradients as one chunk, memory
bounded whatever M) and the masked index computed once (one nonzero, no boolean indexing)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from md4 import MD4
from md4.core.genmd4 import GenMD4
from md4.core.masked import log_probs_at
from md4.nn.transformer import Transformer, TransformerConfig


class OpLog(TorchDispatchMode):
    """Every aten op called inside, and the largest tensor any of them returned, in bytes."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.largest = 0
        self.boolean_indexing = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func.overloadpacket))
        if func is torch.ops.aten.index.Tensor:
            self.boolean_indexing += any(i is not None and i.dtype == torch.bool for i in args[1])
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel() * value.element_size())
        return out


def reference(logits, targets, weights=None):
    """Today's unchunked computation, written out."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logp_x = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp_x, None if weights is None else (logp.exp() * weights).sum(-1)


@pytest.mark.parametrize("rows", [1, 3, 7, 10, 100])
def test_chunks_give_the_unchunked_values_and_gradients(rows):
    torch.manual_seed(0)
    m, v = 10, 13
    logits = torch.randn(m, v, dtype=torch.float64).requires_grad_()
    weights = torch.rand(v, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, v, (m,))
    upstream = torch.randn(2, m)

    def run(function):
        logp_x, mean_w = function(logits.bfloat16(), targets, weights.float())
        grads = torch.autograd.grad((upstream[0] * logp_x).sum() + (upstream[1] * mean_w).sum(), (logits, weights))
        return logp_x, mean_w, *grads

    *exact, weights_grad = run(lambda *a: log_probs_at(*a, chunk_elements=rows * v))
    *want, want_weights_grad = run(reference)
    for got, value in zip(exact, want, strict=True):  # row by row: the same operations on the same numbers
        assert torch.equal(got, value)
    torch.testing.assert_close(weights_grad, want_weights_grad, rtol=1e-6, atol=0)  # float32, summed chunk by chunk


def test_one_chunk_without_weights_is_the_unchunked_computation():
    logits, targets = torch.randn(6, 5), torch.randint(0, 5, (6,))
    logp_x, mean_w = log_probs_at(logits, targets)
    assert mean_w is None and torch.equal(logp_x, reference(logits, targets)[0])


def test_the_loss_log_softmax_memory_is_bounded_by_its_chunk():
    """bf16 logits [M, V]: no float32 [M, V] is ever made, forward or backward; a chunk's float32 rows are."""
    m, v, rows = 512, 4096, 16
    logits = torch.randn(m, v).bfloat16().requires_grad_()
    targets = torch.randint(0, v, (m,))
    weights = torch.rand(v, requires_grad=True)
    bf16_logits_bytes = m * v * 2
    with torch.no_grad(), OpLog() as log:
        log_probs_at(logits, targets, weights, chunk_elements=rows * v)
    assert log.largest == rows * v * 4  # one chunk's float32 rows
    with OpLog() as log:
        logp_x, mean_w = log_probs_at(logits, targets, weights, chunk_elements=rows * v)
        (logp_x.sum() + mean_w.sum()).backward()
    assert log.largest == bf16_logits_bytes  # the logits' own gradient, in their dtype
    with OpLog() as log:
        logp_x, mean_w = reference(logits, targets, weights)
        (logp_x.sum() + mean_w.sum()).backward()
    assert log.largest == 2 * bf16_logits_bytes  # what one chunk costs: float32 [M, V]


def tiny_model(kind: str, vocab: int = 11):
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(vocab_size=vocab, dim=16, n_layers=1, n_heads=2))
    torch.nn.init.normal_(net.logits.weight, std=0.5)
    return MD4(net, vocab) if kind == "md4" else GenMD4(net, vocab, w_init=1.5)


@pytest.mark.parametrize("kind", ["md4", "genmd4"])
def test_a_chunked_loss_trains_exactly_like_one_chunk(kind):
    x = torch.randint(0, 11, (4, 12))

    def step(chunk_elements):
        model = tiny_model(kind)
        model.loss_chunk_elements = chunk_elements
        loss, _ = model.loss(x, generator=torch.Generator().manual_seed(1))
        loss.backward()
        return {"loss": loss.detach(), **{n: p.grad for n, p in model.named_parameters() if p.grad is not None}}

    whole = step(10**9)
    assert kind == "md4" or any(name.startswith("schedule.") for name in whole)  # GenMD4's w has its gradient
    for chunk_elements in (11, 33, 5 * 11):  # one row, three rows, five rows (do not divide M)
        chunked = step(chunk_elements)
        assert chunked.keys() == whole.keys()
        for name, value in whole.items():
            torch.testing.assert_close(chunked[name], value, rtol=1e-5, atol=1e-6)  # w: float32 sums by chunk


@pytest.mark.parametrize("kind", ["md4", "genmd4"])
def test_a_loss_step_finds_the_masked_positions_once(kind):
    """One nonzero per network call and no boolean indexing or masked_scatter (each a host sync on a GPU)."""
    model = tiny_model(kind)
    x = torch.randint(0, 11, (4, 12))
    with OpLog() as log:
        loss, _ = model.loss(x, generator=torch.Generator().manual_seed(1))
        loss.backward()
    assert log.ops.count("aten.nonzero") == 1
    assert "aten.masked_scatter" not in log.ops and "aten.masked_select" not in log.ops
    assert log.boolean_indexing == 0


def test_the_transformer_selects_by_index_as_by_mask():
    net = tiny_model("md4").denoiser
    z = torch.randint(0, 12, (3, 12))
    t = torch.rand(3)
    mask = z == 11
    by_index = net(z, t, select=mask.flatten().nonzero().squeeze(1))
    assert torch.equal(by_index, net(z, t, select=mask))
    torch.testing.assert_close(by_index, net(z, t)[mask])  # a matrix product of other rows: equal to rounding
    with pytest.raises(ValueError, match="1-D integer index"):
        net(z, t, select=torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("kind", ["md4", "genmd4"])
def test_a_compiled_denoiser_has_one_graph_for_every_masked_count(kind):
    """The masked positions arrive as an index of any length M: no graph break and no recompile across steps
    (the boolean selection broke the graph at its nonzero and recompiled for the second M)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(kind)
    model.denoiser = torch.compile(model.denoiser, backend="eager")  # dynamo's graphs, without code generation
    try:
        for seed in range(4):  # a new masked count M at each step
            x = torch.randint(0, 11, (4, 12), generator=torch.Generator().manual_seed(seed))
            loss, _ = model.loss(x, generator=torch.Generator().manual_seed(seed))
            loss.backward()
        assert not counters["graph_break"] and not counters["recompiles"]
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()
