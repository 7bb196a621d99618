"""The ``md4`` command line: train, sample, eval, export, push, data, inspect, presets, the CPU demo, bench and serve.

A thin shell over the library: each command is a module with its parser piece (``add_parser``) and ``run(args)``,
which parses, calls the library and prints. Here: the parser built from those pieces, and :func:`main`, which turns
md4's errors into one sentence and an exit code (:mod:`md4.cli.exit_codes`)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from md4.cli import bench, data, demo, evaluate, export, inspect, presets, push, sample, serve, train
from md4.cli.exit_codes import EXIT_BAD_INPUT, EXIT_SIGNAL, exit_code_of
from md4.notices import MD4Warning

# in the order `md4 --help` lists them
COMMANDS = (train, sample, evaluate, export, push, data, inspect, presets, demo, bench, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="md4", description="Masked discrete diffusion (MD4): train, sample, evaluate."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """md4's warnings as one line each, ``md4: warning: ...``; those of other libraries as Python shows them."""
    if issubclass(category, MD4Warning):
        print(f"md4: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.filterwarnings("default", category=MD4Warning)  # md4's own; others as Python's filters say
        warnings.showwarning = show_warning
        try:
            return args.func(args)
        except ValueError as err:  # our errors: one sentence saying what is wrong and what to do
            if os.environ.get("MD4_DEBUG"):
                raise
            print(f"md4: error: {err}", file=sys.stderr)
            return exit_code_of(err)
        except BrokenPipeError:  # the reader of our output went away (e.g. `md4 presets | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as err:  # the file system refused: say which file and what to check
            if os.environ.get("MD4_DEBUG"):
                raise
            where = f" ({err.filename})" if err.filename else ""
            print(
                f"md4: error: {err.strerror or err}{where}; check that the path exists, is writable and has space.",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:  # outside the training loop (which saves and stops by itself)
            print("md4: interrupted; nothing was written after the last completed step.", file=sys.stderr)
            return EXIT_SIGNAL["SIGINT"]


__all__ = ["build_parser", "main", "show_warning"]
