"""Cache keys for local sources: a hash of each file's path, size and modification time."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path


def fingerprint(files: Sequence[Path]) -> str:
    """Return a short hex digest that changes when any file is moved, resized or modified."""
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
