"""The training loop: AdamW with warmup + cosine decay, clipping, EMA, accumulation, bf16, checkpoints.

The trainer is written against two small interfaces so other objectives and data slot in: the model is
a module with ``loss(x, labels=) -> (scalar, metrics)`` and ``nelbo(x, labels=, generator=)`` that
:func:`md4.sample` can draw from (its whole state dict is saved and averaged, so learned schedules slot
in); the data is a :class:`md4.data.Dataset` (batches of ``(x, labels or None)`` of any shape, a codec).
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from md4.checkpoint import (
    clean_temporaries,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
    supersede_after,
)
from md4.config import Config, ConfigError
from md4.device import autocast, resolve_device
from md4.evaluate import estimate_nelbo
from md4.files import write_atomic
from md4.metrics_log import MetricsLog
from md4.models import DataSpec, build_model
from md4.run import (
    RunError,
    RunLock,
    check_out_path,
    check_run_folder,
    data_source,
    read_run_files,
    write_run_files,
)
from md4.sampling import sample

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
        for key in sorted(set(a[section]) | set(b[section])):
            before, after = a[section].get(key), b[section].get(key)
            if before != after and not (section == "train" and key in RESUMABLE_KEYS):
                diffs.append(f"{section}.{key} ({before!r} -> {after!r})")
    return diffs


def parameter_groups(model: torch.nn.Module, weight_decay: float, scope: str, lr: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on every parameter (``scope="all"``, the release) or only on weights of rank >= 2.

    A model with a learnable schedule and its own ``schedule_lr`` (GenMD4's ``theta_lr``) gets a group for the
    schedule whose ``lr_scale`` keeps that rate in the same warm-up and decay as the rest.
    """
    schedule_lr = getattr(model, "schedule_lr", None)
    apart = set(model.schedule.parameters()) if schedule_lr is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and p not in apart]
    if scope == "all":
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    if apart:
        decay = weight_decay if scope == "all" else 0.0
        groups.append({"params": list(apart), "weight_decay": decay, "lr_scale": schedule_lr / lr})
    return groups


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; schedulers, `docker stop`, preemptible machines


class TrainingDiverged(ValueError):
    """The loss or the gradient norm became non-finite; nothing from that step was applied or saved."""


@contextmanager
def _stop_flag():
    """Turn SIGINT and SIGTERM into a flag the loop checks after each step, so it can save and stop cleanly.

    ``flag["signal"]`` becomes the signal's name; a second Ctrl-C aborts at once.
    """
    flag: dict[str, str | None] = {"signal": None}

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    try:
        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread: no handlers
        yield flag
        return
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by: str | None  # "SIGINT" or "SIGTERM" when a signal stopped training (a checkpoint was saved)
    valid_bits_per_token: float | None
    tokens_per_second: float
    seconds: float

    @property
    def interrupted(self) -> bool:
        return self.stopped_by is not None


class Trainer:
    """Trains ``model`` on ``data`` into ``run_dir`` (see :mod:`md4.run` for the layout).

    The run directory is locked from construction until :meth:`fit` returns. On resume, everything is
    checked (config, data, checkpoint) before anything in the run directory is rewritten.
    """

    def __init__(
        self,
        config: Config,
        model,
        data,
        run_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
        checkpoint_step: int | None = None,
    ):
        self.config, self.data, self.run_dir = config, data, Path(run_dir)
        self.spec = DataSpec.of(data)
        self.t = config.train
        self.device = resolve_device(self.t.device)
        check_out_path(self.run_dir)
        if self.run_dir.is_dir():
            check_run_folder(self.run_dir)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(
                f"Cannot create the run folder {self.run_dir} ({err.strerror}); choose another --out."
            ) from None
        self.lock = RunLock(self.run_dir).acquire()
        try:
            self.model = model.to(self.device)
            self.progress = progress
            self.ema = EMA(self.model, self.t.ema_decay)
            self.optimizer = torch.optim.AdamW(
                parameter_groups(self.model, self.t.weight_decay, self.t.weight_decay_scope, self.t.lr),
                lr=self.t.lr,
                betas=(self.t.beta1, self.t.beta2),
                fused=self.device.type == "cuda",
            )
            self.data_generator = torch.Generator().manual_seed(self.t.seed + 1)
            self.step = 0
            self.tokens_seen = 0
            clean_temporaries(self.run_dir)
            if resume:
                self._resume(checkpoint_step)
            else:
                self._start()
            if self.t.compile:
                self.model.denoiser = torch.compile(self.model.denoiser)
            self.log = MetricsLog(self.run_dir, start_step=self.step)
        except BaseException:
            self.lock.release()
            raise

    # ------------------------------------------------------------ run dir
    def _start(self) -> None:
        if list_checkpoints(self.run_dir):
            raise RunError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another --out."
            )
        write_run_files(self.run_dir, self.config, self.data, self.spec)

    def _check_same_run(self, files) -> None:
        diffs = config_differences(files.config, self.config)
        if diffs:
            raise ConfigError(
                f"Cannot resume {self.run_dir} with a different config: {'; '.join(diffs)}. "
                "Use the run's own settings or start a new run with another --out."
            )
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

    def _resume(self, step: int | None) -> None:
        files = read_run_files(self.run_dir)
        self._check_same_run(files)
        if not list_checkpoints(self.run_dir) and step is None:
            warnings.warn(f"{self.run_dir} has no checkpoint yet, so training starts from step 0.", stacklevel=3)
            write_run_files(self.run_dir, self.config, self.data, self.spec)
            return
        ckpt = read_checkpoint(self.run_dir, step, map_location=self.device)
        self.model.load_state_dict(ckpt.model)
        self.ema.module.load_state_dict(ckpt.ema)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.step = int(ckpt.state["step"])
        self.tokens_seen = int(ckpt.state["tokens_seen"])
        if self.t.steps < self.step:
            warnings.warn(
                f"{self.run_dir} is at step {self.step} already, past train.steps={self.t.steps}, so there is "
                "nothing to train; raise train.steps to continue.",
                stacklevel=3,
            )
            return
        torch.set_rng_state(ckpt.rng["torch"].cpu())
        if "cuda" in ckpt.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt.rng["cuda"]])
        self.data_generator.set_state(ckpt.rng["data"].cpu())
        aside = supersede_after(self.run_dir, self.step)
        if aside is not None:
            warnings.warn(f"Checkpoints after step {self.step} were moved to {aside}.", stacklevel=3)
        write_atomic(self.run_dir / "config.json", self.config.to_json())

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
        """One optimizer step over ``grad_accum`` micro-batches, each with fresh data and noise.

        A non-finite loss or gradient norm raises :class:`TrainingDiverged` before the weights change.
        """
        lr = learning_rate(self.step, self.t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.model.train()
        sums: dict[str, float] = {}
        for _ in range(self.t.grad_accum):
            x, labels = self.data.train_batch(self.t.batch_size, self.data_generator)
            x = x.to(self.device, non_blocking=True)
            labels = None if labels is None or self.model.num_classes is None else labels.to(self.device)
            with autocast(self.device, self.t.precision):
                loss, metrics = self.model.loss(x, labels=labels)
            (loss / self.t.grad_accum).backward()
            for key, value in metrics.items():  # means over the micro-batches
                sums[key] = sums.get(key, 0.0) + float(value) / self.t.grad_accum
            self.tokens_seen += x.numel()
        total = sums["loss"]
        max_norm = self.t.grad_clip if self.t.grad_clip > 0 else math.inf  # 0: measure the norm, do not clip
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            kept = list_checkpoints(self.run_dir)
            raise TrainingDiverged(
                f"Training diverged at step {self.step + 1} (loss {total}, gradient norm {grad_norm}), so it stopped "
                f"without applying or saving that step{f' and {kept[-1].name} is the newest checkpoint' if kept else ''}; "
                "lower train.lr or turn on clipping (train.grad_clip=1), then resume or start again."
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        return {**sums, "lr": lr, "grad_norm": grad_norm}

    def evaluate(self, split: str = "valid", max_batches: int | None = None) -> dict[str, Any]:
        batches = self.data.eval_batches(split, self.t.batch_size, max_batches or self.t.eval_batches)
        estimate = estimate_nelbo(self.ema.module, batches, seed=self.t.seed, precision=self.t.precision)
        return estimate.to_dict()

    def write_samples(self) -> Path:
        """Samples of the EMA model (one per class, in turn, for class-conditional data) into ``samples/``."""
        labels = None
        if self.model.num_classes is not None:
            labels = torch.arange(self.t.num_samples, device=self.device) % self.model.num_classes
        out = sample(
            self.ema.module, self.t.num_samples, steps=self.t.sample_steps, labels=labels, seed=self.t.seed + self.step
        )
        path = self.data.codec.write_samples(out.tokens.cpu(), self.run_dir / "samples" / f"step_{self.step:08d}")
        self.log.text("samples", self.data.codec.decode(out.tokens[0].cpu()), self.step)
        return path

    def fit(self) -> TrainResult:
        """Train until ``train.steps``, or until SIGINT/SIGTERM (then save and stop cleanly); release the run."""
        try:
            return self._fit()
        finally:
            self.log.close()
            self.lock.release()

    def _fit(self) -> TrainResult:
        start_time, start_tokens = time.time(), self.tokens_seen
        window_time, window_tokens = time.time(), self.tokens_seen
        last_valid = None
        stopped_by = None
        # A log file gets a line per refresh: refresh it rarely when stderr is not a terminal.
        refresh = 0.1 if sys.stderr.isatty() else 30.0
        bar = tqdm(
            total=self.t.steps,
            initial=self.step,
            disable=not self.progress,
            dynamic_ncols=True,
            desc="train",
            mininterval=refresh,
            maxinterval=max(10.0, refresh),
        )
        with _stop_flag() as flag:
            window: list[dict[str, float]] = []
            try:
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
                            refresh=False,  # the bar refreshes at its own pace (rarely in a log file)
                        )
                    if self.step % self.t.eval_every == 0 or self.step == self.t.steps:
                        last_valid = self.evaluate("valid")
                        self.log.scalars("valid", last_valid, self.step)
                    if self.step % self.t.sample_every == 0:
                        self.write_samples()
                    if self.step % self.t.checkpoint_every == 0 or self.step == self.t.steps:
                        self.save()
                    if flag["signal"] is not None:
                        stopped_by = flag["signal"]
                        break
            finally:
                bar.close()
            if stopped_by and (
                not list_checkpoints(self.run_dir) or latest_checkpoint(self.run_dir).name != f"step_{self.step:08d}"
            ):
                self.save()
        self.log.plot(self.run_dir / "curves.png")
        seconds = time.time() - start_time
        return TrainResult(
            self.run_dir,
            self.step,
            stopped_by,
            None if last_valid is None else last_valid["bits_per_token"],
            (self.tokens_seen - start_tokens) / max(seconds, 1e-9),
            seconds,
        )


def build_trainer(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    checkpoint_step: int | None = None,
) -> Trainer:
    """Prepare the data and build the model a validated config describes, and a Trainer for them."""
    from md4.data import open_dataset

    data = open_dataset(config.data.name, seq_len=config.data.seq_len, levels=config.data.levels)
    torch.manual_seed(config.train.seed)
    model = build_model(config, DataSpec.of(data))
    return Trainer(config, model, data, run_dir, resume=resume, progress=progress, checkpoint_step=checkpoint_step)


def train(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    checkpoint_step: int | None = None,
) -> TrainResult:
    """Prepare the data, build the model and train; the entry point behind ``md4 train``.

    ``config`` has been validated whole (:func:`md4.config.validate`) before any data is prepared.
    """
    return build_trainer(config, run_dir, resume, progress, checkpoint_step).fit()
