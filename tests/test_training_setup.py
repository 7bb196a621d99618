"""How a validated config becomes a Trainer: the checks before any data work, the data's splits checked against
their checksums, and a model seeded from the run's seed."""

import numpy as np
import pytest
import torch
from tiny_training import release, tiny_config, tiny_data

from md4.config import ConfigError
from md4.data import DataError, TokenStream, prepare
from md4.distributed import World
from md4.training import Trainer, build_trainer, training_data


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_any_data_work(tmp_path):
    config = tiny_config("train.grad_accum=4")  # in-memory data: preparing it would be another error
    refusal = r"train.batch_size=4 is the global batch.* into 2 process\(es\) x train.grad_accum=4 .* multiple of 8"
    with pytest.raises(ConfigError, match=refusal):
        training_data(config, tmp_path / "run", processes=2)
    with pytest.raises(ConfigError, match=refusal):
        build_trainer(config, tmp_path / "run", world=World(rank=0, size=2))
    assert not (tmp_path / "run").exists()


def test_the_model_is_seeded_from_the_run_seed(tmp_path):
    trainers = [build_trainer(tiny_config(), tmp_path / name, progress=False, dataset=tiny_data()) for name in "ab"]
    for trainer in trainers:
        release(trainer)
    assert all(isinstance(trainer, Trainer) and trainer.step == 0 for trainer in trainers)
    a, b = (trainer.model.state_dict() for trainer in trainers)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = build_trainer(tiny_config("train.seed=1"), tmp_path / "c", progress=False, dataset=tiny_data())
    release(other)
    assert not all(torch.equal(a[k], v) for k, v in other.model.state_dict().items())


def test_a_split_changed_on_disk_since_it_was_prepared_is_refused(corpus, tmp_path):
    data = TokenStream(prepare(str(corpus)), 32)
    assert training_data(tiny_config(), tmp_path / "run", dataset=data) is data
    train = data.prepared.splits["train"]
    np.memmap(train.filename, dtype=train.dtype, mode="r+")[:4] = 0
    with pytest.raises(DataError, match="the train split of .* was changed on disk after it was prepared"):
        training_data(tiny_config(), tmp_path / "run", dataset=data)
