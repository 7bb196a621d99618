"""``md4 demo``: the CPU demo (:func:`md4.demo.run_demo`), with its banner, samples and summary printed."""

from __future__ import annotations

import argparse
import sys

from md4.cli.banner import describe
from md4.cli.exit_codes import EXIT_SIGNAL
from md4.cli.options import add_minutes_option, minutes_override
from md4.demo import DEMO_PROMPT, WORD_SAMPLES, DemoResult, bits, run_demo


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the 10-minute CPU demo: train on Shakespeare (or MNIST with --images), sample, evaluate",
        description="Train the demo-shakespeare preset (or demo-mnist) for its time limit (8 or 7 minutes; "
        "--minutes changes it), sample, and evaluate on the test split: about 10 minutes in all on 2 CPU cores.",
    )
    p.add_argument(
        "--images", action="store_true", help="the image demo: class-conditional binarised MNIST, ~10 minutes"
    )
    p.add_argument("--out", help="run directory (default: runs/demo, or runs/demo-mnist with --images)")
    add_minutes_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.time_limit=none train.steps=3000",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train a demo preset, sample, and evaluate on the valid and test splits: Shakespeare, or MNIST with --images."""

    def banner(trainer, resumed: bool) -> None:
        print(describe(trainer, resumed).replace("md4:", "md4 demo:", 1), file=sys.stderr)

    result = run_demo(args.images, args.out, minutes_override(args), not args.no_progress, on_start=banner)
    if result.interrupted:
        again = f"md4 demo{' --images' if args.images else ''} --out {result.run_dir}"
        print(f"md4 demo: stopped at step {result.training.step}; run `{again}` again to continue.")
        return EXIT_SIGNAL[result.training.stopped_by]
    print_samples(result, args.images)
    summary, test, unit = result.summary, result.test, result.unit
    print(
        f"test bits/{unit} <= {bits(test)[0]:.3f} ± {bits(test)[1]:.3f} on the first "
        f"{test.num_sequences:,} {'images' if args.images else 'sequences'} of {result.test_data}; "
        f"valid {bits(result.valid)[0]:.3f}; {summary['parameters']:,} parameters; "
        f"{result.training.tokens_per_second:.0f} train tokens/s; {steps_made(summary)}; "
        f"{summary['wall_seconds']:.0f} s in all"
    )
    print(
        f"curves: {result.run_dir / 'curves.png'}; summary: {result.run_dir / 'demo.json'}; "
        f"more: md4 sample {result.run_dir} --num 4, md4 eval {result.run_dir}"
    )
    return 0


def print_samples(result: DemoResult, images: bool) -> None:
    """The text demo's two samples, or the image demo's first sample and the pictures written."""
    if images:
        print(f"\n=== a sample of each class ===\n{result.preview}\n")
        for name, path in result.outputs.items():
            print(f"{name}: {path}")
        judged = result.class_accuracy
        if judged is not None:
            named = " ".join(str(count) for count in judged.named)
            print(
                f"class grid: {sum(judged.named)} of {judged.per_class * len(judged.named)} samples named as their "
                f"row's class (per class, in order: {named}) by a classifier of the training digits "
                f"({judged.judge_test_accuracy:.1%} right on the test digits)"
            )
        return
    unconditional, prompted = result.outputs["sample_unconditional"], result.outputs["sample_prompted"]
    print(f"\n=== unconditional sample ===\n{unconditional}\n\n=== prompted sample ({DEMO_PROMPT!r}) ===\n{prompted}\n")
    print(f"the prompted sample's reverse process: {result.outputs['animation']}")
    summary = result.summary
    print(
        f"words: {summary['samples_known_word_share']:.0%} of the words of {WORD_SAMPLES} samples occur in the "
        f"training text ({summary['test_known_word_share']:.0%} of the test text's do)"
    )


def steps_made(summary: dict) -> str:
    """The steps the demo trained, and how they relate to a time limit's plan."""
    steps, planned = summary["steps"], summary["planned_steps"]
    if planned is None:
        return f"{steps:,} steps"
    if steps < planned:
        return f"{steps:,} of the {planned:,} steps planned for the time limit (later steps ran slower than the first ones it was planned from)"
    return f"{steps:,} steps (planned for the time limit)"
