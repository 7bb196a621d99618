"""Images end to end: training a class-conditional model on real digits, bits per dimension, sample grids, the
reverse-process strip, classifier-free guidance, image infilling, and their errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_runs import cli
from PIL import Image

from md4 import sample
from md4.cli import main
from md4.data import ImageCodec
from md4.generation.images import complete, image_mask
from md4.runs.directory import load_run

TINY = [
    "model.net=unet",
    "model.conditional=true",
    "net.feature_dim=32",
    "net.n_layers=1",
    "train.batch_size=16",
    "train.steps=4",
    "train.log_every=1",
    "train.eval_every=4",
    "train.eval_batches=1",
    "train.sample_every=4",
    "train.sample_steps=4",
    "train.checkpoint_every=4",
    "train.warmup_steps=1",
]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, registry_images):
    """A tiny class-conditional UNet trained for 4 steps on scikit-learn's digits (8x8, 17 levels, 10 classes)."""
    root = tmp_path_factory.mktemp("digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(registry_images))
        assert main(["train", "--data", "digits", "--out", str(root / "run"), "--no-progress", *TINY]) == 0
        yield root / "run"


def test_training_writes_image_samples_and_evaluates_bits_per_dimension(digits_run, capsys):
    assert (digits_run / "samples" / "step_00000004.png").stat().st_size > 100
    code, out, _ = cli(capsys, "eval", digits_run, "--max-batches", 2, "--steps", 10, "--json")
    result = json.loads(out)
    assert code == 0 and result["unit"] == "dim"
    continuous = result["continuous"]
    assert continuous["tokens_per_sequence"] == 64  # 8 x 8 x 1 dimensions
    assert continuous["bits_per_token"] == pytest.approx(continuous["nelbo"] / (64 * math.log(2)))
    code, out, _ = cli(capsys, "eval", digits_run, "--max-batches", 1)
    assert code == 0 and "bits/dim" in out


def test_sample_grid_per_class_rows_strip_and_guidance(digits_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, text, err = cli(
        capsys,
        "sample",
        digits_run,
        "--per-class",
        2,
        "--steps",
        6,
        "--strip",
        "--out",
        out,
        "--guidance",
        2,
        "--scale",
        1,
    )
    assert code == 0 and "20 samples" in err and len(text.strip().splitlines()) == 8  # an ASCII preview, 8 rows
    with Image.open(out) as grid:
        assert grid.size == (2 * 8 + 2, 10 * 8 + 9 * 2)  # 2 columns, one row per class, 2-pixel gaps
    with Image.open(tmp_path / "grid-strip.png") as strip:
        assert strip.width == 8 * 8 + 7 * 2  # 8 snapshots
        first = np.asarray(strip)[:8, :8]
        assert (first == (230, 40, 150)).all()  # everything masked at t = 1


def test_guidance_zero_is_the_unconditional_model(digits_run):
    run = load_run(digits_run)
    labels = torch.tensor([3, 7, 1])
    nolabel = torch.full((3,), run.model.num_classes)
    a = sample(run.model, 3, labels=labels, guidance=0.0, steps=6, seed=5)
    b = sample(run.model, 3, labels=nolabel, steps=6, seed=5)
    assert torch.equal(a.tokens, b.tokens)
    c = sample(run.model, 3, labels=labels, guidance=3.0, steps=6, seed=5)
    assert c.tokens.shape == (3, 8, 8, 1) and int(c.tokens.max()) < 17 and int(c.tokens.min()) >= 0


def test_infilling_keeps_the_given_pixels(digits_run, tmp_path, capsys):
    run = load_run(digits_run)
    codec: ImageCodec = run.codec
    given = torch.randint(0, 17, (8, 8, 1))
    for spec in ("bottom-half", "top-half", "left-half", "right-half", "center", "random:0.7"):
        hole = image_mask(spec, codec.data_shape, seed=1)
        out = complete(run.model, given, hole, 3, labels=torch.tensor([1, 2, 3]), steps=5, seed=0)
        assert torch.equal(out.tokens[:, ~hole], given[~hole].expand(3, -1)) and out.tokens.max() < 17
    assert int(image_mask("bottom-half", (8, 8, 1)).sum()) == 32
    picture = tmp_path / "digit.png"
    codec.write_png(given, picture)
    code, _, err = cli(
        capsys,
        "sample",
        digits_run,
        "--infill-image",
        picture,
        "--mask",
        "center",
        "--num",
        2,
        "--steps",
        4,
        "--out",
        tmp_path / "infill.png",
        "--scale",
        1,
    )
    assert code == 0 and (tmp_path / "infill.png").exists()
    with Image.open(tmp_path / "infill.png") as panel:
        assert panel.size == (4 * 8 + 3 * 2, 8)  # original, masked, 2 completions


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--infill-image", "WRONG", "--mask", "center"], "is 5x7 pixels but this model's images are 8x8"),
        (["--infill-image", "BROKEN"], "is not a readable image file"),
        (["--infill-image", "GOOD", "--mask", "diagonal"], "Unknown mask 'diagonal'"),
        (["--infill-image", "GOOD", "--mask", "random:2"], "needs a fraction in (0, 1]"),
        (["--prompt", "hello"], "--prompt is for text runs"),
        (["--per-class", "0"], "--per-class must be a positive integer"),
    ],
)
def test_bad_image_input_is_one_sentence(digits_run, tmp_path, argv, message, capsys):
    codec = load_run(digits_run).codec
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(tmp_path / "wrong.png")
    codec.write_png(torch.zeros(8, 8, 1, dtype=torch.long), tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes((tmp_path / "good.png").read_bytes()[:40])
    names = {"WRONG": tmp_path / "wrong.png", "BROKEN": tmp_path / "broken.png", "GOOD": tmp_path / "good.png"}
    code, _, err = cli(capsys, "sample", digits_run, "--steps", 2, *[names.get(a, a) for a in argv])
    assert code == 2 and message in err.strip().splitlines()[-1], err


def test_labels_out_of_range_and_guidance_without_classes(digits_run):
    run = load_run(digits_run)
    with pytest.raises(ValueError, match=r"labels must be one class id per sample in 0..9 \(10 means no label\)"):
        sample(run.model, 2, labels=torch.tensor([3, 11]), steps=2)
    with pytest.raises(ValueError, match="Guidance needs a class-conditional model and labels"):
        sample(run.model, 2, guidance=2.0, steps=2)


def test_text_flags_are_refused_for_images_and_image_flags_for_text(digits_run, corpus, tmp_path, capsys):
    text_run = tmp_path / "text"
    assert (
        cli(
            capsys,
            "train",
            "--data",
            corpus,
            "--out",
            text_run,
            "--no-progress",
            "net.dim=32",
            "net.n_layers=1",
            "net.n_heads=2",
            "data.seq_len=32",
            "train.steps=1",
            "train.batch_size=2",
        )[0]
        == 0
    )
    code, _, err = cli(capsys, "sample", text_run, "--per-class", 2)
    assert code == 2 and "--per-class is for image runs" in err
    code, _, err = cli(capsys, "sample", text_run, "--strip")
    assert code == 2 and "--strip is for image runs" in err


def test_image_demo_end_to_end_writes_its_pictures(tmp_path, registry_images, monkeypatch, capsys):
    """``md4 demo --images`` (here on the digits, 4 steps): bits/dim on valid and test, and four PNGs."""
    monkeypatch.setenv("MD4_CACHE_DIR", str(registry_images))
    run_dir = tmp_path / "demo"
    code, out, err = cli(capsys, "demo", "--images", "--out", run_dir, "--no-progress", "data.name=digits", *TINY)
    assert code == 0, err
    summary = json.loads((run_dir / "demo.json").read_text())
    assert 0 < summary["test_bits_per_dim"] < 8 and summary["test_sequences"] == 180
    for name, size in (("class_grid", 80), ("unconditional_grid", 80), ("strip", 8), ("infill", 8)):
        with Image.open(summary[name]) as picture:
            assert picture.width >= size and picture.height >= 8, name
    assert "test bits/dim <=" in out
