"""A run directory: its config, its data description and its model, rebuilt from disk alone.

Layout: ``config.json``, ``data.json`` (the codec, one example's shape, the number of classes, and where the
data came from: its canonical name, cache key and content fingerprint), ``checkpoints/step_*/`` (see
:mod:`md4.runs.checkpoints`), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``samples/``, ``curves.png``, and
``.lock``, which the one training process writing the run holds for its whole life.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from md4.config import Config, ConfigError, apply_overrides, validate
from md4.data import (
    Codec,
    Dataset,
    ImageCodec,
    PreparedData,
    PreparedImages,
    codec_from_dict,
    dataset_of,
    load_cached,
    prepared_of,
)
from md4.device import resolve_device
from md4.files import link_leaving, write_atomic
from md4.limits import MAX_CLASSES, MAX_VOCAB_SIZE, check_example_tokens
from md4.models import DataSpec
from md4.runs.checkpoints import CheckpointError, find_checkpoint, read_checkpoint, weight_shapes

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


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse what claiming ``run_dir`` for training would refuse, without claiming it: a file or a dangling link,
    a folder md4 did not make, a link out of the run, another process training into it."""
    run_dir = Path(run_dir)
    check_out_path(run_dir)
    if run_dir.is_dir():
        check_run_folder(run_dir)
        check_links(run_dir)
        if (run_dir / LOCK_FILE).is_file():
            RunLock(run_dir).acquire().release()


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
    run_dir: Path  # the run directory or exported folder the model came from
    outputs: Path | None = None  # where md4 writes what it makes of the model, when not into ``run_dir``

    def output_dir(self) -> Path:
        """Where samples and evaluation reports of this model go: its run or exported folder, or, for a model
        read from the Hub's cache, a folder named after the repository in the working directory."""
        return self.outputs or self.run_dir


def data_source(dataset) -> dict[str, Any] | None:
    """Where a dataset's examples came from: its canonical name, cache key and content fingerprint (prepared
    corpora), or None for in-memory data."""
    prepared = prepared_of(dataset)
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


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid JSON (it was edited or damaged); restore it from a backup.") from None
    if not isinstance(value, dict):
        raise RunError(f"{path} holds a {type(value).__name__}, not a JSON object; restore it from a backup.")
    return value


@dataclass
class RunFiles:
    """The contents of a run's ``config.json`` and ``data.json``."""

    config: Config
    codec: Codec
    spec: DataSpec
    source: dict[str, Any] | None


def check_links(run_dir: Path) -> None:
    """Refuse a run holding a symbolic link that leads out of it: md4 reads and writes a run only inside it."""
    found = link_leaving(run_dir)
    if found is not None:
        link, target = found
        raise RunError(
            f"{link} is a symbolic link to {target}, outside the run {run_dir}; md4 does not follow links out of a "
            "run directory, so replace the link with the file or folder itself."
        )


def _is_count(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def data_description(data: dict[str, Any]) -> tuple[Codec, DataSpec, dict[str, Any] | None]:
    """The codec, data spec and source that ``data.json`` describes, each checked: its types, and sizes within
    :mod:`md4.limits`. Raises ValueError saying what is wrong."""
    if data.get("format") != RUN_FORMAT:
        raise ValueError(f"its format is {data.get('format')!r}, not {RUN_FORMAT}, so another md4 version wrote it")
    codec = codec_from_dict(data.get("codec"))
    if not _is_count(codec.vocab_size, 1, MAX_VOCAB_SIZE):
        raise ValueError(f"its vocabulary of {codec.vocab_size!r} tokens is not between 1 and {MAX_VOCAB_SIZE:,}")
    shape = data.get("data_shape")
    if not (isinstance(shape, list) and shape and all(_is_count(n, 1, math.inf) for n in shape)):
        raise ValueError(f"data_shape {shape!r} is not a list of positive sizes")
    check_example_tokens(math.prod(shape), "data_shape", "an md4 run never holds such examples")
    if isinstance(codec, ImageCodec) and tuple(shape) != codec.data_shape:
        raise ValueError(f"data_shape {shape} is not the {list(codec.data_shape)} of its image codec")
    classes = data.get("num_classes")
    if classes is not None and not _is_count(classes, 1, MAX_CLASSES):
        raise ValueError(f"num_classes {classes!r} is not between 1 and {MAX_CLASSES:,}")
    source = data.get("source")
    if source is not None and not (
        isinstance(source, dict)
        and isinstance(source.get("name"), str)
        and isinstance(source.get("key"), str)
        and source["key"] not in ("", ".", "..")
        and Path(source["key"]).name == source["key"]
        and isinstance(source.get("fingerprint"), str)
        and _FINGERPRINT.fullmatch(source["fingerprint"])
    ):
        raise ValueError("its source is not a name, a cache key and a SHA-256 fingerprint")
    return codec, DataSpec(codec.vocab_size, tuple(shape), classes), source


def read_run_files(run_dir: str | os.PathLike) -> RunFiles:
    """The config, codec, data spec and data source of a run directory, checked as a user's own settings are,
    and against each other, before anything is built from them; a run holding a link out of it is refused."""
    run_dir = Path(run_dir)
    if (run_dir / "tokenizer.json").is_file() and not (run_dir / "data.json").is_file():
        raise RunError(
            f"{run_dir} was written by md4 0.1, whose run directories this version cannot read; "
            "train it again with this version, or read it with md4 0.1."
        )
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir} is not an md4 run directory (no {name}); pass the --out of md4 train.")
    check_links(run_dir)
    return checked_files(read_object(run_dir / "config.json"), read_object(run_dir / "data.json"), run_dir)


def checked_files(config: dict[str, Any], data: dict[str, Any], where: Path, config_name: str = "config.json",
                  data_name: str = "data.json") -> RunFiles:  # fmt: skip
    """The run files of a config table and a data description (read from ``where``'s ``config_name`` and
    ``data_name``), checked as a user's own settings are, and against each other."""
    try:
        codec, spec, source = data_description(data)
    except ValueError as err:
        raise RunError(f"{where / data_name} is damaged ({err}); restore it from a backup.") from None
    try:
        checked = Config.from_dict(config)
        validate(checked, spec)
        if source is not None and not isinstance(codec, ImageCodec) and spec.data_shape != (checked.data.seq_len,):
            shape = list(spec.data_shape)
            raise ConfigError(f"data.seq_len={checked.data.seq_len} but {data_name}'s data_shape is {shape}")
    except ConfigError as err:
        raise RunError(f"{where / config_name} does not hold a valid config ({err}); restore it.") from None
    return RunFiles(checked, codec, spec, source)


def resume_config(run_dir: str | os.PathLike, overrides: list[str], data: str | None = None) -> Config:
    """The config saved in a run directory, with overrides (the trainer refuses those that cannot change) and,
    when given, other ``data``. The run's own data name is not looked up (see :func:`own_dataset`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"Nothing to resume: {run_dir} has no config.json; start the run without --resume.")
    files = read_run_files(run_dir)
    config = apply_overrides(files.config, overrides, spec=files.spec)
    if data is not None or config.data.name != files.config.data.name:
        config.data.name = data or config.data.name
        config = apply_overrides(config, [])  # data the user names: looked up and checked as for a new run
    return config


def own_dataset(run_dir: str | os.PathLike, config: Config, data: str | None = None) -> Dataset | None:
    """For a resume: the run's own data, from the cache (:func:`cached_run_data`), unless the user names data
    (``data``, or another ``data.name`` in ``config``); then None, and the trainer prepares ``config.data.name``."""
    files = read_run_files(run_dir)
    if data is not None or config.data.name != files.config.data.name:
        return None
    return dataset_of(cached_run_data(files.source, Path(run_dir)), config.data.seq_len)


def check_weights_fit(
    config: Config,
    spec: DataSpec,
    weights: Path,
    described_by: str = "that config.json and data.json describe",
    fix: str = "were those files edited? Restore them.",
) -> None:
    """Refuse a checkpoint whose tensors (read from the safetensors header alone) are not those of the model the
    config and spec describe, before that model is built: a crafted or edited ``config.json`` then allocates
    nothing. ``described_by`` and ``fix`` finish the error sentence."""
    expected = config.plan().weight_shapes(spec)
    found = weight_shapes(weights)
    if found != expected:
        name = next(iter(sorted(set(found) ^ set(expected))), None) or next(
            name for name in sorted(found) if found[name] != expected[name]
        )
        raise RunError(
            f"The weights in {weights} do not fit the model {described_by} ({name}: "
            f"{found.get(name, 'absent')} in the file, {expected.get(name, 'absent')} in the config); {fix}"
        )


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
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
    weights_file = "ema.safetensors" if use_ema else "model.safetensors"
    check_weights_fit(files.config, files.spec, find_checkpoint(run_dir, step) / weights_file)
    ckpt = read_checkpoint(run_dir, step, weights_only=True)
    weights = ckpt.ema if use_ema else ckpt.model
    check_finite(weights, ckpt.path)
    model = files.config.plan().without_initial_weights().build(files.spec)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise RunError(
            f"The weights in {ckpt.path} do not fit the model that {run_dir}'s config.json and data.json describe "
            "(were they edited?); restore those files."
        ) from None
    model.to(target).eval()
    return LoadedRun(
        files.config, files.codec, files.spec, files.source, model, ckpt.state["step"], ckpt.path, Path(run_dir)
    )


def cached_run_data(source: dict[str, Any] | None, run_dir: Path) -> PreparedData | PreparedImages:
    """The prepared data a run was trained on (``source``: its ``data.json`` source), found in the cache by its
    content fingerprint (from any working directory, after its source moved). md4 never prepares, reads or
    downloads data that a run directory names on its own: when the cache lacks it, the user names it (``--data``)."""
    if source is None:
        raise RunError(f"{run_dir} was trained on in-memory data, so name the data to use with --data.")
    cached = load_cached(source["key"], source["fingerprint"])
    if cached is None:
        raise RunError(
            f"The data {run_dir} was trained on ({source['name']}) is not in md4's cache, and md4 does not read or "
            f"download data that a run names by itself; pass --data {source['name']} if that is the data you mean."
        )
    return cached
