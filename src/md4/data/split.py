"""Deterministic contiguous train / valid / test splits."""

from __future__ import annotations

import numpy as np

from md4.data.errors import DataError


def split_sizes(n: int) -> tuple[int, int, int]:
    """Sizes of a contiguous 90% / 5% / 5% split of ``n`` tokens (text8's 90M/5M/5M when n = 100M)."""
    valid = test = n * 5 // 100
    train = n - valid - test
    if valid == 0:
        raise DataError(
            f"a corpus of {n} tokens is too small to split 90/5/5 into non-empty train, valid "
            "and test parts; use a corpus of at least 20 tokens."
        )
    return train, valid, test


def contiguous_split(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Split ``tokens`` into its first 90% (train), the next 5% (valid) and the last 5% (test)."""
    train, valid, _ = split_sizes(len(tokens))
    return {
        "train": tokens[:train],
        "valid": tokens[train : train + valid],
        "test": tokens[train + valid :],
    }
