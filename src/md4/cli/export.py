"""``md4 export RUN DIR``: a run's model as a standard model folder (config.json, model.safetensors, the model
card), which ``md4 sample``, ``md4 eval``, ``md4 train --init`` and ``md4.from_pretrained`` read."""

from __future__ import annotations

import argparse
import sys

from md4.runs.pretrained import export_run


def add_export_options(p: argparse.ArgumentParser) -> None:
    """The options ``md4 export`` and ``md4 push`` share."""
    p.add_argument("--raw", action="store_true", help="export the online weights instead of the EMA")
    p.add_argument("--checkpoint", type=int, metavar="STEP", help="the checkpoint of this step (default: the newest)")
    p.add_argument(
        "--license",
        default="apache-2.0",
        help="the licence the model card declares, a Hub licence id (default: %(default)s); mind your data's",
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run's model as a shareable folder with a model card",
        description="Write config.json, model.safetensors (EMA weights), the tokenizer and a README.md model card.",
    )
    p.add_argument("run", help="run directory written by md4 train")
    p.add_argument("out", help="the folder to write (new, or an earlier export)")
    add_export_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = export_run(args.run, args.out, raw=args.raw, step=args.checkpoint, license_id=args.license)
    print(f"md4: exported {args.run} to {out}; load it with `md4 sample {out}` or md4.from_pretrained", file=sys.stderr)
    return 0
