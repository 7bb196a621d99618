"""train.time_limit: the run's length planned once from the measured step time, the warmup within it, the stop
at the budget with a checkpoint, and a resume that follows the same schedule."""

from __future__ import annotations

import json
import math

import pytest
from tiny_training import tiny_trainer

from md4.training.budget import PLAN_AFTER_STEPS, SAFETY, TimeBudget, planned_warmup
from md4.training.optimizer import learning_rate


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_plan_fills_the_time_left_at_the_measured_step_time():
    clock = Clock()
    budget = TimeBudget(1.0, 0, 10_000, eval_every=50, eval_batches=5, clock=clock)
    clock.now += 2.0  # the first step pays one-off costs: not measured
    assert budget.plan(1) is None
    for step in range(2, PLAN_AFTER_STEPS + 1):
        clock.now += 0.5
        assert budget.plan(step) is None
    clock.now += 0.5
    planned = budget.plan(PLAN_AFTER_STEPS + 1)
    per_step = 0.5 * (1 + 5 / 3 / 50)
    left = 60.0 - (2.0 + 0.5 * PLAN_AFTER_STEPS)
    assert planned == PLAN_AFTER_STEPS + 1 + math.floor(left * SAFETY / per_step)
    assert budget.plan(PLAN_AFTER_STEPS + 2) is None  # fixed once
    assert not budget.exhausted()
    clock.now += left
    assert budget.exhausted()


def test_the_plan_never_passes_train_steps_and_a_resumed_plan_stays():
    clock = Clock()
    short = TimeBudget(60.0, 0, 30, eval_every=10, eval_batches=1, clock=clock)
    planned = [short.plan(step) for step in range(1, PLAN_AFTER_STEPS + 2)]
    assert planned[-1] == 30 and planned[:-1] == [None] * PLAN_AFTER_STEPS
    resumed = TimeBudget(1.0, 40, 100, eval_every=10, eval_batches=1, planned=77, clock=clock)
    assert all(resumed.plan(step) is None for step in range(41, 60))


@pytest.mark.parametrize(("configured", "planned", "warmup"), [(100, 68, 6), (100, 5000, 100), (100, 3, 1), (0, 50, 0)])
def test_a_planned_run_warms_up_for_at_most_a_tenth_of_it(configured, planned, warmup):
    assert planned_warmup(configured, planned) == warmup


def test_a_budgeted_run_stops_with_its_plan_in_the_checkpoint_and_resumes_on_it(tmp_path):
    run = tmp_path / "run"
    budget = ["train.time_limit=0.1", "train.steps=100000", "train.warmup_steps=50", "train.checkpoint_every=100000"]
    result = tiny_trainer(run, *budget).fit()
    planned = result.planned_steps
    assert planned is not None and result.step <= planned < 100000  # planned, or cut to the steps made in time
    state = json.loads(next((run / "checkpoints").iterdir()).joinpath("state.json").read_text())
    assert state["planned_steps"] == planned and state["step"] == result.step
    assert result.out_of_time or result.step == planned
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(row["split"] == "valid" and row["step"] == result.step for row in log)  # the bound at the end
    resumed = tiny_trainer(run, *budget, resume=True)
    try:
        assert resumed.t.steps == planned and resumed.t.warmup_steps == planned_warmup(50, planned)
        end = learning_rate(planned, resumed.t)  # the schedule ends at the plan
        assert end == pytest.approx(resumed.t.lr * resumed.t.min_lr_ratio)
        assert end < learning_rate(planned - 1, resumed.t)
    finally:
        resumed.log.close()
        resumed.lock.release()
