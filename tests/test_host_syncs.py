"""How often a training step makes the host wait for the device, counted on the CPU (:mod:`sync_counter`): once
for the metrics, the gradient norm and the stop vote together, plus one ``nonzero`` per micro-batch for the masked
positions (whose count sizes the selected logits), and a single all-reduce when several processes train.

Run with ``-s`` to see which ops sync and where.
"""

import pytest
import torch
import torch.distributed as dist
from sync_counter import SyncCounter
from test_training_prefetch import labelled_data
from tiny_training import release, tiny_trainer

from md4.distributed import World

HOST_SIDE = ("prefetch.py",)  # the batch is drawn and checked on the CPU, the generator's state read there

KINDS = {  # overrides, data
    "md4": ((), None),
    "genmd4": (("model.kind=genmd4",), None),
    "md4, class-conditional": (("model.conditional=true",), labelled_data),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_training_step_waits_for_the_device_once_besides_the_masked_selection(tmp_path, kind):
    overrides, data = KINDS[kind]
    trainer = tiny_trainer(tmp_path / "run", "train.grad_accum=2", *overrides, data=data and data())
    trainer.train_step()  # the first step initialises the optimizer's state
    with SyncCounter(HOST_SIDE) as syncs:
        trainer.train_step()
    release(trainer)
    print(f"{kind}: {syncs.report()}")
    ops = syncs.by_op()
    assert ops["Tensor.tolist"] == 1 and ops["nonzero"] == 2, syncs.report()  # two micro-batches
    assert syncs.count == 3, syncs.report()


class OneRankGroup(World):
    """A gloo process group of this process alone, driven through the several-process code paths."""

    @property
    def distributed(self) -> bool:
        return True


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield OneRankGroup()
    finally:
        dist.destroy_process_group()


def fit_and_count(run_dir, world, steps, monkeypatch) -> tuple[int, int]:
    """The host syncs and md4's all-reduces of a whole tiny run of ``steps`` steps (a log line each)."""
    reductions = []
    all_reduce = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: reductions.append(1) or all_reduce(*a, **k))
    trainer = tiny_trainer(run_dir, f"train.steps={steps}", world=world)
    with SyncCounter(HOST_SIDE) as syncs:
        trainer.fit()
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    return syncs.count - syncs.by_op()["nonzero"], len(reductions)


def test_with_several_processes_a_step_is_one_all_reduce_and_one_wait(tmp_path, one_rank_group, monkeypatch):
    """The loop's stop vote rides on the step's all-reduce of the metrics: two more steps of a run cost two
    all-reduces and two waits (DDP's own gradient reduction aside); the step still votes and reports."""
    syncs_2, reductions_2 = fit_and_count(tmp_path / "two", one_rank_group, 2, monkeypatch)
    syncs_4, reductions_4 = fit_and_count(tmp_path / "four", one_rank_group, 4, monkeypatch)
    assert (syncs_4 - syncs_2, reductions_4 - reductions_2) == (2, 2)
    trainer = tiny_trainer(tmp_path / "vote", world=one_rank_group)
    assert trainer.train_step(stop=False)["stop"] == 0.0 and trainer.train_step(stop=True)["stop"] == 1.0
    release(trainer)
    assert isinstance(trainer.forward, torch.nn.parallel.DistributedDataParallel)
