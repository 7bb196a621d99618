"""``md4 eval RUN --class-accuracy N``: how many of N samples of each class of a class-conditional image run a
classifier trained on the run's own images names as their class (:mod:`md4.quality.class_accuracy`)."""

from __future__ import annotations

import argparse
import time

from md4.cli.options import positive
from md4.quality.class_accuracy import class_accuracy, run_judge
from md4.quality.image_quality import sample_images
from md4.runs.directory import LoadedRun
from md4.sampling import DEFAULT_GUIDANCE
from md4.sampling.labels import class_labels


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('class accuracy of a class-conditional image run (docs/guide.md, "Class accuracy")')
    g.add_argument(
        "--class-accuracy",
        type=int,
        metavar="N",
        help="draw N samples of each class and count those a classifier of the run's images names as their class",
    )
    g.add_argument(
        "--class-guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        help="classifier-free guidance of those samples (default: %(default)s)",
    )
    g.add_argument("--class-steps", type=int, help="their reverse steps T (default: the run's sample.steps)")


def check(args: argparse.Namespace) -> None:
    """Refuse a sample or step count that is not positive, in one sentence."""
    positive("--class-accuracy", args.class_accuracy)
    positive("--class-steps", args.class_steps)


def run(args: argparse.Namespace, loaded: LoadedRun) -> dict:
    """Train the judge, draw and judge the samples with the run's own sampling settings; print unless ``--json``."""
    judge = run_judge(loaded, args.seed)
    classes = int(loaded.model.num_classes)
    own, start = loaded.config.run_sampling, time.perf_counter()
    pixels, nfe = sample_images(
        loaded,
        args.class_accuracy * classes,
        seed=args.seed,
        steps=args.class_steps or own.steps,
        sampler=own.sampler,
        grid=own.grid,
        categorical=own.categorical,
        guidance=args.class_guidance,
    )
    labels = class_labels(classes, len(pixels))
    accuracy = class_accuracy(judge, loaded.codec.from_pixels(pixels), labels)
    report = {
        **accuracy.to_dict(),
        "guidance": args.class_guidance,
        "nfe": nfe,
        "sampling_seconds": time.perf_counter() - start,
    }
    if not args.json:
        named = ", ".join(f"{label}: {count}" for label, count in enumerate(accuracy.named))
        print(
            f"class accuracy = {accuracy.accuracy:.3f} ({args.class_accuracy} samples of each class, guidance "
            f"{args.class_guidance:g}; named as their class: {named}); the judge names {judge.test_accuracy:.1%} "
            "of the test split's images right"
        )
    return report
