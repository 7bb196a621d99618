"""A training run small enough for a unit test of the Trainer's parts: in-memory sequences of 8 values out of 5,
a one-layer transformer of width 32, fp32."""

from __future__ import annotations

import torch

from md4.config import Config, build_config
from md4.data import ArrayDataset, RawCodec
from md4.models import DataSpec, build_model
from md4.training import Trainer

TINY = [
    "data.name=in-memory",
    "net.dim=32",
    "net.n_layers=1",
    "net.n_heads=2",
    "train.batch_size=4",
    "train.warmup_steps=2",
    "train.precision=fp32",
    "train.log_every=1",
    "train.eval_every=100",
    "train.eval_batches=1",
    "train.sample_every=100",
    "train.sample_steps=4",
    "train.checkpoint_every=100",
]


def tiny_data(seed: int = 0, vocab_size: int = 5) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    splits = {split: torch.randint(0, vocab_size, (n, 8), generator=g) for split, n in (("train", 32), ("valid", 8))}
    return ArrayDataset(splits, RawCodec(vocab_size))


def tiny_config(*overrides: str) -> Config:
    """The tiny config with ``overrides`` replacing its keys (no key given twice)."""
    merged = {text.split("=", 1)[0]: text for text in (*TINY, *overrides)}
    return build_config("shakespeare-char", list(merged.values()))


def tiny_trainer(run_dir, *overrides: str, data: ArrayDataset | None = None, **kwargs) -> Trainer:
    """A Trainer of the tiny model (seeded like ``md4 train``), on ``data`` (default :func:`tiny_data`)."""
    config, data = tiny_config(*overrides), data or tiny_data()
    torch.manual_seed(config.train.seed)
    return Trainer(config, build_model(config, DataSpec.of(data)), data, run_dir, progress=False, **kwargs)


def release(trainer: Trainer) -> None:
    """Close the log and unlock the run of a trainer that was not fitted."""
    trainer.log.close()
    trainer.lock.release()
