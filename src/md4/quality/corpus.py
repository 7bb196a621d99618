"""The token splits of a run's text corpus, which the generative-perplexity measurement needs twice: the training
split to fit an n-gram scorer on, and the test split for the reference row of real text."""

from __future__ import annotations

import numpy as np

from md4.data import DataError, PreparedData, prepare
from md4.runs.directory import LoadedRun, cached_run_data


def run_corpus(loaded: LoadedRun, data: str | None = None) -> PreparedData:
    """The prepared text corpus of ``loaded``: its own (found in the cache by its fingerprint), or the recipe
    ``data`` when it has the run's vocabulary."""
    prepared = (
        cached_run_data(loaded.source, loaded.run_dir)
        if data is None
        else prepare(data, seq_len=loaded.config.data.seq_len, tokenizer=loaded.config.data.tokenizer)
    )
    if not isinstance(prepared, PreparedData):
        raise DataError(f"{prepared.name} is an image set, and generative perplexity measures text samples.")
    if prepared.tokenizer.to_dict() != loaded.codec.to_dict():
        raise DataError(
            f"Dataset {prepared.name!r} uses a different vocabulary from {loaded.run_dir}; name the run's own data "
            "with --data, or leave --data out."
        )
    return prepared


def split_tokens(prepared: PreparedData, split: str) -> np.ndarray:
    """The 1-D token array of ``split``, checked against its checksum."""
    if split not in prepared.splits:
        raise DataError(f"unknown split {split!r}; {prepared.name} has {', '.join(prepared.splits)}.")
    prepared.verify(split)
    return prepared.splits[split]


def reference_sequences(tokens: np.ndarray, num: int, length: int) -> np.ndarray:
    """The first ``num`` consecutive non-overlapping ``length``-token sequences of ``tokens`` [num', length]
    (fewer when the split is shorter)."""
    rows = min(num, len(tokens) // length)
    if rows < 1:
        raise DataError(
            f"The held-out split has {len(tokens)} tokens, fewer than one sample of {length}; use --length."
        )
    return np.asarray(tokens[: rows * length], dtype=np.int64).reshape(rows, length)
