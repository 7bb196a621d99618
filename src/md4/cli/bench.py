"""``md4 bench``: training-step throughput, MFU and peak memory of the text networks (:mod:`md4.bench`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from md4 import bench
from md4.bench import MODELS, MODES, SAMPLE_NUM, SAMPLE_STEPS
from md4.cli.options import check_output_file, positive
from md4.files import write_atomic


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="training-step throughput, MFU and peak memory of the text networks",
        description="Time whole training steps of each model in each mode, each in a fresh process, against the "
        "machine's matrix-product peak measured in the same run; print a table (progress goes to stderr).",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        metavar="MODEL",
        help="demo (shakespeare-char, 4 x 192, batch 32 x 128), text8 (the release's 88.7M network, batch 8 x 256), "
        "6x384 (text8 at 6 layers of width 384, batch 8 x 256), owt-gpt2-small (the release's 165.9M OpenWebText "
        "network, batch 1 x 1024); on CUDA the batches are 256, 128, 128 and 32 rows; default: all but "
        "owt-gpt2-small on a CPU, all on CUDA",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        metavar="MODE",
        help="fp32 (eager), bf16 (autocast, eager), bf16-compile (autocast and torch.compile); default: all",
    )
    p.add_argument("--steps", type=int, help="timed steps of every model (default: each model's own)")
    p.add_argument("--warmup", type=int, help="untimed first steps of every model (default: each model's own)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument(
        "--sampling",
        nargs="*",
        choices=list(MODELS),
        metavar="MODEL",
        help=f"also time drawing {SAMPLE_NUM} samples in {SAMPLE_STEPS} ancestral steps with these models, the "
        "network in fp32 and in bf16; none if no name is given (default: those of --models among "
        f"{', '.join(m for m in MODELS if MODELS[m].sampled)})",
    )
    p.add_argument("--json", metavar="PATH", help="also write the full results as JSON to PATH")
    p.add_argument("--markdown", action="store_true", help="print markdown tables instead of aligned columns")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("steps", "warmup", "threads"):
        positive(f"--{name}", getattr(args, name))
    if args.json:
        check_output_file(Path(args.json), "--json", "bench.json")  # before minutes of measurements, not after
    report = bench.run_suite(args.models, args.modes, args.sampling, args.device, args.threads, args.steps, args.warmup)
    print(bench.format_report(report, args.markdown))
    if args.json:
        write_atomic(Path(args.json), json.dumps(report, indent=2) + "\n")
    return 0
