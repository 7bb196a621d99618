"""``md4 eval RUN --fid N``: FID and KID of N image samples against a split of the run's data
(:mod:`md4.quality.image_quality`; the features are :mod:`md4.quality.features`')."""

from __future__ import annotations

import argparse

from md4.cli.options import positive
from md4.device import PRECISION_CHOICES
from md4.quality.features import FEATURES, INCEPTION, feature_extractor
from md4.quality.image_quality import DEFAULT_FID_SPLIT, SAMPLE_BATCH, image_quality
from md4.runs.directory import LoadedRun
from md4.sampling import DEFAULT_GUIDANCE, GRIDS, SAMPLERS


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('FID and KID of image samples (docs/guide.md, "FID and KID")')
    g.add_argument("--fid", type=int, metavar="N", help="FID and KID of N samples (papers: 50000)")
    g.add_argument(
        "--fid-split",
        default=DEFAULT_FID_SPLIT,
        help="the split of the run's data the samples are compared with (default: %(default)s, as papers do)",
    )
    g.add_argument(
        "--fid-references", type=int, metavar="M", help="only the first M images of the split (default: all)"
    )
    g.add_argument(
        "--fid-features",
        choices=FEATURES,
        default=INCEPTION,
        help="inception: the TF-FID Inception of papers (needs md4[fid] and a one-time weights download); "
        "random-conv: a fixed random network, offline, not comparable with published numbers (default: %(default)s)",
    )
    g.add_argument("--fid-inception-weights", metavar="FILE", help="the Inception weights file, for offline machines")
    g.add_argument("--fid-steps", type=int, help="reverse steps T (default: the run's sample.steps)")
    g.add_argument("--fid-sampler", choices=list(SAMPLERS), help="sampler (default: the run's, as md4 sample)")
    g.add_argument("--fid-grid", choices=GRIDS, help="time grid (default: the run's sample.grid)")
    g.add_argument(
        "--fid-guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance (default: %(default)s)"
    )
    g.add_argument(
        "--fid-precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="the network's arithmetic while sampling, as md4 sample (default: %(default)s)",
    )
    g.add_argument(
        "--fid-batch", type=int, default=SAMPLE_BATCH, help="samples per reverse process (default: %(default)s)"
    )


def check(args: argparse.Namespace) -> None:
    """Refuse bad FID options before the run is loaded, one sentence each."""
    if args.fid is None:
        return
    if args.fid < 2:
        raise ValueError(f"--fid needs at least 2 samples to fit a covariance, got {args.fid}; papers use 50000.")
    for name in ("fid_steps", "fid_batch", "fid_references"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name))


def run(args: argparse.Namespace, loaded: LoadedRun) -> dict:
    """Measure, print a report unless ``--json``, and return the results."""
    extractor = feature_extractor(args.fid_features, args.fid_inception_weights)
    own = loaded.config.run_sampling  # what no flag says comes from the run's [sample] table
    quality = image_quality(
        loaded,
        args.fid,
        extractor,
        split=args.fid_split,
        references=args.fid_references,
        batch_size=args.fid_batch,
        seed=args.seed,
        precision=args.fid_precision,
        steps=args.fid_steps or own.steps,
        sampler=args.fid_sampler or own.sampler,
        grid=args.fid_grid or own.grid,
        categorical=own.categorical,
        guidance=args.fid_guidance,
    )
    if not args.json:
        print(
            f"md4 eval: {quality.samples} samples ({quality.sampler}, {quality.nfe} network calls each, seed "
            f"{args.seed}) against {quality.references} {quality.split} images, {quality.features} features"
        )
        kid = quality.kid
        print(f"FID = {quality.fid:.4g}")
        print(f"KID = {kid.mean:.4g} ± {kid.std:.2g} (over {kid.subsets} subsets of {kid.subset_size})")
        if not quality.published:
            print(f"({quality.features} features: comparable only with each other, not with published FID or KID)")
    return quality.to_dict()
