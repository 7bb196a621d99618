"""The reverse process as a picture (``md4 sample --animate``): the unmasking order from snapshots, image GIFs of
the grid as its masks resolve, text as an animated SVG or GIF with the given text marked, and their errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from cli_runs import TINY_TEXT, cli, last_error
from PIL import Image

from md4.cli import main
from md4.data import CharTokenizer
from md4.generation import animation
from md4.generation.images import sample_grid
from md4.generation.pictures import MASK_COLOUR, rgb, tile
from md4.runs.directory import load_run

SVG = "{http://www.w3.org/2000/svg}"
DIGITS = [
    "model.net=unet",
    "model.conditional=true",
    "net.feature_dim=32",
    "net.n_layers=1",
    "train.batch_size=8",
    "train.steps=2",
    "train.log_every=1",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.sample_every=100",
    "train.checkpoint_every=2",
    "train.warmup_steps=1",
]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny character model trained for 2 steps on a small real text file."""
    root = tmp_path_factory.mktemp("animate-text")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"To be, or not to be, that is the question {i}." for i in range(300)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(root / "cache"))
        argv = ["train", "--data", str(corpus), "--out", str(root / "run"), "--no-progress", *TINY_TEXT]
        assert main([*argv, "train.steps=2"]) == 0
        yield root / "run"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny class-conditional UNet trained for 2 steps on scikit-learn's digits (8x8, 17 levels)."""
    from md4.data import prepare

    root = tmp_path_factory.mktemp("animate-digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(root / "cache"))
        prepare("digits", cache_dir=root / "cache")
        assert main(["train", "--data", "digits", "--out", str(root / "run"), "--no-progress", *DIGITS]) == 0
        yield root / "run"


def hand_made_trajectory() -> list[torch.Tensor]:
    """Positions 0 and 4 given; then 2, 1 and 3 unmask in turn (one state recorded twice). Mask id 9."""
    states = [[1, 9, 9, 9, 2], [1, 9, 3, 9, 2], [1, 9, 3, 9, 2], [1, 4, 3, 9, 2], [1, 4, 3, 5, 2]]
    return [torch.tensor([state]) for state in states]


def test_unmask_order_of_a_hand_made_trajectory_is_exact():
    trajectory = hand_made_trajectory()
    assert len(animation.distinct_states(trajectory)) == 4
    assert animation.unmask_steps(trajectory, 9).tolist() == [[0, 2, 1, 3, 0]]
    codec = CharTokenizer("abcdefghi")
    text = animation.text_animation(codec, trajectory, 9)
    assert text.steps == [0, 2, 1, 3, 0] and text.given == [True, False, False, False, True]
    assert [[char for _, _, char in cells] for cells in text.cells] == [["b"], ["e"], ["d"], ["f"], ["c"]]
    assert [cell[:2] for cells in text.cells for cell in cells] == [(0, i) for i in range(5)]  # each once, in order
    frames = [np.asarray(frame.convert("RGB")) for frame in animation.gif_text_frames(text)]
    assert len(frames) == 4 and (frames[0] == animation.GIVEN).all(-1).any()  # given text drawn in frame 0
    assert (frames[0] == animation.PLACEHOLDER).all(-1).sum() > (frames[-1] == animation.PLACEHOLDER).all(-1).sum() == 0
    first_shown = frames[1][:, animation.MARGIN + 2 * animation.CELL[0] :][:, : animation.CELL[0]]  # the cell of "d"
    assert (first_shown == animation.RAMP[0]).all(-1).any() and not (frames[0] == animation.RAMP[0]).all(-1).any()
    with pytest.raises(ValueError, match="no mask left"):
        animation.unmask_steps(trajectory[:-1], 9)


def test_lay_out_wraps_at_the_width_and_keeps_newlines():
    cells, rows = animation.lay_out([["ab", "c\n", "defg"], ["h"]], width=3)
    assert cells == [
        [(0, 0, "a"), (0, 1, "b")],
        [(0, 2, "c")],  # its newline falls at the width: the wrap is the line break
        [(1, 0, "d"), (1, 1, "e"), (1, 2, "f"), (2, 0, "g")],
        [(4, 0, "h")],  # the next sample after a blank row
    ]
    assert rows == 5
    assert animation.ramp(0.0) == animation.RAMP[0] and animation.ramp(1.0) == animation.RAMP[-1]
    too_long = animation.TextAnimation([], [], [], rows=animation.MAX_GIF_LINES + 1)
    with pytest.raises(ValueError, match="write an .svg"):
        animation.gif_text_frames(too_long)


def test_image_gif_has_a_frame_per_snapshot_from_all_masks_to_the_samples(digits_run, tmp_path):
    run = load_run(digits_run)
    drawn = sample_grid(run.model, run.codec, 4, steps=6, seed=0, snapshots=animation.IMAGE_SNAPSHOTS)
    assert len(drawn.output.trajectory) == animation.IMAGE_SNAPSHOTS
    frames = animation.image_frames(run.codec, drawn.output.trajectory, per_row=2)
    path = animation.save_gif(frames, tmp_path / "reverse.gif", scale=2)
    states = animation.distinct_states(drawn.output.trajectory)
    with Image.open(path) as gif:
        assert gif.n_frames == len(states) >= 3 and gif.size == (2 * (2 * 8 + 2), 2 * (2 * 8 + 2))
        first = np.asarray(gif.convert("RGB"))
        gif.seek(gif.n_frames - 1)
        last, held = np.asarray(gif.convert("RGB")), gif.info["duration"]
    final = tile([[rgb(run.codec, t) for t in drawn.output.tokens[i : i + 2]] for i in (0, 2)])
    assert np.array_equal(last, final.repeat(2, 0).repeat(2, 1)) and held == animation.HOLD_MS
    assert (first[:16, :16] == MASK_COLOUR).all() and (first[-16:, -16:] == MASK_COLOUR).all()


def test_sample_animate_writes_an_image_gif_beside_the_grid(digits_run, tmp_path, capsys):
    out, gif = tmp_path / "grid.png", tmp_path / "reverse.gif"
    code, _, err = cli(
        capsys, "sample", digits_run, "--num", 4, "--steps", 5, "--out", out, "--animate", gif, "--strip"
    )
    assert code == 0 and f"md4: wrote {gif}" in err
    with Image.open(out) as png, Image.open(gif) as frames:
        assert frames.size == png.size and frames.n_frames >= 2
        frames.seek(frames.n_frames - 1)
        assert np.array_equal(np.asarray(frames.convert("RGB")), np.asarray(png.convert("RGB")))
    with Image.open(tmp_path / "grid-strip.png") as strip:  # the strip still shows 8 snapshots
        assert strip.width == 4 * (8 * 8 + 7 * 2)


def svg_tokens(path) -> list[tuple[int, bool, str, float | None]]:
    """Each token group of an animated SVG: its step, whether given, its characters and its key time."""
    tokens = []
    for group in ET.parse(path).getroot().iter(f"{SVG}g"):
        if "data-step" not in group.attrib:
            continue
        chars = "".join(text.text for text in group.iter(f"{SVG}text"))
        keys = [a.attrib["keyTimes"] for a in group.iter(f"{SVG}animate")]
        shown = float(keys[0].split(";")[1]) if keys else None
        tokens.append((int(group.attrib["data-step"]), group.attrib.get("class") == "given", chars, shown))
    return tokens


def test_exact_sampler_svg_shows_each_token_once_in_its_own_step(text_run, tmp_path, capsys):
    svg = tmp_path / "reverse.svg"
    code, out, err = cli(
        capsys, "sample", text_run, "--num", 1, "--sampler", "exact", "--prompt", "To be", "--animate", svg
    )
    assert code == 0 and f"md4: wrote {svg}" in err
    text = out.split("=== sample 0 ===\n", 1)[1].rstrip("\n")
    tokens = svg_tokens(svg)
    assert len(tokens) == 32 and "".join(chars for *_, chars, _ in tokens) == text.replace("\n", "")
    assert [(step, chars) for step, given, chars, _ in tokens if given] == [(0, c) for c in "To be"]
    steps = sorted(step for step, given, *_ in tokens if not given)
    assert steps == list(range(1, 32 - 4))  # the exact sampler unmasks one token per state: a permutation
    times = [shown for _, _, _, shown in sorted(tokens) if shown is not None]
    assert times == sorted(times) and 0 < times[0] and times[-1] < 1


def test_infilling_gif_and_svg_mark_the_template_text(text_run, tmp_path, capsys):
    template = "To be, or ___ to be"
    svg, gif = tmp_path / "infill.svg", tmp_path / "infill.gif"
    for path in (svg, gif):
        code, _, _ = cli(capsys, "sample", text_run, "--num", 2, "--steps", 8, "--infill", template, "--animate", path)
        assert code == 0
    tokens = svg_tokens(svg)
    given = "".join(chars for _, is_given, chars, _ in tokens if is_given)
    assert given == 2 * template.replace("_", "") and all(step == 0 for step, g, *_ in tokens if g)
    assert min(step for step, g, *_ in tokens if not g) >= 1
    with Image.open(gif) as frames:
        assert 2 <= frames.n_frames <= 1 + min(8, animation.MAX_GIF_FRAMES)
        frames.seek(frames.n_frames - 1)
        assert frames.info["duration"] == animation.HOLD_MS


def test_animate_refuses_what_it_cannot_write(text_run, digits_run, tmp_path, capsys):
    code, _, err = cli(capsys, "sample", text_run, "--animate", tmp_path / "x.txt")
    assert code != 0 and ".gif or .svg" in last_error(err)
    code, _, err = cli(capsys, "sample", digits_run, "--animate", tmp_path / "x.svg")
    assert code != 0 and "ending in .gif" in last_error(err)
    (tmp_path / "folder.gif").mkdir()
    code, _, err = cli(capsys, "sample", text_run, "--animate", tmp_path / "folder.gif")
    assert code != 0 and "is a folder" in last_error(err)
