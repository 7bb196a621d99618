"""The step and the loop: one optimizer step over its micro-batches, a refused divergent step, the intervals of
logs, evaluations, samples and checkpoints, and the clean stop on a signal."""

import math
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from tiny_training import release, tiny_data, tiny_trainer

from md4.config import TrainConfig
from md4.distributed import World
from md4.training import TrainingDiverged, learning_rate
from md4.training.loop import MetricsWindow, _stop_flag, run_loop


class CountingRows:
    """Wraps a dataset and records the rows of each training batch drawn."""

    def __init__(self, data):
        self.data, self.rows = data, []

    def __getattr__(self, name):
        return getattr(self.data, name)

    def train_batch(self, rows, generator):
        self.rows.append(rows)
        return self.data.train_batch(rows, generator)


def test_a_step_trains_the_weights_and_their_average(tmp_path):
    trainer = tiny_trainer(tmp_path / "run", "train.grad_accum=2", data=CountingRows(tiny_data()))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    average = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    metrics = trainer.train_step()
    release(trainer)
    assert trainer.data.rows == [2, 2] and trainer.tokens_seen == 4 * 8 and trainer.step == 1
    assert metrics["lr"] == learning_rate(0, trainer.t) and math.isfinite(metrics["grad_norm"])
    assert {"loss", "nelbo", "bits_per_token"} <= set(metrics)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [metrics["lr"]] * 2
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    averaged = [k for k, v in trainer.ema.module.state_dict().items() if not torch.equal(v, average[k])]
    assert changed and averaged == changed


def test_a_divergent_step_is_refused_before_the_weights_change(tmp_path):
    trainer = tiny_trainer(tmp_path / "run")
    weight = next(trainer.model.parameters())
    with torch.no_grad():
        weight.fill_(float("nan"))
    others = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match=r"diverged at step 1 \(loss nan, .*without applying or saving"):
        trainer.train_step()
    release(trainer)
    assert trainer.step == 0 and all(p.grad is None for p in trainer.model.parameters())
    after = trainer.model.state_dict()
    assert all(torch.equal(after[k], v) or v.isnan().all() for k, v in others.items())


class Scripted:
    """What the loop drives, with scripted steps: records the logs, evaluations, samples and checkpoints."""

    def __init__(self, run_dir, stop_at=None, **train):
        self.t, self.world, self.run_dir, self.progress = TrainConfig(**train), World(), run_dir, False
        self.state = SimpleNamespace(
            step=0, tokens_seen=0, planned_steps=None, saved_this_step=lambda _: self.saved == self.state.step
        )
        self.log, self.events, self.stop_at, self.saved = self, [], stop_at, None

    def train_step(self, stop=False):
        self.state.step += 1
        self.state.tokens_seen += 10
        if self.state.step == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": float(self.state.step), "bits_per_token": 1.0, "lr": 0.1 * self.state.step, "stop": stop}

    def scalars(self, split, values, step):
        self.events.append((split, step, values["loss"], values["lr"]) if split == "train" else (split, step))

    def plot(self, path):
        self.events.append(("plot", path.name))

    def evaluate(self, split="valid"):
        self.events.append(("evaluate", self.state.step))
        return {"bits_per_token": self.state.step / 10}

    def write_samples(self):
        self.events.append(("samples", self.state.step))

    def save(self):
        self.events.append(("save", self.state.step))
        self.saved = self.state.step


def test_the_loop_logs_evaluates_samples_and_saves_at_their_intervals(tmp_path):
    run = Scripted(tmp_path, steps=6, log_every=2, eval_every=3, sample_every=4, checkpoint_every=5)
    result = run_loop(run)
    assert run.events == [
        ("train", 2, 1.5, pytest.approx(0.2)),
        ("evaluate", 3),
        ("valid", 3),
        ("train", 4, 3.5, pytest.approx(0.4)),
        ("samples", 4),
        ("save", 5),
        ("train", 6, 5.5, pytest.approx(0.6)),
        ("evaluate", 6),
        ("valid", 6),
        ("save", 6),
        ("plot", "curves.png"),
    ]
    assert (result.step, result.stopped_by, result.valid_bits_per_token) == (6, None, 0.6)


def test_a_signal_stops_the_loop_with_one_checkpoint(tmp_path):
    run = Scripted(tmp_path, stop_at=2, steps=6, log_every=10, eval_every=10, sample_every=10, checkpoint_every=2)
    result = run_loop(run)
    assert result.interrupted and result.stopped_by == "SIGTERM" and result.step == 2
    assert run.events == [("save", 2), ("plot", "curves.png")]
    run = Scripted(tmp_path, stop_at=3, steps=6, log_every=10, eval_every=10, sample_every=10, checkpoint_every=2)
    assert run_loop(run).step == 3 and run.events == [("save", 2), ("save", 3), ("plot", "curves.png")]


def test_the_stop_flag_names_the_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with _stop_flag() as flag:
        assert flag["signal"] is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_log_line_holds_the_means_of_its_interval():
    window = MetricsWindow(tokens_seen=100)
    window.add({"loss": 1.0, "lr": 0.1})
    window.add({"loss": 2.0, "lr": 0.2})
    metrics = window.close(tokens_seen=300)
    assert metrics["loss"] == 1.5 and metrics["lr"] == 0.2 and metrics["tokens"] == 300
    assert metrics["tokens_per_second"] > 0 and window.rows == [] and window.tokens == 300
