"""Whether a class-conditional image model draws its classes: a small classifier, trained in seconds on the run's
own training images, names each sample, and the share named as the label it was drawn for is the class accuracy.

This is the judge a person would be for MNIST ("is this row all sevens?"), made repeatable. The classifier sees
the images at the run's quantisation, as the samples are, and its accuracy on the held-out test split is reported
beside every measurement: a sample accuracy means little above what the judge itself reaches. It is a
two-convolution network, not a published feature extractor, so its numbers compare only between md4 runs
(the field's "classification accuracy score" trains on samples instead; this is the simpler converse).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from md4.data import DataError
from md4.quality.image_quality import check_image_run
from md4.runs.directory import LoadedRun, cached_run_data

EPOCHS = 2
MIN_STEPS = 500  # a small data set (scikit-learn's 1,797 digits) gets more epochs
BATCH = 128
LEARNING_RATE = 3e-3


class DigitClassifier(nn.Module):
    """Two strided 3x3 convolutions and a linear layer over their features at every place (a quarter of the
    image's height and width), on pixels scaled to [0, 1]."""

    def __init__(self, shape: tuple[int, int, int], classes: int, width: int = 16):
        super().__init__()
        height, breadth, channels = shape
        self.conv1 = nn.Conv2d(channels, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * width * ((height + 3) // 4) * ((breadth + 3) // 4), classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, classes] of images float [B, C, H, W] in [0, 1]."""
        h = F.gelu(self.conv1(images))
        h = F.gelu(self.conv2(h))
        return self.head(h.flatten(1))


def as_input(tokens: np.ndarray | torch.Tensor, levels: int) -> torch.Tensor:
    """Image tokens [N, H, W, C] in 0..levels-1 as the classifier's input, float [N, C, H, W] in [0, 1]."""
    x = torch.as_tensor(np.array(tokens, dtype=np.float32))
    return x.permute(0, 3, 1, 2) / max(levels - 1, 1)


@dataclass
class Judge:
    """A trained classifier of a run's images, its test accuracy and the seconds its training took."""

    classifier: DigitClassifier
    levels: int
    test_accuracy: float
    seconds: float

    def classify(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """The predicted class of each image of tokens [N, H, W, C]."""
        return predict(self.classifier, tokens, self.levels)


@torch.no_grad()
def predict(classifier: DigitClassifier, tokens: np.ndarray | torch.Tensor, levels: int) -> np.ndarray:
    """The class ``classifier`` predicts for each image of tokens [N, H, W, C] in 0..levels-1."""
    classifier.eval()
    return classifier(as_input(tokens, levels)).argmax(dim=-1).numpy()


def fit_judge(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], levels: int, classes: int, seed: int = 0
) -> Judge:
    """Train a :class:`DigitClassifier` on (tokens [N, H, W, C], labels [N]) for :data:`EPOCHS` epochs (at least
    :data:`MIN_STEPS` steps) with Adam and a one-cycle schedule, then measure its accuracy on ``test``."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    images, labels = as_input(train[0], levels), torch.as_tensor(np.array(train[1], dtype=np.int64))
    classifier = DigitClassifier(tuple(train[0].shape[1:]), classes)
    steps = max(EPOCHS * (len(images) // BATCH), MIN_STEPS)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps)
    order = torch.cat([torch.randperm(len(images)) for _ in range(-(-steps * BATCH // len(images)))])
    for step in range(steps):
        batch = order[step * BATCH : (step + 1) * BATCH]
        loss = F.cross_entropy(classifier(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    accuracy = float((predict(classifier, test[0], levels) == np.asarray(test[1])).mean())
    return Judge(classifier, levels, accuracy, time.perf_counter() - start)


def run_judge(loaded: LoadedRun, seed: int = 0) -> Judge:
    """A judge of a labelled image run, trained on its cached training split and tested on its test split."""
    codec = check_image_run(loaded, "class accuracy")
    if loaded.model.num_classes is None:
        raise DataError(f"{loaded.run_dir} is not class-conditional, so its samples have no label to check.")
    prepared = cached_run_data(loaded.source, loaded.run_dir)
    if prepared.labels is None:
        raise DataError(f"{prepared.name} has no labels, so no classifier can be trained to check samples.")
    split = {name: (prepared.splits[name], prepared.labels[name]) for name in ("train", "test")}
    return fit_judge(split["train"], split["test"], codec.levels, int(loaded.model.num_classes), seed)


@dataclass
class ClassAccuracy:
    """How many samples of each class the judge names as that class."""

    named: list[int]  # per class: samples the judge gives the label they were drawn for
    per_class: int
    judge_test_accuracy: float
    judge_seconds: float

    @property
    def accuracy(self) -> float:
        return sum(self.named) / (self.per_class * len(self.named))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy}


def class_accuracy(judge: Judge, tokens: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> ClassAccuracy:
    """Per class, the samples (tokens [N, H, W, C], drawn for ``labels`` [N], an equal number of each class) that
    ``judge`` names as their label."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    classes = int(judge.classifier.head.out_features)
    counts = np.bincount(labels, minlength=classes)
    if counts.min() != counts.max():
        raise ValueError(f"Class accuracy needs as many samples of each class, got counts {counts.tolist()}.")
    hits = judge.classify(tokens) == labels
    named = np.bincount(labels[hits], minlength=classes)
    return ClassAccuracy([int(n) for n in named], int(counts[0]), judge.test_accuracy, judge.seconds)
