"""The training noise and its layout over processes: uniform draws and antithetic times for a batch that may be
split into shards (:class:`BatchShard`), so N processes draw exactly the noise one process would."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchShard:
    """This process's rows ``[start, start + size)`` of a batch of ``total`` rows split over processes.

    The noise of a training batch is drawn for all ``total`` rows from a generator every process seeds alike,
    and each process keeps its rows, so N processes see exactly the noise one process would (the randomness
    layout of distributed training; :mod:`md4.distributed`).
    """

    start: int
    total: int


def uniform_rows(shape, device=None, generator: torch.Generator | None = None, shard: BatchShard | None = None):
    """U(0, 1) draws of ``shape`` [B, ...]: a shard's rows of the whole batch's draws when ``shard`` is given."""
    if shard is None:
        return torch.rand(shape, device=device, generator=generator)
    whole = torch.rand((shard.total, *shape[1:]), device=device, generator=generator)
    return whole[shard.start : shard.start + shape[0]]


def antithetic_times(
    batch_size: int, device=None, generator: torch.Generator | None = None, shard: BatchShard | None = None
) -> torch.Tensor:
    """Low-discrepancy times t_i = (u + i / B) mod 1, u ~ U(0, 1) (paper App. E), laid over a whole sharded
    batch of B = ``shard.total`` rows when ``shard`` is given (row i of this process is row start + i)."""
    u = torch.rand((), device=device, generator=generator)
    start, total = (0, batch_size) if shard is None else (shard.start, shard.total)
    return torch.remainder(u + torch.arange(start, start + batch_size, device=device) / total, 1.0)
