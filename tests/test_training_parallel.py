"""The parallel layout of a rank: its device, the choice between FSDP2 and DDP, the denoiser's switches, when
gradients are reduced, and each rank's stream of torch's global generator. (Several real processes:
test_distributed.py.)"""

import socket
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
from tiny_training import tiny_config, tiny_data

from md4 import distributed
from md4.distributed import World, canonical_name, derived_seed, is_sharded, load_model_state, model_state
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


@pytest.fixture
def one_rank_group():
    """A process group of this process alone (gloo), as FSDP2 needs one; left again after the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def trained_tiny_model(shard: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The tiny model (sharded with FSDP2, as asked) after one AdamW step on a fixed batch (so the optimizer has a
    state)."""
    torch.manual_seed(0)
    model = tiny_model()
    if shard:
        distributed.shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 5, (4, 8), generator=torch.Generator().manual_seed(1))
    model(x, generator=torch.Generator().manual_seed(2))[0].backward()
    optimizer.step()
    return model, optimizer


def test_canonical_names_drop_the_compiler_prefix():
    assert canonical_name("denoiser._orig_mod.blocks.0.attn.weight") == "denoiser.blocks.0.attn.weight"
    assert canonical_name("_orig_mod.x") == "x" and canonical_name("schedule.theta") == "schedule.theta"
    plain, _ = trained_tiny_model()
    compiled, _ = trained_tiny_model()
    compiled.denoiser = torch.compile(compiled.denoiser)  # lazily: nothing is compiled here
    assert any("_orig_mod" in name for name in compiled.state_dict())
    saved = model_state(compiled)
    assert list(saved) == list(plain.state_dict())
    fresh = tiny_model()
    fresh.denoiser = torch.compile(fresh.denoiser)
    load_model_state(fresh, model_state(plain))  # a plain checkpoint loads into a compiled model
    assert all(torch.equal(a, b) for a, b in zip(model_state(fresh).values(), saved.values(), strict=True))


def test_a_sharded_compiled_model_saves_its_optimizer_as_an_uncompiled_one(one_rank_group):
    """FSDP2 with the denoiser compiled after sharding: torch's optimizer state names drop ``_orig_mod``, and so do
    md4's, so the checkpoint's optimizer state is the one of the plain model (the KeyError of issue 22)."""
    plain, plain_optimizer = trained_tiny_model()
    model, optimizer = trained_tiny_model(shard=True)
    model.denoiser = torch.compile(model.denoiser)
    state = distributed.optimizer_state(model, optimizer)
    expected = plain_optimizer.state_dict()
    assert state["param_groups"] == expected["param_groups"]
    for index, moments in expected["state"].items():
        for key, value in moments.items():
            assert torch.allclose(state["state"][index][key], value, rtol=1e-5, atol=1e-7), (index, key)
    distributed.load_optimizer_state(model, optimizer, expected)  # and loads back under the same names
    assert set(distributed.model_state(model)) == set(plain.state_dict())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_bf16_run_gathers_its_blocks_in_bf16_and_keeps_the_root_in_fp32(one_rank_group, precision):
    """FSDP2's mixed precision in a bf16 run: the blocks' weights take part in the forward pass as bf16, the
    root's (embeddings, output layer) as fp32, the stream between blocks stays fp32; an fp32 run is all fp32."""
    model, average = tiny_model(), tiny_model()
    Parallel(World(size=1, grouped=True), CPU, sharded=True).shard(model, average, precision)
    seen = {}
    blocks = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    first = next(m for m in blocks[0].modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, args, out: seen.update(block=m.weight.dtype, stream=args[0].dtype))
    blocks[0].register_forward_pre_hook(lambda m, args: seen.update(into_block=args[0].dtype))
    embedding = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
    embedding.register_forward_hook(lambda m, args, out: seen.update(root=m.weight.dtype))
    x = torch.randint(0, 5, (4, 8), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(x, generator=torch.Generator().manual_seed(2))[0]
    loss.backward()
    gathered = torch.bfloat16 if precision == "bf16" else torch.float32
    assert seen["block"] == gathered and seen["into_block"] == seen["root"] == torch.float32
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # sharded gradients, reduced in fp32
