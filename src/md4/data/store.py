"""Prepared text on disk: the format ``<root>/{train,valid,test}.bin`` plus ``meta.json`` (written last), built on the
leaf :mod:`md4.data.cache` (folder, keys, downloads, splits, digests, lock).

``meta.json`` also holds the content fingerprint of the prepared data (see ``content_digest``),
computed while the split files are written, so a run can tell later whether it still has the same data, and the
SHA-256 of each split's file, so that a split changed on disk after it was prepared is refused when it is used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from md4 import notices
from md4.data.cache import DataError, check_digest, content_digest, token_dtype
from md4.data.codec import codec_from_dict
from md4.data.tokenizers import CharTokenizer, Tokenizer
from md4.files import atomic_output, write_atomic

if TYPE_CHECKING:
    from hashlib import _Hash

FORMAT_VERSION = 3  # 2: meta.json holds the content fingerprint; 3: and each split's SHA-256
SplitSource = np.ndarray | Iterable[np.ndarray]


@dataclass
class PreparedData:
    """A tokenised corpus: memory-mapped 1-D token arrays per split and the tokenizer that made them.

    ``key`` names its cache folder; ``fingerprint`` is the SHA-256 hex digest of its content (``content_digest``).
    """

    name: str
    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    meta: dict[str, Any]
    key: str
    fingerprint: str
    digests: dict[str, str]  # split -> SHA-256 hex digest of its file

    def characters_per_token(self, split: str) -> float | None:
        """The characters of text per token of ``split``: 1 for one token per character, from
        ``meta["split_characters"]`` for text encoded again with another tokenizer (:mod:`md4.data.retokenize`),
        None when unknown (GPT-2-tokenised hub data)."""
        characters = self.meta.get("split_characters", {})
        if split in characters:
            return characters[split] / len(self.splits[split])
        return 1.0 if isinstance(self.tokenizer, CharTokenizer) else None

    def verify(self, split: str) -> None:
        """Refuse ``split`` if its file no longer holds what was prepared (:func:`check_digest`)."""
        check_digest([self.splits[split]], self.digests[split], f"the {split} split of {self.name}", self.key)


class Built(NamedTuple):
    """What a recipe produces before it is saved: each split is an array or an iterable of chunks."""

    tokenizer: Tokenizer
    splits: Mapping[str, SplitSource]
    meta: dict[str, Any]


def load_prepared(root: Path, *, warn: bool = False) -> PreparedData | None:
    """Memory-map the prepared data in ``root``, or return None when it is absent, incomplete or unreadable.

    With ``warn``, an unreadable ``meta.json`` (not JSON, or missing fields) is reported by a warning.
    """
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
        if info.get("format") != FORMAT_VERSION:
            return None  # an older cache: prepared again without comment
        tokenizer = codec_from_dict(info["tokenizer"])
        dtype = np.dtype(info["dtype"])
        lengths = {str(split): int(length) for split, length in info["meta"]["tokens"].items()}
        name, fingerprint = str(info["name"]), str(info["fingerprint"])
        digests = {split: str(info["split_sha256"][split]) for split in lengths}
    except (ValueError, KeyError, TypeError, AttributeError):  # JSON and codec errors are ValueErrors
        if warn:
            message = f"the prepared-data cache {meta_path} is unreadable; preparing the data again"
            notices.warn(message)
        return None
    if not isinstance(tokenizer, Tokenizer):
        return None
    splits = {}
    for split, length in lengths.items():
        path = root / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != length * dtype.itemsize:
            return None
        splits[split] = np.memmap(path, dtype=dtype, mode="r", shape=(length,))
    return PreparedData(name, tokenizer, splits, info["meta"], root.name, fingerprint, digests)


def _write_split(
    root: Path, split: str, source: SplitSource, dtype: np.dtype, digest: _Hash, mode_limit: int | None
) -> tuple[int, str]:
    """Write one split's tokens to ``<root>/<split>.bin`` and feed them to ``digest`` as ``content_digest`` says;
    return the token count and the SHA-256 of the file."""
    chunks = [source] if isinstance(source, np.ndarray) else source
    digest.update(split.encode() + b"\0")
    own = hashlib.sha256()
    count = 0
    with atomic_output(root / f"{split}.bin", mode_limit) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            array = np.ascontiguousarray(chunk, dtype=dtype)
            f.write(memoryview(array).cast("B"))  # a full disk raises ENOSPC (numpy's tofile hides the errno)
            digest.update(array)
            own.update(array)
            count += array.size
    digest.update(count.to_bytes(8, "little"))
    return count, own.hexdigest()


def save_prepared(root: Path, name: str, built: Built, mode_limit: int | None = None) -> PreparedData:
    """Write ``built`` under ``root`` (each file atomically, ``meta.json`` last, none with more permission
    bits than ``mode_limit``, when given) and memory-map it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)  # an old cache is invalid from here on
    dtype = token_dtype(built.tokenizer.vocab_size)
    codec = built.tokenizer.to_dict()
    digest = content_digest(codec)
    lengths, digests = {}, {}
    for split, source in built.splits.items():
        lengths[split], digests[split] = _write_split(root, split, source, dtype, digest, mode_limit)
        if lengths[split] == 0:
            raise DataError(f"the {split} split of {name} has no tokens; use a larger corpus.")
    info = {
        "format": FORMAT_VERSION,
        "name": name,
        "tokenizer": codec,
        "dtype": dtype.name,
        "fingerprint": digest.hexdigest(),
        "split_sha256": digests,
        "meta": {**built.meta, "tokens": lengths},
    }
    write_atomic(root / "meta.json", json.dumps(info, indent=2), mode_limit)
    prepared = load_prepared(root)
    assert prepared is not None
    return prepared
