"""A loaded run's held-out data: its own split from the cache (found by its fingerprint), another recipe with the
same vocabulary, or any text file encoded with the run's tokenizer, as evaluation batches."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from md4.data import Batch, DataError, PreparedImages, Tokenizer, dataset_of, eval_chunks, is_image_recipe, prepare
from md4.data.textfile import read_corpus, text_files
from md4.runs.directory import cached_run_data


class HeldOut(NamedTuple):
    """Evaluation batches, how many there are, and a description of the data."""

    batches: Iterator[Batch]
    count: int
    description: str
    characters_per_token: float | None = None  # of text, when known (bits per character)


def held_out_batches(run, data: str | None, split: str, batch_size: int, max_batches: int | None = None) -> HeldOut:
    """Evaluation batches for a loaded run (:class:`md4.runs.directory.LoadedRun`).

    ``data``: None for the run's own dataset (its ``split``, found in the cache by its fingerprint), another recipe
    name with the same vocabulary, or the path of any text file or folder, encoded with the run's tokenizer (all
    of it is used). A prepared split is checked against its checksum before it is used.
    """
    seq_len = run.config.data.seq_len
    max_chunks = None if max_batches is None else max_batches * batch_size
    if data is not None and Path(data).exists() and not is_image_recipe(data):
        if not isinstance(run.codec, Tokenizer):
            raise DataError(f"This run's data has no text form, so it cannot be evaluated on the text in {data}.")
        text = read_corpus(text_files(Path(data)), Path(data))
        tokens = np.asarray(run.codec.encode(text))
        batches = ((x, None) for x in eval_chunks(tokens, seq_len, batch_size, max_chunks))
        count = _batch_count(len(tokens) // seq_len, batch_size, max_chunks)
        return HeldOut(batches, count, f"{data} (all {len(tokens)} tokens)", len(text) / max(len(tokens), 1))
    if data is None:
        prepared = cached_run_data(run.source, run.run_dir)
    else:
        prepared = prepare(data, seq_len=seq_len, levels=run.config.data.levels, tokenizer=run.config.data.tokenizer)
    dataset = dataset_of(prepared, seq_len)
    if dataset.codec.to_dict() != run.codec.to_dict():
        raise DataError(
            f"Dataset {prepared.name!r} uses a different vocabulary from this model; "
            "evaluate on a text file (it is encoded with the model's tokenizer) or the run's own dataset."
        )
    if split not in prepared.splits:
        raise DataError(f"unknown split {split!r}; {prepared.name} has {', '.join(prepared.splits)}.")
    prepared.verify(split)
    rows = len(prepared.splits[split]) // (1 if isinstance(prepared, PreparedImages) else seq_len)
    count = _batch_count(rows, batch_size, max_chunks)
    characters = None if isinstance(prepared, PreparedImages) else prepared.characters_per_token(split)
    batches = dataset.eval_batches(split, batch_size, max_batches)
    return HeldOut(batches, count, f"{prepared.name}{_tokenizer_note(prepared)} [{split} split]", characters)


def _tokenizer_note(prepared) -> str:
    """`` (bpe:N)`` for text encoded again with ``data.tokenizer``; empty otherwise."""
    spec = None if isinstance(prepared, PreparedImages) else prepared.meta.get("tokenizer")
    return f" ({spec})" if spec else ""


def _batch_count(rows: int, batch_size: int, max_rows: int | None) -> int:
    return math.ceil((rows if max_rows is None else min(rows, max_rows)) / batch_size)
