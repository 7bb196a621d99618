"""The training batches drawn ahead on a thread: the same batches and generator states as drawing them in turn,
errors raised by the step that asks, the thread stopped with the run, pinned memory on a GPU; and the token ids
checked on the CPU batch instead of on the device."""

import os
import signal
import threading

import pytest
import torch
from tiny_training import release, tiny_data, tiny_trainer

from md4.core.tokens import check_tokens, ranges_checked
from md4.data import ArrayDataset, DataError, RawCodec
from md4.training.prefetch import Prefetcher

CPU = torch.device("cpu")


def labelled_data(seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    labels = {split: torch.randint(0, 3, (n,), generator=g) for split, n in (("train", 40), ("valid", 8))}
    rows = {split: torch.randint(0, 5, (len(y), 2, 3), generator=g) for split, y in labels.items()}
    return ArrayDataset(rows, RawCodec(5), labels=labels, num_classes=3)


def prefetcher(data, generator, threaded, part=(), rows=6, device=CPU):
    return Prefetcher(data, rows, part, generator, 5, device, labels=True, threaded=threaded)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("md4-prefetch")]


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("part", [(), (slice(2, 5),)])
def test_batches_and_generator_states_are_those_of_drawing_in_turn(threaded, part):
    data, reference = labelled_data(), torch.Generator().manual_seed(3)
    batches = prefetcher(data, torch.Generator().manual_seed(3), threaded, part)
    for _ in range(5):
        x, labels = batches.next()
        want_x, want_labels = data.train_batch(6, reference, *part)
        assert torch.equal(x, want_x) and torch.equal(labels, want_labels)
        assert torch.equal(batches.generator.get_state(), reference.get_state())  # what a checkpoint saves
    batches.close()


def test_a_generator_restored_meanwhile_drops_the_draw_made_ahead():
    data, generator = labelled_data(), torch.Generator().manual_seed(3)
    batches = prefetcher(data, generator, threaded=True)
    first = batches.next()
    generator.manual_seed(3)  # a resume would restore an older state like this
    again = batches.next()
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    batches.close()


class Failing:
    """Data whose ``fail_at``-th training batch (counting from 1) raises the data's own error."""

    def __init__(self, data, fail_at):
        self.data, self.fail_at, self.draws = data, fail_at, 0

    def train_batch(self, rows, generator, *part):
        self.draws += 1
        if self.draws == self.fail_at:
            raise DataError("the training split could not be read; prepare the data again.")
        return self.data.train_batch(rows, generator, *part)


@pytest.mark.parametrize("threaded", [False, True])
def test_an_error_of_the_data_is_raised_by_the_step_that_asks_for_the_batch(threaded):
    batches = prefetcher(Failing(labelled_data(), fail_at=3), torch.Generator().manual_seed(0), threaded)
    batches.next()
    batches.next()  # the draw ahead (the third) fails on the thread, silently
    with pytest.raises(DataError, match=r"^the training split could not be read; prepare the data again\.$"):
        batches.next()
    batches.close()
    quiet = prefetcher(Failing(labelled_data(), fail_at=2), torch.Generator().manual_seed(0), threaded)
    quiet.next()  # a failed draw that no step takes raises nothing
    quiet.close()


def test_out_of_range_ids_are_refused_on_the_cpu_in_the_models_words(tmp_path):
    bad = tiny_data()
    bad.splits["train"][5, 3] = 7  # vocab_size is 5
    trainer = tiny_trainer(tmp_path / "run", "train.batch_size=32", data=bad)
    with pytest.raises(ValueError) as refused:
        trainer.train_step()
    release(trainer)
    with pytest.raises(ValueError) as model_says:
        trainer.model.loss(bad.splits["train"])
    assert str(refused.value) == str(model_says.value) and "holds ids in [0, 7]" in str(refused.value)
    assert trainer.step == 0


def test_inside_ranges_checked_only_the_range_check_is_skipped():
    x = torch.tensor([[0, 9]])
    with ranges_checked():
        check_tokens(x, 5)
        with pytest.raises(ValueError, match="integer tensor"):
            check_tokens(x.float(), 5)
    with pytest.raises(ValueError, match=r"holds ids in \[0, 9\]"):
        check_tokens(x, 5)


def test_the_thread_stops_with_close_and_a_later_batch_starts_another():
    batches = prefetcher(labelled_data(), torch.Generator().manual_seed(0), threaded=True)
    batches.next()
    assert prefetch_threads()
    batches.close()
    assert not prefetch_threads()
    batches.next()
    batches.close()
    assert not prefetch_threads()


@pytest.mark.parametrize("stop", [False, True])
def test_the_end_of_fit_and_a_signal_stop_the_thread(tmp_path, stop):
    trainer = tiny_trainer(tmp_path / "run", "train.steps=5")
    trainer.batches.threaded = True  # as on a GPU
    step = trainer.train_step

    def signalled(**asked):
        metrics = step(**asked)
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    trainer.train_step = signalled if stop else step
    result = trainer.fit()
    assert (result.stopped_by, result.step) == (("SIGTERM", 2) if stop else (None, 5))
    assert not prefetch_threads()


def test_on_a_gpu_the_thread_pins_the_batch_on_the_ranks_device_and_the_copy_does_not_wait(monkeypatch):
    """The CUDA path with CUDA's functions stubbed: pinned on the prefetch thread, whose device is set first (a
    thread starts on GPU 0), and copied with ``non_blocking``."""
    seen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.append(("set_device", str(d), _thread())))
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: seen.append(("pin", _thread())) or t)
    monkeypatch.setattr(
        torch.Tensor, "to", lambda t, device, non_blocking=False: seen.append(("to", non_blocking)) or t
    )
    batches = prefetcher(labelled_data(), torch.Generator().manual_seed(0), True, device=torch.device("cuda", 3))
    batches.next()
    batches.next()
    batches.close()
    assert seen[0] == ("pin", "main") and seen[1] == ("pin", "main")  # the first batch: nothing was ahead
    ahead = seen[2:]
    assert ahead.count(("set_device", "cuda:3", "md4-prefetch")) == 1
    assert ("pin", "md4-prefetch") in ahead and ("to", False) not in ahead and ("to", True) in ahead


def _thread() -> str:
    name = threading.current_thread().name
    return "md4-prefetch" if name.startswith("md4-prefetch") else "main"


def threaded_fit(run_dir, steps, resume=False):
    trainer = tiny_trainer(run_dir, f"train.steps={steps}", "train.checkpoint_every=2", resume=resume)
    trainer.batches.threaded = True  # as on a GPU: the checkpoint is saved while a batch is drawn ahead
    trainer.fit()
    return trainer


def test_resume_with_batches_drawn_ahead_continues_exactly(tmp_path):
    whole = threaded_fit(tmp_path / "whole", 4)
    threaded_fit(tmp_path / "split", 2)
    resumed = threaded_fit(tmp_path / "split", 4, resume=True)
    assert resumed.step == whole.step == 4
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(whole.data_generator.get_state(), resumed.data_generator.get_state())
