"""A run directory: its config, its data description and its model, rebuilt from disk alone.

Layout: ``config.json``, ``data.json`` (the codec, one example's shape, the number of classes, and where the
data came from: its canonical name, cache key and content fingerprint), ``checkpoints/step_*/`` (see
:mod:`md4.checkpoint`), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``samples/``, ``curves.png``, and
``.lock``, which the one training process writing the run holds for its whole life.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from md4.checkpoint import CheckpointError, read_checkpoint
from md4.config import Config, ConfigError
from md4.data import Codec, codec_from_dict
from md4.device import resolve_device
from md4.files import write_atomic
from md4.models import DataSpec, build_model

RUN_FILES = ("config.json", "data.json")
LOCK_FILE = ".lock"


class RunError(ValueError):
    """A run directory that cannot be used as asked: not a run, locked by another process, not a folder."""


class RunLock:
    """An exclusive lock on a run directory (``fcntl.flock`` on ``.lock``), held while a process trains into it.

    The kernel drops the lock when its process dies, however it dies, so a stale lock file never blocks a
    resume; the file records the holder's PID for the error message of a second writer.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.file = None

    def acquire(self) -> RunLock:
        try:
            self.file = open(self.path, "a+")  # noqa: SIM115 (held open for the run's life)
        except OSError as err:
            raise RunError(f"Cannot create {self.path} ({err.strerror}); use a writable --out.") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            self.file = None
            raise RunError(
                f"{self.path.parent} is being trained by another process (PID {holder}); wait for it to finish, "
                "stop it, or choose another --out."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the file releases the lock
            self.file = None


def is_run(path: Path) -> bool:
    """Whether ``path`` holds an md4 run (its run files)."""
    return all((Path(path) / name).is_file() for name in RUN_FILES)


def check_out_path(run_dir: Path) -> None:
    """Refuse an ``--out`` that is a file or a dangling symlink."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        raise RunError(f"--out {run_dir} is a symlink to a missing target; fix the link or choose another --out.")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} is a file, not a folder; choose another --out.")


def check_run_folder(run_dir: Path) -> None:
    """Refuse a non-empty folder that md4 did not make: it has neither the run files nor a run's lock file."""
    entries = {p.name for p in Path(run_dir).iterdir()}
    if entries and LOCK_FILE not in entries and not is_run(run_dir):
        raise RunError(
            f"{run_dir} is not empty and is not an md4 run, so md4 will not write into it; choose another --out."
        )


RUN_FORMAT = 2  # version of the run directory layout; runs of md4 0.1 (format 1, tokenizer.json) are refused


@dataclass
class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    config: Config
    codec: Codec
    spec: DataSpec
    source: dict[str, Any] | None
    model: nn.Module
    step: int
    checkpoint: Path


def data_source(dataset) -> dict[str, Any] | None:
    """Where a dataset's examples came from: its canonical name, cache key and content fingerprint (prepared
    corpora), or None for in-memory data."""
    prepared = getattr(dataset, "prepared", None)
    if prepared is None:
        return None
    return {"name": prepared.name, "key": prepared.key, "fingerprint": prepared.fingerprint}


def write_run_files(run_dir: Path, config: Config, dataset, spec: DataSpec) -> None:
    """Write ``config.json`` and ``data.json`` (each atomically)."""
    data = {
        "format": RUN_FORMAT,
        "codec": dataset.codec.to_dict(),
        "data_shape": list(spec.data_shape),
        "num_classes": spec.num_classes,
        "source": data_source(dataset),
    }
    write_atomic(run_dir / "config.json", config.to_json())
    write_atomic(run_dir / "data.json", json.dumps(data, indent=2))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid JSON (it was edited or damaged); restore it from a backup.") from None


@dataclass
class RunFiles:
    """The contents of a run's ``config.json`` and ``data.json``."""

    config: Config
    codec: Codec
    spec: DataSpec
    source: dict[str, Any] | None


def read_run_files(run_dir: str | os.PathLike) -> RunFiles:
    """The config, codec, data spec and data source of a run directory."""
    run_dir = Path(run_dir)
    if (run_dir / "tokenizer.json").is_file() and not (run_dir / "data.json").is_file():
        raise RunError(
            f"{run_dir} was written by md4 0.1, whose run directories this version cannot read; "
            "train it again with this version, or read it with md4 0.1."
        )
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir} is not an md4 run directory (no {name}); pass the --out of md4 train.")
    try:
        config = Config.from_dict(_read_json(run_dir / "config.json"))
    except ConfigError as err:
        raise RunError(f"{run_dir / 'config.json'} does not hold a valid config ({err})") from None
    data = _read_json(run_dir / "data.json")
    try:
        codec = codec_from_dict(data["codec"])
        spec = DataSpec(codec.vocab_size, tuple(data["data_shape"]), data["num_classes"])
        source = data["source"]
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{run_dir / 'data.json'} is damaged ({err}); restore it from a backup.") from None
    return RunFiles(config, codec, spec, source)


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    bad = next(
        (name for name, value in state.items() if value.is_floating_point() and not value.isfinite().all()), None
    )
    if bad is not None:
        raise CheckpointError(
            f"Checkpoint {path} holds non-finite weights ({bad}): the run diverged before it was saved; "
            "use an earlier one with --checkpoint STEP."
        )


def load_run(
    run_dir: str | os.PathLike, device: str = "auto", use_ema: bool = True, step: int | None = None
) -> LoadedRun:
    """Rebuild the model of a run from its newest checkpoint (or that of ``step``), EMA weights by default,
    in eval mode."""
    files = read_run_files(run_dir)
    target = resolve_device(device)
    ckpt = read_checkpoint(run_dir, step, weights_only=True)
    weights = ckpt.ema if use_ema else ckpt.model
    _check_finite(weights, ckpt.path)
    model = build_model(files.config, files.spec)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise RunError(
            f"The weights in {ckpt.path} do not fit the model that {run_dir}'s config.json and data.json describe "
            "(were they edited?); restore those files."
        ) from None
    model.to(target).eval()
    return LoadedRun(files.config, files.codec, files.spec, files.source, model, int(ckpt.state["step"]), ckpt.path)
