"""``md4 push RUN REPO_ID``: export a run (``md4 export``) and upload the folder to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from md4.cli.export import add_export_options
from md4.runs.hub_repo import check_repo_id, upload
from md4.runs.pretrained import export_run


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "push",
        help="share a run's model on the Hugging Face Hub",
        description="Export a run (as md4 export does) and upload it to a Hub model repository (created if new).",
    )
    p.add_argument("run", help="run directory written by md4 train")
    p.add_argument("repo_id", help="the Hub repository, user/model-name")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--message", help="the commit message (default: Upload an md4 model)")
    add_export_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_repo_id(args.repo_id)
    with tempfile.TemporaryDirectory(prefix="md4-push-") as folder:
        export_run(args.run, folder, args.raw, args.checkpoint, args.license, repo_id=args.repo_id)
        url = upload(Path(folder), args.repo_id, args.private, args.message)
    print(f"md4: pushed {args.run} to {url}; load it with `md4 sample hf:{args.repo_id}`", file=sys.stderr)
    return 0
