"""A training time budget (``train.time_limit``): how many steps fit, planned once from the measured step time, and
when the time is up.

The learning-rate schedule (warmup, then cosine decay) needs the run's length. With a budget, the run measures its
step time over its first steps (the first step, which pays one-off costs, left out), then fixes the length once:
the steps that fit in the time left, less the periodic evaluations' share, at most ``train.steps``. The length is
kept in every later checkpoint, so a resumed run follows the same schedule. Training also stops at the first step
boundary past the budget, whatever the plan said (a slower machine, a busy one), with a checkpoint. The warmup
of a planned run is at most a tenth of its length (:func:`planned_warmup`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PLAN_AFTER_STEPS = 10  # steps measured before the length is fixed (the first one not counted)
SAFETY = 0.97  # the share of the remaining time the plan fills: the rest absorbs noise between steps
WARMUP_SHARE = 10  # a planned run warms up for at most 1/10 of its steps
EVAL_COST = 1 / 3  # one evaluation batch against one training step of the same batch: a forward pass alone


def planned_warmup(configured: int, planned: int) -> int:
    """The warmup of a run whose length a budget planned: ``train.warmup_steps``, but at most a tenth of the run,
    so that a short budget still reaches the peak rate (a function of the plan alone: a resume gets the same)."""
    return min(configured, max(1, planned // WARMUP_SHARE))


@dataclass
class TimeBudget:
    """``minutes`` of training for a run at ``start_step`` that may go on to ``max_steps``; ``planned``: a length
    fixed by an earlier session (a resume), else None until :meth:`plan` fixes it."""

    minutes: float
    start_step: int
    max_steps: int
    eval_every: int
    eval_batches: int
    planned: int | None = None
    clock: Callable[[], float] = time.monotonic
    _ends: list[tuple[int, float]] = field(default_factory=list)  # (step, time) at the first steps' ends

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def exhausted(self) -> bool:
        """Whether the budget is spent: training stops at this step boundary."""
        return self.elapsed() >= self.seconds

    def plan(self, step: int) -> int | None:
        """After step ``step`` ends: the run's length when it is fixed now (once), else None."""
        if self.planned is not None:
            return None
        self._ends.append((step, self.clock()))
        measured = len(self._ends) - 1  # steps timed, the first one's end being the start
        if measured < PLAN_AFTER_STEPS and step < self.max_steps:
            return None
        (first_step, first_time), (last_step, last_time) = self._ends[0], self._ends[-1]
        per_step = (last_time - first_time) / max(1, last_step - first_step)
        per_step *= 1 + self.eval_batches * EVAL_COST / self.eval_every  # the periodic evaluations' share
        left = max(0.0, self.seconds - self.elapsed()) * SAFETY
        self.planned = min(self.max_steps, step + math.floor(left / max(per_step, 1e-9)))
        self.planned = max(self.planned, step)
        return self.planned
