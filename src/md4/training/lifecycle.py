"""A training run's lifecycle in its folder: claiming and locking it, starting a new run (never over another),
and resuming one (the same config up to :data:`RESUMABLE_KEYS`, the same data, a checkpoint that fits).

Rank 0 alone writes the folder; on resume it checks the run and picks the checkpoint, which every rank then reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from md4.config import Config, ConfigError
from md4.data import Dataset
from md4.distributed import World
from md4.files import remove_temporaries, write_atomic
from md4.models import DataSpec
from md4.notices import warn
from md4.runs.checkpoints import clean_temporaries, find_checkpoint, list_checkpoints, read_checkpoint, supersede_after
from md4.runs.directory import (
    RunError,
    RunFiles,
    RunLock,
    check_links,
    check_out_path,
    check_run_folder,
    check_weights_fit,
    data_source,
    read_run_files,
    write_run_files,
)
from md4.training.state import TrainState

# Keys that may change when a run is resumed; any other difference is an error.
RESUMABLE_KEYS = {
    "steps",
    "time_limit",
    "log_every",
    "eval_every",
    "eval_batches",
    "sample_every",
    "num_samples",
    "checkpoint_every",
    "keep_checkpoints",
    "device",
    "compile",
    "tf32",
    "activation_checkpointing",
    "dist_timeout",
    "parallel",
}


def config_differences(old: Config, new: Config) -> list[str]:
    """Keys whose values differ between two configs, except those allowed to change on resume."""
    diffs = []
    a, b = old.to_dict(), new.to_dict()
    for section in a:
        for key in sorted(set(a[section]) | set(b[section])):
            before, after = a[section].get(key), b[section].get(key)
            if before != after and not ((section == "train" and key in RESUMABLE_KEYS) or section == "sample"):
                diffs.append(f"{section}.{key} ({before!r} -> {after!r})")
    return diffs


def check_resumable(config: Config, run_dir: Path, step: int | None) -> None:
    """Refuse a resume whose config differs from the run's in a key that cannot change, or whose checkpoint
    does not hold the tensors of the model the config describes (read from its header, before any is built)."""
    check_out_path(run_dir)
    files = read_run_files(run_dir)
    diffs = config_differences(files.config, config)
    if diffs:
        raise ConfigError(
            f"Cannot resume {run_dir} with a different config: {'; '.join(diffs)}. "
            "Use the run's own settings or start a new run with another --out."
        )
    if list_checkpoints(run_dir) or step is not None:
        check_weights_fit(config, files.spec, find_checkpoint(run_dir, step) / "model.safetensors")


@dataclass
class RunLifecycle:
    """The run folder of a training run of ``config`` on ``data``, seen from one rank of ``world``."""

    run_dir: Path
    config: Config
    data: Dataset
    spec: DataSpec
    world: World

    def claim(self) -> RunLock:
        """Create the folder (refusing a path or folder that cannot hold a run) and lock it."""
        check_out_path(self.run_dir)
        if self.run_dir.is_dir():
            check_run_folder(self.run_dir)
            check_links(self.run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(
                f"Cannot create the run folder {self.run_dir} ({err.strerror}); choose another --out."
            ) from None
        return RunLock(self.run_dir).acquire()

    def clean(self) -> None:
        """Remove what an interrupted write left behind (half-written checkpoints and files)."""
        clean_temporaries(self.run_dir)
        remove_temporaries(self.run_dir)

    def start(self) -> None:
        """Write a new run's files, refusing a folder that already holds a run."""
        if list_checkpoints(self.run_dir):
            raise RunError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another --out."
            )
        write_run_files(self.run_dir, self.config, self.data, self.spec)

    def check_same_run(self, files: RunFiles) -> None:
        """Refuse data whose vocabulary, shape or content differs from the data the run was trained on."""
        if files.codec.to_dict() != self.data.codec.to_dict() or files.spec != self.spec:
            raise ConfigError(
                f"Cannot resume {self.run_dir}: the data's vocabulary or shape differs from the one the run was "
                "trained with; use the same dataset."
            )
        source = data_source(self.data)
        if files.source and source and files.source["fingerprint"] != source["fingerprint"]:
            raise ConfigError(
                f"Cannot resume {self.run_dir}: the data at {source['name']} has changed since the run was trained "
                "(its content fingerprint differs); resume with the original data, or start a new run."
            )

    def resume(self, state: TrainState, step: int | None, device: torch.device) -> None:
        """Put ``state`` back as the checkpoint of ``step`` (default: the newest) left it; rank 0 then moves later
        checkpoints aside and writes the config. A run without a checkpoint starts from step 0 (with a warning)."""
        ckpt = None
        if self.world.is_main:
            files = read_run_files(self.run_dir)
            self.check_same_run(files)
            if not list_checkpoints(self.run_dir) and step is None:
                warn(f"{self.run_dir} has no checkpoint yet, so training starts from step 0.", stacklevel=3)
                write_run_files(self.run_dir, self.config, self.data, self.spec)
                step = -1
            else:
                ckpt = read_checkpoint(self.run_dir, step, map_location=device)
                step = ckpt.state["step"]
        step = self.world.broadcast(step)
        if step == -1:
            return
        if ckpt is None:
            ckpt = read_checkpoint(self.run_dir, step, map_location=device)
        state.restore_weights(ckpt)
        if self.config.train.steps < state.step:
            warn(
                f"{self.run_dir} is at step {state.step} already, past train.steps={self.config.train.steps}, so "
                "there is nothing to train; raise train.steps to continue.",
                stacklevel=3,
            )
            return
        state.restore_generators(ckpt)
        self.world.barrier()  # every rank has read the checkpoint before rank 0 moves any aside
        if not self.world.is_main:
            return
        aside = supersede_after(self.run_dir, state.step)
        if aside is not None:
            warn(f"Checkpoints after step {state.step} were moved to {aside}.", stacklevel=3)
        write_atomic(self.run_dir / "config.json", self.config.to_json())
