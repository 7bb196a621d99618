"""Folders of PNG/JPEG images as ``RawImages``: one class per subfolder (or none), each image turned upright from
its EXIF orientation, all at the folder's common size (resized and centre-cropped, with a warning, when they
differ), grayscale when every image is."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from md4 import notices
from md4.data.cache import DataError, source_stamp
from md4.data.image_sources import CHUNK_ROWS
from md4.data.images import Chunk, RawImages, convert_image, image_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAY_MODES = ("1", "L", "LA", "La")
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises for a bad file
ORIENTATION_TAG = 0x0112  # EXIF Orientation; values 5 to 8 turn the image a quarter, swapping its width and height
SIDEWAYS = (5, 6, 7, 8)


class FolderScan(NamedTuple):
    """The images of a folder and what their headers tell, read without decoding any pixels."""

    files: list[Path]
    classes: list[str] | None
    stamp: str  # source_stamp(files)
    sizes: list[tuple[int, int]]  # (H, W) of each image as shown, after its EXIF orientation
    channels: int  # 1 when every image is grayscale, else 3


_HEADERS: dict[tuple[Path, str], tuple[list[tuple[int, int]], int]] = {}  # (folder, stamp) -> sizes, channels


def _image_files(folder: Path) -> Iterator[Path]:
    """The PNG/JPEG files under ``folder`` but not in hidden folders or hidden themselves, in no particular order.

    Links to folders are followed like links to files, except into a folder already on the way down (a cycle).
    """
    above = {folder: frozenset({folder.resolve()})}  # each folder to walk -> the resolved folders from the top to it
    for top, dirs, names in os.walk(folder, followlinks=True):
        here = Path(top)
        chain = above.pop(here)
        resolved = {name: (here / name).resolve() for name in dirs if not name.startswith(".")}
        dirs[:] = [name for name, real in resolved.items() if real not in chain]
        above.update({here / name: chain | {resolved[name]} for name in dirs})
        for name in names:
            path = here / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                yield path


def has_images(folder: Path) -> bool:
    """Whether any PNG or JPEG file lies under the folder ``folder`` (see :func:`folder_images`)."""
    return next(_image_files(folder), None) is not None


def folder_images(folder: Path) -> tuple[list[Path], list[str] | None]:
    """The PNG/JPEG files under ``folder`` sorted by relative path, and the class names when they sit in subfolders
    (each named by the folder's top-level entry: a subfolder or a link to one)."""
    if not folder.is_dir():
        raise DataError(f"no folder at {folder}; pass a folder of PNG or JPEG images.")
    files = sorted(_image_files(folder), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise DataError(f"the folder {folder} has no PNG or JPEG images; add some.")
    depths = {len(p.relative_to(folder).parts) > 1 for p in files}
    if depths == {True, False}:
        raise DataError(
            f"{folder} has images both at its top level and in subfolders; put every image in a class subfolder "
            "or all of them at the top level."
        )
    classes = sorted({p.relative_to(folder).parts[0] for p in files}) if depths == {True} else None
    return files, classes


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(H, W) of an image as shown, after its EXIF orientation, and its mode, without decoding its pixels."""
    try:
        with Image.open(path) as image:
            # Image's own getexif reads what opening found; PNG's would decode the pixels to look beyond them too.
            sideways = Image.Image.getexif(image).get(ORIENTATION_TAG) in SIDEWAYS
            width, height = image.size
            return ((width, height) if sideways else (height, width)), image.mode
    except UNREADABLE as err:
        raise DataError(f"{path} is not a readable image ({err}); replace or remove it.") from err


def scan_folder(folder: Path) -> FolderScan:
    """The images of ``folder`` (:func:`folder_images`) and their sizes and channels; the headers are read once per
    process for each folder and source stamp of its files."""
    files, classes = folder_images(folder)
    stamp = source_stamp(files)
    key = (folder.resolve(), stamp)
    if key not in _HEADERS:
        headers = [_header(file) for file in files]
        _HEADERS[key] = [size for size, _ in headers], 1 if all(mode in GRAY_MODES for _, mode in headers) else 3
    return FolderScan(files, classes, stamp, *_HEADERS[key])


def _open(path: Path) -> Image.Image:
    """The pixels of an image file as shown, its EXIF orientation applied; the file is closed, also on failure."""
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image)
    except UNREADABLE as err:
        raise DataError(f"{path} is not a readable image ({err}); replace or remove it.") from err


def _folder_chunks(files: Sequence[Path], labels: np.ndarray, size: tuple[int, int], channels: int) -> Iterator[Chunk]:
    for first in range(0, len(files), CHUNK_ROWS):
        batch = []
        for path in files[first : first + CHUNK_ROWS]:
            fitted = ImageOps.fit(convert_image(_open(path), channels, path), (size[1], size[0]))
            batch.append(image_pixels(fitted))
        yield np.stack(batch), labels[first : first + CHUNK_ROWS]


def _count_resized(path: Path, sizes: Sequence[tuple[int, int]], size: tuple[int, int]) -> int:
    """How many images of ``sizes`` (H, W) are resized to ``size``; a warning says so when any are."""
    resized = sum(own != size for own in sizes)
    if resized:
        kinds = set(sizes)
        what = f"all {sizes[0][0]}x{sizes[0][1]}" if len(kinds) == 1 else f"{len(kinds)} different sizes"
        notices.warn(
            f"resized and centre-cropped {resized} of the {len(sizes)} images of {path} ({what}) to "
            f"{size[0]}x{size[1]}; name another size as images:{path}:HxW."
        )
    return resized


def folder(path: Path, size: tuple[int, int]) -> RawImages:
    """Images as shown (EXIF orientation applied), resized (shorter side) and centre-cropped to ``size`` (H, W) with
    a warning when any differs; grayscale when all are, else RGB.

    Labels are the sorted subfolder names, if there are subfolders. Of the files in sorted order, every 20th
    from the 19th is valid and every 20th from the 20th is test, so each class is in every split (90/5/5).
    """
    scan = scan_folder(path)
    files, classes = scan.files, scan.classes
    if len(files) < 20:
        raise DataError(f"{path} has {len(files)} images but a 90/5/5 split needs at least 20; add more.")
    resized = _count_resized(path, scan.sizes, size)
    index = {name: i for i, name in enumerate(classes or [])}
    labels = np.array([index.get(f.relative_to(path).parts[0], 0) for f in files], dtype=np.int64)
    position = np.arange(len(files)) % 20
    splits = {}
    for split, rows in (("train", position < 18), ("valid", position == 18), ("test", position == 19)):
        split_files = [f for f, keep in zip(files, rows) if keep]
        chunks = _folder_chunks(split_files, labels[rows], size, scan.channels)
        splits[split] = chunks if classes else ((images, None) for images, _ in chunks)
    counts = None if classes is None else dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist()))
    meta = {"source": str(path), "files": len(files), "classes": classes, "class_counts": counts, "resized": resized}
    return RawImages((*size, scan.channels), 256, None if classes is None else len(classes), splits, meta)
