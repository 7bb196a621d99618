"""text8: the first 10^8 characters of English Wikipedia filtered to a-z and spaces (Mahoney, 2006).

Split 90% / 5% / 5% contiguously: exactly the official 90M / 5M / 5M for the real
file, and the same proportions for any other text8-format file (handy for tests).
"""

from __future__ import annotations

import os
import shutil
import urllib.request
import zipfile
from pathlib import Path

from md4.data.cache import DataError, contiguous_split
from md4.data.store import Built
from md4.data.tokenizers import Text8Tokenizer
from md4.files import atomic_output

URL = "http://mattmahoney.net/dc/text8.zip"
TIMEOUT_S = 10.0
ENV = "MD4_TEXT8"
FILE_NAMES = ("text8", "text8.zip")


def is_text8_path(path: Path) -> bool:
    """Whether ``path`` names a text8 file (``text8`` or ``text8.zip``)."""
    return path.is_file() and path.name in FILE_NAMES


def read_text8(path: Path) -> str:
    """The text of a raw text8 file or of the ``text8`` member of a zip."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read("text8")
        else:
            data = path.read_bytes()
        return data.decode("ascii")
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a text8 file ({err}); pass text8 or text8.zip from {URL}.") from err


def download(url: str, dest: Path, timeout_s: float = TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response, atomic_output(dest) as tmp, open(tmp, "wb") as f:
        shutil.copyfileobj(response, f)


def locate(cache: Path) -> Path:
    """Find text8: env ``MD4_TEXT8``, then ``<cache>/text8/text8[.zip]``, then download it there."""
    if os.environ.get(ENV):
        path = Path(os.environ[ENV]).expanduser()
        if not path.is_file():
            raise DataError(f"{ENV} is set to {path}, which is not a file; point it at text8 or text8.zip.")
        return path
    folder = cache / "text8"
    for name in FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    try:
        download(URL, folder / "text8.zip")
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        raise DataError(
            f"text8 was not found: pass the path of text8 or text8.zip, set {ENV}, put the file in {folder}, "
            f"or let md4 download {URL} (that failed: {err})."
        ) from err
    return folder / "text8.zip"


def build_text8(path: Path) -> Built:
    """Tokenise a text8-format file and split it 90/5/5."""
    text = read_text8(path)
    tokens = Text8Tokenizer().encode(text)
    return Built(Text8Tokenizer(), contiguous_split(tokens), {"source": str(path), "characters": len(text)})
