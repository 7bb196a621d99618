"""The parallel layout of a rank: its device, the choice between FSDP2 and DDP, the denoiser's switches, when
gradients are reduced, and each rank's stream of torch's global generator. (Several real processes:
test_distributed.py.)"""

from contextlib import nullcontext

import torch
from tiny_training import tiny_config, tiny_data

from md4.distributed import World, derived_seed, is_sharded
from md4.models import DataSpec, build_model
from md4.training.parallel import Parallel, training_device

CPU = torch.device("cpu")


def tiny_model():
    return build_model(tiny_config(), DataSpec.of(tiny_data()))


class Recorder:
    """Stands in for a wrapped model: records the calls the layout makes."""

    def __init__(self):
        self.calls = []

    def no_sync(self):
        self.calls.append("no_sync")
        return "no_sync context"

    def set_requires_gradient_sync(self, value):
        self.calls.append(("sync", value))


def test_one_process_trains_the_plain_model_on_its_device():
    assert training_device("cpu", World()) == CPU
    for mode in ("ddp", "fsdp"):
        assert not Parallel.of(World(), CPU, mode).sharded
    assert Parallel.of(World(size=2), CPU, "fsdp").sharded and not Parallel.of(World(size=2), CPU, "ddp").sharded
    model = tiny_model()
    layout = Parallel.of(World(), CPU, "fsdp")
    layout.shard(model, model)
    assert not is_sharded(model)
    assert layout.wrap(model, checkpointing=False, compile=False) is model
    assert isinstance(layout.gradient_sync(model, model, last_micro_batch=False), nullcontext)


def test_the_denoiser_switches():
    model = tiny_model()
    denoiser = model.denoiser
    assert not denoiser.checkpointing
    Parallel.of(World(), CPU, "ddp").wrap(model, checkpointing=True, compile=False)
    assert model.denoiser is denoiser and denoiser.checkpointing
    Parallel.of(World(), CPU, "ddp").wrap(model, checkpointing=False, compile=True)  # compiled lazily, at first call
    assert model.denoiser is not denoiser and model.denoiser._orig_mod is denoiser


def test_gradients_are_reduced_after_the_last_micro_batch_only():
    replicated, model = Parallel(World(size=2), CPU, sharded=False), Recorder()
    assert replicated.gradient_sync(model, model, last_micro_batch=False) == "no_sync context"
    assert isinstance(replicated.gradient_sync(model, model, last_micro_batch=True), nullcontext)
    sharded = Parallel(World(size=2), CPU, sharded=True)
    for last in (False, True):
        assert isinstance(sharded.gradient_sync(model, model, last_micro_batch=last), nullcontext)
    assert model.calls == ["no_sync", ("sync", False), ("sync", True)]


def test_ranks_after_the_first_get_their_own_stream_of_the_global_generator():
    with torch.random.fork_rng():
        torch.manual_seed(5)
        Parallel(World(rank=0, size=2), CPU, sharded=False).seed_rank_stream(seed=3, step=7)
        assert torch.equal(torch.get_rng_state(), torch.manual_seed(5).get_state())
        Parallel(World(rank=1, size=2), CPU, sharded=False).seed_rank_stream(seed=3, step=7)
        assert torch.equal(torch.get_rng_state(), torch.manual_seed(derived_seed(3, 1, 7)).get_state())
