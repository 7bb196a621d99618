"""A user's own folder of PNG/JPEG images: named plainly or as images:FOLDER, at the images' own size, its spec
known before preparing, EXIF orientation, linked class folders, md4's size limit, and unreadable files."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from md4.config import build_config, data_spec_guess
from md4.data import (
    DataError,
    ImageCodec,
    PreparedImages,
    canonical_name,
    is_image_recipe,
    prepare,
    recipe_image_shape,
    recipe_num_classes,
    recipe_vocab_size,
)
from md4.data import image_folders as folders
from md4.limits import MAX_EXAMPLE_TOKENS
from md4.models import DataSpec

RNG = np.random.default_rng(0)


pytestmark = pytest.mark.usefixtures("isolated_cache")  # its own md4 cache for every test (conftest.py)


def images(folder: Path, count: int, size: tuple[int, int] = (8, 6), mode: str = "RGB", start: int = 0) -> list[Path]:
    """``count`` random images of ``size`` (H, W) in ``folder``, PNG and JPEG in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        pixels = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
        paths.append(folder / f"img{i:03d}.{'png' if i % 2 else 'jpg'}")
        Image.fromarray(pixels).convert(mode).save(paths[-1])
    return paths


# ----------------------------------------------------------------------------- 7: a plain folder path of images


def test_a_plain_folder_of_images_is_an_image_set(tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    images(folder, 20, (8, 6))
    name = f"images:{folder}:8x6"
    assert canonical_name(str(folder)) == name and canonical_name(f"images:{folder}") == name
    assert is_image_recipe(str(folder)) and recipe_vocab_size(str(folder)) == 256
    data = prepare(str(folder))
    assert isinstance(data, PreparedImages) and data.name == name and data.codec.data_shape == (8, 6, 3)
    assert prepare(name).key == data.key
    odd = tmp_path / "shots:4x4"  # a name that looks like a size
    images(odd, 20, (8, 6))
    assert canonical_name(str(odd)) == f"images:{odd}:8x6" and prepare(str(odd)).codec.data_shape == (8, 6, 3)


def test_a_folder_with_text_stays_text_and_one_with_neither_names_both(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    images(mixed, 20)
    (mixed / "notes.txt").write_text("some words to learn from " * 20)
    assert canonical_name(str(mixed)) == str(mixed) and not is_image_recipe(str(mixed))
    assert canonical_name(f"images:{mixed}") == f"images:{mixed}:8x6"  # its images, by name
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "readme.md").write_text("nothing to learn")
    with pytest.raises(DataError, match=r"no \*\.txt files nor PNG/JPEG images; .* images:"):
        prepare(str(tmp_path / "neither"))


# ----------------------------------------------------------------------------- 8: the images' own size


def test_images_of_one_size_keep_it_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "own"
    files = images(folder, 20, (16, 12), mode="L")
    assert canonical_name(f"images:{folder}") == f"images:{folder}:16x12"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is resized
        data = prepare(f"images:{folder}")
    assert data.codec.data_shape == (16, 12, 1) and data.meta["resized"] == 0
    assert (data.splits["test"][0, ..., 0] == np.asarray(Image.open(files[19]))).all()  # not resampled


def test_another_size_or_mixed_sizes_are_resized_with_one_warning(tmp_path: Path) -> None:
    same = tmp_path / "same"
    images(same, 20, (16, 16))
    with pytest.warns(UserWarning) as caught:
        data = prepare(f"images:{same}:8x8")
    assert len(caught) == 1 and data.meta["resized"] == 20 and data.codec.data_shape == (8, 8, 3)
    assert str(caught[0].message) == (
        f"resized and centre-cropped 20 of the 20 images of {same} (all 16x16) to 8x8; "
        f"name another size as images:{same}:HxW."
    )
    mixed = tmp_path / "mixed"
    images(mixed, 10, (8, 6))
    images(mixed, 5, (6, 6), start=10)
    images(mixed, 5, (10, 4), start=15)
    assert canonical_name(f"images:{mixed}") == f"images:{mixed}:32x32"  # sizes differ: the default
    with pytest.warns(UserWarning, match=r"^resized and centre-cropped 20 of the 20 images .* \(3 different sizes\)"):
        data = prepare(f"images:{mixed}")
    assert data.codec.data_shape == (32, 32, 3) and data.meta["resized"] == 20
    with pytest.warns(UserWarning, match=r"^resized and centre-cropped 15 of the 20 images .* to 6x6;"):
        assert prepare(f"images:{mixed}:6x6").meta["resized"] == 15  # the five 6x6 ones are kept as they are


# ----------------------------------------------------------------------------- 10/11: the spec before preparing


def test_shape_and_classes_are_known_before_preparing(tmp_path: Path) -> None:
    labelled = tmp_path / "labelled"
    for i, name in enumerate(("ant", "bee", "cow")):
        images(labelled / name, 10, (8, 6), mode="L" if name != "cow" else "RGB", start=10 * i)
    assert recipe_image_shape(f"images:{labelled}") == (8, 6, 3) and recipe_num_classes(str(labelled)) == 3
    config = build_config("mnist", ["model.conditional=true", "net.n_layers=1"], data=f"images:{labelled}")
    assert config.data.name == f"images:{labelled}:8x6"
    assert data_spec_guess(config) == DataSpec(256, (8, 6, 3), 3)
    data = prepare(config.data.name)
    assert data.codec.data_shape == recipe_image_shape(config.data.name) and data.num_classes == 3
    gray = tmp_path / "gray"
    images(gray, 20, (8, 6), mode="L")
    assert recipe_image_shape(str(gray)) == (8, 6, 1) and recipe_num_classes(str(gray)) is None
    assert recipe_image_shape(f"images:{gray}:4x4", levels=16) == (4, 4, 1)


def test_the_headers_are_read_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "scan"
    files = images(folder, 20)
    read = []
    header = folders._header
    monkeypatch.setattr(folders, "_header", lambda path: read.append(path) or header(path))
    name = canonical_name(str(folder))
    recipe_image_shape(name), recipe_num_classes(name), is_image_recipe(str(folder)), prepare(str(folder))
    assert sorted(read) == sorted(files)
    os.utime(files[0], ns=(0, 0))  # a changed file: read again
    recipe_image_shape(name)
    assert len(read) == 40


# ----------------------------------------------------------------------------- 12: EXIF orientation


def sideways_jpeg(path: Path) -> Path:
    """A 16-wide, 8-high grey JPEG, white on top, tagged Orientation 6: shown 8 wide and 16 high, white on the right."""
    pixels = np.zeros((8, 16), dtype=np.uint8)
    pixels[:4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    files = [sideways_jpeg(tmp_path / "turned" / f"img{i:02d}.jpg") for i in range(20)]
    shown = prepare(f"images:{tmp_path / 'turned'}:16x8").splits["train"][0, ..., 0]
    assert shown.shape == (16, 8) and shown[:, :4].max() < 40 and shown[:, 4:].min() > 215
    assert (shown == np.asarray(ImageOps.exif_transpose(Image.open(files[0])))).all()
    assert canonical_name(f"images:{tmp_path / 'turned'}") == f"images:{tmp_path / 'turned'}:16x8"  # its own size
    tokens = ImageCodec(16, 8, 1).read_png(files[0])  # a user's infill image
    assert (tokens[..., 0] == shown).all()


# ----------------------------------------------------------------------------- 13: linked class folders


def test_linked_class_folders_are_followed_without_cycles(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    images(photos / "cat", 12)
    images(tmp_path / "elsewhere" / "dogs", 10, start=12)
    (photos / "dog").symlink_to(tmp_path / "elsewhere" / "dogs", target_is_directory=True)
    (photos / "cat" / "loop").symlink_to(photos, target_is_directory=True)  # a cycle: not followed
    (photos / "cat" / "linked.png").symlink_to(photos / "cat" / "img001.png")  # a linked file counts too
    files, classes = folders.folder_images(photos)
    assert classes == ["cat", "dog"] and len(files) == 23
    assert recipe_num_classes(str(photos)) == 2
    data = prepare(str(photos))
    assert data.meta["class_counts"] == {"cat": 13, "dog": 10} and data.num_classes == 2
    assert data.labels is not None and np.bincount(np.concatenate(list(data.labels.values()))).tolist() == [13, 10]


# ----------------------------------------------------------------------------- 14: md4's size limit


def test_sizes_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "small"
    images(folder, 20)
    with pytest.raises(DataError, match=rf"more than md4's limit of {MAX_EXAMPLE_TOKENS:,}; .*images:.*:256x256"):
        prepare(f"images:{folder}:20000x20000")
    big, huge = tmp_path / "big", tmp_path / "huge"
    big.mkdir(), huge.mkdir()
    Image.new("L", (1024, 1024)).save(big / "a.png")  # 1024 * 1024 * 1 sub-pixels: exactly the limit
    Image.new("RGB", (1024, 1024)).save(huge / "a.png")
    assert canonical_name(str(big)) == f"images:{big}:1024x1024"
    with pytest.raises(DataError, match=r"1024x1024x3 = 3,145,728 sub-pixels"):
        canonical_name(str(huge))  # its own size is too large
    assert canonical_name(f"images:{huge}:256x256") == f"images:{huge}:256x256"


# ----------------------------------------------------------------------------- unreadable files


def test_an_unreadable_image_leaves_no_file_open(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    files = images(folder, 20)
    files[1].write_bytes(files[1].read_bytes()[:-60])  # a PNG whose pixel data are cut short
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match=r"img001.png is not a readable image"):
            prepare(f"images:{folder}")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
