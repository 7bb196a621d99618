"""md4's exit codes (README, "Exit codes"): 0 done; 1 an unexpected error; 2 bad input, refused or damaged files;
3 training diverged; 130 / 143 training stopped by SIGINT / SIGTERM after saving a checkpoint (also for
md4 train --nproc; each torchrun worker exits 0, so that torchrun neither reports a failure nor restarts them)."""

from __future__ import annotations

from md4.distributed import WorkerFailed
from md4.training.trainer import TrainingDiverged

EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def exit_code_of(err: ValueError) -> int:
    """The exit code of one of md4's own errors."""
    if isinstance(err, WorkerFailed):
        return err.exit_code
    return EXIT_DIVERGED if isinstance(err, TrainingDiverged) else EXIT_BAD_INPUT
