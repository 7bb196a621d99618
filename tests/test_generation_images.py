"""Image samples in the library, without the CLI: class labels, grids with a row per class, the reverse-process
strip, image completion, and writing the pictures."""

import numpy as np
import pytest
import torch
from PIL import Image

from md4 import MD4, Transformer, TransformerConfig, sample
from md4.data import ImageCodec
from md4.generation.images import DEFAULT_MASK, STRIP_SNAPSHOTS, fill_image, image_mask, sample_grid
from md4.generation.pictures import GAP, save_pictures
from md4.sampling.labels import class_labels

CODEC = ImageCodec(4, 4, 1, levels=4)
SIDE = 4  # pixels of an image a side


def image_model(num_classes=None):
    """A tiny untrained transformer over 4x4x1 images of 4 levels, class-conditional with ``num_classes``."""
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=CODEC.vocab_size, dim=16, n_layers=1, n_heads=2, num_classes=num_classes, data_shape=(4, 4, 1)
    )
    return MD4(Transformer(config), CODEC.vocab_size, data_shape=(4, 4, 1), num_classes=num_classes).eval()


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) of a picture of rows x columns images with the gaps between them."""
    return columns * (SIDE + GAP) - GAP, rows * (SIDE + GAP) - GAP


def test_class_labels_cycle_or_give_a_row_of_each_class():
    assert class_labels(3, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert class_labels(3, 7, per_class=2).tolist() == [0, 0, 1, 1, 2, 2]
    assert class_labels(None, 7) is None
    assert class_labels(3, 2, device="cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="--per-class needs a class-conditional model"):
        class_labels(None, 7, per_class=2)


def test_a_grid_is_the_sampler_s_draw_laid_out_in_rows():
    model = image_model()
    drawn = sample_grid(model, CODEC, 5, steps=4, seed=0)
    assert torch.equal(drawn.output.tokens, sample(model, 5, steps=4, seed=0).tokens)
    assert drawn.picture.shape == (*grid_size(2, 3)[::-1], 3) and drawn.strip is None  # ceil(sqrt(5)) a row
    assert drawn.picture.dtype == np.uint8 and drawn.output.nfe <= 4


def test_a_grid_per_class_has_a_row_per_class_and_a_strip_of_the_reverse_process():
    model = image_model(num_classes=3)
    drawn = sample_grid(model, CODEC, per_class=2, strip=True, steps=4, seed=1, guidance=2.0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.equal(drawn.output.tokens, sample(model, 6, labels=labels, steps=4, seed=1, guidance=2.0).tokens)
    assert drawn.picture.shape[:2] == grid_size(3, 2)[::-1]
    frames = len(drawn.output.trajectory)
    assert 2 <= frames <= STRIP_SNAPSHOTS and drawn.strip.shape[:2] == grid_size(6, frames)[::-1]
    every_class = sample_grid(model, CODEC, per_class=2, strip=True, strip_every=2, steps=4, seed=1)
    assert every_class.strip.shape[0] == grid_size(3, 1)[1]  # one row per class


def test_bf16_precision_draws_images_too():
    drawn = sample_grid(image_model(), CODEC, 2, steps=3, seed=0, precision="bf16")
    assert drawn.output.tokens.shape == (2, 4, 4, 1) and int(drawn.output.tokens.max()) < CODEC.vocab_size


def test_filling_an_image_keeps_what_is_given_and_shows_a_panel():
    model = image_model(num_classes=3)
    given = torch.randint(0, CODEC.vocab_size, (4, 4, 1), generator=torch.Generator().manual_seed(0))
    filled = fill_image(model, CODEC, given, 3, steps=4, seed=2)
    hole = image_mask(DEFAULT_MASK, CODEC.data_shape)
    tokens = filled.output.tokens
    assert tokens.shape == (3, 4, 4, 1) and bool((tokens[:, ~hole] == given[~hole]).all())
    assert filled.picture.shape[:2] == grid_size(1, 2 + 3)[::-1] and filled.strip is None
    corner = fill_image(model, CODEC, given, 2, mask="random:0.5", labels=torch.tensor([2, 2]), steps=4, seed=5)
    kept = ~image_mask("random:0.5", CODEC.data_shape, seed=5)
    assert bool((corner.output.tokens[:, kept] == given[kept]).all())


def test_pictures_are_saved_with_the_strip_next_to_them(tmp_path):
    drawn = sample_grid(image_model(), CODEC, 4, strip=True, steps=4, seed=0)
    written = save_pictures(tmp_path / "out" / "grid.png", drawn.picture, drawn.strip, scale=2)
    assert [path.name for path in written] == ["grid.png", "grid-strip.png"]
    with Image.open(written[0]) as picture:
        assert picture.size == tuple(2 * side for side in grid_size(2, 2))
    assert save_pictures(tmp_path / "alone.png", drawn.picture) == [tmp_path / "alone.png"]
