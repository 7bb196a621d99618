"""The run directory as a safe store: no overwrite, one writer, SIGTERM, divergence, portability, clear errors.

Each test names the reliability item it covers; the processes, signals, locks and files are real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from cli_runs import TINY_TEXT as TINY
from cli_runs import cli, last_error

from md4.device import resolve_precision
from md4.runs.checkpoints import CheckpointError, list_checkpoints, read_checkpoint, save_checkpoint


@pytest.fixture
def run_dir(corpus, tmp_path, capsys):
    """A finished tiny run of 4 steps (checkpoints at 2 and 4)."""
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", corpus, "--out", out, "--no-progress", "train.steps=4", *TINY)
    assert code == 0, err
    return out


def md4_process(*argv, cwd: Path, env_cache: Path) -> subprocess.Popen:
    env = {**os.environ, "MD4_CACHE_DIR": str(env_cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "md4.cli", *map(str, argv)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ----------------------------------------------------------------- 1. no overwrite of a folder that is not a run
def test_a_non_empty_folder_that_is_not_a_run_is_refused(corpus, tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "samples").mkdir(parents=True)
    files = {
        folder / "config.json": b'{"my": "settings"}',
        folder / "metrics.jsonl": b'{"my": "numbers"}\n',
        folder / "samples" / "step_00000010.txt": b"my text",
    }
    for path, content in files.items():
        path.write_bytes(content)
    code, _, err = cli(capsys, "train", "--data", corpus, "--out", folder, "train.steps=2", *TINY)
    assert code == 2 and f"{folder} is not empty and is not an md4 run" in last_error(err)
    assert "choose another --out" in last_error(err)
    assert {p: p.read_bytes() for p in files} == files and sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "samples",
    ]


@pytest.mark.parametrize("kind", ["file", "dangling symlink"])
def test_out_that_is_a_file_or_a_dangling_symlink(kind, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("not a folder")
    else:
        out.symlink_to(tmp_path / "missing")
    code, _, err = cli(capsys, "train", "--data", corpus, "--out", out, "train.steps=2", *TINY)
    expected = "is a file, not a folder" if kind == "file" else "is a symlink to a missing target"
    assert code == 2 and expected in last_error(err)


# ------------------------------------------------------------------------------------- 2. one writer at a time
def test_a_second_writer_is_refused_with_the_pid_and_a_dead_holder_does_not_block(run_dir, corpus, tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from md4.runs.directory import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli(capsys, "train", "--out", run_dir, "--resume", "--no-progress", "train.steps=6")
        assert code == 2 and f"is being trained by another process (PID {holder.pid})" in last_error(err)
        assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 4  # untouched
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / ".lock").exists()  # the dead holder's lock file is still there, and does not block
    code, out, err = cli(capsys, "train", "--out", run_dir, "--resume", "--no-progress", "train.steps=6")
    assert code == 0 and "finished at step 6" in out, err


def test_two_trainings_into_one_folder_one_is_refused(corpus, tmp_path):
    """Two real `md4 train` processes started together: one trains, the other gets the lock error."""
    args = ["train", "--data", corpus, "--out", tmp_path / "run", "--no-progress", "train.steps=40", *TINY]
    first = md4_process(*args, cwd=tmp_path, env_cache=tmp_path / "cache")
    second = md4_process(*args, cwd=tmp_path, env_cache=tmp_path / "cache")
    results = [p.communicate(timeout=300) + (p.returncode,) for p in (first, second)]
    codes = sorted(code for _, _, code in results)
    assert codes == [0, 2], results
    refused = next(err for _, err, code in results if code == 2)
    assert "is being trained by another process" in refused or "already holds a run" in refused
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == sorted(steps) and steps[-1] == 40  # one writer's log, not two interleaved


# ------------------------------------------------------------------------------------------ 3. divergence
def test_divergence_stops_keeps_the_last_good_checkpoint_and_never_reports_nan(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(
        capsys, "train", "--data", corpus, "--out", out, "--no-progress", "train.steps=30", "train.lr=1000", *TINY
    )
    message = last_error(err)
    assert code == 3 and "Training diverged at step" in message and "lower train.lr" in message
    diverged_at = int(message.split("Training diverged at step ")[1].split()[0])
    newest = list_checkpoints(out)[-1]
    assert int(newest.name[5:]) < diverged_at
    ckpt = read_checkpoint(out)
    assert all(v.isfinite().all() for v in ckpt.model.values())
    code, text, _ = cli(capsys, "eval", out, "--max-batches", 1, "--steps", 10, "--json")
    result = json.loads(text)
    assert code == 0 and all(
        result[k]["bits_per_token"] == result[k]["bits_per_token"] for k in ("continuous", "discrete")
    )
    code, text, _ = cli(capsys, "sample", out, "--num", 1, "--steps", 4)
    assert code == 0 and text.split("\n", 1)[1].strip()


def test_a_checkpoint_with_non_finite_weights_is_refused_by_sample_and_eval(run_dir, capsys):
    ckpt = read_checkpoint(run_dir)
    broken = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ckpt.ema.items()}
    save_checkpoint(run_dir, 6, ckpt.model, broken, {}, {}, {"tokens_seen": 0})
    for command in (["sample", run_dir, "--num", 1], ["eval", run_dir, "--max-batches", 1]):
        code, _, err = cli(capsys, *command)
        assert code == 2 and "holds non-finite weights" in last_error(err) and "--checkpoint" in last_error(err)
    code, _, err = cli(capsys, "sample", run_dir, "--num", 1, "--steps", 2, "--checkpoint", 4)
    assert code == 0, err


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.grad_clip=-1", "train.grad_clip must be >= 0 (0 turns clipping off)"),
        ("train.min_lr_ratio=1.5", "train.min_lr_ratio must be in [0, 1]"),
        ("train.min_lr_ratio=-0.1", "train.min_lr_ratio must be in [0, 1]"),
        ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
        ("train.weight_decay=-0.1", "train.weight_decay must be >= 0"),
        ("train.lr=nan", "train.lr must be a positive finite number"),
        ("train.lr=inf", "train.lr must be a positive finite number"),
        ("train.lr=0", "train.lr must be a positive finite number"),
        ("train.beta2=1", "train.beta2 must be in [0, 1)"),
        ("train.device=meta", "train.device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_settings_that_can_only_fail_are_refused(override, message, capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--out", tmp_path / "run", override)
    assert code == 2 and message in last_error(err)
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------------- 4. SIGTERM
def test_sigterm_saves_a_checkpoint_and_exits_143_then_resumes(corpus, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", corpus, "--out", out, "--no-progress", "train.steps=100000", *TINY]
    process = md4_process(*args, "train.checkpoint_every=100000", cwd=tmp_path, env_cache=tmp_path / "cache")
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    stopped = int(stdout.split("stopped by SIGTERM at step ")[1].split()[0])
    assert [p.name for p in list_checkpoints(out)] == [f"step_{stopped:08d}"] and stopped >= 3
    resumed = md4_process(
        "train",
        "--out",
        out,
        "--resume",
        "--no-progress",
        f"train.steps={stopped + 2}",
        cwd=tmp_path,
        env_cache=tmp_path / "cache",
    )
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and f"finished at step {stopped + 2}" in stdout, stderr


# ---------------------------------------------------------------------------------- 5. leaked temporaries
def test_temporary_checkpoint_folders_are_cleaned_on_resume(run_dir, capsys):
    leaked = run_dir / "checkpoints" / ".tmp-step_00000009-424242"
    leaked.mkdir()
    (leaked / "model.safetensors").write_bytes(b"half written")
    code, _, err = cli(capsys, "train", "--out", run_dir, "--resume", "--no-progress", "train.steps=5")
    assert code == 0, err
    assert not leaked.exists() and not list((run_dir / "checkpoints").glob(".tmp-*"))


# ------------------------------------------------------------------------------------------ 6. portability
def test_runs_are_portable_across_working_directories(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(corpus.parent)
    code, _, err = cli(capsys, "train", "--data", corpus.name, "--out", "run", "--no-progress", "train.steps=2", *TINY)
    assert code == 0, err
    run_dir = corpus.parent / "run"
    assert json.loads((run_dir / "config.json").read_text())["data"]["name"] == str(corpus.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = cli(capsys, "train", "--out", run_dir, "--resume", "--no-progress", "train.steps=3")
    assert code == 0 and "finished at step 3" in out, err
    code, out, err = cli(
        capsys, "train", "--out", run_dir, "--resume", "--data", corpus, "--no-progress", "train.steps=4"
    )
    assert code == 0, err  # the same file by its absolute path is the same data
    moved = tmp_path / "moved.txt"
    shutil.move(corpus, moved)
    code, out, err = cli(capsys, "eval", run_dir, "--max-batches", 1, "--steps", 10)
    assert code == 0 and "[test split]" in out, err  # found in the cache by its fingerprint
    shutil.rmtree(tmp_path / "cache")
    code, _, err = cli(capsys, "eval", run_dir, "--max-batches", 1)
    error = last_error(err)  # md4 prepares the data a run names only when the user names it too
    assert code == 2 and "is not in md4's cache" in error and f"pass --data {corpus.resolve()}" in error
    code, out, err = cli(capsys, "eval", run_dir, "--max-batches", 1, "--steps", 10, "--data", moved)
    assert code == 0 and str(moved) in out, err


def test_resume_refuses_data_whose_content_changed(run_dir, corpus, capsys):
    text = corpus.read_text()
    corpus.write_text(text[::-1])  # the same characters, another text
    future = time.time() + 5
    os.utime(corpus, (future, future))
    before = (run_dir / "config.json").read_bytes()
    argv = ["train", "--out", run_dir, "--resume", "--data", corpus, "--no-progress", "train.steps=6"]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and "has changed since the run was trained" in last_error(err)
    assert (run_dir / "config.json").read_bytes() == before
    code, out, err = cli(capsys, *argv[:4], *argv[6:])  # without --data: the run's own data, from the cache
    assert code == 0 and "finished at step 6" in out, err


# ---------------------------------------------------------------------------------- 7. damaged metrics log
def test_a_torn_metrics_line_is_dropped_with_a_warning_and_resume_goes_on(run_dir, capsys):
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "split": "tra')  # a power loss mid-write
    code, out, err = cli(capsys, "train", "--out", run_dir, "--resume", "--no-progress", "train.steps=6")
    assert code == 0 and "finished at step 6" in out
    assert "md4: warning: Dropped 1 unreadable line(s)" in err and str(run_dir / "metrics.jsonl") in err
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_failed_resume_rewrites_nothing(run_dir, capsys):
    newest = list_checkpoints(run_dir)[-1]
    (newest / "model.safetensors").write_bytes(b"damaged")
    before = {p: p.read_bytes() for p in (run_dir / "config.json", run_dir / "data.json", run_dir / "metrics.jsonl")}
    code, _, err = cli(capsys, "train", "--out", run_dir, "--resume", "--no-progress", "train.steps=8")
    assert code == 2 and "corrupt" in last_error(err)
    assert {p: p.read_bytes() for p in before} == before


# ---------------------------------------------------------------------------------- 8. rotation while reading
def test_readers_never_call_a_rotated_checkpoint_corrupt(run_dir):
    ckpt = read_checkpoint(run_dir)
    stop = threading.Event()

    def rotate():
        step = 100
        while not stop.is_set():
            save_checkpoint(run_dir, step, ckpt.model, ckpt.ema, {}, {}, {"tokens_seen": 0}, keep=1)
            step += 1

    writer = threading.Thread(target=rotate)
    writer.start()
    try:
        for _ in range(60):
            assert read_checkpoint(run_dir, weights_only=True).state["step"] >= 4
    finally:
        stop.set()
        writer.join()


def test_checkpoint_step_for_sample_eval_and_resume(run_dir, capsys):
    code, out, _ = cli(capsys, "eval", run_dir, "--checkpoint", 2, "--max-batches", 1, "--steps", 5, "--json")
    assert code == 0 and json.loads(out)["step"] == 2
    code, _, err = cli(capsys, "sample", run_dir, "--checkpoint", 3)
    assert code == 2 and "no checkpoint of step 3; its checkpoints are at steps: 2, 4" in last_error(err)
    code, out, err = cli(
        capsys, "train", "--out", run_dir, "--resume", "--checkpoint", 2, "--no-progress", "train.steps=3"
    )
    assert code == 0 and "finished at step 3" in out and "Checkpoints after step 2 were moved to" in err
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000002", "step_00000003"]
    aside = next((run_dir / "checkpoints").glob("superseded-*"))
    assert [p.name for p in aside.iterdir()] == ["step_00000004"]  # moved aside, not deleted
    code, _, err = cli(capsys, "train", "--out", run_dir, "--checkpoint", 2)
    assert code == 2 and "pass it with --resume" in last_error(err)


# --------------------------------------------------------------------- one sentence for files and folders
@pytest.mark.parametrize(
    "folder, message", [("", "check that the path exists, is writable"), ("checkpoints", "use a writable --out")]
)
def test_unwritable_run_folder(run_dir, folder, message, capsys):
    """chmod for a normal user; chattr +i for root, whom permissions do not stop."""
    target = run_dir / folder
    if os.geteuid() != 0:
        lock, unlock = ["chmod", "a-w", str(target)], ["chmod", "u+w", str(target)]
    elif shutil.which("chattr") is not None:
        lock, unlock = ["chattr", "+i", str(target)], ["chattr", "-i", str(target)]
    else:
        pytest.skip("chattr is needed to make a folder read-only for root")
    if subprocess.run(lock, capture_output=True).returncode:
        pytest.skip(f"{lock[0]} cannot make a folder read-only here")
    try:
        code, _, err = cli(capsys, "train", "--out", run_dir, "--resume", "--no-progress", "train.steps=6")
    finally:
        subprocess.run(unlock, check=True)
    assert code == 2 and message in last_error(err)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000002", "step_00000004"]


def test_an_uncreatable_run_folder(corpus, capsys):
    code, _, err = cli(capsys, "train", "--data", corpus, "--out", "/sys/md4-run", "train.steps=2", *TINY)
    assert code == 2 and "Cannot create the run folder /sys/md4-run" in last_error(err)


@pytest.mark.parametrize("manifest", ["[]", '{"model.safetensors": {"sha256": "00"}}', "not json"])
def test_a_malformed_manifest_is_one_sentence(run_dir, manifest, capsys):
    (list_checkpoints(run_dir)[-1] / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError, match="corrupt manifest.json"):
        read_checkpoint(run_dir)
    code, _, err = cli(capsys, "sample", run_dir, "--num", 1)
    assert code == 2 and "corrupt manifest.json" in last_error(err)


@pytest.mark.parametrize(
    "name, edit, message",
    [
        ("config.json", lambda text: text[: len(text) // 2], "config.json is not valid JSON"),
        ("data.json", lambda text: "{", "data.json is not valid JSON"),
        ("data.json", lambda text: text.replace('"chars": "', '"chars": "\\u00e9'), "do not fit the model"),
    ],
)
def test_edited_run_files_are_named(run_dir, name, edit, message, capsys):
    path = run_dir / name
    path.write_text(edit(path.read_text()))
    code, _, err = cli(capsys, "sample", run_dir, "--num", 1)
    assert code == 2 and message in last_error(err)


# ------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "RUN", "--prompt", ""], "--prompt is empty"),
        (["sample", "RUN", "--length", "-3"], "--length must be a positive integer, got -3"),
        (["sample", "RUN", "--length", "0"], "--length must be a positive integer, got 0"),
        (["sample", "RUN", "--device", "nonsense"], "Unknown device 'nonsense'"),
        (["sample", "RUN", "--device", "cuda"], "Device cuda was asked for but CUDA is not available here"),
        (["sample", "RUN", "--infill", "To **", "--hole", "**"], "hole marker must be one character"),
        (["eval", "RUN", "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["eval", "RUN", "--steps", "0"], "--steps must be a positive integer"),
        (["eval", "RUN", "--max-batches", "0"], "--max-batches must be a positive integer"),
        (["eval", "RUN", "--draws", "0"], "--draws must be a positive integer"),
    ],
)
def test_bad_arguments_are_one_sentence(run_dir, argv, message, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = cli(capsys, *[run_dir if a == "RUN" else a for a in argv])
    assert code == 2 and message in last_error(err)


def test_eval_checks_its_arguments_before_any_work(run_dir, capsys, monkeypatch):
    import md4.evaluate

    def no_work(*args, **kwargs):
        raise AssertionError("evaluation ran before the arguments were checked")

    monkeypatch.setattr(md4.evaluate, "estimate_nelbo", no_work)
    code, _, err = cli(capsys, "eval", run_dir, "--steps", 0)
    assert code == 2 and "--steps" in last_error(err)


# ------------------------------------------------------------------------------------------------ warnings
def test_warnings_for_length_infill_repeated_keys_and_finished_runs(run_dir, corpus, tmp_path, capsys):
    code, _, err = cli(capsys, "sample", run_dir, "--num", 1, "--steps", 2, "--length", 40)
    assert code == 0 and "md4: warning: The requested length is 40 tokens long but the model was trained on" in err
    code, _, err = cli(capsys, "sample", run_dir, "--num", 1, "--steps", 2, "--infill", "To be _" * 6)
    assert code == 0 and "md4: warning: The infill text is 42 tokens long" in err
    code, _, err = cli(
        capsys,
        "train",
        "--data",
        corpus,
        "--out",
        tmp_path / "b",
        "--no-progress",
        *TINY,
        "train.steps=2",
        "train.steps=1",
    )
    assert code == 0 and "md4: warning: train.steps is given twice; the last value, 1, wins." in err
    before = (run_dir / "config.json").read_bytes()
    code, out, err = cli(capsys, "train", "--out", run_dir, "--resume", "--no-progress", "train.steps=2")
    assert code == 0 and "is at step 4 already, past train.steps=2, so there is nothing to train" in err
    assert (run_dir / "config.json").read_bytes() == before


def test_banner_names_the_data_and_the_model(corpus, tmp_path, capsys):
    code, _, err = cli(
        capsys, "train", "--data", corpus, "--out", tmp_path / "run", "--no-progress", "train.steps=1", *TINY
    )
    assert code == 0
    precision = resolve_precision(torch.device("cpu"), "auto")  # the default preset's train.precision
    banner = f"md4: training a md4 model (transformer, 32,480 parameters) on {corpus.resolve()} in {precision} "
    assert banner + "(train.precision=auto) into" in err
    assert "shakespeare-char" not in err


# --------------------------------------------------------------------------------------------- progress bar
def test_progress_bar_is_throttled_when_stderr_is_not_a_terminal(corpus, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--data", corpus, "--out", tmp_path / "run", "train.steps=40", *TINY)
    assert code == 0
    assert err.count("\r") + err.count("\n") < 10, err  # a handful of lines, not one per step
