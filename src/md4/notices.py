"""md4's own warnings: one category, so that the CLI can print them as ``md4: warning: ...`` and leave the
warnings of other libraries as Python shows them."""

from __future__ import annotations

import warnings


class MD4Warning(UserWarning):
    """Something the user should know that does not stop the work: a key given twice, data resized, a cache
    prepared again."""


def warn(message: str, stacklevel: int = 2) -> None:
    """Issue ``message`` as an :class:`MD4Warning`; ``stacklevel`` as for :func:`warnings.warn`, counted from the
    caller."""
    warnings.warn(message, MD4Warning, stacklevel=stacklevel + 1)
