"""Checkpoints: atomic writes, the last N kept, checksums verified on load, safe against rotation.

A checkpoint is a directory ``RUN/checkpoints/step_XXXXXXXX/`` holding the weights and
their EMA in safetensors, the optimizer and RNG states, a ``state.json`` (step, data
position, ...) and a ``manifest.json`` of SHA-256 checksums. It is built in a temporary
directory and renamed into place, so a crash or a failed write never leaves a partial
checkpoint and never touches the previous ones. A reader whose checkpoint is rotated away
by a training run while it reads moves on to the newest one instead of calling it corrupt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from md4.files import fsync_dir, fsync_file

CHECKPOINT_DIR = "checkpoints"
_PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or corrupt, or one that cannot be written."""


class CheckpointVanished(CheckpointError):
    """The checkpoint was deleted while being read (a training run rotated it)."""


READ_ATTEMPTS = 5  # how many times a reader moves on to the newest checkpoint after one vanished


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    state: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _clean_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip torch.compile's wrapper prefix and make tensors contiguous for safetensors; a tensor sharing memory
    with an earlier one (tied weights: a masked LM's output layer and its embeddings) is saved as its own copy,
    which loading ties again."""
    clean, seen = {}, set()
    for name, value in state.items():
        value = value.detach().contiguous()
        storage = value.untyped_storage().data_ptr()
        clean[name.replace("_orig_mod.", "")] = value.clone() if storage in seen else value
        seen.add(storage)
    return clean


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_step_folder(p)]
    return sorted(found, key=step_of)


def _remove(path: Path) -> None:
    """Delete a checkpoint folder atomically for readers: rename it out of sight first, then delete it."""
    doomed = path.with_name(f".tmp-deleting-{path.name}-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_temporaries(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders of saves and deletions that never finished (a process killed); return them."""
    root = Path(run_dir) / CHECKPOINT_DIR
    left = sorted(root.glob(".tmp-*")) if root.is_dir() else []
    for tmp in left:
        shutil.rmtree(tmp, ignore_errors=True)
    return left


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    rng: dict[str, Any],
    state: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write a checkpoint atomically and delete all but the newest ``keep``. Returns its path.

    A full disk or an unwritable folder is a CheckpointError that says what to do; the previous
    checkpoints are untouched and no temporary folder is left.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise _write_error(err, root, step, model, ema, optimizer) from None
    try:
        save_file(_clean_state(model), tmp / "model.safetensors")
        save_file(_clean_state(ema), tmp / "ema.safetensors")
        torch.save({"optimizer": optimizer, "rng": rng}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        mode = stat.S_IMODE((tmp / "state.json").stat().st_mode)  # the user's umask (safetensors writes 0600)
        for name in ("model.safetensors", "ema.safetensors"):
            os.chmod(tmp / name, mode)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for name in files + ["manifest.json"]:
            fsync_file(tmp / name)
        if final.exists():  # re-saving the same step (e.g. after Ctrl-C right at a save)
            _remove(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(err, root, step, model, ema, optimizer) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        _remove(old)
    return final


def _write_error(err: OSError, root: Path, step: int, *states: Any) -> CheckpointError:
    """One sentence for a failed save: how much space it needs, or that the folder is not writable."""
    if err.errno == errno.ENOSPC:
        need = sum(_nbytes(state) for state in states) / 2**20
        return CheckpointError(
            f"No space left on the device while saving checkpoint step {step} in {root}: it needs about "
            f"{need:,.0f} MB; free some space and resume (the previous checkpoints are intact)."
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CheckpointError(f"Cannot write checkpoint step {step} in {root} ({err.strerror}); use a writable --out.")
    return CheckpointError(f"Saving checkpoint step {step} in {root} failed ({err}); the previous ones are intact.")


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file matches the manifest."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} has no manifest.json; it is incomplete, delete it or use an older one."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    well_formed = isinstance(manifest, dict) and all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
        for e in manifest.values()
    )
    if not well_formed or not {"model.safetensors", "ema.safetensors", "state.json"} <= set(manifest):
        raise CheckpointError(
            f"Checkpoint {path} has a corrupt manifest.json; delete that checkpoint directory or use an older one "
            "(--checkpoint STEP)."
        )
    for name, entry in manifest.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"Checkpoint {path} is missing {name}; delete it or use an older one.")
        if f.stat().st_size != entry["bytes"] or _sha256(f) != entry["sha256"]:
            raise CheckpointError(
                f"Checkpoint file {f} is truncated or corrupt (its checksum does not match); "
                "delete that checkpoint directory or use an older one."
            )


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", weights_only: bool = False
) -> Checkpoint:
    """Load and verify a checkpoint directory; ``weights_only`` skips the optimizer and RNG states.

    Raises CheckpointVanished when the directory disappears while it is read (a rotation).
    """
    path = Path(path)
    if not path.is_dir():  # never there, or rotated away since it was found
        raise CheckpointVanished(f"No checkpoint at {path}; train first or pass a run directory that has checkpoints.")
    try:
        return _read(path, map_location, weights_only)
    except (CheckpointError, OSError, SafetensorError, RuntimeError) as err:
        if not path.exists():
            raise CheckpointVanished(f"Checkpoint {path} was removed while it was being read.") from None
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"Cannot read {path} ({err}); the checkpoint is corrupt, use an older one.") from None


def _read(path: Path, map_location, weights_only: bool) -> Checkpoint:
    verify_checkpoint(path)
    state = read_state(path)
    try:
        model = load_file(path / "model.safetensors", device=str(map_location))
        ema = load_file(path / "ema.safetensors", device=str(map_location))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"Cannot read the weights in {path} ({err}); the checkpoint is corrupt.") from None
    trainer = {"optimizer": {}, "rng": {}}
    if not weights_only:
        trainer = read_trainer_state(path / "trainer.pt", map_location)
    return Checkpoint(path, model, ema, trainer["optimizer"], trainer["rng"], state)


def _damaged(file: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint file {file} is damaged ({what}); delete that checkpoint directory or use an older one "
        "(--checkpoint STEP)."
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``: an object whose ``step`` is its folder's step and whose counters are
    non-negative integers."""
    file = path / "state.json"
    try:
        state = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _damaged(file, "not valid JSON") from None
    if not isinstance(state, dict):
        raise _damaged(file, f"it holds a {type(state).__name__}, not an object")
    bad = next((key for key in ("step", "tokens_seen") if key in state and not _count(state[key])), None)
    if bad is not None or "step" not in state:
        raise _damaged(file, f"{bad or 'step'} is {state.get(bad or 'step')!r}, not a non-negative integer")
    if is_step_folder(path) and state["step"] != step_of(path):
        raise _damaged(file, f"its step {state['step']} is not the step {step_of(path)} of its folder")
    return state


def read_trainer_state(file: Path, map_location) -> dict[str, Any]:
    """``trainer.pt``: the optimizer's state dict and the generators' states, loaded with ``weights_only`` (plain
    containers and tensors; anything else is refused by torch's restricted unpickler)."""
    try:
        trainer = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 (the restricted unpickler and the zip reader raise many kinds)
        first_line = (str(err).splitlines() or ["unreadable"])[0]
        raise _damaged(file, f"{type(err).__name__}: {first_line}") from None
    optimizer = trainer.get("optimizer") if isinstance(trainer, dict) else None
    rng = trainer.get("rng") if isinstance(trainer, dict) else None
    well_formed = (
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
        and isinstance(rng, dict)
        and all(isinstance(rng.get(key), torch.Tensor) for key in ("torch", "data"))
    )
    if not well_formed:
        raise _damaged(file, "it does not hold an optimizer state and the generators' states")
    return trainer


def is_step_folder(path: Path) -> bool:
    """Whether ``path`` is named like a checkpoint folder, ``step_XXXXXXXX``."""
    return path.name.startswith(_PREFIX) and path.name[len(_PREFIX) :].isdigit()


def step_of(path: Path) -> int:
    """The step of a checkpoint folder ``step_XXXXXXXX``."""
    return int(path.name[len(_PREFIX) :])


def weight_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, read from its header alone (nothing is loaded)."""
    try:
        with safe_open(file, framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"Cannot read the weights in {file} ({err}); the checkpoint is corrupt.") from None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest checkpoint of a run, or a CheckpointError saying there is none."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoints; train a model there first (md4 train --out {run_dir}).")
    return found[-1]


def find_checkpoint(run_dir: str | os.PathLike, step: int | None = None) -> Path:
    """The checkpoint of ``step``, or the newest one when ``step`` is None."""
    if step is None:
        return latest_checkpoint(run_dir)
    found = list_checkpoints(run_dir)
    for path in found:
        if step_of(path) == step:
            return path
    steps = ", ".join(str(step_of(p)) for p in found) or "none"
    raise CheckpointError(f"{run_dir} has no checkpoint of step {step}; its checkpoints are at steps: {steps}.")


def read_checkpoint(
    run_dir: str | os.PathLike, step: int | None = None, map_location="cpu", weights_only: bool = False
) -> Checkpoint:
    """Load the checkpoint of ``step`` (default: the newest), moving on to the newest one if a running
    training rotates it away while it is read."""
    for _ in range(READ_ATTEMPTS):
        try:
            return load_checkpoint(find_checkpoint(run_dir, step), map_location, weights_only)
        except CheckpointVanished:
            if step is not None:
                raise CheckpointError(
                    f"Checkpoint step {step} of {run_dir} was removed while it was being read (the run rotated "
                    "it); choose a newer step."
                ) from None
            time.sleep(0.05)
    raise CheckpointError(f"The checkpoints of {run_dir} kept changing while they were read; try again.")


def supersede_after(run_dir: str | os.PathLike, step: int) -> Path | None:
    """Move the checkpoints newer than ``step`` aside (``checkpoints/superseded-TIME/``), so that a resume from
    an older checkpoint never mixes two trajectories and nothing is deleted; return the folder, if any."""
    newer = [p for p in list_checkpoints(run_dir) if step_of(p) > step]
    if not newer:
        return None
    aside = Path(run_dir) / CHECKPOINT_DIR / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for path in newer:
        os.rename(path, aside / path.name)
    return aside
