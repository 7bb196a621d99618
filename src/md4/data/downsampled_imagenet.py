"""Unlabelled downsampled ImageNet 64x64 of van den Oord et al. 2016 ("Pixel Recurrent Neural Networks", Sec. 5):
the data of the paper's ImageNet 64x64 result (3.40 bits/dim) and of tfds ``downsampled_imagenet/64x64``, which the
JAX release trains on.

image-net.org/small distributes it as ``train_64x64.tar`` (1,281,149 PNGs under ``train_64x64/``) and
``valid_64x64.tar`` (49,999 PNGs under ``valid_64x64/``); md4 reads the tars, or the folders they unpack to,
without unpacking anything, in the archive's order (a folder's in file-name order). It is never downloaded (about
12 GB behind an image-net.org login). The labelled 64x64 npz batches of Chrabaszcz et al. 2017, resized with a
box filter, are another data set: :func:`md4.data.image_sources.imagenet64` (recipe ``imagenet64-chrabaszcz``).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from md4.data.cache import DataError
from md4.data.images import Chunk, RawImages

ENV = "MD4_IMAGENET64"
SPLITS = {"train": "train_64x64", "valid": "valid_64x64"}  # the release's "train" and "validation"
VALID_SLICE = 10_000  # md4's valid split: the first images of the validation set, which is also the test split
CHUNK_ROWS = 4096
URL = "https://image-net.org/download-images.php"  # "Downsampled ImageNet 64x64", after logging in


def split_source(folder: Path, split: str) -> Path | None:
    """The tar of ``split`` in ``folder``, else the folder it unpacks to; None when neither is there."""
    stem = SPLITS[split]
    for path in (folder / f"{stem}.tar", folder / stem):
        if path.is_file() or (path.is_dir() and any(path.glob("*.png"))):
            return path
    return None


def source_files(folder: Path) -> list[Path]:
    """The files the data are read from: the two tars, or the PNGs of the unpacked folders."""
    files = []
    for split, stem in SPLITS.items():
        source = split_source(folder, split)
        if source is None:
            raise DataError(f"{folder} lacks {stem}.tar (or its folder); add it.")
        files += sorted(source.glob("*.png")) if source.is_dir() else [source]
    return files


def is_downsampled_imagenet_path(path: Path) -> bool:
    """Whether ``path`` is a folder that holds both splits (tars or unpacked folders)."""
    return path.is_dir() and all(split_source(path, split) is not None for split in SPLITS)


def locate(cache: Path) -> Path:
    """Find the data: env ``MD4_IMAGENET64``, then ``<cache>/imagenet64/``; it is never downloaded."""
    path = Path(os.environ.get(ENV) or cache / "imagenet64").expanduser()
    if not is_downsampled_imagenet_path(path):
        raise DataError(
            f"van den Oord et al.'s downsampled ImageNet 64x64 was not found at {path}: md4 cannot download it "
            f"(about 12 GB, behind an image-net.org login at {URL}), so put train_64x64.tar and valid_64x64.tar "
            f"in {cache / 'imagenet64'}, or set {ENV} to their folder (the labelled npz batches are the "
            "imagenet64-chrabaszcz data)."
        )
    return path


def _png_pixels(data: bytes, what: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, size = image.mode, image.size
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{what} is not a readable PNG ({err}); download the archive again.") from err
    if mode != "RGB" or size != (64, 64):
        raise DataError(f"{what} is a {size[0]}x{size[1]} {mode} image, not 64x64 RGB; use the 64x64 archives.")
    return pixels


def _encoded_images(source: Path) -> Iterator[tuple[str, bytes]]:
    """(name, PNG bytes) of every PNG of a tar, in the archive's order, or of a folder, by file name."""
    if source.is_dir():
        for path in sorted(source.glob("*.png")):
            yield str(path), path.read_bytes()
        return
    try:
        with tarfile.open(source, "r|*") as archive:  # a stream: one pass, nothing unpacked
            for member in archive:
                if member.isfile() and member.name.lower().endswith(".png"):
                    yield f"{member.name} in {source}", archive.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{source} is not a readable tar ({err}); download it again.") from err


def read_split(source: Path, limit: int | None = None) -> Iterator[Chunk]:
    """The images of one split as unlabelled chunks [n, 64, 64, 3], the first ``limit`` only when given."""
    batch: list[np.ndarray] = []
    count = 0
    for name, data in _encoded_images(source):
        if limit is not None and count >= limit:
            break
        batch.append(_png_pixels(data, name))
        count += 1
        if len(batch) == CHUNK_ROWS:
            yield np.stack(batch), None
            batch = []
    if count == 0:
        raise DataError(f"{source} holds no PNG images; download it again.")
    if batch:
        yield np.stack(batch), None


def downsampled_imagenet(folder: Path) -> RawImages:
    """The data [64, 64, 3], unlabelled: train is all training images, test the validation set (as the release
    trains and reports), and valid its first ``VALID_SLICE`` images (so valid overlaps test)."""
    train, valid = (split_source(folder, split) for split in SPLITS)
    if train is None or valid is None:
        raise DataError(f"{folder} lacks train_64x64.tar or valid_64x64.tar (or their folders); add both.")
    splits = {"train": read_split(train), "valid": read_split(valid, VALID_SLICE), "test": read_split(valid)}
    meta = {"source": str(folder), "data": "van den Oord et al. 2016", "valid": f"first {VALID_SLICE} of test"}
    return RawImages((64, 64, 3), 256, None, splits, meta)
