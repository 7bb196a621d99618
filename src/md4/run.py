"""A run directory: its config, tokenizer and model, rebuilt from disk alone.

Layout: ``config.json``, ``tokenizer.json``, ``checkpoints/step_*/`` (see :mod:`md4.checkpoint`),
``metrics.jsonl``, ``tb/`` (TensorBoard), ``samples/`` and ``curves.png``.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from md4.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from md4.config import Config, ConfigError
from md4.data.tokenizers import Tokenizer, tokenizer_from_dict
from md4.diffusion import MD4
from md4.nn.transformer import Transformer, TransformerConfig


def build_model(config: Config, vocab_size: int) -> MD4:
    """The MD4 objective around a transformer denoiser, as the config describes."""
    m = config.model
    net = Transformer(
        TransformerConfig(
            vocab_size=vocab_size,
            dim=m.dim,
            n_layers=m.n_layers,
            n_heads=m.n_heads,
            mlp_type=m.mlp_type,
            time_conditioning=m.time_conditioning,
            outside_embed_dim=m.outside_embed_dim,
            max_positions=m.max_positions,
            cond_dim=m.cond_dim,
            dropout=m.dropout,
        )
    )
    return MD4(net, vocab_size=vocab_size, schedule=m.schedule, eps=m.eps, data_shape=(config.data.seq_len,))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu or auto.")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on the device for ``precision="bf16"``, nothing for ``fp32``."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@dataclass
class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    config: Config
    tokenizer: Tokenizer
    model: MD4
    step: int
    checkpoint: Path


def read_run_files(run_dir: str | os.PathLike) -> tuple[Config, Tokenizer]:
    run_dir = Path(run_dir)
    for name in ("config.json", "tokenizer.json"):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir} is not an md4 run directory (no {name}); pass the --out of md4 train.")
    config = Config.from_dict(json.loads((run_dir / "config.json").read_text()))
    tokenizer = tokenizer_from_dict(json.loads((run_dir / "tokenizer.json").read_text()))
    return config, tokenizer


def load_run(run_dir: str | os.PathLike, device: str = "auto", use_ema: bool = True) -> LoadedRun:
    """Rebuild the model of a run from its newest checkpoint (EMA weights by default), in eval mode."""
    config, tokenizer = read_run_files(run_dir)
    path = latest_checkpoint(run_dir)
    target = resolve_device(device)
    ckpt = load_checkpoint(path, weights_only=True)
    model = build_model(config, tokenizer.vocab_size)
    model.load_state_dict(ckpt.ema if use_ema else ckpt.model)
    model.to(target).eval()
    return LoadedRun(config, tokenizer, model, int(ckpt.state["step"]), path)
