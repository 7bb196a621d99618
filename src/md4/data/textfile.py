"""Local UTF-8 text: one file or every ``*.txt`` under a folder, tokenised by character."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from md4.data.cache import DataError, contiguous_split
from md4.data.store import Built
from md4.data.tokenizers import CharTokenizer

SEPARATOR = "\n\n"  # placed between files (and between Shakespeare's works)


def text_files(path: Path) -> list[Path]:
    """The file itself, or all ``*.txt`` files under a folder sorted by relative path."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted((p for p in path.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise DataError(f"the folder {path} has no *.txt files; add some or pass a text file.")
        return files
    raise DataError(f"no file or folder at {path}; check the path.")


def has_text_files(folder: Path) -> bool:
    """Whether any ``*.txt`` file lies under ``folder`` (as :func:`text_files` finds them)."""
    return any(p.is_file() for p in folder.rglob("*.txt"))


def read_text(path: Path) -> str:
    """Read one UTF-8 text file, refusing binary data."""
    data = path.read_bytes()
    if b"\0" in data:
        raise DataError(f"{path} looks like a binary file (it contains NUL bytes); pass a UTF-8 text file.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not valid UTF-8 (bad byte at offset {err.start}); convert it to UTF-8 or pass another file."
        ) from err


def read_corpus(files: list[Path], root: Path) -> str:
    """The non-empty files joined by a blank line; an error if there is no text at all."""
    texts = [text for text in (read_text(f) for f in files) if text]
    if not texts:
        raise DataError(f"{root} is empty; pass a file or folder that contains text.")
    return SEPARATOR.join(texts)


def char_level(text: str, meta: dict[str, Any]) -> Built:
    """A character-level corpus: vocabulary from ``text`` itself and a contiguous 90/5/5 split."""
    tokenizer = CharTokenizer.from_text(text)
    splits = contiguous_split(tokenizer.encode(text))
    return Built(tokenizer, splits, {**meta, "characters": len(text), "vocab_size": tokenizer.vocab_size})


def build_text(path: Path, files: list[Path]) -> Built:
    """Prepare the text at ``path`` (a file, or a folder whose text files are ``files``)."""
    text = read_corpus(files, path)
    return char_level(text, {"source": str(path), "files": len(files)})
