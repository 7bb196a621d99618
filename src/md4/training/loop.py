"""The training loop: steps until ``train.steps`` with the metrics logged, the bound evaluated, samples written and
checkpoints saved at their intervals, and a clean stop (a checkpoint, then return) on SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from md4.config import ConfigError, TrainConfig
from md4.distributed import World
from md4.runs.metrics_log import MetricsLog
from md4.training.budget import TimeBudget
from md4.training.state import TrainState

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


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by: str | None  # "SIGINT" or "SIGTERM" when a signal stopped training (a checkpoint was saved)
    valid_bits_per_token: float | None
    tokens_per_second: float
    seconds: float
    out_of_time: bool = False  # train.time_limit ended training before its planned length (a checkpoint was saved)
    planned_steps: int | None = None  # the length train.time_limit planned

    @property
    def interrupted(self) -> bool:
        return self.stopped_by is not None


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


class Steps(Protocol):
    """What the loop drives: a :class:`md4.training.trainer.Trainer`."""

    t: TrainConfig
    world: World
    run_dir: Path
    progress: bool
    log: MetricsLog | None
    state: TrainState

    def train_step(self, stop: bool = False) -> dict[str, float]: ...

    def evaluate(self, split: str = "valid") -> dict[str, Any]: ...

    def write_samples(self) -> Path | None: ...

    def save(self) -> Path | None: ...

    def plan_length(self, steps: int) -> None: ...


class MetricsWindow:
    """The train metrics between two log lines: their means, the last learning rate, the tokens per second."""

    def __init__(self, tokens_seen: int):
        self.time, self.tokens, self.rows = time.time(), tokens_seen, []

    def add(self, metrics: dict[str, float]) -> None:
        self.rows.append(metrics)

    def close(self, tokens_seen: int) -> dict[str, float]:
        """The interval's metrics; a new interval starts."""
        now = time.time()
        metrics = {k: sum(m[k] for m in self.rows) / len(self.rows) for k in self.rows[0]}  # interval means
        metrics["lr"] = self.rows[-1]["lr"]
        metrics["tokens_per_second"] = (tokens_seen - self.tokens) / max(now - self.time, 1e-9)
        metrics["tokens"] = tokens_seen
        self.time, self.tokens, self.rows = now, tokens_seen, []
        return metrics


def progress_bar(t: TrainConfig, step: int, enabled: bool) -> tqdm:
    """The bar of the steps; a log file gets a line per refresh, so it refreshes rarely when stderr is not a
    terminal."""
    refresh = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(
        total=t.steps,
        initial=step,
        disable=not enabled,
        dynamic_ncols=True,
        desc="train",
        mininterval=refresh,
        maxinterval=max(10.0, refresh),
    )


def after_step(trainer: Steps, window: MetricsWindow, bar: tqdm) -> dict[str, Any] | None:
    """What is due after a step: a log line, the bound on the valid split (returned), samples, a checkpoint."""
    t, step, valid = trainer.t, trainer.state.step, None
    if step % t.log_every == 0 or step == t.steps:
        metrics = window.close(trainer.state.tokens_seen)
        if trainer.log is not None:
            trainer.log.scalars("train", metrics, step)
        bar.set_postfix(
            loss=f"{metrics['loss']:.3f}",
            bpt=f"{metrics['bits_per_token']:.3f}",
            tok_s=f"{metrics['tokens_per_second']:.0f}",
            refresh=False,  # the bar refreshes at its own pace (rarely in a log file)
        )
    if step % t.eval_every == 0 or step == t.steps:
        valid = trainer.evaluate("valid")
        if trainer.log is not None:
            trainer.log.scalars("valid", valid, step)
    if step % t.sample_every == 0:
        trainer.write_samples()
    if step % t.checkpoint_every == 0 or step == t.steps:
        trainer.save()
    return valid


def run_loop(trainer: Steps) -> TrainResult:
    """Train until ``train.steps``, or until a signal to any rank (then every rank stops, with a checkpoint).

    The ranks agree to stop in the step's own all-reduce (no collective of its own): every rank stops after the
    first step whose all-reduce began after a signal to any of them; one process stops after the step it was
    signalled in.
    """
    state, world = trainer.state, trainer.world
    start_time, start_tokens = time.time(), state.tokens_seen
    window = MetricsWindow(state.tokens_seen)
    last_valid = None
    stopped_by, out_of_time = None, False
    budget = time_budget(trainer)
    bar = progress_bar(trainer.t, state.step, trainer.progress)
    if trainer.t.steps == state.step == 0:  # nothing to train: the initial (pretrained) weights are the checkpoint
        trainer.save()
    with _stop_flag(second_interrupt_aborts=not world.distributed) as flag:
        try:
            while state.step < trainer.t.steps:
                late = budget is not None and world.is_main and budget.exhausted()  # rank 0's clock decides
                metrics = trainer.train_step(stop=flag["signal"] is not None or late)
                any_rank = metrics.pop("stop") > 0  # the vote the step's all-reduce carried
                window.add(metrics)
                bar.update(1)
                if budget is not None:
                    follow_plan(trainer, budget, bar)
                valid = after_step(trainer, window, bar)
                if valid is not None:
                    last_valid = valid
                if (
                    any_rank if world.distributed else flag["signal"] is not None or late
                ) and state.step < trainer.t.steps:
                    stopped_by = next((name for name in world.gather(flag["signal"]) if name), None)
                    out_of_time = stopped_by is None
                    break
        finally:
            bar.close()
        if out_of_time:  # the budget ends the run here: its last bound, as at the planned end
            if state.planned_steps is None:  # spent before the plan: the run is as long as the budget allowed
                trainer.plan_length(state.step)
            last_valid = final_evaluation(trainer)
        if (stopped_by or out_of_time) and not world.broadcast(
            world.is_main and state.saved_this_step(trainer.run_dir)
        ):
            trainer.save()
    if trainer.log is not None and state.step > 0:  # train.steps=0 logged nothing to plot
        trainer.log.plot(trainer.run_dir / "curves.png")
    seconds = time.time() - start_time
    return TrainResult(
        trainer.run_dir,
        state.step,
        stopped_by,
        None if last_valid is None else last_valid["bits_per_token"],
        (state.tokens_seen - start_tokens) / max(seconds, 1e-9),
        seconds,
        out_of_time,
        state.planned_steps,
    )


def time_budget(trainer: Steps) -> TimeBudget | None:
    """The time budget of this session (``train.time_limit``), with the length an earlier session planned."""
    t = trainer.t
    if t.time_limit is None:
        return None
    return TimeBudget(
        t.time_limit, trainer.state.step, t.steps, t.eval_every, t.eval_batches, trainer.state.planned_steps
    )


def follow_plan(trainer: Steps, budget: TimeBudget, bar: tqdm) -> None:
    """Fix the run's length once the budget has measured enough steps (rank 0's plan, on every rank)."""
    planned = budget.plan(trainer.state.step)  # not None at the same step on every rank
    if planned is not None:
        planned = trainer.world.broadcast(planned)
        trainer.plan_length(planned)
        bar.total = planned
        bar.refresh()


def final_evaluation(trainer: Steps) -> dict[str, Any]:
    """The bound on the valid split at the step the budget ended training, logged."""
    valid = trainer.evaluate("valid")
    if trainer.log is not None:
        trainer.log.scalars("valid", valid, trainer.state.step)
    return valid
