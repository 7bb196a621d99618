"""What several commands share: the options of the commands that load a trained run, and the checks of counts
and output files that run before any work."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that load a trained run."""
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--no-tf32", action="store_true", help="on a GPU, fp32 matrix products in true fp32 instead of TF32")
    p.add_argument("--checkpoint", type=int, metavar="STEP", help="the checkpoint of this step (default: the newest)")


def positive(name: str, value: int | None) -> None:
    """Refuse a count option that is zero or negative (None: not given)."""
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}.")


def check_output_file(path: Path, option: str, example: str) -> None:
    """Refuse an output file option that names a folder or a file inside a file, or one that cannot be written."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; name a file in it, such as {path / example}.")
    folder = path.parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"{option} {path} is inside {blocker}, which is a file; choose another path.")
    if not os.access(blocker or Path("."), os.W_OK):
        raise ValueError(f"{option} {path} cannot be written ({blocker} is not writable); choose another path.")


def batch_progress(batches, total: int, label: str, hidden: bool):
    """A progress bar over evaluation batches on stderr (refreshed twice a second on a terminal, every 30 s in a
    log), gone when done; ``hidden``: ``--no-progress``."""
    from tqdm.auto import tqdm

    return tqdm(
        batches,
        total=total,
        desc=label,
        unit="batch",
        disable=hidden,
        leave=False,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )


def add_minutes_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--minutes",
        type=float,
        metavar="N",
        help="train for N minutes (train.time_limit): the steps that fit are planned from the first steps' time, at "
        "most train.steps, and training stops with a checkpoint when the time is up",
    )


def minutes_override(args: argparse.Namespace) -> list[str]:
    """``--minutes N`` as the override it stands for, after the others (so it wins)."""
    return [*args.overrides, f"train.time_limit={args.minutes}"] if args.minutes is not None else list(args.overrides)
