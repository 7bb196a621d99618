"""A run's training batches, the next one drawn on a background thread while the current step computes.

Each batch is a pure function of the data generator's state before it: a draw starts from a copy of that state
and returns the state after it. The run's own generator is moved on only when a step takes a batch, so it always
holds the state before the first batch no step has taken, which is what a checkpoint saves and a resume restores:
the sequence of batches is the one drawing them in turn on the main thread gives. A draw made from a state the
generator no longer holds (it was restored or reseeded meanwhile) is dropped and made again.

On a GPU the batch is gathered into pinned memory, so that its copy to the device does not make the host wait;
its ids are checked on the CPU, where that is free, and the step skips the GPU-side check
(:func:`md4.core.tokens.ranges_checked`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from md4.core.noise import BatchShard
from md4.core.tokens import check_tokens
from md4.distributed import World

Batch = tuple[torch.Tensor, torch.Tensor | None]


class Prefetcher:
    """Micro-batches of ``rows`` rows (this rank's ``part`` of them) of ``data``'s training split, drawn from
    ``generator`` in turn and delivered on ``device``; ``threaded``: the next one is drawn on a background thread
    (else when it is asked for). ``labels``: deliver the data's labels (else None)."""

    def __init__(
        self,
        data,
        rows: int,
        part: tuple[slice, ...],
        generator: torch.Generator,
        vocab_size: int,
        device: torch.device,
        labels: bool,
        threaded: bool,
    ):
        self.data, self.rows, self.part, self.generator = data, rows, part, generator
        self.vocab_size, self.device, self.labels, self.threaded = vocab_size, device, labels, threaded
        self.pin = device.type == "cuda"
        self._executor: ThreadPoolExecutor | None = None
        self._pending: tuple[bytes, Future] | None = None  # (the state it starts from, the draw)

    def next(self) -> Batch:
        """The next batch, on the device; the generator moves past it. An error of the data (or of its ids) is
        raised here, by the step that asked for the batch."""
        start = self.generator.get_state()
        key = start.numpy().tobytes()
        if self._pending is not None and self._pending[0] == key:
            x, labels, after = self._pending[1].result()
        else:
            x, labels, after = self._draw(start)
        self._pending = None
        self.generator.set_state(after)
        if self.threaded:
            self._pending = (after.numpy().tobytes(), self._pool().submit(self._draw, after))
        x = x.to(self.device, non_blocking=True)
        return x, None if labels is None else labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop the thread (after the draw under way, if any); a later :meth:`next` starts another."""
        self._pending = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            device = self.device if self.pin else None
            self._executor = ThreadPoolExecutor(1, "md4-prefetch", initializer=_use_device, initargs=(device,))
        return self._executor

    def _draw(self, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The batch drawn from generator state ``start``, checked (and pinned on a GPU), and the state after it."""
        generator = torch.Generator()
        generator.set_state(start)
        x, labels = self.data.train_batch(self.rows, generator, *self.part)
        check_tokens(x, self.vocab_size)
        labels = labels if self.labels else None
        if self.pin:
            x = x.pin_memory()
            labels = None if labels is None else labels.pin_memory()
        return x, labels, generator.get_state()


def rank_batches(
    data, micro_batch: int, world: World, state, device: torch.device
) -> tuple[BatchShard | None, Prefetcher]:
    """This rank's place in each micro-batch of the global batch (None for one process) and its batches: drawn
    one ahead on a thread into pinned memory on a GPU, when asked for on the CPU (where a thread saves nothing,
    docs/benchmarks.md). ``state``: the run's :class:`md4.training.state.TrainState`."""
    rows = micro_batch * world.size
    first = world.rank * micro_batch
    shard = BatchShard(first, rows) if world.distributed else None
    # A dataset written for one process needs no ``part`` argument.
    part = (slice(first, first + micro_batch),) if world.distributed else ()
    model, threaded = state.model, device.type == "cuda"
    labels = model.num_classes is not None
    return shard, Prefetcher(data, rows, part, state.data_generator, model.vocab_size, device, labels, threaded)


def _use_device(device: torch.device | None) -> None:
    """The prefetching thread pins memory for the rank's own GPU (not, by default, GPU 0, where that would make a
    context on it)."""
    if device is not None:
        torch.cuda.set_device(device)
