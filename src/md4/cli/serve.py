"""``md4 serve RUN [RUN ...]``: a local web page for trying trained runs (:mod:`md4.serve`)."""

from __future__ import annotations

import argparse
import sys

from md4.notices import warn
from md4.serve.hosting import bind, is_loopback, require_stack, server_for, url_of
from md4.serve.jobs import Limits

DEFAULT_LIMITS = Limits()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a local web page for trying runs: prompts, infilling, class grids, the reverse process live",
        description="Serve a web page on which to sample from runs, the reverse process streaming live "
        "(docs/serve.md). Needs md4[serve].",
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories, folders written by md4 export, or hf:REPO_ID"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; another exposes the page, and the "
        "machine's time, to everyone who can reach it)",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port to listen on, 0 for any free one (default: %(default)s)"
    )
    limits = p.add_argument_group("limits of one request (so that one browser tab cannot exhaust the machine)")
    for flag, default, about in (
        ("--max-length", DEFAULT_LIMITS.length, "tokens of a text sample"),
        ("--max-steps", DEFAULT_LIMITS.steps, "reverse steps"),
        ("--max-samples", DEFAULT_LIMITS.samples, "text samples, or images, in a job"),
        ("--max-request-bytes", DEFAULT_LIMITS.request_bytes, "a request's size, an uploaded picture included"),
        ("--max-jobs", DEFAULT_LIMITS.jobs, "jobs at once; another request is answered 429, busy"),
    ):
        limits.add_argument(flag, type=int, default=default, metavar="N", help=f"{about} (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    limits = Limits(args.max_length, args.max_steps, args.max_samples, args.max_request_bytes, args.max_jobs)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {args.port}.")
    require_stack()
    from md4.serve.app import build_app
    from md4.serve.catalog import load_runs

    runs = load_runs(args.runs, device=args.device, use_ema=not args.no_ema)
    sock = bind(args.host, args.port)
    if not is_loopback(args.host):
        warn(
            f"--host {args.host} lets every machine that can reach this one use the page and run jobs on it; "
            "leave --host out to serve this machine only."
        )
    for i, served in enumerate(runs):
        kind = "images" if served.images else "text"
        print(f"md4: run {i}: {served.name} ({kind}, step {served.loaded.step}) from {args.runs[i]}", file=sys.stderr)
    print(f"md4: serving {len(runs)} run(s) at {url_of(sock)} (Ctrl-C stops)", file=sys.stderr, flush=True)
    server = server_for(build_app(runs, limits, args.host), sock)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
