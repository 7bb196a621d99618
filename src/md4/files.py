"""Crash-safe file output: write beside the target, fsync, rename into place, fsync the folder.

A reader never sees a half-written file: after a crash or a full disk the target holds either
its old contents or the new ones. Checkpoints, run files, prepared data and downloads all use it.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_PATTERN = ".*.tmp"  # what :func:`atomic_output` leaves behind when its process is killed


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's contents to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_output(path: Path, mode_limit: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; if the block succeeds, fsync it and rename it to ``path``.

    ``mode_limit``: permission bits the file may have at most (e.g. those of the file it was made from), on top
    of the user's umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        fsync_file(tmp)
        if mode_limit is not None:
            os.chmod(tmp, stat.S_IMODE(tmp.stat().st_mode) & mode_limit)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes, mode_limit: int | None = None) -> None:
    """Write text (UTF-8) or bytes to ``path`` atomically (``mode_limit``: see :func:`atomic_output`)."""
    with atomic_output(path, mode_limit) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_output` left in ``folder`` when a process was killed; return
    them. Only for a folder that no other process is writing (its owner holds a lock)."""
    left = sorted(p for p in Path(folder).glob(TEMPORARY_PATTERN) if p.is_file() and not p.is_symlink())
    for tmp in left:
        tmp.unlink(missing_ok=True)
    return left


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symbolic link followed, lies in the folder ``root`` (itself resolved)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def link_leaving(root: Path) -> tuple[Path, Path] | None:
    """The first symbolic link under ``root`` whose target lies outside ``root``, and that target; None if every
    link stays inside. Links are not followed while walking, so a link cannot lead the walk elsewhere."""
    root = Path(root)
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            entry = Path(folder) / name
            if entry.is_symlink() and not is_inside(entry, root):
                return entry, entry.resolve()
    return None
