"""The plain tables of a run's configuration, ``[data]`` and ``[train]``, each checking its own values, and the
error every configuration check raises; :mod:`md4.config` assembles them with the model tables."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from md4.data import DataError, check_tokenizer_spec
from md4.device import PRECISION_CHOICES
from md4.distributed import PARALLEL_MODES
from md4.limits import MAX_EXAMPLE_TOKENS

WEIGHT_DECAY_SCOPES = ("matrices", "all")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class ConfigError(ValueError):
    """A preset, override or config file that cannot be used as given."""


@dataclass
class DataConfig:
    """Which data (a recipe name, ``hf:NAME``, ``images:PATH`` or a path), the sequence length of text, the
    number of levels pixels are quantised to (None: the data's own), and the tokenizer of text (None: the data's
    own; ``bpe:N`` or ``hf:NAME_OR_DIR``, :mod:`md4.data.retokenize`)."""

    name: str = "shakespeare"
    seq_len: int = 256
    levels: int | None = None
    tokenizer: str | None = None

    def check(self, images: bool | None) -> None:
        """Refuse impossible settings, one sentence each; ``images``: whether the data are images (None: unknown,
        for a run directory's own data, whose name is not looked up)."""
        if self.seq_len < 1:
            raise ConfigError(f"data.seq_len must be positive, got {self.seq_len}.")
        if self.seq_len > MAX_EXAMPLE_TOKENS:
            raise ConfigError(f"data.seq_len={self.seq_len:,} is more than md4's limit of {MAX_EXAMPLE_TOKENS:,}.")
        if images is False and self.levels is not None:
            raise ConfigError(f"data.levels quantises images, but {self.name} is text; leave data.levels out.")
        if self.levels is not None and not 2 <= self.levels <= 256:
            raise ConfigError(f"data.levels must be in 2..256, got {self.levels}.")
        if self.tokenizer is not None:
            if images:
                raise ConfigError(f"data.tokenizer encodes text, but {self.name} are images; leave data.tokenizer out.")
            try:
                check_tokenizer_spec(self.tokenizer)
            except DataError as err:
                raise ConfigError(str(err)) from None


@dataclass
class TrainConfig:
    """Optimisation, precision, run control and periodic outputs."""

    steps: int = 1000
    time_limit: float | None = None  # minutes of training in one session: steps then planned to fit (at most steps)
    batch_size: int = 32  # the global batch of one optimizer step, over all processes and micro-batches
    grad_accum: int = 1  # micro-batches per step: each is batch_size / (processes x grad_accum) rows per process
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    weight_decay_scope: str = "matrices"  # "matrices": weights of rank >= 2; "all": every parameter (release)
    grad_clip: float = 1.0  # global-norm clipping; 0 turns it off (release)
    ema_decay: float = 0.999
    precision: str = "bf16"  # or fp32, or auto: bf16 where the hardware multiplies bf16 fast, else fp32
    tf32: bool = True  # on CUDA, fp32 matrix products (fp32 runs, fp32 parts of bf16 ones) in TF32; false: true fp32
    compile: bool = False
    # Recompute each block's activations in the backward pass instead of keeping them: memory for long
    # sequences (OpenWebText's 1024 and beyond) at the price of about one more forward pass (transformer).
    activation_checkpointing: bool = False
    device: str = "auto"
    seed: int = 0
    dist_timeout: int = 1800  # seconds a collective waits for a silent process before failing (several processes)
    parallel: str = "ddp"  # with several processes: "ddp" replicates the model, "fsdp" shards it (FSDP2)
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 8
    sample_every: int = 500
    num_samples: int = 2
    checkpoint_every: int = 250
    keep_checkpoints: int = 3

    def check(self) -> None:
        """Refuse impossible settings, one sentence each (``validate`` calls it on the whole config)."""
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}.")
        if self.weight_decay_scope not in WEIGHT_DECAY_SCOPES:
            raise ConfigError(
                f"train.weight_decay_scope must be one of {', '.join(WEIGHT_DECAY_SCOPES)}, "
                f"got {self.weight_decay_scope!r}."
            )
        if self.steps < 0:
            raise ConfigError(
                f"train.steps must be 0 (save the initial weights: a pretrained network's zero-shot bound) or more, "
                f"got {self.steps}."
            )
        for key in ("batch_size", "grad_accum", "log_every", "eval_every", "eval_batches", "sample_every",
                    "checkpoint_every", "keep_checkpoints", "dist_timeout"):  # fmt: skip
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be a positive integer, got {getattr(self, key)}.")
        if self.parallel not in PARALLEL_MODES:
            raise ConfigError(f"train.parallel must be one of {', '.join(PARALLEL_MODES)}, got {self.parallel!r}.")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is the whole batch of a step, split into "
                f"train.grad_accum={self.grad_accum} micro-batches, so it must be a multiple of {self.grad_accum}."
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be a positive finite number, got {self.lr}.")
        for key, low, high in (("ema_decay", 0.0, 1.0), ("beta1", 0.0, 1.0), ("beta2", 0.0, 1.0)):
            if not low <= getattr(self, key) < high:
                raise ConfigError(f"train.{key} must be in [{low:g}, {high:g}), got {getattr(self, key)}.")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(
                f"train.min_lr_ratio must be in [0, 1] (a fraction of train.lr), got {self.min_lr_ratio}."
            )
        for key in ("warmup_steps", "weight_decay"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}.")
        if self.time_limit is not None and not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise ConfigError(f"train.time_limit is minutes of training, a positive number, got {self.time_limit}.")
        if not self.grad_clip >= 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}.")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")
