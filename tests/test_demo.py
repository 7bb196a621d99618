"""The demo flows in the library (:func:`md4.demo.run_demo`), without the CLI: what they train, evaluate, sample
and write, for text and for images (class-conditional or not)."""

import json
from xml.etree import ElementTree

import pytest
from PIL import Image

from md4.demo import DEMO_PROMPT, PER_CLASS, demo_run_dir, run_demo
from md4.generation.pictures import GAP

SVG = "{http://www.w3.org/2000/svg}"
TEXT_TINY = ["net.dim=32", "net.n_layers=1", "net.n_heads=2", "data.seq_len=32", "train.warmup_steps=1"]
TEXT_TINY += ["train.steps=2", "train.batch_size=256", "train.sample_steps=4", "train.eval_every=2"]
IMAGE_TINY = ["data.name=digits", "model.net=unet", "net.feature_dim=32", "net.n_layers=1", "train.batch_size=16"]
IMAGE_TINY += ["train.steps=2", "train.eval_every=2", "train.sample_every=2", "train.sample_steps=4"]
IMAGE_TINY += ["train.checkpoint_every=2", "train.warmup_steps=1"]


def test_the_demo_runs_in_runs_demo_by_default():
    assert str(demo_run_dir(False)) == "runs/demo" and str(demo_run_dir(True)) == "runs/demo-mnist"


def test_the_text_demo_trains_evaluates_samples_and_writes_its_summary(tmp_path, monkeypatch, shakespeare_cache):
    monkeypatch.setenv("MD4_CACHE_DIR", str(shakespeare_cache))
    started = []
    result = run_demo(False, tmp_path / "demo", TEXT_TINY, progress=False, on_start=lambda *a: started.append(a[1]))
    assert started == [False] and not result.interrupted and result.unit == "char"
    assert result.outputs["sample_prompted"].startswith(DEMO_PROMPT) and result.test_data.endswith("[test split]")
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    test = result.test  # the demo's BPE tokens: bits per character, comparable with a character model's
    assert summary == result.summary and test.characters_per_token > 2
    assert summary["test_bits_per_char"] == pytest.approx(test.bits_per_token / test.characters_per_token)
    assert summary["valid_bits_per_char"] == result.valid.bits_per_char
    assert 0 <= summary["samples_known_word_share"] <= 1 and 0.8 < summary["test_known_word_share"] <= 1
    assert list(summary)[-4:] == ["sample_unconditional", "sample_prompted", "animation", "wall_seconds"]
    assert result.outputs["animation"] == str(tmp_path / "demo" / "demo-reverse.svg")
    svg = ElementTree.parse(tmp_path / "demo" / "demo-reverse.svg").getroot()
    given = [group for group in svg.iter(f"{SVG}g") if group.get("class") == "given"]  # the prompt, marked
    assert "".join(text.text for group in given for text in group.iter(f"{SVG}text")) == DEMO_PROMPT
    again = run_demo(False, tmp_path / "demo", TEXT_TINY, progress=False, on_start=lambda *a: started.append(a[1]))
    assert started == [False, True] and again.outputs == result.outputs and again.test == result.test


@pytest.mark.parametrize("conditional", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_the_image_demo_draws_its_pictures(conditional, tmp_path, monkeypatch, registry_images):
    monkeypatch.setenv("MD4_CACHE_DIR", str(registry_images))
    overrides = [*IMAGE_TINY, f"model.conditional={str(conditional).lower()}"]
    result = run_demo(True, tmp_path / "demo", overrides, progress=False)
    assert result.unit == "dim" and len(result.preview.splitlines()) == 8  # the first 8x8 digit as text
    assert list(result.outputs) == ["class_grid", "unconditional_grid", "strip", "animation", "infill"]
    side = 4 * 8  # a digit at the demo's scale
    for name in ("class_grid", "unconditional_grid"):
        with Image.open(result.outputs[name]) as grid:  # ten rows (a class each) of ten
            assert grid.size == (PER_CLASS * (side + 4 * GAP) - 4 * GAP, 10 * (side + 4 * GAP) - 4 * GAP), name
    with Image.open(result.outputs["class_grid"]) as grid, Image.open(result.outputs["animation"]) as gif:
        assert gif.size == (grid.width // 2, grid.height // 2) and gif.n_frames >= 2  # drawn at half the scale
        gif.seek(gif.n_frames - 1)
        assert gif.convert("RGB").tobytes() == grid.convert("RGB").resize(gif.size, Image.Resampling.NEAREST).tobytes()
    with Image.open(result.outputs["infill"]) as panel:  # the digit, its masked half, six completions
        assert panel.size == (8 * (side + 4 * GAP) - 4 * GAP, side)
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["infill"] == result.outputs["infill"]
    if conditional:  # the class grid judged by a classifier of the training digits
        judged = result.class_accuracy
        assert judged.per_class == PER_CLASS and len(judged.named) == 10 and judged.judge_test_accuracy > 0.5
        assert summary["class_accuracy"] == judged.to_dict()
    else:
        assert result.class_accuracy is None and "class_accuracy" not in summary
