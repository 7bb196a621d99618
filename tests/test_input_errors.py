"""A user's own image folder end to end, and bad input on the newer surfaces (issue 16, items 9, 15, 16, 18-23):
each is one ``md4: error:`` sentence with exit code 2, checked before any work, and nothing is left behind."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_runs import TINY_TEXT as TEXT_TINY
from cli_runs import cli, one_error
from mlm_folders import save_masked_lm
from PIL import Image

from md4 import distributed
from md4.cli import build_parser, main, show_warning
from md4.config import Config, apply_overrides, build_config, parse_override, preset_description, preset_names
from md4.data import DataError, prepare

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TINY = ["train.batch_size=8", "train.eval_batches=1", "train.log_every=1", "net.n_layers=1", "net.feature_dim=8"]
IMAGE_TINY += ["net.groups=4"]


def photos(folder: Path, per_class: int, size=(16, 16), classes=("cats", "dogs")) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 128, (*size, 3), dtype=np.uint8) + 127 * label
            paths.append(folder / name / f"{i:03d}.png")
            Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """``md4 train --data FOLDER`` with no preset: 40 images of 16x16 in two classes, 2 steps."""
    root = tmp_path_factory.mktemp("folder-run")
    photos(root / "pets", 20)
    os.environ["MD4_CACHE_DIR"] = str(root / "cache")
    try:
        argv = ["train", "--data", root / "pets", "--out", root / "run", "--no-progress", "train.steps=2", *IMAGE_TINY]
        code = main([str(a) for a in argv])
    finally:
        del os.environ["MD4_CACHE_DIR"]
    assert code == 0
    return root


@pytest.fixture
def cache(image_run, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(image_run / "cache"))
    return image_run / "cache"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-run")
    (root / "corpus.txt").write_text("\n".join(f"To be, or not to be, that is the question {i}." for i in range(300)))
    os.environ["MD4_CACHE_DIR"] = str(root / "cache")
    try:
        argv = ["train", "--data", root / "corpus.txt", "--out", root / "run", "--no-progress", "train.steps=2"]
        assert main([str(a) for a in [*argv, *TEXT_TINY]]) == 0
    finally:
        del os.environ["MD4_CACHE_DIR"]
    return root


# ----------------------------------------------------------------------- 9: an image folder without a preset
def test_an_image_folder_trains_a_unet_sized_to_it_and_everything_runs(image_run, cache, tmp_path, capsys):
    run = image_run / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["net"] == "unet" and config["model"]["conditional"] is True  # the folder has classes
    assert config["data"]["name"] == f"images:{image_run / 'pets'}:16x16"  # the images' own size
    data = json.loads((run / "data.json").read_text())
    assert data["data_shape"] == [16, 16, 3] and data["num_classes"] == 2
    code, out, err = cli(capsys, "eval", run, "--max-batches", 1, "--steps", 10, "--no-progress")
    assert code == 0 and "bits/dim" in out, err
    code, _, err = cli(capsys, "sample", run, "--per-class", 2, "--steps", 4, "--out", tmp_path / "grid.png")
    assert code == 0 and "4 samples" in err and (tmp_path / "grid.png").is_file(), err
    given = min((image_run / "pets" / "dogs").iterdir())
    code, _, err = cli(
        capsys, "sample", run, "--infill-image", given, "--num", 2, "--steps", 4, "--out", tmp_path / "i.png"
    )
    assert code == 0 and "2 samples" in err, err


def test_the_banner_says_which_network_and_why(image_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["train", "--data", image_run / "pets", "--out", tmp_path / "run", "--no-progress", "train.steps=1"]
    code, _, err = cli(capsys, *argv, *IMAGE_TINY, "model.conditional=false")
    banner = next(line for line in err.splitlines() if line.startswith("md4: training"))
    assert code == 0 and "(unet," in banner and "(cats 20, dogs 20)" in banner, err
    assert "the data are images, so md4 uses the mnist preset's small UNet; --preset chooses another" in banner
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["conditional"] is False


# ---------------------------------------------------------------------------------- 15: --nproc, bad input
@pytest.fixture
def no_torchrun(monkeypatch):
    monkeypatch.setattr(distributed, "launch", lambda *args: pytest.fail("torchrun started despite bad input"))


def hold_lock(run_dir: Path) -> subprocess.Popen:
    run_dir.mkdir()
    code = "import sys, time; from md4.runs.directory import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
    code += "print('ok', flush=True); "
    holder = subprocess.Popen([sys.executable, "-c", code + "time.sleep(60)", str(run_dir)], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"ok"
    return holder


@pytest.mark.parametrize("case", ["batch", "typo", "out is a file", "truncated png", "locked"])
def test_nproc_checks_bad_input_before_starting_any_process(case, text_run, tmp_path, capsys, monkeypatch, no_torchrun):
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    data, out, extra = text_run / "corpus.txt", tmp_path / "run", []
    message = {
        "batch": "train.batch_size=6 is the global batch, so it must divide evenly into 2 process(es)",
        "typo": "Unknown config key net.dimm",
        "out is a file": "is a file, not a folder",
        "truncated png": "is not a readable image",
        "locked": "is being trained by another process",
    }[case]
    if case == "batch":
        extra = ["train.batch_size=6", "train.grad_accum=2"]
    elif case == "typo":
        extra = ["net.dimm=3"]
    elif case == "out is a file":
        out.write_text("my notes")
    elif case == "truncated png":
        files = photos(tmp_path / "pets", 10)
        files[3].write_bytes(files[3].read_bytes()[:-100])
        data, extra = tmp_path / "pets", ["net.feature_dim=8", "net.groups=4", "train.batch_size=8"]
    holder = hold_lock(Path(out)) if case == "locked" else None
    try:
        argv = ["train", "--nproc", 2, "--data", data, "--out", out, "--no-progress", "train.steps=2"]
        code, _, err = cli(capsys, *argv, *(TEXT_TINY if case != "truncated png" else []), *extra)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    assert code == 2 and message in one_error(err)
    assert not any((tmp_path / "cache").glob("images-*"))  # a failed preparation leaves no cache entry


def test_a_worker_error_is_one_sentence_with_exit_code_2(text_run, tmp_path):
    """A damaged trainer.pt is only read by the workers: rank 0 stops with md4's error, rank 1 is cut short;
    the launcher prints the sentence once and exits 2, with no torchrun traceback; a key given twice is warned of
    once, not once per rank."""
    import shutil

    run = Path(shutil.copytree(text_run / "run", tmp_path / "run"))
    checkpoint = run / "checkpoints" / "step_00000002"
    (checkpoint / "trainer.pt").write_bytes(b"damaged")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["trainer.pt"] = {"sha256": __import__("hashlib").sha256(b"damaged").hexdigest(), "bytes": 7}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "MD4_CACHE_DIR": str(text_run / "cache")}
    command = [sys.executable, "-m", "md4", "train", "--nproc", "2", "--out", str(run), "--resume", "--no-progress"]
    done = subprocess.run(
        [*command, "train.steps=3", "train.steps=4"], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"Checkpoint file {checkpoint / 'trainer.pt'} is damaged" in one_error(done.stderr)
    assert done.stderr.count("train.steps is given twice") == 1, done.stderr[-3000:]


# -------------------------------------------------------------------------------------------- 16: guidance
@pytest.mark.parametrize("value", ["nan", "inf", "1e308", "-1"])
def test_guidance_must_be_a_sensible_number(value, image_run, cache, capsys):
    code, _, err = cli(capsys, "sample", image_run / "run", "--guidance", value, "--steps", 2)
    assert code == 2 and "--guidance must be a number from 0 (ignore the labels) to 1000" in one_error(err)


def test_guidance_zero_is_no_guidance_on_an_unconditional_model(text_run, capsys, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(text_run / "cache"))
    code, out, err = cli(capsys, "sample", text_run / "run", "--guidance", 0, "--steps", 2, "--num", 1)
    assert code == 0 and "=== sample 0 ===" in out, err
    code, _, err = cli(capsys, "sample", text_run / "run", "--guidance", 2, "--steps", 2)
    error = one_error(err)
    assert code == 2 and "--guidance 2 weighs class labels" in error and "model.conditional=true" in error


# ---------------------------------------------------------------------------------- 18, 21: output paths
def test_bench_json_path_is_checked_before_measuring(tmp_path, capsys, monkeypatch):
    import md4.bench

    monkeypatch.setattr(md4.bench, "run_suite", lambda *args: pytest.fail("measured before checking --json"))
    (tmp_path / "file").write_text("x")
    for path, message in ((tmp_path, "is a folder; name a file in it"), (tmp_path / "file" / "x.json", "a file")):
        code, _, err = cli(capsys, "bench", "--json", path)
        assert code == 2 and f"--json {path}" in one_error(err) and message in one_error(err)


def test_out_naming_a_folder_is_one_sentence(image_run, cache, tmp_path, capsys):
    for command in (["sample", image_run / "run", "--steps", 2], ["inspect", image_run / "run"]):
        code, _, err = cli(capsys, *command, "--out", tmp_path)
        error = one_error(err)
        assert code == 2 and f"--out {tmp_path} is a folder; name a file in it" in error and ".tmp" not in error


# ---------------------------------------------------------------- 19, 20: interrupted or failed preparations
def test_a_killed_preparation_leaves_nothing_that_lasts(tmp_path, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    big = tmp_path / "big.txt"
    big.write_text("All the world's a stage, and all the men and women merely players. " * 400_000)  # 27 MB
    child = subprocess.Popen([sys.executable, "-c", f"from md4.data import prepare; prepare({str(big)!r})"])
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache").glob("*/.*.tmp")):
        assert child.poll() is None and time.monotonic() < deadline, "the preparation ended before it was killed"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = list((tmp_path / "cache").glob("*/.*.tmp"))
    assert left  # what SIGKILL leaves: a temporary file and no meta.json
    data = prepare(str(big))
    assert not list((tmp_path / "cache").glob("*/.*.tmp")) and len(data.splits["train"]) > 0
    stale = tmp_path / "cache" / data.key / ".valid.bin.0123.tmp"  # beside a complete entry
    stale.write_bytes(b"x" * 100)
    prepare(str(big))
    assert not stale.exists()


def test_a_failed_preparation_removes_its_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    files = photos(tmp_path / "pets", 15)
    files[-1].write_bytes(files[-1].read_bytes()[:-100])  # the last image is read last, after others were written
    with pytest.raises(DataError, match="is not readable|not a readable image"):
        prepare(str(tmp_path / "pets"))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".locks"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_sentence_naming_the_folder(tmp_path, monkeypatch):
    import uuid

    import md4.files

    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    book = tmp_path / "book.txt"
    book.write_text("Now is the winter of our discontent. " * 2000)
    from md4.data.recipes import resolve

    root = tmp_path / "cache" / resolve(str(book), tmp_path / "cache").key
    root.mkdir(parents=True)
    fixed = uuid.UUID(int=0)
    monkeypatch.setattr(md4.files.uuid, "uuid4", lambda: fixed)
    (root / f".train.bin.{fixed.hex}.tmp").symlink_to("/dev/full")  # writing train.bin meets a full device
    with pytest.raises(DataError) as caught:
        prepare(str(book))
    assert str(caught.value).startswith(f"No space left on the device while preparing {book} in {root}; free some")
    assert not root.exists()


# ----------------------------------------------------------------------------- 22: examples that must run
def md4_examples() -> list[list[str]]:
    """Every ``md4 ...`` command in the README's code blocks and in the CLI's help texts (as argv lists)."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if " -m md4 " in line:
                line = "md4 " + line.split(" -m md4 ", 1)[1]
            if line.startswith("md4 "):
                commands.append(shlex.split(line)[1:])
            for part in line.split("&&"):
                if part.strip().startswith("md4 "):
                    commands.append(shlex.split(part.strip())[1:])
    return commands


def test_every_example_in_the_readme_parses_and_its_config_is_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    examples = md4_examples()
    assert len(examples) > 30
    parser = build_parser()
    bert = str(save_masked_lm(tmp_path / "bert", max_position_embeddings=512))  # the README's BERT_DIR: a real (tiny) masked LM's folder
    for argv in examples:
        args = parser.parse_args([arg.replace("BERT_DIR", bert) for arg in argv])
        if args.command == "train" and not args.resume:
            build_config(args.preset, args.overrides, data=args.data)  # every key and value is valid
        if args.command == "demo":
            for override in args.overrides:
                parse_override(Config(), override)
    assert not (tmp_path / "cache").exists()  # checking them prepared nothing


def test_every_override_named_in_a_help_text_is_valid():
    parser = build_parser()
    helps = [
        action.help or ""
        for sub in parser._subparsers._group_actions
        for p in sub.choices.values()
        for action in p._actions
    ]
    named = {m for text in helps for m in re.findall(r"\b[a-z_]+\.[a-z_]+=[^\s,)]+", text)}
    assert "net.n_layers=6" in named and "train.lr=3e-4" in named
    apply_overrides(Config(), sorted(named - {"train.steps=300"}) + ["train.steps=300"])


# ------------------------------------------------------------------------------------ 23: small things
def test_options_that_would_be_ignored_are_refused(image_run, cache, text_run, tmp_path, capsys):
    run, given = image_run / "run", min((image_run / "pets" / "cats").iterdir())
    code, _, err = cli(capsys, "sample", run, "--per-class", 2, "--infill-image", given, "--steps", 2)
    assert code == 2 and "--per-class draws a grid of every class and --infill-image completes" in one_error(err)
    code, _, err = cli(capsys, "sample", run, "--mask", "top-half", "--steps", 2)
    assert code == 2 and "--mask chooses the region of --infill-image" in one_error(err)
    code, _, err = cli(capsys, "sample", text_run / "run", "--mask", "top-half", "--steps", 2)
    assert code == 2 and "--mask is for image runs" in one_error(err)


def test_checkpoint_weights_have_the_permissions_of_the_rest_of_the_run(text_run):
    checkpoint = text_run / "run" / "checkpoints" / "step_00000002"
    modes = {p.name: p.stat().st_mode & 0o777 for p in checkpoint.iterdir()}
    assert (
        len(set(modes.values())) == 1
        and modes["ema.safetensors"] == (text_run / "run" / "config.json").stat().st_mode & 0o777
    )


def test_every_preset_has_a_whole_sentence_for_md4_presets():
    for name in preset_names():
        description = preset_description(name)
        assert description.endswith(".") and len(description) < 200, (name, description)
    assert preset_description("mnist").endswith("with a small UNet, ~25 min on 2 cores (md4 train's images preset).")


def test_eval_of_a_character_run_is_in_bits_per_character_with_progress(text_run, capsys, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(text_run / "cache"))
    code, out, err = cli(capsys, "eval", text_run / "run", "--steps", 10)
    assert code == 0 and "bits/char" in out and "bits/token" not in out, err
    assert "continuous bound" in err and "batch" in err  # the progress bar, on stderr


def test_warnings_of_other_libraries_are_not_md4_warnings(capsys):
    from md4.notices import MD4Warning

    show_warning(MD4Warning("a key is given twice"), MD4Warning, __file__, 1)
    show_warning(FutureWarning("torch.foo is deprecated"), FutureWarning, "/site-packages/torch/x.py", 7)
    err = capsys.readouterr().err
    assert "md4: warning: a key is given twice" in err
    assert "/site-packages/torch/x.py:7: FutureWarning: torch.foo is deprecated" in err
    assert "md4: warning: torch.foo" not in err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["presets"]) == 0  # no deprecation warning of our own making shows up
