"""Prepared token arrays on disk: ``<root>/{train,valid,test}.bin`` plus ``meta.json`` (written last)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from md4.data.atomic import atomic_output, write_bytes_atomic
from md4.data.errors import DataError
from md4.data.tokenizers import Tokenizer, token_dtype, tokenizer_from_dict

FORMAT_VERSION = 1
SplitSource = np.ndarray | Iterable[np.ndarray]


@dataclass
class PreparedData:
    """A tokenised corpus: memory-mapped 1-D token arrays per split and the tokenizer that made them."""

    name: str
    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    meta: dict[str, Any]


class Built(NamedTuple):
    """What a recipe produces before it is saved: each split is an array or an iterable of chunks."""

    tokenizer: Tokenizer
    splits: Mapping[str, SplitSource]
    meta: dict[str, Any]


def load_prepared(root: Path) -> PreparedData | None:
    """Memory-map the prepared data in ``root``, or return None when it is absent or incomplete."""
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return None
    info = json.loads(meta_path.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT_VERSION:
        return None
    dtype = np.dtype(info["dtype"])
    splits = {}
    for split, length in info["meta"]["tokens"].items():
        path = root / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != length * dtype.itemsize:
            return None
        splits[split] = np.memmap(path, dtype=dtype, mode="r", shape=(length,))
    return PreparedData(info["name"], tokenizer_from_dict(info["tokenizer"]), splits, info["meta"])


def _write_split(path: Path, source: SplitSource, dtype: np.dtype) -> int:
    chunks = [source] if isinstance(source, np.ndarray) else source
    count = 0
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            array = np.ascontiguousarray(chunk, dtype=dtype)
            array.tofile(f)
            count += array.size
    return count


def save_prepared(root: Path, name: str, built: Built) -> PreparedData:
    """Write ``built`` under ``root`` (each file atomically, ``meta.json`` last) and memory-map it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)  # an old cache is invalid from here on
    dtype = token_dtype(built.tokenizer.vocab_size)
    lengths = {}
    for split, source in built.splits.items():
        lengths[split] = _write_split(root / f"{split}.bin", source, dtype)
        if lengths[split] == 0:
            raise DataError(f"the {split} split of {name} has no tokens; use a larger corpus.")
    info = {
        "format": FORMAT_VERSION,
        "name": name,
        "tokenizer": built.tokenizer.to_dict(),
        "dtype": dtype.name,
        "meta": {**built.meta, "tokens": lengths},
    }
    write_bytes_atomic(root / "meta.json", json.dumps(info, indent=2).encode("utf-8"))
    prepared = load_prepared(root)
    assert prepared is not None
    return prepared
