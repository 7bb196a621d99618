"""Where md4 keeps downloaded sources and prepared token arrays."""

from __future__ import annotations

import os
from pathlib import Path


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
