"""A run directory: its config, its data description and its model, rebuilt from disk alone.

Layout: ``config.json``, ``data.json`` (the codec, one example's shape and the number of classes),
``checkpoints/step_*/`` (see :mod:`md4.checkpoint`), ``metrics.jsonl``, ``tb/`` (TensorBoard),
``samples/`` and ``curves.png``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from md4.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from md4.config import Config
from md4.data import Codec, codec_from_dict
from md4.device import resolve_device
from md4.files import write_atomic
from md4.models import DataSpec, build_model

RUN_FORMAT = 2  # version of the run directory layout; runs of md4 0.1 (format 1, tokenizer.json) are refused


@dataclass
class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    config: Config
    codec: Codec
    spec: DataSpec
    model: nn.Module
    step: int
    checkpoint: Path


def write_run_files(run_dir: Path, config: Config, codec: Codec, spec: DataSpec) -> None:
    """Write ``config.json`` and ``data.json`` (each atomically)."""
    data = {
        "format": RUN_FORMAT,
        "codec": codec.to_dict(),
        "data_shape": list(spec.data_shape),
        "num_classes": spec.num_classes,
    }
    write_atomic(run_dir / "config.json", config.to_json())
    write_atomic(run_dir / "data.json", json.dumps(data, indent=2))


def read_run_files(run_dir: str | os.PathLike) -> tuple[Config, Codec, DataSpec]:
    """The config, codec and data spec of a run directory."""
    run_dir = Path(run_dir)
    if (run_dir / "tokenizer.json").is_file() and not (run_dir / "data.json").is_file():
        raise CheckpointError(
            f"{run_dir} was written by md4 0.1, whose run directories this version cannot read; "
            "train it again with this version, or read it with md4 0.1."
        )
    for name in ("config.json", "data.json"):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir} is not an md4 run directory (no {name}); pass the --out of md4 train.")
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    data = json.loads((run_dir / "data.json").read_text())
    codec = codec_from_dict(data["codec"])
    spec = DataSpec(codec.vocab_size, tuple(data["data_shape"]), data["num_classes"])
    return config, codec, spec


def load_run(run_dir: str | os.PathLike, device: str = "auto", use_ema: bool = True) -> LoadedRun:
    """Rebuild the model of a run from its newest checkpoint (EMA weights by default), in eval mode."""
    config, codec, spec = read_run_files(run_dir)
    path = latest_checkpoint(run_dir)
    target = resolve_device(device)
    ckpt = load_checkpoint(path, weights_only=True)
    model = build_model(config, spec)
    model.load_state_dict(ckpt.ema if use_ema else ckpt.model)
    model.to(target).eval()
    return LoadedRun(config, codec, spec, model, int(ckpt.state["step"]), path)
