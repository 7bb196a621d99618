"""What a checkpoint holds: the model, the EMA, the optimizer, the step, the tokens seen and the generators (torch's
global one, the data's, the noise's) go out and come back exactly; damaged parts are clear errors."""

import pytest
import torch

from md4.distributed import World
from md4.runs.checkpoints import Checkpoint, CheckpointError, read_checkpoint
from md4.training import EMA
from md4.training.state import TrainState


def fresh_state(seed: int = 0, width: int = 3) -> TrainState:
    torch.manual_seed(seed)
    model = torch.nn.Linear(width, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return TrainState.fresh(model, EMA(model, 0.5), optimizer, seed, torch.device("cpu"))


def trained_state() -> TrainState:
    state = fresh_state()
    state.model(torch.randn(4, 3, generator=state.data_generator)).sum().backward()
    state.optimizer.step()
    state.ema.update(state.model)
    torch.rand(2, generator=state.noise_generator)
    state.step, state.tokens_seen = 5, 40
    return state


def next_draws(state: TrainState) -> list[torch.Tensor]:
    return [
        torch.rand(3),
        torch.rand(3, generator=state.data_generator),
        torch.rand(3, generator=state.noise_generator),
    ]


def test_generators_are_seeded_from_the_run_seed():
    state = fresh_state(seed=7)
    assert state.step == 0 and state.tokens_seen == 0
    assert torch.equal(state.data_generator.get_state(), torch.Generator().manual_seed(8).get_state())
    assert torch.equal(state.noise_generator.get_state(), torch.Generator().manual_seed(9).get_state())


def test_a_checkpoint_round_trips_everything_a_resume_needs(tmp_path):
    with torch.random.fork_rng():
        state = trained_state()
        path = state.save(tmp_path, World(), keep=2)
        assert path.name == "step_00000005" and state.saved_this_step(tmp_path)
        expected = next_draws(state)
        ckpt = read_checkpoint(tmp_path)
        assert set(ckpt.rng) >= {"torch", "data", "noise"} and ckpt.state["tokens_seen"] == 40
        resumed = fresh_state(seed=1)
        resumed.restore_weights(ckpt)
        resumed.restore_generators(ckpt)
        assert (resumed.step, resumed.tokens_seen) == (5, 40)
        for name, value in state.model.state_dict().items():
            assert torch.equal(resumed.model.state_dict()[name], value)
            assert torch.equal(resumed.ema.module.state_dict()[name], state.ema.module.state_dict()[name])
        before, after = state.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
        assert all(torch.equal(before[i]["exp_avg"], after[i]["exp_avg"]) for i in before)
        assert all(torch.equal(a, b) for a, b in zip(next_draws(resumed), expected, strict=True))


def test_other_ranks_save_nothing_and_an_older_step_is_not_this_one(tmp_path):
    state = trained_state()
    assert state.save(tmp_path, World(rank=1, size=2), keep=2) is None and not state.saved_this_step(tmp_path)
    state.save(tmp_path, World(), keep=2)
    state.step = 6
    assert not state.saved_this_step(tmp_path)


def test_a_checkpoint_from_before_the_noise_generator_keeps_the_fresh_one(tmp_path):
    with torch.random.fork_rng():
        state = trained_state()
        state.save(tmp_path, World(), keep=2)
        ckpt = read_checkpoint(tmp_path)
        del ckpt.rng["noise"]
        resumed = fresh_state()
        resumed.restore_generators(ckpt)
        assert torch.equal(resumed.noise_generator.get_state(), fresh_state().noise_generator.get_state())


def test_damaged_generator_states_are_a_clear_error(tmp_path):
    ckpt = Checkpoint(tmp_path, {}, {}, {}, {"torch": "not a state", "data": None}, {"step": 1})
    with pytest.raises(CheckpointError, match=r"trainer.pt holds damaged generator states \(AttributeError\)"):
        fresh_state().restore_generators(ckpt)


def test_an_optimizer_state_of_another_model_is_a_clear_error(tmp_path):
    state = trained_state()
    state.save(tmp_path, World(), keep=2)
    ckpt = read_checkpoint(tmp_path)
    other = fresh_state(width=3)
    other.optimizer = torch.optim.AdamW([*other.model.parameters(), torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(CheckpointError, match="holds an optimizer state that does not fit this model"):
        other.restore_weights(ckpt)
