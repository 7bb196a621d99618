"""Training: the loop, the run's lifecycle (claim, lock, resume), what a checkpoint holds, the optimiser and its
parameter groups, and the parallel wrapping; :class:`Trainer` puts them together."""

from md4.training.loop import TrainingDiverged, TrainResult, local_micro_batch
from md4.training.optimizer import EMA, learning_rate, parameter_groups
from md4.training.trainer import Trainer, build_trainer, train, training_data

__all__ = [
    "EMA",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "build_trainer",
    "learning_rate",
    "local_micro_batch",
    "parameter_groups",
    "train",
    "training_data",
]
