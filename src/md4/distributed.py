"""Several processes training one model, on PyTorch's own stack: torchrun starts them, torch.distributed joins them.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each process;
:func:`connect` joins them into one process group (gloo on CPU, NCCL on CUDA). A process started without
torchrun is a world of one, and nothing here talks to anyone then. The randomness layout that makes N processes
train exactly like one is described in :class:`md4.core.noise.BatchShard` and :meth:`md4.data.Dataset.train_batch`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

DEFAULT_TIMEOUT_S = 1800  # a collective waits this long for a silent rank before it fails with an error
PARALLEL_MODES = ("ddp", "fsdp")  # train.parallel: replicate the model on every rank, or shard it (FSDP2)
COMPILER_PREFIX = "_orig_mod"  # the name torch.compile's wrapper gives the module it compiles


@dataclass(frozen=True)
class World:
    """This process's place among the processes training together (a world of one by default)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    grouped: bool = False  # in a process group (under torchrun), even a group of one

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory: logs, samples, checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the model is wrapped for several processes (DDP or FSDP2): with several, or with one in a group."""
        return self.size > 1 or self.grouped

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor each rank holds."""
        if not self.distributed:
            return values
        values = values.to(collective_device()).clone()
        dist.all_reduce(values)
        return values / self.size

    def gather(self, item) -> list:
        """Every rank's ``item`` (any picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [item]
        items: list = [None] * self.size
        dist.all_gather_object(items, item)
        return items

    def broadcast(self, item):
        """Rank 0's ``item``, on every rank."""
        if not self.distributed:
            return item
        box = [item]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def derived_seed(*keys: int) -> int:
    """A seed for torch generators that depends on ``keys`` only (e.g. (seed, rank, step)), well mixed."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def collective_device() -> torch.device:
    """Where the backend wants the tensors of a collective: the current GPU for NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def backend() -> str:
    """The process group's backend (nccl or gloo)."""
    return str(dist.get_backend())


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def connect(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group torchrun described in the environment, or return a world of one.

    ``device`` is the run's ``train.device``: NCCL when it resolves to CUDA, gloo otherwise. Each rank uses GPU
    ``LOCAL_RANK`` (a ``cuda:N`` in the config is overridden). One process under torchrun (``md4 train --nproc 1``)
    joins a group of one too, so it trains under DDP or FSDP2 over NCCL as each of several would. A rank that dies
    makes the others' next collective fail (torchrun then stops them all).
    """
    if not launched_by_torchrun():
        return World()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
    if use_cuda:
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ValueError(
                f"Process {rank} would train on GPU {local_rank} (its LOCAL_RANK) but only {visible} GPU(s) are "
                f"visible here; start at most {visible} processes per machine (--nproc), or set train.device=cpu."
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(seconds=timeout_s),
            device_id=torch.device("cuda", local_rank) if use_cuda else None,
        )
    return World(rank, size, local_rank, grouped=True)


def disconnect(finished: bool = True) -> None:
    """Leave the process group. After a run that ``finished`` on every rank, the ranks first meet at a barrier, so
    no rank tears down its gloo threads while a peer's last message is still in flight (which aborted a rank now
    and then); after an error there is no meeting, as a peer may never come."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------ FSDP2
def shard(model: nn.Module, param_dtype: torch.dtype | None = None) -> None:
    """Shard ``model`` over the ranks with FSDP2: each block of every ``nn.ModuleList`` (transformer layers,
    UNet residual blocks) is its own unit, gathered just before it runs; the rest belongs to the root.

    With ``param_dtype`` (bf16 runs: ``torch.bfloat16``) the blocks are gathered and run in that dtype (half the
    traffic of fp32) and their gradients reduced in fp32; their inputs are not cast, so the stream between blocks
    stays fp32, and the root's own parameters (embeddings, output layer, a learned schedule) stay fp32: autocast
    then computes as it does in one process, up to the rounding of the blocks' norm weights and biases.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # seconds to import: only for FSDP2

    policy = MixedPrecisionPolicy()
    if param_dtype is not None:
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block, mp_policy=policy)
    fully_shard(model)


def full_on_cpu():
    """Options of torch's distributed state dicts: whole tensors, gathered on the CPU."""
    from torch.distributed.checkpoint import state_dict

    return state_dict.StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(model: nn.Module) -> bool:
    if "torch.distributed.fsdp" not in sys.modules:  # nothing was sharded in this process
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


class gathered:
    """``with gathered(model):`` the root's own parameters are whole, so methods other than ``forward``
    (``nelbo``, the samplers' denoiser calls) can run; every rank must run the same calls inside."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        if is_sharded(self.model):
            self.model.unshard()
        return self.model

    def __exit__(self, *exc):
        if is_sharded(self.model):
            self.model.reshard()


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (still on the device), whether it is one or a DTensor of sharded
    gradients."""
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor was made in this process
        return norm
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict with :func:`canonical_name` names (on the CPU on rank 0 when sharded: every rank must
    call it)."""
    if is_sharded(model):
        from torch.distributed.checkpoint import state_dict  # seconds to import: only where FSDP2 runs

        return state_dict.get_model_state_dict(model, options=full_on_cpu())
    return {canonical_name(name): value for name, value in model.state_dict().items()}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict of :func:`canonical_name` names, sharding it if ``model`` is sharded."""
    if is_sharded(model):
        from torch.distributed.checkpoint import state_dict

        state_dict.set_model_state_dict(model, state, options=state_dict.StateDictOptions(full_state_dict=True))
    else:
        own = {canonical_name(name): name for name in model.state_dict()}
        model.load_state_dict({own.get(name, name): value for name, value in state.items()})


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state in ``Optimizer.state_dict()`` form (parameters by index), however it is sharded,
    so a checkpoint loads the same way on any number of processes."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint import state_dict

    by_name = state_dict.get_optimizer_state_dict(model, optimizer, options=full_on_cpu())
    names = parameter_names(model, optimizer)
    index = {name: i for i, name in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name.get("param_groups", [])]
    return {"state": {index[n]: v for n, v in by_name.get("state", {}).items()}, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    names = parameter_names(model, optimizer)
    by_name = {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    from torch.distributed.checkpoint import state_dict

    options = state_dict.StateDictOptions(full_state_dict=True)
    state_dict.set_optimizer_state_dict(model, optimizer, by_name, options=options)


def parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters in its own order (the indices of ``Optimizer.state_dict()``), as
    torch's distributed state dicts spell them: without a compiled module's ``_orig_mod``."""
    name_of = {id(p): canonical_name(name) for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def canonical_name(name: str) -> str:
    """A parameter's or buffer's name without the ``_orig_mod`` that ``torch.compile`` puts in front of a compiled
    module's own names, so a checkpoint is the same whether or not its model was compiled."""
    return ".".join(part for part in name.split(".") if part != COMPILER_PREFIX)


ERROR_DIR_ENV = "MD4_WORKER_ERRORS"  # set by :func:`launch`: where its workers record their one-sentence errors


class WorkerFailed(ValueError):
    """A worker of :func:`launch` stopped with md4's own error: its sentence, and the exit code one process
    would have given."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launched_by_md4() -> bool:
    """Whether this process is a worker that :func:`launch` started (through torchrun)."""
    return launched_by_torchrun() and bool(os.environ.get(ERROR_DIR_ENV))


def record_failure(message: str, exit_code: int) -> None:
    """Leave this worker's error for :func:`launch`, which prints one sentence for them all."""
    folder = Path(os.environ[ERROR_DIR_ENV])
    path = folder / f"rank-{int(os.environ['RANK']):05d}.json"
    path.write_text(json.dumps({"message": message, "exit_code": exit_code}))


def peer_failed(wait_s: float = 30.0) -> bool:
    """Whether another worker recorded an error (waiting up to ``wait_s`` for it): then this worker's own failure
    (a collective cut short when that worker left) is a consequence, not news."""
    folder = Path(os.environ[ERROR_DIR_ENV])
    deadline = time.monotonic() + wait_s
    while not any(folder.glob("rank-*.json")):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def launch(nproc: int, argv: list[str]) -> int:
    """``md4 train --nproc N ...``: run ``torchrun --standalone --nproc_per_node N -m md4 train ...`` on this machine
    and return its exit code.

    torchrun runs in its own session, and a Ctrl-C or SIGTERM to this process goes straight to the workers: they
    agree to stop, save, and exit 0, torchrun ends cleanly (signalled itself, it would print a traceback), and
    this process exits 130 or 143, as one process would. A worker that stops on md4's own error records it and
    exits 0 too; this process then raises :class:`WorkerFailed` with the first rank's sentence.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be a positive number of processes, got {nproc}.")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += ["-m", "md4", *argv]
    with tempfile.TemporaryDirectory(prefix="md4-workers-") as errors:
        child = subprocess.Popen(command, start_new_session=True, env={**os.environ, ERROR_DIR_ENV: errors})
        received: list[int] = []

        def forward(signum, frame):
            received.append(signum)
            for pid in child_pids(child.pid) or [child.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        failures = sorted(Path(errors).glob("rank-*.json"))
        if failures:
            first = json.loads(failures[0].read_text())
            raise WorkerFailed(first["message"], first["exit_code"])
    return 128 + received[0] if code == 0 and received else code


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's workers), from Linux's /proc; empty where it has none."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
