"""Pixel images as tokens: each sub-pixel of an [H, W, C] image is one token, a level in ``0..L-1``.

``ImageCodec`` turns tokens into 8-bit pixels, PNG files and ASCII shades and back. Prepared images live in
``<cache>/<key>/`` as memory-mapped ``{split}_images.bin`` (uint8 [N, H, W, C]) and ``{split}_labels.bin``
(int64 [N], absent for unlabelled data) plus ``meta.json``, written last; ``ImageDataset`` batches them in place.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from md4 import notices
from md4.data.batches import Batch
from md4.data.cache import DataError, check_digest, content_digest
from md4.data.codec import CODECS, Codec, as_ids, codec_from_dict
from md4.files import atomic_output, write_atomic

FORMAT_VERSION = 2  # 2: meta.json holds each split's SHA-256
SHADES = " .:-=+*#%@"  # dark to bright
SEPARATOR_WIDTH = 2  # pixels between the images of a sample grid
SEPARATOR_VALUE = 128  # mid grey: visible on dark and light images
LABEL_DTYPE = np.dtype("<i8")
Chunk = tuple[np.ndarray, np.ndarray | None]
"""Images uint8 [n, H, W, C] at a source's native levels and their labels int64 [n] (None when unlabelled)."""


def check_levels(levels: int | None, native: int, what: str) -> int:
    """``levels``, or ``native`` when None; an error unless it is an integer in ``2..native``."""
    if levels is None:
        return native
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 2 <= levels <= native:
        raise DataError(f"levels must be an integer from 2 to {native} for {what}, got {levels!r}; pick one in range.")
    return int(levels)


def quantize(values: np.ndarray, native: int, levels: int) -> np.ndarray:
    """Map values in ``0..native-1`` to ``levels`` levels, ``floor(v * levels / native)``, as a uint8 array."""
    if levels == native:
        return np.ascontiguousarray(values, dtype=np.uint8)
    return np.ascontiguousarray(values.astype(np.uint16) * levels // native, dtype=np.uint8)  # 255*256 < 2**16


def convert_image(image: Image.Image, channels: int, path: Path) -> Image.Image:
    """``image`` as 8-bit grayscale (``channels`` 1) or RGB (3); transparent or high-bit-depth images are refused."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "RGBA", "RGBa"):
        if image.getchannel("A").getextrema()[0] < 255:
            raise DataError(f"{path} has transparent pixels; flatten it onto a background and save it without alpha.")
        image = image.convert("RGB" if image.mode.startswith("RGB") else "L")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        raise DataError(f"{path} holds {image.mode} pixels, not 8-bit ones; save it as 8-bit grayscale or RGB.")
    return image.convert("L" if channels == 1 else "RGB")


def image_pixels(image: Image.Image) -> np.ndarray:
    """An 8-bit grayscale or RGB image as uint8 [H, W, C]."""
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


class ImageCodec(Codec):
    """Images of ``height`` x ``width`` x ``channels`` sub-pixels, each a token in ``0..levels-1`` (V = levels).

    ``from_pixels`` quantises 8-bit pixels as the prepared data are quantised, ``floor(p * levels / 256)``;
    ``to_pixels`` maps level k to the pixel of its bin nearest to ``k * 255 / (levels - 1)``, so 0 is black,
    ``levels - 1`` is white and ``from_pixels(to_pixels(k)) == k`` for every level.
    """

    def __init__(self, height: int, width: int, channels: int, levels: int = 256) -> None:
        if min(height, width) < 1 or channels not in (1, 3):
            raise DataError(
                f"an image codec needs a positive height and width and 1 or 3 channels, "
                f"got {height}x{width}x{channels}; fix the image shape."
            )
        self.height, self.width, self.channels = int(height), int(width), int(channels)
        self.levels = self.vocab_size = check_levels(levels, 256, "an image codec")
        k = np.arange(self.levels)
        nearest = (k * 510 + self.levels - 1) // (2 * (self.levels - 1))  # round(k * 255 / (L - 1)), halves up
        low = (256 * k + self.levels - 1) // self.levels  # the bin of level k is [low, high]
        high = (256 * (k + 1) + self.levels - 1) // self.levels - 1
        self._pixel_of_level = np.clip(nearest, low, high).astype(np.uint8)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``."""
        return self.height, self.width, self.channels

    def to_pixels(self, tokens: Any) -> np.ndarray:
        """Tokens [..., H, W, C] as 8-bit pixels (uint8, same shape)."""
        return self._pixel_of_level[as_ids(tokens, self.levels)]

    def from_pixels(self, pixels: Any) -> np.ndarray:
        """8-bit pixels (any shape, values 0..255) as int64 tokens."""
        arr = np.asarray(pixels)
        if not np.issubdtype(arr.dtype, np.integer) or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise DataError("pixels must be integers from 0 to 255; pass 8-bit image data.")
        return arr.astype(np.int64) * self.levels // 256

    def decode(self, ids: Any) -> str:
        """The image as ASCII shades: one line per pixel row, two characters per pixel, channels averaged."""
        arr = as_ids(ids, self.levels)
        if arr.shape != self.data_shape:
            raise DataError(
                f"an image of this codec has shape {self.data_shape} but got {arr.shape}; pass one [H, W, C] image."
            )
        shade = np.rint(arr.mean(axis=-1) * (len(SHADES) - 1) / (self.levels - 1)).astype(np.int64)
        return "\n".join("".join(SHADES[s] * 2 for s in row) for row in shade.tolist())

    def grid(self, tokens: Any) -> np.ndarray:
        """Images [N, H, W, C] as one uint8 picture: rows of ceil(sqrt(N)) images, 2-pixel grey separators."""
        arr = as_ids(tokens, self.levels)
        if arr.ndim != 4 or arr.shape[1:] != self.data_shape or len(arr) == 0:
            raise DataError(
                f"a sample grid takes images [N, {', '.join(map(str, self.data_shape))}] with N >= 1 "
                f"but got shape {arr.shape}; pass a non-empty batch of this codec's images."
            )
        n, (h, w, c), gap = len(arr), self.data_shape, SEPARATOR_WIDTH
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), SEPARATOR_VALUE, dtype=np.uint8)
        for i, pixels in enumerate(self.to_pixels(arr)):
            top, left = (i // cols) * (h + gap), (i % cols) * (w + gap)
            out[top : top + h, left : left + w] = pixels
        return out

    def write_png(self, tokens: Any, path: Path) -> Path:
        """Write one image [H, W, C] exactly, or a grid of images [N, H, W, C], to the PNG file ``path`` atomically."""
        arr = as_ids(tokens, self.levels)
        pixels = self.to_pixels(arr) if arr.shape == self.data_shape else self.grid(arr)
        image = Image.fromarray(pixels[..., 0] if self.channels == 1 else pixels)
        path = Path(path)
        with atomic_output(path) as tmp:
            image.save(tmp, format="PNG")
        return path

    def write_samples(self, tokens: Any, stem: Path) -> Path:
        """Write the images ``tokens`` [N, H, W, C] as a grid to ``stem.png`` atomically and return its path."""
        return self.write_png(tokens, stem.with_name(f"{stem.name}.png"))

    def read_png(self, path: Path) -> np.ndarray:
        """The tokens int64 [H, W, C] of an image file of exactly this codec's size as shown, its EXIF orientation
        applied (nothing is resized)."""
        path = Path(path)
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{path} is not a readable image file ({err}); pass a PNG image.") from err
        if (image.height, image.width) != (self.height, self.width):
            raise DataError(
                f"{path} is {image.height}x{image.width} pixels but this model's images are "
                f"{self.height}x{self.width}; resize or crop it to that size."
            )
        return self.from_pixels(image_pixels(convert_image(image, self.channels, path)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "image",
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "levels": self.levels,
        }


class RawImages(NamedTuple):
    """What an image source yields before it is quantised and saved: each split is an iterable of chunks."""

    shape: tuple[int, int, int]
    native_levels: int  # pixel values lie in 0..native_levels-1
    num_classes: int | None  # None: unlabelled
    splits: Mapping[str, Iterable[Chunk]]
    meta: dict[str, Any]


@dataclass
class PreparedImages:
    """Prepared images: memory-mapped uint8 [N, H, W, C] tokens and int64 [N] labels per split.

    ``key`` names its cache folder; ``fingerprint`` is the SHA-256 hex digest of its content (``save_images``).
    """

    name: str
    key: str
    fingerprint: str
    codec: ImageCodec
    splits: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] | None
    num_classes: int | None
    meta: dict[str, Any]
    digests: dict[str, str]  # split -> SHA-256 hex digest of its images file (and "split:labels" of its labels)

    def verify(self, split: str) -> None:
        """Refuse ``split`` if its files no longer hold what was prepared (:func:`md4.data.store.check_digest`)."""
        what = f"the {split} split of {self.name}"
        check_digest([self.splits[split]], self.digests[split], what, self.key)
        if self.labels is not None:
            check_digest([self.labels[split]], self.digests[f"{split}:labels"], what, self.key)


def _check_chunk(chunk: Chunk, raw: RawImages, name: str, split: str) -> None:
    images, labels = chunk
    if images.ndim != 4 or images.shape[1:] != raw.shape or (images.size and images.max() >= raw.native_levels):
        raise DataError(
            f"the {split} images of {name} have shape {images.shape[1:]} or values beyond {raw.native_levels - 1} "
            f"where {raw.shape} and 0..{raw.native_levels - 1} were expected; check the source files."
        )
    if (labels is None) != (raw.num_classes is None):
        raise DataError(f"some images of {name} have labels and some have none; label all of them or none.")
    if labels is not None and (
        labels.shape != images.shape[:1] or (labels.size and not 0 <= labels.min() <= labels.max() < raw.num_classes)
    ):
        raise DataError(
            f"the {split} labels of {name} are not one class in 0..{raw.num_classes - 1} per image; "
            "check the source files."
        )


def _write_split(
    root: Path, split: str, chunks: Iterable[Chunk], raw: RawImages, levels: int, name: str, mode_limit: int | None
) -> tuple[int, bytes, dict[str, str]]:
    """Write one split's quantised images (and labels); return its image count, what it adds to the fingerprint,
    and the SHA-256 of its files."""
    images_digest, labels_digest, count = hashlib.sha256(), hashlib.sha256(), 0
    with ExitStack() as stack:
        images_path = stack.enter_context(atomic_output(root / f"{split}_images.bin", mode_limit))
        images_file = stack.enter_context(open(images_path, "wb"))
        labels_file = None
        if raw.num_classes is not None:
            labels_path = stack.enter_context(atomic_output(root / f"{split}_labels.bin", mode_limit))
            labels_file = stack.enter_context(open(labels_path, "wb"))
        for chunk in chunks:
            _check_chunk(chunk, raw, name, split)
            images = quantize(chunk[0], raw.native_levels, levels)
            images_file.write(memoryview(images).cast("B"))  # a full disk raises ENOSPC (tofile hides the errno)
            images_digest.update(images)
            if labels_file is not None:
                labels = np.ascontiguousarray(chunk[1], dtype=LABEL_DTYPE)
                labels_file.write(memoryview(labels).cast("B"))
                labels_digest.update(labels)
            count += len(images)
        if count == 0:
            raise DataError(f"the {split} split of {name} has no images; use a larger image set.")
    if labels_file is None:
        (root / f"{split}_labels.bin").unlink(missing_ok=True)  # left by an older, labelled cache
    labels_part = b"" if labels_file is None else labels_digest.digest()
    digests = {split: images_digest.hexdigest()}
    if labels_file is not None:
        digests[f"{split}:labels"] = labels_digest.hexdigest()
    return count, split.encode() + b"\0" + images_digest.digest() + count.to_bytes(8, "little") + labels_part, digests


def save_images(root: Path, name: str, raw: RawImages, levels: int, mode_limit: int | None = None) -> PreparedImages:
    """Quantise ``raw`` to ``levels`` and write it under ``root`` (each file atomically, ``meta.json`` last, none
    with more permission bits than ``mode_limit``, when given).

    The fingerprint is SHA-256 over the codec's dict (``content_digest``), the number of classes, and per split
    its name, a NUL byte, the SHA-256 of its image bytes, its image count (8 bytes little-endian) and, when
    labelled, the SHA-256 of its int64 label bytes.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").unlink(missing_ok=True)  # an old cache is invalid from here on
    codec = ImageCodec(*raw.shape, levels=levels)
    digest = content_digest(codec.to_dict())
    digest.update(f"classes={raw.num_classes}\n".encode())
    counts, digests = {}, {}
    for split, chunks in raw.splits.items():
        counts[split], part, split_digests = _write_split(root, split, chunks, raw, levels, name, mode_limit)
        digest.update(part)
        digests.update(split_digests)
    info = {
        "format": FORMAT_VERSION,
        "kind": "images",
        "name": name,
        "codec": codec.to_dict(),
        "num_classes": raw.num_classes,
        "fingerprint": digest.hexdigest(),
        "split_sha256": digests,
        "meta": {**raw.meta, "native_levels": raw.native_levels, "examples": counts},
    }
    write_atomic(root / "meta.json", json.dumps(info, indent=2), mode_limit)
    prepared = load_images(root)
    assert prepared is not None
    return prepared


def _memmap(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only memory map of ``path``; a ValueError unless the file holds exactly that array."""
    if not path.is_file() or path.stat().st_size != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path} is missing or of the wrong size")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def load_images(root: Path, *, warn: bool = False) -> PreparedImages | None:
    """Memory-map the prepared images in ``root``, or None when absent, incomplete, of another kind or unreadable.

    With ``warn``, an unreadable ``meta.json`` is reported by a warning.
    """
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
        if info.get("format") != FORMAT_VERSION or info.get("kind") != "images":
            return None  # text, or an older cache: prepared again without comment
        codec = codec_from_dict(info["codec"])
        num_classes = None if info["num_classes"] is None else int(info["num_classes"])
        counts = {str(split): int(n) for split, n in info["meta"]["examples"].items()}
        name, fingerprint = str(info["name"]), str(info["fingerprint"])
        parts = [*counts, *(f"{split}:labels" for split in counts if num_classes is not None)]
        digests = {part: str(info["split_sha256"][part]) for part in parts}
        if not isinstance(codec, ImageCodec):
            raise TypeError("not an image codec")
    except (ValueError, KeyError, TypeError, AttributeError):  # JSON and codec errors are ValueErrors
        if warn:
            message = f"the prepared-images cache {meta_path} is unreadable; preparing the images again"
            notices.warn(message)
        return None
    try:
        shape = codec.data_shape
        splits = {s: _memmap(root / f"{s}_images.bin", np.dtype(np.uint8), (n, *shape)) for s, n in counts.items()}
        labels = None
        if num_classes is not None:
            labels = {s: _memmap(root / f"{s}_labels.bin", LABEL_DTYPE, (n,)) for s, n in counts.items()}
    except ValueError:
        return None  # incomplete: prepared again
    return PreparedImages(name, root.name, fingerprint, codec, splits, labels, num_classes, info["meta"], digests)


class ImageDataset:
    """Prepared images as a ``Dataset``: rows drawn uniformly with replacement for training, in order for
    evaluation; batches are int64 tensors [B, H, W, C] read from the memory maps (nothing else is copied)."""

    def __init__(self, prepared: PreparedImages) -> None:
        self.prepared = prepared
        self.codec: ImageCodec = prepared.codec
        self.vocab_size = self.codec.vocab_size
        self.data_shape: tuple[int, ...] = self.codec.data_shape
        self.num_classes = prepared.num_classes

    def _split(self, split: str) -> np.ndarray:
        if split not in self.prepared.splits:
            raise DataError(f"unknown split {split!r}; {self.prepared.name} has {', '.join(self.prepared.splits)}.")
        return self.prepared.splits[split]

    def _batch(self, split: str, rows: np.ndarray | slice) -> Batch:
        images = torch.from_numpy(np.array(self.prepared.splits[split][rows], dtype=np.int64))
        if self.prepared.labels is None:
            return images, None
        return images, torch.from_numpy(np.array(self.prepared.labels[split][rows], dtype=np.int64))

    def train_batch(self, batch_size: int, generator: torch.Generator, part: slice | None = None) -> Batch:
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}.")
        rows = torch.randint(0, len(self._split("train")), (batch_size,), generator=generator)
        return self._batch("train", (rows if part is None else rows[part]).numpy())

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}.")
        n = len(self._split(split))
        if max_batches is not None:
            n = min(n, max_batches * batch_size)
        return (self._batch(split, slice(first, min(first + batch_size, n))) for first in range(0, n, batch_size))


CODECS["image"] = lambda d: ImageCodec(d["height"], d["width"], d["channels"], d["levels"])
