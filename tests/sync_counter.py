"""A CUDA-free count of the host syncs a piece of code would make on a GPU.

On CUDA, an op whose output's size or value the host needs (``.item()``, ``.tolist()``, ``float(t)``, ``bool(t)``,
``nonzero``, boolean indexing, ``masked_select``, ``unique``, ...) waits for every kernel queued before it. Such ops
dispatch the same way on the CPU, so a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees them there,
and a :class:`~torch.overrides.TorchFunctionMode` sees the copies to the host (``.tolist()``, ``.numpy()``,
``.cpu()``), which dispatch no op on a CPU tensor:

    with SyncCounter(host_side=("prefetch.py",)) as syncs:
        trainer.train_step()
    assert syncs.count <= 1, syncs.report()

Each sync is recorded with the innermost line of this repository that made it, so a failing bound says where.
What a CPU run cannot show: a copy to the device without ``non_blocking`` (a sync on CUDA) is no op when
everything is on the CPU; and everything is on the CPU, so work on tensors that stay on the host in a GPU run too
(a batch before it is sent, a generator's state) looks like a sync: ``host_side`` names the files that work on
host tensors only, and what runs while one of them is on the stack is listed apart, not counted. The modes are
per thread: work on another thread (a prefetching one) is not seen.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

if TYPE_CHECKING:
    from typing import Self  # Python 3.11

aten = torch.ops.aten

ALWAYS = {  # ops whose result the host needs: a sync on CUDA whatever their arguments
    aten._local_scalar_dense.default,  # .item(), float(t), int(t), bool(t)
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.repeat_interleave.Tensor,
    aten.bincount.default,
}
BOOLEAN_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
TRANSFERS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}

REPOSITORY = str(Path(__file__).resolve().parents[1])  # src/md4 and tests


def syncs_on_cuda(func, args) -> bool:
    """Whether the aten op ``func`` on ``args`` makes the host wait for the GPU."""
    if func in ALWAYS:
        return True
    if func in BOOLEAN_INDEXED:  # a boolean (or uint8) index: its count of true values sizes the output
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())
    return False


class SyncCounter:
    """Counts what runs inside ``with`` (on this thread) that would make the host wait for a GPU; what runs while
    a file of ``host_side`` is on the stack is recorded in ``host`` instead."""

    def __init__(self, host_side: tuple[str, ...] = ()):
        self.host_side = host_side
        self.syncs: list[tuple[str, str]] = []  # (op, where), in order
        self.host: list[tuple[str, str]] = []
        self._modes = (_Transfers(self), _Ops(self))

    def __enter__(self) -> Self:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def record(self, op: str) -> None:
        frames = [f for f in traceback.extract_stack() if f.filename.startswith(REPOSITORY)]
        frames = [f for f in frames if not f.filename.endswith("sync_counter.py")]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else "torch"
        host = any(Path(f.filename).name in self.host_side for f in frames)
        (self.host if host else self.syncs).append((op, where))

    @property
    def count(self) -> int:
        return len(self.syncs)

    def by_op(self) -> Counter:
        return Counter(op for op, _ in self.syncs)

    def report(self) -> str:
        """One line per distinct (op, where) with its count, for an assertion's message."""
        lines = [f"  {n} x {op} at {where}" for (op, where), n in Counter(self.syncs).items()]
        host = [f"  {n} x {op} at {where}" for (op, where), n in Counter(self.host).items()]
        text = f"{self.count} host sync(s):\n" + "\n".join(lines)
        return text + ("\nhost-side, not counted:\n" + "\n".join(host) if host else "")


class _Ops(TorchDispatchMode):
    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if syncs_on_cuda(func, args):
            self.counter.record(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


class _Transfers(TorchFunctionMode):
    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in TRANSFERS:
            self.counter.record(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))
