"""``md4 eval RUN --gen-ppl``: generative perplexity and unigram entropy of a run's samples under a scorer, per
sampler, step count and categorical draw, beside the same measures of real held-out text (docs/guide.md,
"Generative perplexity")."""

from __future__ import annotations

import argparse

import torch

from md4.cli.options import positive
from md4.core.ar import AUTOREGRESSIVE
from md4.device import PRECISION_CHOICES, resolve_precision
from md4.quality.corpus import reference_sequences, run_corpus, split_tokens
from md4.quality.generative import Row, check_text_run, measure, settings, sweep
from md4.quality.scorer_spec import SCORER_FORMS, load_scorer
from md4.runs.directory import LoadedRun
from md4.sampling import CATEGORICAL, GRIDS, SAMPLERS, default_sampler

DEFAULT_SAMPLES = 16
DEFAULT_SCORER = "ngram"


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generative perplexity (--gen-ppl)")
    g.add_argument("--gen-ppl", action="store_true", help="generative perplexity and entropy of the run's samples")
    g.add_argument("--scorer", metavar="SPEC", default=DEFAULT_SCORER, help=f"{SCORER_FORMS} (default: %(default)s)")
    g.add_argument(
        "--samples", metavar="N", type=int, default=DEFAULT_SAMPLES, help="samples per setting (default: %(default)s)"
    )
    g.add_argument(
        "--sampler",
        metavar="LIST",
        help=f"comma-separated samplers: {', '.join([*SAMPLERS, AUTOREGRESSIVE])} (default: the run's own)",
    )
    g.add_argument(
        "--sample-steps", metavar="LIST", help="comma-separated reverse step counts (default: the run's sample.steps)"
    )
    g.add_argument("--grid", choices=GRIDS, help="time grid (default: the run's sample.grid)")
    g.add_argument(
        "--categorical",
        metavar="LIST",
        help=f"comma-separated categorical draws: {', '.join(CATEGORICAL)} (default: the run's sample.categorical)",
    )
    g.add_argument(
        "--top-p", type=float, help="nucleus mass of the top_p and autoregressive samplers (default: the run's)"
    )
    g.add_argument("--length", type=int, help="sample length in tokens (default: the training seq_len)")
    g.add_argument(
        "--sample-precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="the network's arithmetic while sampling, as md4 sample's --precision (default: %(default)s); "
        "scoring uses --precision",
    )


def listed(option: str, text: str, kind=str) -> list:
    """The comma-separated values of an option, refusing an empty list or a value of the wrong kind."""
    values = [item.strip() for item in text.split(",") if item.strip()]
    try:
        parsed = [kind(item) for item in values]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated {kind.__name__} values, got {text!r}.") from None
    if not parsed:
        raise ValueError(f"{option} is empty; give one value or several separated by commas.")
    return parsed


def run(args: argparse.Namespace, loaded: LoadedRun) -> dict:
    """Draw, score and report; the report as a dict (printed as a table unless ``--json``)."""
    for name in ("samples", "length"):
        positive(f"--{name}", getattr(args, name))
    check_text_run(loaded)
    own = loaded.config.run_sampling  # what no flag says comes from the run's [sample] table
    grid = args.grid or own.grid
    top_p = own.top_p if args.top_p is None else args.top_p
    steps = listed("--sample-steps", args.sample_steps or str(own.steps), int)
    for count in steps:
        positive("--sample-steps", count)
    categoricals = listed("--categorical", args.categorical or own.categorical)
    for draw in categoricals:
        if draw not in CATEGORICAL:
            raise ValueError(f"Unknown categorical draw {draw!r} in --categorical; use {', '.join(CATEGORICAL)}.")
    samplers = listed("--sampler", args.sampler) if args.sampler else [own.sampler or default_sampler(loaded.model)]
    chosen = settings(samplers, steps, categoricals)
    length = args.length or loaded.spec.data_shape[0]
    batch = args.batch_size or min(args.samples, loaded.config.train.batch_size)
    held_out = reference_sequences(split_tokens(run_corpus(loaded, args.data), args.split), args.samples, length)
    scorer = load_scorer(args.scorer, loaded, data=args.data, precision=args.precision, batch_size=batch)
    reference = measure(torch.from_numpy(held_out), scorer)
    precision = resolve_precision(next(loaded.model.parameters()).device, args.sample_precision)
    rows = sweep(
        loaded,
        scorer,
        chosen,
        args.samples,
        length=length,
        batch_size=batch,
        seed=args.seed,
        grid=grid,
        top_p=top_p,
        precision=precision,
    )
    report = {
        "scorer": scorer.name,
        "samples": args.samples,
        "length": length,
        "grid": grid,
        "top_p": top_p,
        "sample_precision": precision,
        "seed": args.seed,
        "rows": [row.to_dict() for row in rows],
        "reference": {"split": args.split, **reference.to_dict()},
    }
    if not args.json:
        print_table(report, rows, reference)
    return report


def print_table(report: dict, rows: list[Row], reference: Row) -> None:
    print(
        f"generative perplexity under {report['scorer']}: {report['samples']} samples of {report['length']} "
        f"tokens each, {report['grid']} grid, network in {report['sample_precision']}, seed {report['seed']}"
    )
    print(
        f"{'sampler':<14} {'steps':>6} {'categorical':<15} {'NFE':>7} {'gen ppl':>10} {'± s.e.':>8} {'entropy':>8} "
        f"{'seconds':>8}"
    )
    for row in [*rows, reference]:
        s, ppl = row.setting, row.score.perplexity
        drawn = (
            f"{s.sampler:<14} {s.steps or '-':>6} {s.categorical:<15} {row.nfe:>7.1f}"
            if s is not None
            else f"{'held-out text':<14} {'-':>6} {'-':<15} {'-':>7}"
        )
        seconds = "-" if row.seconds is None else f"{row.seconds:.1f}"
        print(f"{drawn} {ppl:>10.3f} {ppl * row.score.nll_per_token_stderr:>8.3f} {row.entropy:>8.3f} {seconds:>8}")
    print(
        "entropy: the mean over samples of the entropy (bits) of each sample's token frequencies; s.e.: one "
        "standard error across samples"
    )
