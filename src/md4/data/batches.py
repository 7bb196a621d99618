"""The trainer's view of a corpus: random training windows, consecutive evaluation chunks, decoding."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from md4.data.errors import DataError
from md4.data.loader import eval_chunks, random_windows
from md4.data.store import PreparedData


class TextBatches:
    """Token sequences of length ``seq_len`` from a prepared corpus (shape [B, seq_len], no labels)."""

    def __init__(self, prepared: PreparedData, seq_len: int):
        self.prepared = prepared
        self.tokenizer = prepared.tokenizer
        self.vocab_size = prepared.tokenizer.vocab_size
        self.seq_len = seq_len

    def _split(self, split: str):
        if split not in self.prepared.splits:
            raise DataError(f"Unknown split {split!r}; this corpus has {', '.join(self.prepared.splits)}.")
        return self.prepared.splits[split]

    def train_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return random_windows(self._split("train"), batch_size, self.seq_len, generator)

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[torch.Tensor]:
        max_chunks = None if max_batches is None else max_batches * batch_size
        return eval_chunks(self._split(split), self.seq_len, batch_size, max_chunks)

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row.tolist()) for row in tokens.cpu()]
