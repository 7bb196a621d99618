"""Batches of token windows for training (random) and evaluation (consecutive chunks)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from md4.data.errors import DataError


def _check(tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len and batch_size must be positive, got seq_len={seq_len} and batch_size={batch_size}.")
    if len(tokens) < seq_len:
        raise DataError(
            f"the split has {len(tokens)} tokens, fewer than seq_len={seq_len}; "
            "use a shorter seq_len or a larger corpus."
        )


def random_windows(tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``[batch_size, seq_len]`` windows at uniform random offsets drawn from ``generator``.

    All randomness comes from the generator, so restoring its state resumes the same stream.
    """
    _check(tokens, seq_len, batch_size)
    starts = torch.randint(0, len(tokens) - seq_len + 1, (batch_size,), generator=generator).numpy()
    index = starts[:, None] + np.arange(seq_len)
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


def num_chunks(tokens: np.ndarray, seq_len: int) -> int:
    """How many non-overlapping windows of ``seq_len`` fit in ``tokens`` (the ragged tail is dropped)."""
    return len(tokens) // seq_len


def eval_chunks(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_chunks: int | None = None
) -> Iterator[torch.Tensor]:
    """Consecutive non-overlapping ``seq_len`` chunks in batches of up to ``batch_size`` rows, in order."""
    _check(tokens, seq_len, batch_size)
    n = num_chunks(tokens, seq_len) if max_chunks is None else min(max_chunks, num_chunks(tokens, seq_len))
    for first in range(0, n, batch_size):
        rows = min(batch_size, n - first)
        chunk = tokens[first * seq_len : (first + rows) * seq_len]
        yield torch.from_numpy(np.asarray(chunk, dtype=np.int64).reshape(rows, seq_len))
