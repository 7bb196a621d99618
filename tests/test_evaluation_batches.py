"""Evaluation in micro-batches: the same estimate for any split of a batch (row-addressed noise), and processes of
a sharded model in lockstep (the same number of forward passes on every rank)."""

from __future__ import annotations

import pytest
import torch

from md4 import MD4, GenMD4, Transformer, TransformerConfig
from md4.distributed import World
from md4.evaluate import estimate_nelbo


def tiny(kind: str):
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(vocab_size=7, dim=16, n_layers=1, n_heads=2))
    torch.nn.init.normal_(net.logits.weight, std=0.5)
    return MD4(net, 7, data_shape=(10,)) if kind == "md4" else GenMD4(net, 7, data_shape=(10,))


def batches():
    torch.manual_seed(1)
    return [(torch.randint(0, 7, (rows, 10)), None) for rows in (8, 8, 5)]


@pytest.mark.parametrize(("kind", "num_steps"), [("md4", None), ("md4", 20), ("genmd4", None)])
def test_the_estimate_does_not_depend_on_the_micro_batch(kind, num_steps):
    model = tiny(kind).eval()
    whole = estimate_nelbo(model, batches(), draws=2, num_steps=num_steps, seed=3)
    assert whole == estimate_nelbo(model, batches(), draws=2, num_steps=num_steps, seed=3, micro_batch=8)
    for micro_batch in (1, 3, 4):
        split = estimate_nelbo(model, batches(), draws=2, num_steps=num_steps, seed=3, micro_batch=micro_batch)
        assert split.num_sequences == whole.num_sequences == 21
        assert split.nelbo == pytest.approx(whole.nelbo, rel=1e-6)
        assert split.stderr == pytest.approx(whole.stderr, rel=1e-5)


class CountingModel(torch.nn.Module):
    """A model's nelbo, counting the forward passes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_classes, self.calls = model, None, 0

    def nelbo(self, x, **kwargs):
        self.calls += 1
        return self.model.nelbo(x, **kwargs)


class Rank(World):
    """One rank of a world whose other ranks are not there: gather returns this rank's items alone."""

    def gather(self, item) -> list:
        return [item]


@pytest.mark.parametrize("lockstep", [False, True])
def test_sharded_ranks_keep_in_step(lockstep):
    """Two ranks share 3 batches (8, 8 and 5 rows; micro-batch 3): rank 0 takes the first and third, rank 1 the
    second; in lockstep rank 1 repeats a micro-batch for the third batch's two forward passes."""
    calls = []
    for rank in (0, 1):
        model = CountingModel(tiny("md4").eval())
        estimate = estimate_nelbo(model, batches(), world=Rank(rank, 2), micro_batch=3, lockstep=lockstep)
        assert estimate.num_sequences == (13 if rank == 0 else 8)  # discarded passes add nothing
        calls.append(model.calls)
    assert calls == ([5, 5] if lockstep else [5, 3])


def test_a_bad_micro_batch_is_refused():
    with pytest.raises(ValueError, match="micro_batch must be a positive integer"):
        estimate_nelbo(tiny("md4"), batches(), micro_batch=0)
