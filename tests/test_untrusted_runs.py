"""A run directory from someone else is safe to open (issue 16, items 1-6).

Each test crafts a run directory the way a hostile or careless sender could, then opens it with ``md4 sample``,
``md4 eval`` or ``md4 train --resume``: md4 must not read or write outside it, prepare or download data it names,
run code, or allocate memory it describes, and must say what is wrong in one sentence naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runs import TINY_TEXT as TINY
from cli_runs import cli
from cli_runs import last_error as one_error

from md4.cli import main

LAST = "checkpoints/step_00000002"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run (2 steps) and its data cache, made once; tests work on copies."""
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"To be, or not to be, that is the question {i}." for i in range(300)))
    os.environ["MD4_CACHE_DIR"] = str(root / "cache")
    try:
        code = main(
            ["train", "--data", str(corpus), "--out", str(root / "run"), "--no-progress", "train.steps=2", *TINY]
        )
    finally:
        del os.environ["MD4_CACHE_DIR"]
    assert code == 0
    return root


@pytest.fixture
def run(trained, tmp_path, monkeypatch):
    """A copy of the trained run, with a copy of its cache as MD4_CACHE_DIR."""
    shutil.copytree(trained / "cache", tmp_path / "cache")
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copytree(trained / "run", tmp_path / "run"))


def edit_json(path: Path, edit) -> None:
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


def replace_in_checkpoint(checkpoint: Path, name: str, data: bytes) -> None:
    """Replace one file of a checkpoint and update its manifest, as a forger would, so the checksums pass."""
    (checkpoint / name).write_bytes(data)
    edit_json(
        checkpoint / "manifest.json",
        lambda manifest: manifest.update({name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}),
    )


def cache_entries(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir.parent / "cache").iterdir()}


# ------------------------------------------------------------------- 1. data named by a run is never prepared
@pytest.mark.parametrize("named", ["secret", "folder", "mnist", "text8"])
def test_eval_and_resume_never_prepare_data_a_run_names(run, tmp_path, named, capsys):
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY-----\nswordfish\n")
    name = {"secret": str(secret), "folder": str(tmp_path), "mnist": "mnist", "text8": "text8"}[named]
    shutil.rmtree(tmp_path / "cache")  # the run's own data is not cached either
    (tmp_path / "cache").mkdir()
    edit_json(run / "data.json", lambda data: data["source"].update(name=name, key="text-id_rsa-0123456789abcdef"))
    edit_json(run / "config.json", lambda config: config["data"].update(name=name))
    for argv in (["eval", run], ["train", "--out", run, "--resume", "--no-progress", "train.steps=4"]):
        code, _, err = cli(capsys, *argv)
        error = one_error(err)
        assert code == 2 and "is not in md4's cache" in error and f"pass --data {name}" in error
        assert cache_entries(run) <= {".locks"}  # nothing read into the cache, nothing downloaded


def test_cached_files_are_no_more_readable_than_their_source(tmp_path, monkeypatch):
    from md4.data import prepare

    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    old_umask = os.umask(0o022)
    try:
        for mode in (0o600, 0o640, 0o644):
            source = tmp_path / f"notes-{mode:o}.txt"
            source.write_text("private notes, " * 200)
            source.chmod(mode)
            root = tmp_path / "cache" / prepare(str(source)).key
            modes = {p.name: p.stat().st_mode & 0o777 for p in root.iterdir()}
            assert modes == dict.fromkeys(["meta.json", "train.bin", "valid.bin", "test.bin"], mode), modes
    finally:
        os.umask(old_umask)


# -------------------------------------------------------------------- 3. sizes a run declares are checked first
@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("data.json", lambda d: d.update(codec={"type": "raw", "vocab_size": 10**9}), "vocabulary of 1000000000"),
        ("data.json", lambda d: d.update(data_shape=[10**9]), "1,000,000,000 tokens per example"),
        ("data.json", lambda d: d.update(num_classes=10**9), "num_classes 1000000000 is not between 1"),
        ("data.json", lambda d: d.update(data_shape=[64]), "data.seq_len=32 but data.json's data_shape is [64]"),
        ("data.json", lambda d: d.update(data_shape="big"), "data_shape 'big' is not a list of positive sizes"),
        ("data.json", lambda d: d["source"].update(key="../../etc"), "not a name, a cache key and a SHA-256"),
        ("config.json", lambda c: c["data"].update(seq_len=10**9), "more than md4's limit of 1,048,576"),
        ("config.json", lambda c: c["net"].update(dim=16384), "do not fit the model"),
        ("config.json", lambda c: c["net"].update(n_layers=10**6), "n_layers=1,000,000 is more than md4's limit"),
        ("config.json", lambda c: c["model"].update(kind="os.system"), "Unknown model.kind 'os.system'"),
    ],
)
def test_declared_sizes_are_refused_before_anything_is_allocated(run, file, edit, message, capsys):
    edit_json(run / file, edit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for argv in (["sample", run, "--steps", 2], ["eval", run], ["train", "--out", run, "--resume", "train.steps=4"]):
        code, _, err = cli(capsys, *argv)
        error = one_error(err)
        assert (
            code == 2 and message in error and ("data.json" in error or "config.json" in error or "weights in" in error)
        )
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"opening the crafted run grew the peak memory by {grown_mb:.0f} MB"


def test_a_run_file_that_is_not_an_object_is_one_sentence(run, capsys):
    (run / "config.json").write_text("[1, 2, 3]")
    code, _, err = cli(capsys, "sample", run)
    assert code == 2 and "config.json holds a list, not a JSON object" in one_error(err)


# ----------------------------------------------------------------------- 4. links out of a run are not followed
@pytest.mark.parametrize("link", ["samples", "checkpoint", "config.json", "tb"])
def test_links_that_leave_the_run_are_refused(run, tmp_path, link, capsys):
    elsewhere = tmp_path / "elsewhere"
    if link == "checkpoint":
        shutil.move(run / LAST, elsewhere)
        (run / LAST).symlink_to(elsewhere)
    elif link == "config.json":
        shutil.move(run / "config.json", elsewhere)
        (run / "config.json").symlink_to(elsewhere)
    else:
        elsewhere.mkdir()
        shutil.rmtree(run / link, ignore_errors=True)
        (run / link).symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in elsewhere.iterdir()) if elsewhere.is_dir() else None
    for argv in (["sample", run, "--steps", 2], ["eval", run], ["train", "--out", run, "--resume", "train.steps=4"]):
        code, _, err = cli(capsys, *argv)
        error = one_error(err)
        assert (
            code == 2 and f"{run / (LAST if link == 'checkpoint' else link)} is a symbolic link to {elsewhere}" in error
        )
        assert "outside the run" in error
    assert (sorted(p.name for p in elsewhere.iterdir()) if elsewhere.is_dir() else None) == before  # untouched


def test_links_that_stay_inside_the_run_are_fine(run, capsys):
    (run / "latest").symlink_to(run / LAST, target_is_directory=True)
    code, out, err = cli(capsys, "sample", run, "--steps", 2, "--num", 1)
    assert code == 0 and "=== sample 0 ===" in out, err


# ------------------------------------------------------------------------------- 5. crafted checkpoint files
class Payload:
    def __reduce__(self):
        return (os.mkdir, ("PWNED",))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("trainer.pt", pickle.dumps({"optimizer": Payload(), "rng": {}}), "trainer.pt is damaged (UnpicklingError"),
        ("trainer.pt", b"not a torch file", "trainer.pt is damaged ("),
        ("state.json", b"[1, 2]", "state.json is damaged (it holds a list, not an object)"),
        ("state.json", b'{"step": "two"}', "state.json is damaged (step is 'two', not a non-negative integer)"),
        ("state.json", b'{"step": 7}', "state.json is damaged (its step 7 is not the step 2 of its folder)"),
        ("state.json", b'{"step": 2, "tokens_seen": -1}', "state.json is damaged (tokens_seen is -1"),
    ],
)
def test_crafted_checkpoint_files_are_one_sentence_naming_the_file(
    run, tmp_path, name, data, message, capsys, monkeypatch
):
    replace_in_checkpoint(run / LAST, name, data)
    monkeypatch.chdir(tmp_path)
    commands = [["train", "--out", run, "--resume", "--no-progress", "train.steps=4"]]
    if name == "state.json":  # sampling reads the step too; it never opens trainer.pt
        commands.append(["sample", run, "--steps", 2])
    for argv in commands:
        code, _, err = cli(capsys, *argv)
        error = one_error(err)
        assert code == 2 and f"Checkpoint file {run / LAST / name}" in error and message in error
    assert not (tmp_path / "PWNED").exists()  # the pickle's code never ran


def test_an_optimizer_state_of_another_model_is_one_sentence(run, capsys):
    import torch

    trainer = run / LAST / "trainer.pt"
    state = torch.load(trainer, weights_only=True)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    buffer = run / "edited.pt"
    torch.save(state, buffer)
    replace_in_checkpoint(run / LAST, "trainer.pt", buffer.read_bytes())
    buffer.unlink()
    code, _, err = cli(capsys, "train", "--out", run, "--resume", "--no-progress", "train.steps=4")
    assert code == 2 and f"{trainer} holds an optimizer state that does not fit this model" in one_error(err)


# -------------------------------------------------------------------------- 6. cached data is checked on use
@pytest.mark.parametrize("split", ["test", "valid", "train"])
def test_a_cached_split_changed_on_disk_is_refused(run, split, capsys):
    source = json.loads((run / "data.json").read_text())["source"]
    path = run.parent / "cache" / source["key"] / f"{split}.bin"
    tokens = np.fromfile(path, dtype=np.uint16)
    np.roll(tokens, 1).tofile(path)  # the same size, the same tokens, another order
    command = ["eval", run, "--split", split] if split != "train" else ["train", "--out", run, "--resume"]
    code, _, err = cli(capsys, *command)
    error = one_error(err)
    assert code == 2 and f"the {split} split of" in error and "was changed on disk after it was prepared" in error
    assert source["key"] in error
