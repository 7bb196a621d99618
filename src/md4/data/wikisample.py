"""``wikitext8-sample``: a real text8-format corpus offline, from 107 Wikipedia articles.

The gensim 4.4.0 wheel on PyPI carries a shortened English Wikipedia dump as test
data; it is read from the wheel (or an installed gensim) without importing gensim,
and filtered with text8's own rules.
"""

from __future__ import annotations

import bz2
import importlib.util
import tempfile
import zipfile
from pathlib import Path

from md4.data.cache import DataError, contiguous_split, pip_download
from md4.data.store import Built
from md4.data.tokenizers import Text8Tokenizer
from md4.data.wikifil import wikifil

REQUIREMENT = "gensim==4.4.0"
MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Any gensim wheel carries the file; pinning one platform makes the download the same everywhere.
WHEEL_OPTIONS = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11")


def _installed_dump() -> Path | None:
    spec = importlib.util.find_spec("gensim")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / MEMBER
    return path if path.is_file() else None


def read_dump() -> tuple[bytes, str]:
    """The compressed dump and where it came from: an installed gensim, else the wheel from PyPI."""
    installed = _installed_dump()
    if installed is not None:
        return installed.read_bytes(), str(installed)
    with tempfile.TemporaryDirectory(prefix="md4-gensim-") as tmp:
        try:
            wheel = pip_download(REQUIREMENT, Path(tmp), *WHEEL_OPTIONS)
            with zipfile.ZipFile(wheel) as archive:
                return archive.read(MEMBER), f"PyPI {REQUIREMENT}: {MEMBER}"
        except (DataError, KeyError, zipfile.BadZipFile) as err:
            raise DataError(
                f"the Wikipedia sample could not be read from the {REQUIREMENT} wheel ({err}); "
                "check that PyPI is reachable or install gensim."
            ) from err


def build_wiki_sample() -> Built:
    """Filter the dump to text8 format, tokenise it with text8's alphabet and split it 90/5/5."""
    compressed, source = read_dump()
    text = wikifil(bz2.decompress(compressed).decode("utf-8"))
    tokens = Text8Tokenizer().encode(text)
    return Built(Text8Tokenizer(), contiguous_split(tokens), {"source": source, "characters": len(text)})
