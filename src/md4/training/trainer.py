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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from md4 import distributed
from md4.config import Config, ConfigError
from md4.core.noise import BatchShard
from md4.device import autocast, resolve_device
from md4.distributed import World, derived_seed
from md4.evaluate import estimate_nelbo
from md4.files import remove_temporaries, write_atomic
from md4.models import DataSpec, build_model
from md4.notices import warn
from md4.runs.checkpoints import (
    CheckpointError,
    clean_temporaries,
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
    supersede_after,
)
from md4.runs.directory import (
    RunError,
    RunLock,
    check_links,
    check_out_path,
    check_run_folder,
    check_weights_fit,
    data_source,
    read_run_files,
    write_run_files,
)
from md4.runs.metrics_log import MetricsLog
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
    "activation_checkpointing",
    "dist_timeout",
    "parallel",
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


def fused_optimizer(device: torch.device, sharded: bool) -> bool:
    """Whether AdamW runs as one fused kernel: on CUDA, and on CPU for a model that is not sharded (the CPU
    kernel takes plain tensors, not FSDP2's sharded ones); the same update as the per-tensor loop."""
    return device.type == "cuda" or (device.type == "cpu" and not sharded)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; schedulers, `docker stop`, preemptible machines


def local_micro_batch(batch_size: int, grad_accum: int, world_size: int) -> int:
    """Rows per rank per micro-batch: the global ``batch_size`` over ``world_size`` ranks and ``grad_accum``
    micro-batches, which must divide it."""
    parts = grad_accum * world_size
    if batch_size % parts:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch, so it must divide evenly into {world_size} "
            f"process(es) x train.grad_accum={grad_accum} micro-batches; use a multiple of {parts}."
        )
    return batch_size // parts


class TrainingDiverged(ValueError):
    """The loss or the gradient norm became non-finite; nothing from that step was applied or saved."""


@contextmanager
def _stop_flag(second_interrupt_aborts: bool = True):
    """Turn SIGINT and SIGTERM into a flag the loop checks after each step, so it can save and stop cleanly.

    ``flag["signal"]`` becomes the signal's name; a second Ctrl-C aborts at once, unless torchrun started the
    process (it passes on the Ctrl-C its terminal already sent, so each rank sees two).
    """
    flag: dict[str, str | None] = {"signal": None}

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT and second_interrupt_aborts:
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
    """Trains ``model`` on ``data`` into ``run_dir`` (see :mod:`md4.runs.directory` for the layout).

    The run directory is locked from construction until :meth:`fit` returns. On resume, everything is
    checked (config, data, checkpoint) before anything in the run directory is rewritten.

    With a ``world`` of several processes (:mod:`md4.distributed`) the model is wrapped in
    DistributedDataParallel; ``train.batch_size`` is the global batch, each rank computes its rows of it, and
    rank 0 alone writes the run directory. Data and noise follow one layout for any number of processes
    (:class:`md4.core.noise.BatchShard`), so N processes reach the parameters one process reaches.
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
        world: World | None = None,
    ):
        self.config, self.data, self.run_dir = config, data, Path(run_dir)
        self.world = world or World()
        self.spec = DataSpec.of(data)
        self.t = config.train
        self.micro_batch = local_micro_batch(self.t.batch_size, self.t.grad_accum, self.world.size)
        self.device = resolve_device(self.t.device)
        if self.device.type == "cuda" and (self.device.index is None or self.world.distributed):
            self.device = torch.device("cuda", torch.cuda.current_device())  # under torchrun: LOCAL_RANK's GPU
        self.lock = self._claim_run_dir() if self.world.is_main else None
        try:
            self.model = model.to(self.device)
            self.progress = progress and self.world.is_main
            self.ema = EMA(self.model, self.t.ema_decay)
            self.sharded = self.world.distributed and self.t.parallel == "fsdp"
            if self.sharded:  # the model and its average, sharded alike, so the EMA update stays local
                distributed.shard(self.model)
                distributed.shard(self.ema.module)
            self.optimizer = torch.optim.AdamW(
                parameter_groups(self.model, self.t.weight_decay, self.t.weight_decay_scope, self.t.lr),
                lr=self.t.lr,
                betas=(self.t.beta1, self.t.beta2),
                fused=fused_optimizer(self.device, self.sharded),
            )
            # Data and noise generators are seeded alike on every rank: the layout of BatchShard.
            self.data_generator = torch.Generator().manual_seed(self.t.seed + 1)
            self.noise_generator = torch.Generator(self.device).manual_seed(self.t.seed + 2)
            self.step = 0
            self.tokens_seen = 0
            if self.world.is_main:
                clean_temporaries(self.run_dir)
                remove_temporaries(self.run_dir)
            if resume:
                self._resume(checkpoint_step)
            elif self.world.is_main:
                self._start()
            self._seed_rank_streams()
            if self.t.activation_checkpointing:
                self.model.denoiser.checkpointing = True
            if self.t.compile:
                self.model.denoiser = torch.compile(self.model.denoiser)
            self.forward = self.model
            if self.world.distributed and not self.sharded:
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                self.forward = DistributedDataParallel(self.model, device_ids=device_ids)
            self.log = MetricsLog(self.run_dir, start_step=self.step) if self.world.is_main else None
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _claim_run_dir(self) -> RunLock:
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

    def _seed_rank_streams(self) -> None:
        """Ranks other than 0 get their own stream of torch's global generator (dropout), from (seed, rank, step)."""
        if self.world.rank > 0:
            torch.manual_seed(derived_seed(self.t.seed, self.world.rank, self.step))

    # ------------------------------------------------------------ run dir
    def _start(self) -> None:
        if list_checkpoints(self.run_dir):
            raise RunError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another --out."
            )
        write_run_files(self.run_dir, self.config, self.data, self.spec)

    def _check_same_run(self, files) -> None:
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
        """Rank 0 checks the run and picks the checkpoint; every rank then reads that one."""
        ckpt = None
        if self.world.is_main:
            files = read_run_files(self.run_dir)
            self._check_same_run(files)
            if not list_checkpoints(self.run_dir) and step is None:
                warn(f"{self.run_dir} has no checkpoint yet, so training starts from step 0.", stacklevel=3)
                write_run_files(self.run_dir, self.config, self.data, self.spec)
                step = -1
            else:
                ckpt = read_checkpoint(self.run_dir, step, map_location=self.device)
                step = ckpt.state["step"]
        step = self.world.broadcast(step)
        if step == -1:
            return
        if ckpt is None:
            ckpt = read_checkpoint(self.run_dir, step, map_location=self.device)
        distributed.load_model_state(self.model, ckpt.model)
        distributed.load_model_state(self.ema.module, ckpt.ema)
        try:
            distributed.load_optimizer_state(self.model, self.optimizer, ckpt.optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
            raise CheckpointError(
                f"Checkpoint file {ckpt.path / 'trainer.pt'} holds an optimizer state that does not fit this model "
                f"({type(err).__name__}); delete that checkpoint directory or resume from an older one."
            ) from None
        self.step = ckpt.state["step"]
        self.tokens_seen = ckpt.state.get("tokens_seen", 0)
        if self.t.steps < self.step:
            warn(
                f"{self.run_dir} is at step {self.step} already, past train.steps={self.t.steps}, so there is "
                "nothing to train; raise train.steps to continue.",
                stacklevel=3,
            )
            return
        try:
            torch.set_rng_state(ckpt.rng["torch"].cpu())
            if "cuda" in ckpt.rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in ckpt.rng["cuda"]])
            self.data_generator.set_state(ckpt.rng["data"].cpu())
            if "noise" in ckpt.rng:  # checkpoints from before the noise had its own generator go on from a fresh one
                self.noise_generator.set_state(ckpt.rng["noise"].cpu())
        except (TypeError, RuntimeError, ValueError, AttributeError) as err:
            raise CheckpointError(
                f"Checkpoint file {ckpt.path / 'trainer.pt'} holds damaged generator states ({type(err).__name__}); "
                "delete that checkpoint directory or resume from an older one."
            ) from None
        self.world.barrier()  # every rank has read the checkpoint before rank 0 moves any aside
        if not self.world.is_main:
            return
        aside = supersede_after(self.run_dir, self.step)
        if aside is not None:
            warn(f"Checkpoints after step {self.step} were moved to {aside}.", stacklevel=3)
        write_atomic(self.run_dir / "config.json", self.config.to_json())

    def save(self) -> Path | None:
        """Rank 0 writes a checkpoint of the step (model, EMA, optimizer, generators); other ranks return None.

        A sharded model is gathered whole first (every rank takes part), so checkpoints are the same files for
        any number of processes and either parallel mode.
        """
        states = (
            distributed.model_state(self.model),
            distributed.model_state(self.ema.module),
            distributed.optimizer_state(self.model, self.optimizer),
        )
        if not self.world.is_main:
            return None
        rng = {
            "torch": torch.get_rng_state(),
            "data": self.data_generator.get_state(),
            "noise": self.noise_generator.get_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return save_checkpoint(
            self.run_dir,
            self.step,
            *states,
            rng,
            {"tokens_seen": self.tokens_seen},
            keep=self.t.keep_checkpoints,
        )

    def _saved_this_step(self) -> bool:
        return bool(list_checkpoints(self.run_dir)) and latest_checkpoint(self.run_dir).name == f"step_{self.step:08d}"

    # ----------------------------------------------------------- training
    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches, each with fresh data and noise.

        A non-finite loss or gradient norm raises :class:`TrainingDiverged` before the weights change.
        """
        lr = learning_rate(self.step, self.t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        rows = self.micro_batch * self.world.size  # one micro-batch of the global batch, over all ranks
        first = self.world.rank * self.micro_batch
        shard = BatchShard(first, rows) if self.world.distributed else None
        # A dataset written for one process needs no ``part`` argument.
        part = (slice(first, first + self.micro_batch),) if self.world.distributed else ()
        for micro in range(self.t.grad_accum):
            x, labels = self.data.train_batch(rows, self.data_generator, *part)
            x = x.to(self.device, non_blocking=True)
            labels = None if labels is None or self.model.num_classes is None else labels.to(self.device)
            last = micro == self.t.grad_accum - 1
            with self._gradient_sync(last), autocast(self.device, self.t.precision):
                loss, metrics = self.forward(x, labels=labels, generator=self.noise_generator, shard=shard)
            with self._gradient_sync(last):
                (loss / self.t.grad_accum).backward()
            for key, value in metrics.items():  # means over the micro-batches
                sums[key] = sums.get(key, 0.0) + value.detach().float() / self.t.grad_accum
            self.tokens_seen += x.numel() * self.world.size
        keys = list(sums)
        sums = dict(zip(keys, self.world.mean(torch.stack([sums[k] for k in keys])).tolist(), strict=True))
        total = sums["loss"]
        max_norm = self.t.grad_clip if self.t.grad_clip > 0 else math.inf  # 0: measure the norm, do not clip
        grad_norm = distributed.full_norm(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            kept = list_checkpoints(self.run_dir)
            newest = f" and {kept[-1].name} is the newest checkpoint" if kept else ""
            raise TrainingDiverged(
                f"Training diverged at step {self.step + 1} (loss {total}, gradient norm {grad_norm}), so it stopped "
                f"without applying or saving that step{newest}; "
                "lower train.lr or turn on clipping (train.grad_clip=1), then resume or start again."
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        return {**sums, "lr": lr, "grad_norm": grad_norm}

    def _gradient_sync(self, last_micro_batch: bool):
        """Gradients are reduced over the ranks after the last micro-batch of a step only."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last_micro_batch)
        elif self.world.distributed and not last_micro_batch:
            return self.forward.no_sync()
        return nullcontext()

    def evaluate(self, split: str = "valid", max_batches: int | None = None) -> dict[str, Any]:
        """The EMA model's bound on ``split``; the ranks share the batches and agree on the result (with a
        sharded model every rank runs every batch, since each forward pass gathers weights from all)."""
        batches = self.data.eval_batches(split, self.t.batch_size, max_batches or self.t.eval_batches)
        with distributed.gathered(self.ema.module) as model:
            world = None if self.sharded else self.world
            estimate = estimate_nelbo(model, batches, seed=self.t.seed, precision=self.t.precision, world=world)
        return estimate.to_dict()

    def write_samples(self) -> Path | None:
        """Samples of the EMA model (one per class, in turn, for class-conditional data) into ``samples/``;
        rank 0 writes them (with a sharded model every rank draws the same samples alongside)."""
        if not (self.world.is_main or self.sharded):
            return None
        labels = None
        if self.model.num_classes is not None:
            labels = torch.arange(self.t.num_samples, device=self.device) % self.model.num_classes
        with distributed.gathered(self.ema.module) as model:
            out = sample(
                model, self.t.num_samples, steps=self.t.sample_steps, labels=labels, seed=self.t.seed + self.step
            )
        if not self.world.is_main:
            return None
        path = self.data.codec.write_samples(out.tokens.cpu(), self.run_dir / "samples" / f"step_{self.step:08d}")
        self.log.text("samples", self.data.codec.decode(out.tokens[0].cpu()), self.step)
        return path

    def fit(self) -> TrainResult:
        """Train until ``train.steps``, or until SIGINT/SIGTERM (then save and stop cleanly); release the run."""
        try:
            return self._fit()
        finally:
            self.forward = self.model  # DDP is freed while the process group lives (else exit can hang)
            if self.world.is_main:
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
        with _stop_flag(second_interrupt_aborts=not self.world.distributed) as flag:
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
                        if self.log is not None:
                            self.log.scalars("train", metrics, self.step)
                        bar.set_postfix(
                            loss=f"{metrics['loss']:.3f}",
                            bpt=f"{metrics['bits_per_token']:.3f}",
                            tok_s=f"{metrics['tokens_per_second']:.0f}",
                            refresh=False,  # the bar refreshes at its own pace (rarely in a log file)
                        )
                    if self.step % self.t.eval_every == 0 or self.step == self.t.steps:
                        last_valid = self.evaluate("valid")
                        if self.log is not None:
                            self.log.scalars("valid", last_valid, self.step)
                    if self.step % self.t.sample_every == 0:
                        self.write_samples()
                    if self.step % self.t.checkpoint_every == 0 or self.step == self.t.steps:
                        self.save()
                    if self.world.any(flag["signal"] is not None):  # a signal to any rank stops them all
                        stopped_by = next(name for name in self.world.gather(flag["signal"]) if name)
                        break
            finally:
                bar.close()
            if stopped_by and not self.world.broadcast(self.world.is_main and self._saved_this_step()):
                self.save()
        if self.log is not None:
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
    world: World | None = None,
    dataset=None,
) -> Trainer:
    """Prepare the data and build the model a validated config describes, and a Trainer for them.

    ``dataset``: the data to train on instead of preparing ``config.data.name`` (a run's own data from the cache,
    :func:`md4.runs.directory.own_dataset`). With several processes rank 0 prepares the data first (:func:`training_data`),
    so the others find it in the cache.
    """
    from md4.data import open_dataset

    world = world or World()
    local_micro_batch(config.train.batch_size, config.train.grad_accum, world.size)  # before any data work
    data = training_data(config, run_dir, resume, checkpoint_step, world.size, dataset) if world.is_main else None
    world.barrier()
    if data is None:
        data = dataset or open_dataset(config.data.name, seq_len=config.data.seq_len, levels=config.data.levels)
    torch.manual_seed(config.train.seed)
    model = build_model(config, DataSpec.of(data))
    return Trainer(config, model, data, run_dir, resume, progress, checkpoint_step, world)


def training_data(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    checkpoint_step: int | None = None,
    processes: int = 1,
    dataset=None,
):
    """Everything a training run checks before it builds its model, and its data: the global batch split over
    ``processes``; on resume, the run's files and the checkpoint's tensor shapes against the config; the data,
    prepared (or ``dataset``), with the train and valid splits checked against their checksums.

    ``md4 train --nproc`` runs it once before it starts the processes, so that bad input is one sentence.
    """
    from md4.data import open_dataset

    local_micro_batch(config.train.batch_size, config.train.grad_accum, processes)
    if resume:
        check_resumable(config, Path(run_dir), checkpoint_step)
    data = dataset or open_dataset(config.data.name, seq_len=config.data.seq_len, levels=config.data.levels)
    prepared = getattr(data, "prepared", None)  # None for in-memory data
    if prepared is not None:
        for split in ("train", "valid"):  # a split changed on disk since it was prepared is refused
            prepared.verify(split)
    return data


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


def train(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    checkpoint_step: int | None = None,
    world: World | None = None,
) -> TrainResult:
    """Prepare the data, build the model and train; the entry point behind ``md4 train``.

    ``config`` has been validated whole (:func:`md4.config.validate`) before any data is prepared.
    """
    return build_trainer(config, run_dir, resume, progress, checkpoint_step, world).fit()
