"""``md4 inspect``: a picture of a GenMD4 run's learned per-token schedule, and its extreme tokens."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from md4.cli.options import check_output_file
from md4.generation.schedule_plot import plot_schedule, ranked_exponents
from md4.runs.pretrained import from_pretrained


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="plot a GenMD4 run's learned per-token schedule",
        description="Write a PNG of the learned exponents w per token and alpha_v(t) at the extremes.",
    )
    p.add_argument("run", help="run directory written by md4 train (model.kind=genmd4)")
    p.add_argument("--out", help="the PNG to write (default: RUN/schedule.png)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--checkpoint", type=int, metavar="STEP", help="the checkpoint of this step (default: the newest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out:
        check_output_file(Path(args.out), "--out", "schedule.png")
    loaded = from_pretrained(args.run, device="cpu", use_ema=not args.no_ema, step=args.checkpoint)
    out = Path(args.out) if args.out else loaded.output_dir() / "schedule.png"
    plot_schedule(loaded.model, loaded.codec, out, title=f"{args.run}, step {loaded.step}")
    ranked = ranked_exponents(loaded.model, loaded.codec)
    low = ", ".join(f"{label} {w:.2f}" for w, label in ranked[:5])
    high = ", ".join(f"{label} {w:.2f}" for w, label in ranked[-5:])
    print(f"lowest w (masked early, decoded late): {low}\nhighest w (masked late, decoded early): {high}")
    print(f"md4: wrote {out}", file=sys.stderr)
    return 0
