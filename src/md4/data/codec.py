"""Codecs turn token arrays into what a person reads, and rebuild themselves from a small JSON dict.

A run directory stores its codec so that samples can be decoded from the run alone.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from md4.data.cache import DataError
from md4.files import write_atomic

SAMPLE_SEPARATOR = "\n\n----------\n\n"


def as_ids(ids: Any, vocab_size: int) -> np.ndarray:
    """A list, numpy array or torch tensor of ids as an int64 array, checked to lie in ``[0, vocab_size)``."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids, dtype=np.int64)
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise DataError(
            f"token id {int(arr[bad][0])} is outside the vocabulary [0, {vocab_size}); "
            "remove mask or padding ids before decoding."
        )
    return arr


class Codec(ABC):
    """Maps token ids in ``[0, vocab_size)`` to a readable form; ``to_dict`` lets a run directory rebuild it."""

    vocab_size: int

    @abstractmethod
    def decode(self, ids: Any) -> str:
        """The readable form of one example (list, numpy array or torch tensor of ids)."""

    def decode_batch(self, tokens: Any) -> list[str]:
        """Decode each example of ``tokens`` [N, *data_shape]."""
        batch = as_ids(tokens, self.vocab_size)
        if batch.ndim == 0:
            raise DataError("decode_batch takes a batch of examples [N, ...] but got one id; pass decode one example.")
        return [self.decode(example) for example in batch]

    def write_samples(self, tokens: Any, stem: Path) -> Path:
        """Write the decoded examples of ``tokens`` [N, *data_shape] atomically to ``stem.txt`` and return its path."""
        path = stem.with_name(f"{stem.name}.txt")
        write_atomic(path, SAMPLE_SEPARATOR.join(self.decode_batch(tokens)) + "\n")
        return path

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; ``codec_from_dict`` inverts it."""


class RawCodec(Codec):
    """Token arrays with no text form: ids separated by spaces, one line per row of the last axis."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1:
            raise DataError(f"a RawCodec needs a positive vocab_size, got {vocab_size}; pass the number of token ids.")
        self.vocab_size = vocab_size

    def decode(self, ids: Any) -> str:
        arr = np.atleast_1d(as_ids(ids, self.vocab_size))
        rows = arr.reshape(math.prod(arr.shape[:-1]), arr.shape[-1])
        return "\n".join(" ".join(map(str, row)) for row in rows.tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"type": "raw", "vocab_size": self.vocab_size}


# Type name -> builder from ``to_dict()``; each codec module adds its own types (md4.data imports them all).
CODECS: dict[str, Callable[[Mapping[str, Any]], Codec]] = {"raw": lambda d: RawCodec(d["vocab_size"])}


def codec_from_dict(d: Mapping[str, Any]) -> Codec:
    """Rebuild a codec from ``Codec.to_dict()``."""
    kind = d.get("type") if isinstance(d, Mapping) else None
    if kind not in CODECS:
        raise DataError(f"unknown codec type {kind!r}; expected one of {', '.join(map(repr, sorted(CODECS)))}.")
    try:
        return CODECS[kind](d)
    except (KeyError, TypeError) as err:
        raise DataError(
            f"the {kind!r} codec description {dict(d)!r} is incomplete or malformed ({err}); rebuild it with to_dict()."
        ) from err
