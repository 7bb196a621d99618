"""The training loop: AdamW with warmup + cosine decay, clipping, EMA, accumulation, bf16, checkpoints.

The trainer is written against two small interfaces so other objectives and data slot in:
the model is a module with ``loss(x) -> (scalar, metrics)``, ``nelbo(x, generator=...)`` and
``sample(n, ...)`` (its whole state is saved, so learned schedules slot in); the data has
``train_batch(batch_size, generator)``, ``eval_batches(split, batch_size, max_batches)``, ``decode(tokens)``,
``tokenizer`` and ``vocab_size``.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from md4.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    write_text_atomic,
)
from md4.config import Config, ConfigError
from md4.evaluate import estimate_nelbo
from md4.metrics_log import MetricsLog
from md4.run import autocast, build_model, read_run_files, resolve_device

# Keys that may change when a run is resumed; any other difference is an error.
RESUMABLE_KEYS = {
    "steps",
    "log_every",
    "eval_every",
    "eval_batches",
    "sample_every",
    "num_samples",
    "sample_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "device",
    "compile",
}


def learning_rate(step: int, config) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    t = config
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of a module's weights (evaluation and sampling use it)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        ema = list(self.module.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in module.parameters()], 1.0 - self.decay)


def config_differences(old: Config, new: Config) -> list[str]:
    """Keys whose values differ between two configs, except those allowed to change on resume."""
    diffs = []
    a, b = old.to_dict(), new.to_dict()
    for section in a:
        for key, value in a[section].items():
            if b[section][key] != value and not (section == "train" and key in RESUMABLE_KEYS):
                diffs.append(f"{section}.{key} ({value!r} -> {b[section][key]!r})")
    return diffs


@contextmanager
def _interrupt_flag():
    """Turn Ctrl-C into a flag the loop checks after each step, so it can save and stop cleanly."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"]:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    valid_bits_per_token: float | None
    tokens_per_second: float
    seconds: float


class Trainer:
    """Trains ``model`` on ``data`` into ``run_dir`` (see :mod:`md4.run` for the layout)."""

    def __init__(self, config: Config, model, data, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.config, self.data, self.run_dir = config, data, Path(run_dir)
        self.t = config.train
        self.device = resolve_device(self.t.device)
        self.model = model.to(self.device)
        self.progress = progress
        self.ema = EMA(self.model, self.t.ema_decay)
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.t.lr,
            betas=(self.t.beta1, self.t.beta2),
            fused=self.device.type == "cuda",
        )
        self.data_generator = torch.Generator().manual_seed(self.t.seed + 1)
        self.step = 0
        self.tokens_seen = 0
        if resume:
            self._resume()
        else:
            self._start()
        if self.t.compile:
            self.model.denoiser = torch.compile(self.model.denoiser)
        self.log = MetricsLog(self.run_dir, start_step=self.step)

    # ------------------------------------------------------------ run dir
    def _start(self) -> None:
        if list_checkpoints(self.run_dir):
            raise ConfigError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another --out."
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "config.json", self.config.to_json())
        write_text_atomic(self.run_dir / "tokenizer.json", json.dumps(self.data.tokenizer.to_dict()))

    def _resume(self) -> None:
        saved_config, saved_tokenizer = read_run_files(self.run_dir)
        diffs = config_differences(saved_config, self.config)
        if diffs:
            raise ConfigError(
                f"Cannot resume {self.run_dir} with a different config: {'; '.join(diffs)}. "
                "Use the run's own settings or start a new run with another --out."
            )
        if saved_tokenizer.to_dict() != self.data.tokenizer.to_dict():
            raise ConfigError(
                f"Cannot resume {self.run_dir}: the data's vocabulary differs from the one the run was trained with; "
                "use the same dataset."
            )
        ckpt = load_checkpoint(latest_checkpoint(self.run_dir), map_location=self.device)
        self.model.load_state_dict(ckpt.model)
        self.ema.module.load_state_dict(ckpt.ema)
        self.optimizer.load_state_dict(ckpt.optimizer)
        torch.set_rng_state(ckpt.rng["torch"].cpu())
        if "cuda" in ckpt.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt.rng["cuda"]])
        self.data_generator.set_state(ckpt.rng["data"].cpu())
        self.step = int(ckpt.state["step"])
        self.tokens_seen = int(ckpt.state["tokens_seen"])
        write_text_atomic(self.run_dir / "config.json", self.config.to_json())

    def save(self) -> Path:
        rng = {"torch": torch.get_rng_state(), "data": self.data_generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.model.state_dict(),
            self.ema.module.state_dict(),
            self.optimizer.state_dict(),
            rng,
            {"tokens_seen": self.tokens_seen},
            keep=self.t.keep_checkpoints,
        )

    # ----------------------------------------------------------- training
    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches, each with fresh data and noise."""
        lr = learning_rate(self.step, self.t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total, bits = 0.0, 0.0
        for _ in range(self.t.grad_accum):
            x = self.data.train_batch(self.t.batch_size, self.data_generator).to(self.device, non_blocking=True)
            with autocast(self.device, self.t.precision):
                loss, metrics = self.model.loss(x)
            (loss / self.t.grad_accum).backward()
            total += float(metrics["loss"]) / self.t.grad_accum
            bits += float(metrics["bits_per_token"]) / self.t.grad_accum
            self.tokens_seen += x.numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        return {"loss": total, "bits_per_token": bits, "lr": lr, "grad_norm": float(grad_norm)}

    def evaluate(self, split: str = "valid", max_batches: int | None = None) -> dict[str, Any]:
        batches = self.data.eval_batches(split, self.t.batch_size, max_batches or self.t.eval_batches)
        estimate = estimate_nelbo(self.ema.module, batches, seed=self.t.seed, precision=self.t.precision)
        return estimate.to_dict()

    def write_samples(self) -> Path:
        out = self.ema.module.sample(self.t.num_samples, num_steps=self.t.sample_steps, seed=self.t.seed + self.step)
        texts = self.data.decode(out.tokens)
        path = self.run_dir / "samples" / f"step_{self.step:08d}.txt"
        path.parent.mkdir(exist_ok=True)
        write_text_atomic(path, "\n\n----------\n\n".join(texts) + "\n")
        self.log.text("samples", texts[0], self.step)
        return path

    def fit(self) -> TrainResult:
        """Train until ``train.steps``, or until Ctrl-C (then save and stop cleanly)."""
        start_time, start_tokens = time.time(), self.tokens_seen
        window_time, window_tokens = time.time(), self.tokens_seen
        last_valid = None
        bar = tqdm(total=self.t.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True, desc="train")
        interrupted = False
        with _interrupt_flag() as flag:
            window: list[dict[str, float]] = []
            while self.step < self.t.steps:
                window.append(self.train_step())
                bar.update(1)
                if self.step % self.t.log_every == 0 or self.step == self.t.steps:
                    now = time.time()
                    metrics = {k: sum(m[k] for m in window) / len(window) for k in window[0]}  # interval means
                    metrics["lr"] = window[-1]["lr"]
                    metrics["tokens_per_second"] = (self.tokens_seen - window_tokens) / max(now - window_time, 1e-9)
                    metrics["tokens"] = self.tokens_seen
                    window_time, window_tokens, window = now, self.tokens_seen, []
                    self.log.scalars("train", metrics, self.step)
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.3f}",
                        bpt=f"{metrics['bits_per_token']:.3f}",
                        tok_s=f"{metrics['tokens_per_second']:.0f}",
                    )
                if self.step % self.t.eval_every == 0 or self.step == self.t.steps:
                    last_valid = self.evaluate("valid")
                    self.log.scalars("valid", last_valid, self.step)
                if self.step % self.t.sample_every == 0:
                    self.write_samples()
                if self.step % self.t.checkpoint_every == 0 or self.step == self.t.steps:
                    self.save()
                if flag["stop"]:
                    interrupted = True
                    break
        bar.close()
        if interrupted and (
            not list_checkpoints(self.run_dir) or latest_checkpoint(self.run_dir).name != f"step_{self.step:08d}"
        ):
            self.save()
        self.log.close()
        self.log.plot(self.run_dir / "curves.png")
        seconds = time.time() - start_time
        return TrainResult(
            self.run_dir,
            self.step,
            interrupted,
            None if last_valid is None else last_valid["bits_per_token"],
            (self.tokens_seen - start_tokens) / max(seconds, 1e-9),
            seconds,
        )


def train(config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Prepare the data, build the model and train; the entry point behind ``md4 train``."""
    from md4.data import TextBatches, prepare

    prepared = prepare(config.data.name, seq_len=config.data.seq_len)
    data = TextBatches(prepared, config.data.seq_len)
    torch.manual_seed(config.train.seed)
    model = build_model(config, data.vocab_size)
    return Trainer(config, model, data, run_dir, resume=resume, progress=progress).fit()
