"""Checkpoints: atomic writes, the last N kept, checksums verified on load.

A checkpoint is a directory ``RUN/checkpoints/step_XXXXXXXX/`` holding the weights and
their EMA in safetensors, the optimizer and RNG states, a ``state.json`` (step, data
position, ...) and a ``manifest.json`` of SHA-256 checksums. It is built in a temporary
directory and renamed into place, so a crash or a failed write never leaves a partial
checkpoint and never touches the previous ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from md4.files import fsync_dir, fsync_file

CHECKPOINT_DIR = "checkpoints"
_PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated or corrupt."""


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
    """Strip torch.compile's wrapper prefix and make tensors contiguous for safetensors."""
    return {k.replace("_orig_mod.", ""): v.detach().contiguous() for k, v in state.items()}


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


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
    """Write a checkpoint atomically and delete all but the newest ``keep``. Returns its path."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_clean_state(model), tmp / "model.safetensors")
        save_file(_clean_state(ema), tmp / "ema.safetensors")
        torch.save({"optimizer": optimizer, "rng": rng}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size} for name in files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for name in files + ["manifest.json"]:
            fsync_file(tmp / name)
        if final.exists():  # re-saving the same step (e.g. after Ctrl-C right at a save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file matches the manifest."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} has no manifest.json; it is incomplete, delete it or use an older one."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(
            f"Checkpoint {path} has a corrupt manifest.json; delete it or use an older one."
        ) from None
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
    """Load and verify a checkpoint directory; ``weights_only`` skips the optimizer and RNG states."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"No checkpoint at {path}; train first or pass a run directory that has checkpoints.")
    verify_checkpoint(path)
    try:
        model = load_file(path / "model.safetensors", device=str(map_location))
        ema = load_file(path / "ema.safetensors", device=str(map_location))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"Cannot read the weights in {path} ({err}); the checkpoint is corrupt.") from None
    trainer = {"optimizer": {}, "rng": {}}
    if not weights_only:
        trainer = torch.load(path / "trainer.pt", map_location=map_location, weights_only=True)
    state = json.loads((path / "state.json").read_text())
    return Checkpoint(path, model, ema, trainer["optimizer"], trainer["rng"], state)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest checkpoint of a run, or a CheckpointError saying there is none."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoints; train a model there first (md4 train --out {run_dir}).")
    return found[-1]
