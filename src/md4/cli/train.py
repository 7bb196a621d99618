"""``md4 train``: one process, or N under torchrun (``--nproc``), each a rank of the same run."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from md4 import distributed
from md4.cli.banner import describe
from md4.cli.exit_codes import EXIT_SIGNAL, exit_code_of
from md4.cli.options import positive
from md4.config import DEFAULT_PRESET, IMAGE_PRESET, build_config, default_preset, init_config, preset_note
from md4.evaluate import unit_of
from md4.runs.directory import check_run_dir_free, own_dataset, resume_config
from md4.runs.pretrained import read_pretrained
from md4.training.trainer import build_trainer, training_data


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model", description="Train an MD4 model into a run directory.")
    p.add_argument(
        "--preset",
        help=f"a preset from `md4 presets` (default: {DEFAULT_PRESET}, or {IMAGE_PRESET} when --data is images)",
    )
    p.add_argument(
        "--data",
        help="dataset: a recipe name (`md4 data list`), hf:NAME, a text file/folder, or a folder of images "
        "(with --resume: other data than the run's own, which is taken from the cache)",
    )
    p.add_argument("--out", help="run directory (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument(
        "--checkpoint",
        type=int,
        metavar="STEP",
        help="with --resume: continue from this step's checkpoint (newer ones are moved aside, not deleted)",
    )
    p.add_argument(
        "--init",
        metavar="MODEL",
        help="start from trained weights and fine-tune them: a folder of md4 export, hf:REPO_ID or a run directory "
        "(its config is the new run's, under --preset and the overrides; the data must be tokenised as theirs was)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine (runs torchrun --standalone --nproc_per_node N -m md4 train)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides such as train.lr=3e-4 net.n_layers=6 (see `md4 presets`)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None and not distributed.launched_by_torchrun():
        return launch_training(args)
    return worker_process(args) if distributed.launched_by_md4() else train_process(args)


def report(result, run_dir: Path, unit: str = "token", processes: int = 1) -> int:
    """Print how training ended and return the exit code."""
    state = f"stopped by {result.stopped_by} at" if result.stopped_by else "finished at"
    everyone = f" (all {processes} processes)" if processes > 1 else ""
    valid = "n/a" if result.valid_bits_per_token is None else f"{result.valid_bits_per_token:.4f}"
    print(
        f"md4: {state} step {result.step}{everyone} in {result.seconds:.0f} s "
        f"({result.tokens_per_second:.0f} tokens/s); valid bits/{unit} {valid}; checkpoint in {run_dir}/checkpoints"
    )
    return EXIT_SIGNAL.get(result.stopped_by, 0)


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` or ``option=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def training_config(args: argparse.Namespace, quiet: bool = False):
    """The config of an ``md4 train`` (new or resumed), its run folder, the run's own data for a resume (None:
    prepare ``config.data.name``), and a note for the banner; ``quiet`` drops the config's warnings."""
    if args.checkpoint is not None and not args.resume:
        raise ValueError("--checkpoint picks the checkpoint to resume from; pass it with --resume.")
    if args.init is not None and args.resume:
        raise ValueError("--init starts a new run from trained weights and --resume continues a run; pass one.")
    preset = args.preset or default_preset(args.data)
    run_dir = Path(args.out or f"runs/{'finetuned' if args.init and not args.preset else preset}")
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        if args.resume:
            config = resume_config(run_dir, args.overrides, data=args.data)
            return config, run_dir, own_dataset(run_dir, config, args.data), ""
        if args.init is not None and args.preset is None:
            config = init_config(args.init_weights.files.config, args.overrides, args.data)
            return config, run_dir, None, f"starting from {args.init} (step {args.init_weights.step})"
        config = build_config(args.preset, args.overrides, data=args.data)
    return config, run_dir, None, "" if args.preset else preset_note(preset, args.data)


def read_init(args: argparse.Namespace) -> None:
    """Read the weights of ``--init`` once (``args.init_weights``; None without it)."""
    args.init_weights = read_pretrained(args.init) if args.init is not None else None


def launch_training(args: argparse.Namespace) -> int:
    """``md4 train --nproc N``: check what can be checked (config, batch split, run folder, data, checkpoint) in
    this process, then start the N processes with torchrun."""
    positive("--nproc", args.nproc)
    read_init(args)
    config, run_dir, dataset, _ = training_config(args)
    check_run_dir_free(run_dir)
    training_data(config, run_dir, args.resume, args.checkpoint, args.nproc, dataset)
    return distributed.launch(args.nproc, without_option(args.argv, "--nproc"))


def train_process(args: argparse.Namespace) -> int:
    """One training process: alone, or a rank of several under torchrun."""
    read_init(args)
    config, run_dir, dataset, note = training_config(args, quiet=distributed.launched_by_md4())
    world = distributed.connect(config.train.device, config.train.dist_timeout)
    finished = False
    try:
        if not world.is_main:
            warnings.simplefilter("ignore")  # rank 0 speaks for the run
        trainer = build_trainer(
            config, run_dir, args.resume, not args.no_progress, args.checkpoint, world, dataset, args.init_weights
        )
        if world.is_main:
            note = "; ".join(filter(None, [note, group_note(world, config.train.parallel)]))
            print(describe(trainer, args.resume, note), file=sys.stderr)
        result = trainer.fit()
        finished = True
    finally:
        distributed.disconnect(finished)
    if not world.is_main:
        return 0
    code = report(result, run_dir, unit_of(trainer.data.codec), world.size)
    return 0 if world.distributed and result.interrupted else code


def group_note(world: distributed.World, parallel: str) -> str:
    """What the banner says of a process group: how many processes, over which backend, in which parallel mode."""
    if not world.grouped:
        return ""
    mode = "FSDP2" if parallel == "fsdp" else "DDP"
    return f"{world.size} process{'es' if world.size > 1 else ''} in a {distributed.backend()} group ({mode})"


def worker_process(args: argparse.Namespace) -> int:
    """A worker of ``md4 train --nproc``: md4's own error is left for the launcher, which prints it once, and the
    worker exits 0 (torchrun then reports nothing); a worker cut short because another one left that way exits 0
    quietly too. Anything else is a real failure, with its traceback."""
    try:
        return train_process(args)
    except ValueError as err:
        distributed.record_failure(str(err), exit_code_of(err))
        return 0
    except Exception:
        if distributed.peer_failed():
            return 0
        raise
