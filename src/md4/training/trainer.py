"""The Trainer: the parts of a training run put together, and how a validated config becomes one.

The trainer is written against two contracts so other objectives and data slot in: the model kind's
(:mod:`md4.core.kind_contract`: its ``forward`` is the training loss, ``nelbo`` its bound, ``own_learning_rates``
the parameters it trains at their own rate; :func:`md4.sample` draws the samples; its whole state dict is saved
and averaged, so learned schedules slot in) and the data's (:class:`md4.data.Dataset`: batches of
``(x, labels or None)`` of any shape, a codec).

Its parts: the run folder's lifecycle (:mod:`md4.training.lifecycle`), what a checkpoint holds
(:mod:`md4.training.state`), the optimiser (:mod:`md4.training.optimizer`), the parallel layout
(:mod:`md4.training.parallel`) and the loop (:mod:`md4.training.loop`). md4 0.2's ``md4.train`` is this module, so
its public names stay importable here.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from md4 import distributed
from md4.config import Config
from md4.core.tokens import ranges_checked
from md4.device import autocast, resolve_precision, use_tf32
from md4.distributed import World
from md4.evaluate import characters_per_token, estimate_nelbo
from md4.models import DataSpec, build_model
from md4.runs.checkpoints import list_checkpoints
from md4.runs.metrics_log import MetricsLog
from md4.runs.pretrained import Pretrained
from md4.sampling import sample
from md4.sampling.labels import class_labels
from md4.training.budget import planned_warmup
from md4.training.lifecycle import RESUMABLE_KEYS, RunLifecycle, check_resumable, config_differences
from md4.training.loop import STOP_SIGNALS, TrainingDiverged, TrainResult, local_micro_batch, run_loop
from md4.training.memory import fit_to_device
from md4.training.optimizer import (
    EMA,
    build_optimizer,
    fused_optimizer,
    learning_rate,
    parameter_groups,
    set_learning_rate,
)
from md4.training.parallel import Parallel, training_device
from md4.training.prefetch import rank_batches
from md4.training.state import TrainState

__all__ = [
    "EMA",
    "RESUMABLE_KEYS",
    "STOP_SIGNALS",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_trainer",
    "check_resumable",
    "config_differences",
    "fused_optimizer",
    "learning_rate",
    "local_micro_batch",
    "parameter_groups",
    "train",
    "training_data",
]


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
        self.micro_batch = local_micro_batch(config.train.batch_size, config.train.grad_accum, self.world.size)
        self.device = training_device(config.train.device, self.world)
        # train.precision=auto made concrete here, once; config.json keeps "auto", so a resume elsewhere re-decides
        self.t = replace(config.train, precision=resolve_precision(self.device, config.train.precision))
        use_tf32(self.device, self.t.tf32)
        self.lifecycle = RunLifecycle(self.run_dir, config, data, self.spec, self.world)
        self.lock = self.lifecycle.claim() if self.world.is_main else None
        try:
            model = model.to(self.device)
            self.progress = progress and self.world.is_main
            ema = EMA(model, self.t.ema_decay)
            self.parallel = Parallel.of(self.world, self.device, self.t.parallel)
            self.sharded = self.parallel.sharded
            self.parallel.shard(model, ema.module, self.t.precision)
            optimizer = build_optimizer(model, self.t, self.device, self.sharded)
            self.state = TrainState.fresh(model, ema, optimizer, self.t.seed, self.device)
            if self.world.is_main:
                self.lifecycle.clean()
            if resume:
                self.lifecycle.resume(self.state, checkpoint_step, self.device)
                if self.t.time_limit is not None and self.state.planned_steps is not None:
                    self.plan_length(self.state.planned_steps)
            elif self.world.is_main:
                self.lifecycle.start()
            self.parallel.seed_rank_stream(self.t.seed, self.state.step)
            self.forward = self.parallel.wrap(model, self.t.activation_checkpointing, self.t.compile)
            self.shard, self.batches = rank_batches(data, self.micro_batch, self.world, self.state, self.device)
            self.log = MetricsLog(self.run_dir, start_step=self.state.step) if self.world.is_main else None
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    @property
    def model(self) -> torch.nn.Module:
        return self.state.model

    @property
    def ema(self) -> EMA:
        return self.state.ema

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.state.optimizer

    @property
    def data_generator(self) -> torch.Generator:
        return self.state.data_generator

    @property
    def noise_generator(self) -> torch.Generator:
        return self.state.noise_generator

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def tokens_seen(self) -> int:
        return self.state.tokens_seen

    def plan_length(self, steps: int) -> None:
        """Fix the run's length (the learning-rate schedule's end) at ``steps``: a time budget's plan, kept in every
        later checkpoint so that a resume follows the same schedule."""
        self.state.planned_steps = steps
        self.t = replace(self.t, steps=steps, warmup_steps=planned_warmup(self.t.warmup_steps, steps))

    def save(self) -> Path | None:
        """Rank 0 writes a checkpoint of the step (:meth:`TrainState.save`); other ranks return None."""
        return self.state.save(self.run_dir, self.world, self.t.keep_checkpoints)

    def train_step(self, stop: bool = False) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches, each with fresh data and noise.

        ``stop``: this rank was asked to stop; the step's one all-reduce carries it to the others, and the
        returned ``stop`` is 1.0 when any rank was (else 0.0). A non-finite loss or gradient norm raises
        :class:`TrainingDiverged` before the weights change. The host waits for the device once, for the
        metrics, the gradient norm and the stop together.
        """
        state, world = self.state, self.world
        lr = learning_rate(state.step, self.t)
        set_learning_rate(state.optimizer, lr)
        state.model.train()
        sums: dict[str, torch.Tensor] = {}
        for micro in range(self.t.grad_accum):
            x, labels = self.batches.next()  # its ids were checked on the CPU
            last = micro == self.t.grad_accum - 1
            with (
                self.parallel.gradient_sync(state.model, self.forward, last),
                autocast(self.device, self.t.precision),
                ranges_checked(),
            ):
                loss, metrics = self.forward(x, labels=labels, generator=state.noise_generator, shard=self.shard)
            with self.parallel.gradient_sync(state.model, self.forward, last):
                (loss / self.t.grad_accum).backward()
            for key, value in metrics.items():  # means over the micro-batches
                sums[key] = sums.get(key, 0.0) + value.detach().float() / self.t.grad_accum
            state.tokens_seen += x.numel() * world.size
        keys = list(sums)
        stacked = torch.stack([sums[k] for k in keys])
        vote = torch.full((1,), float(stop), dtype=stacked.dtype, device=stacked.device)  # no copy from the host
        means = world.mean(torch.cat([stacked, vote]))  # the vote's mean is above 0 when any rank's is 1
        max_norm = self.t.grad_clip if self.t.grad_clip > 0 else math.inf  # 0: measure the norm, do not clip
        norm = distributed.full_norm(torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm))
        *values, any_stop, grad_norm = torch.cat([means.double(), norm.to(means.device).double().reshape(1)]).tolist()
        sums = dict(zip(keys, values, strict=True))
        total = sums["loss"]
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            state.optimizer.zero_grad(set_to_none=True)
            kept = list_checkpoints(self.run_dir)
            newest = f" and {kept[-1].name} is the newest checkpoint" if kept else ""
            raise TrainingDiverged(
                f"Training diverged at step {state.step + 1} (loss {total}, gradient norm {grad_norm}), so it stopped "
                f"without applying or saving that step{newest}; "
                "lower train.lr or turn on clipping (train.grad_clip=1), then resume or start again."
            )
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.ema.update(state.model)
        state.step += 1
        return {**sums, "lr": lr, "grad_norm": grad_norm, "stop": float(any_stop > 0)}

    def evaluate(self, split: str = "valid", max_batches: int | None = None) -> dict[str, Any]:
        """The EMA model's bound on ``split`` (also per character, for text) in micro-batches of the training
        micro-batch's rows, in fp32 whatever the training precision, as ``md4 eval`` computes it; the ranks share the
        batches and agree on the result (with a sharded model in lockstep, as each forward pass gathers weights from
        all; a bf16 run's sharded blocks are gathered in bf16, so its result says ``precision: bf16-weights``)."""
        batches = self.data.eval_batches(split, self.t.batch_size, max_batches or self.t.eval_batches)
        with distributed.gathered(self.ema.module) as model:
            estimate = estimate_nelbo(
                model,
                batches,
                seed=self.t.seed,
                precision="fp32",
                world=self.world,
                micro_batch=self.micro_batch,
                lockstep=self.sharded,
            )
        estimate = estimate.with_characters(characters_per_token(self.data, split))
        gathered_bf16 = self.sharded and self.t.precision == "bf16"
        return {**estimate.to_dict(), "precision": "bf16-weights" if gathered_bf16 else "fp32"}

    def write_samples(self) -> Path | None:
        """Samples of the EMA model (one per class, in turn, for class-conditional data) into ``samples/``, in the
        run's precision, with the run's ``[sample]`` settings; rank 0 writes them (with a sharded model every rank
        draws the same samples alongside)."""
        if not (self.world.is_main or self.sharded):
            return None
        labels = class_labels(self.model.num_classes, self.t.num_samples, device=self.device)
        with distributed.gathered(self.ema.module) as model, autocast(self.device, self.t.precision):
            out = sample(
                model, self.t.num_samples, labels=labels, seed=self.t.seed + self.step, **self.config.sample.options()
            )
        if not self.world.is_main:
            return None
        path = self.data.codec.write_samples(out.tokens.cpu(), self.run_dir / "samples" / f"step_{self.step:08d}")
        self.log.text("samples", self.data.codec.decode(out.tokens[0].cpu()), self.step)
        return path

    def fit(self) -> TrainResult:
        """Train until ``train.steps``, or until SIGINT/SIGTERM (then save and stop cleanly); release the run."""
        try:
            return run_loop(self)
        finally:
            self.batches.close()
            self.forward = self.model  # DDP is freed while the process group lives (else exit can hang)
            if self.world.is_main:
                self.log.close()
                self.lock.release()


def build_trainer(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    checkpoint_step: int | None = None,
    world: World | None = None,
    dataset=None,
    init: Pretrained | None = None,
) -> Trainer:
    """Prepare the data and build the model a validated config describes, and a Trainer for them.

    ``dataset``: the data to train on instead of preparing ``config.data.name`` (a run's own data from the cache,
    :func:`md4.runs.directory.own_dataset`). ``init``: trained weights the new run starts from (fine-tuning,
    ``md4 train --init``), for data tokenised as theirs were. With several processes rank 0 prepares the data first
    (:func:`training_data`), so the others find it in the cache.
    """
    from md4.data import open_dataset

    world = world or World()
    local_micro_batch(config.train.batch_size, config.train.grad_accum, world.size)  # before any data work
    data = training_data(config, run_dir, resume, checkpoint_step, world.size, dataset) if world.is_main else None
    world.barrier()
    if data is None:
        data = dataset or open_dataset(
            config.data.name, config.data.seq_len, config.data.levels, tokenizer=config.data.tokenizer
        )
    torch.manual_seed(config.train.seed)
    if init is None:
        model = build_model(config, DataSpec.of(data))
    else:  # its weights replace any the network would read itself
        model = config.plan().without_initial_weights().build(DataSpec.of(data))
        init.start(model, data.codec)
    if not resume:  # a resumed run keeps the grad_accum its config records
        config = fit_to_device(config, model, world)
    trainer = Trainer(config, model, data, run_dir, resume, progress, checkpoint_step, world)
    if init is not None and world.is_main:
        init.record(trainer.run_dir)
    return trainer


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
    from md4.data import open_dataset, prepared_of

    local_micro_batch(config.train.batch_size, config.train.grad_accum, processes)
    if resume:
        check_resumable(config, Path(run_dir), checkpoint_step)
    data = dataset or open_dataset(
        config.data.name, config.data.seq_len, config.data.levels, tokenizer=config.data.tokenizer
    )
    prepared = prepared_of(data)  # None for in-memory data
    if prepared is not None:
        for split in ("train", "valid"):  # a split changed on disk since it was prepared is refused
            prepared.verify(split)
    return data


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
