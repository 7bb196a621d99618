"""The class accuracy of a class-conditional image run (md4.quality.class_accuracy): a judge trained on the run's
own images, its counts checked against a direct computation on real images, and the runs it refuses
(``md4 eval --class-accuracy`` of a conditional run is tested in test_fid.py, beside the other image measures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_runs import cli, last_error

from md4.config import build_config
from md4.data import prepare
from md4.quality.class_accuracy import class_accuracy, fit_judge
from md4.training.trainer import train


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A cache holding scikit-learn's 8x8 digits (17 levels), and their train and test images [N, 8, 8, 1] and
    labels."""
    cache = tmp_path_factory.mktemp("digits-cache")
    prepared = prepare("digits", cache_dir=cache)
    return cache, {name: (prepared.splits[name], prepared.labels[name]) for name in ("train", "test")}


@pytest.fixture(scope="module")
def judge(digits):
    split = digits[1]
    return fit_judge(split["train"], split["test"], 17, 10)


def balanced(images: np.ndarray, labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images of each class, the classes in turn."""
    chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    return images[chosen], labels[chosen]


def test_the_judge_names_held_out_digits(judge):
    assert judge.test_accuracy > 0.85  # a two-convolution network on 1,257 training digits
    assert judge.seconds > 0


def test_class_accuracy_counts_the_images_named_as_their_label(digits, judge):
    images, labels = balanced(*digits[1]["test"], per_class=10)
    result = class_accuracy(judge, images, torch.as_tensor(labels))
    predicted = judge.classify(images)
    assert result.named == [int(((predicted == labels) & (labels == c)).sum()) for c in range(10)]
    assert result.per_class == 10 and result.accuracy == pytest.approx(float((predicted == labels).mean()))
    wrong = class_accuracy(judge, images, (labels + 1) % 10)  # every label shifted: at most the judge's mistakes
    assert wrong.accuracy <= 1 - result.accuracy + 1e-9
    assert result.to_dict()["accuracy"] == result.accuracy and result.judge_test_accuracy == judge.test_accuracy


def test_class_accuracy_needs_as_many_samples_of_each_class(digits, judge):
    images, labels = digits[1]["test"]
    with pytest.raises(ValueError, match="as many samples of each class"):
        class_accuracy(judge, images[:25], labels[:25])


def test_class_accuracy_refuses_an_unconditional_run(tmp_path, capsys, digits, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(digits[0]))
    tiny = ["model.net=unet", "model.conditional=false", "net.feature_dim=32", "net.n_layers=1", "train.steps=1"]
    tiny += ["train.batch_size=8", "train.eval_every=100", "train.sample_every=100"]
    train(build_config(None, tiny, data="digits"), tmp_path / "free", progress=False)
    code, _, err = cli(capsys, "eval", tmp_path / "free", "--class-accuracy", 2)
    assert code == 2 and "is not class-conditional" in last_error(err)
