"""What a checkpoint holds: the model, the EMA, the optimizer, the step, the tokens seen and the generators (torch's
global one, the data's, the noise's) go out and come back exactly; damaged parts are clear errors."""

import warnings

import pytest
import torch

from md4.distributed import World, derived_seed
from md4.notices import MD4Warning
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


def cuda_run_checkpoint(tmp_path, gpus: int = 8) -> Checkpoint:
    """The generator states a CUDA run of ``gpus`` GPUs saves at step 5: CPU states for torch's global generator
    and the data, a 16-byte Philox state tagged cuda for the noise, and one CUDA state per GPU."""
    cpu = torch.Generator().manual_seed(3).get_state()
    philox = torch.arange(16, dtype=torch.uint8)
    rng = {"torch": cpu, "data": cpu, "noise": philox, "noise_device": "cuda", "cuda": [philox] * gpus}
    return Checkpoint(tmp_path, {}, {}, {}, rng, {"step": 5})


def test_a_checkpoint_tags_the_noise_generator_with_its_device(tmp_path):
    trained_state().save(tmp_path, World(), keep=2)
    assert read_checkpoint(tmp_path).rng["noise_device"] == "cpu"


def test_the_noise_of_a_cuda_run_resumed_on_the_cpu_is_seeded_from_seed_and_step(tmp_path):
    state = fresh_state(seed=7)
    state.step = 5
    with pytest.warns(MD4Warning, match="noise generator ran on cuda and this run trains on cpu"):
        state.restore_generators(cuda_run_checkpoint(tmp_path))
    again = fresh_state(seed=7)
    again.step = 5
    with pytest.warns(MD4Warning):
        again.restore_generators(cuda_run_checkpoint(tmp_path))
    expected = torch.Generator().manual_seed(derived_seed(9, 5)).get_state()
    assert torch.equal(state.noise_generator.get_state(), expected)
    assert torch.equal(state.data_generator.get_state(), torch.Generator().manual_seed(3).get_state())


class FakeCudaGenerator:
    """Stands in for a CUDA generator on a machine without one: records what it is given."""

    device = torch.device("cuda", 0)

    def __init__(self):
        self.calls = []

    def set_state(self, state):
        self.calls.append(("set_state", state.numel()))

    def manual_seed(self, seed):
        self.calls.append(("manual_seed", seed))
        return self


def test_the_noise_of_a_cpu_run_resumed_on_cuda_is_seeded_and_a_cuda_one_set(tmp_path):
    state = trained_state()
    state.save(tmp_path, World(), keep=2)
    ckpt = read_checkpoint(tmp_path)
    state.noise_generator = FakeCudaGenerator()
    with pytest.warns(MD4Warning, match="ran on cpu and this run trains on cuda"):
        state.restore_generators(ckpt)
    assert state.noise_generator.calls == [("manual_seed", derived_seed(2, 5))]
    state.noise_generator = FakeCudaGenerator()
    state.restore_generators(cuda_run_checkpoint(tmp_path))  # the same kind of device: its state, no warning
    assert state.noise_generator.calls == [("set_state", 16)]
    untagged = cuda_run_checkpoint(tmp_path)
    del untagged.rng["noise_device"]  # before the tag, a 16-byte state is a CUDA generator's
    state.noise_generator = FakeCudaGenerator()
    state.restore_generators(untagged)
    assert state.noise_generator.calls == [("set_state", 16)]


def test_cuda_states_of_gpus_that_are_not_here_are_left_out(tmp_path, monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(device))
    state = fresh_state()
    state.noise_generator = FakeCudaGenerator()
    with pytest.warns(MD4Warning, match="CUDA generator states of 8 GPUs and 2 are visible here"):
        state.restore_generators(cuda_run_checkpoint(tmp_path))
    assert restored == [0, 1]


def test_an_untagged_checkpoint_still_resumes_exactly(tmp_path):
    with torch.random.fork_rng():
        state = trained_state()
        state.save(tmp_path, World(), keep=2)
        expected = next_draws(state)
        ckpt = read_checkpoint(tmp_path)
        del ckpt.rng["noise_device"]  # as md4 wrote checkpoints before the tag
        resumed = fresh_state(seed=1)
        resumed.restore_weights(ckpt)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            resumed.restore_generators(ckpt)
        assert all(torch.equal(a, b) for a, b in zip(next_draws(resumed), expected, strict=True))
