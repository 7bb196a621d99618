"""A training run's lifecycle in its folder: the claim and its lock, a start that never overwrites a run, and the
resume policy (the same config up to the resumable keys, the same data, later checkpoints moved aside)."""

import json

import pytest
import torch
from tiny_training import tiny_config, tiny_data

from md4.config import ConfigError
from md4.distributed import World
from md4.models import DataSpec
from md4.notices import MD4Warning
from md4.runs.checkpoints import list_checkpoints
from md4.runs.directory import RunError
from md4.training import EMA
from md4.training.lifecycle import RESUMABLE_KEYS, RunLifecycle, check_resumable, config_differences
from md4.training.state import TrainState


def lifecycle(run_dir, *overrides, data=None):
    data = data or tiny_data()
    return RunLifecycle(run_dir, tiny_config(*overrides), data, DataSpec.of(data), World())


def state_at(step: int) -> TrainState:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    state = TrainState.fresh(model, EMA(model, 0.5), torch.optim.AdamW(model.parameters()), 0, torch.device("cpu"))
    state.step = step
    return state


def test_a_claimed_folder_is_locked_until_released(tmp_path):
    run = lifecycle(tmp_path / "new" / "run")
    lock = run.claim()
    assert (tmp_path / "new" / "run").is_dir()
    with pytest.raises(RunError, match=r"is being trained by another process \(PID \d+\)"):
        run.claim()
    lock.release()
    run.claim().release()


def test_a_claim_refuses_a_file_and_a_folder_md4_did_not_make(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="is a file, not a folder"):
        lifecycle(tmp_path / "file").claim()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RunError, match="is not empty and is not an md4 run"):
        lifecycle(tmp_path / "mine").claim()


def test_a_start_writes_the_run_files_and_refuses_a_folder_holding_a_run(tmp_path):
    run = lifecycle(tmp_path)
    run.start()
    assert json.loads((tmp_path / "data.json").read_text())["data_shape"] == [8]
    state_at(3).save(tmp_path, World(), keep=2)
    with pytest.raises(RunError, match="already holds a run; pass --resume to continue it"):
        run.start()


def test_only_the_resumable_keys_may_change():
    old = tiny_config("train.steps=10", "train.lr=0.001")
    new = tiny_config("train.steps=20", "train.eval_every=7", "train.lr=0.002", "net.dim=48")
    assert config_differences(old, new) == ["net.dim (32 -> 48)", "train.lr (0.001 -> 0.002)"]
    assert {"steps", "device", "parallel", "activation_checkpointing"} <= RESUMABLE_KEYS and "lr" not in RESUMABLE_KEYS


def test_a_resume_refuses_another_config_before_any_model_is_built(tmp_path):
    lifecycle(tmp_path).start()
    check_resumable(tiny_config("train.steps=99"), tmp_path, None)
    with pytest.raises(ConfigError, match=r"Cannot resume .* with a different config: net.dim \(32 -> 48\)"):
        check_resumable(tiny_config("net.dim=48"), tmp_path, None)


def test_a_resume_refuses_other_data(tmp_path):
    lifecycle(tmp_path).start()
    with pytest.raises(ConfigError, match="the data's vocabulary or shape differs"):
        lifecycle(tmp_path, data=tiny_data(vocab_size=6)).resume(state_at(0), None, torch.device("cpu"))


def test_a_run_without_a_checkpoint_resumes_from_step_zero(tmp_path):
    lifecycle(tmp_path).start()
    state = state_at(0)
    with pytest.warns(MD4Warning, match="has no checkpoint yet, so training starts from step 0"):
        lifecycle(tmp_path).resume(state, None, torch.device("cpu"))
    assert state.step == 0


def test_a_resume_from_an_older_step_moves_the_later_checkpoints_aside(tmp_path):
    run = lifecycle(tmp_path, "train.steps=10")
    run.start()
    for step in (2, 4):
        state_at(step).save(tmp_path, World(), keep=5)
    state = state_at(0)
    with pytest.warns(MD4Warning, match="Checkpoints after step 2 were moved to"):
        run.resume(state, 2, torch.device("cpu"))
    assert state.step == 2 and [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002"]


def test_a_run_past_its_steps_resumes_with_nothing_to_train(tmp_path):
    run = lifecycle(tmp_path, "train.steps=3")
    run.start()
    state_at(4).save(tmp_path, World(), keep=2)
    state = state_at(0)
    fresh_data = state.data_generator.get_state()
    with pytest.warns(MD4Warning, match=r"is at step 4 already, past train.steps=3, so there is nothing to train"):
        run.resume(state, None, torch.device("cpu"))
    assert state.step == 4 and torch.equal(state.data_generator.get_state(), fresh_data)
