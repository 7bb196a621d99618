"""``md4 eval``: the likelihood bounds of a run on held-out data (an autoregressive run's exact likelihood), as text
or JSON."""

from __future__ import annotations

import argparse
import json

from md4.cli import eval_class_accuracy, eval_fid, eval_gen_ppl, eval_suite, eval_zero_shot
from md4.cli.options import add_model_options, batch_progress, positive
from md4.core.kind_contract import EXACT
from md4.device import PRECISIONS, use_tf32
from md4.evaluate import DEFAULT_BOUND_STEPS, BoundEstimate, evaluate_run, unit_of
from md4.held_out import HeldOut
from md4.runs.pretrained import from_pretrained


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="likelihood bounds on held-out data",
        description="NELBO bounds (continuous time and discrete T) in bits/token and perplexity; for an "
        "autoregressive run (model.kind=ar), its exact negative log-likelihood.",
    )
    p.add_argument("run", help="run directory written by md4 train, a folder written by md4 export, or hf:REPO_ID")
    p.add_argument("--split", default="test", help="test or valid split of the run's dataset (default: %(default)s)")
    p.add_argument(
        "--data", help="another dataset: a recipe name or any text file (encoded with the model's tokenizer)"
    )
    p.add_argument(
        "--draws",
        type=int,
        default=1,
        help="Monte-Carlo draws K per sequence; an exact likelihood takes none (default: %(default)s)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_BOUND_STEPS,
        help="T of the discrete-time bound of MD4 (GenMD4 has only the continuous one; default: %(default)s)",
    )
    p.add_argument("--max-batches", type=int, help="evaluate only this many batches (default: all)")
    p.add_argument("--batch-size", type=int, help="sequences per batch (default: the run's batch size)")
    p.add_argument(
        "--micro-batch",
        type=int,
        help="sequences per forward pass; any split gives the same numbers (default: the run's training "
        "micro-batch, train.batch_size / train.grad_accum)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="network arithmetic (default: %(default)s)")
    add_model_options(p)
    eval_fid.add_options(p)
    eval_class_accuracy.add_options(p)
    p.add_argument(
        "--bounds", action="store_true", help="also compute the bounds when a quality measurement below is asked for"
    )
    eval_zero_shot.add_options(p)
    eval_suite.add_options(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    eval_gen_ppl.add_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# md4.quality's measurements, each its own module in md4.cli: its option (and key in the results), its name in the
# report, its module. Asking for one skips the bounds unless --bounds (or --suite) is given too.
MEASUREMENTS = (
    ("gen_ppl", "generative perplexity", eval_gen_ppl),
    ("zero_shot", "zero-shot perplexity", eval_zero_shot),
    ("fid", "FID and KID", eval_fid),
    ("class_accuracy", "class accuracy", eval_class_accuracy),
)
QUALITY_OPTIONS = tuple(key for key, _, _ in MEASUREMENTS)


def run(args: argparse.Namespace) -> int:
    for name in ("batch_size", "micro_batch", "steps", "max_batches", "draws"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name))
    eval_fid.check(args)
    eval_class_accuracy.check(args)
    loaded = from_pretrained(args.run, device=args.device, use_ema=not args.no_ema, step=args.checkpoint)
    use_tf32(next(loaded.model.parameters()).device, not args.no_tf32)
    weights = "raw" if args.no_ema else "EMA"
    results = {"run": str(args.run), "step": loaded.step, "weights": weights}
    skipped = eval_suite.select(args, loaded) if args.suite else {}
    if args.bounds or not any(getattr(args, name) for name in QUALITY_OPTIONS):
        results.update(bounds(args, loaded, weights))
    for key, name, module in MEASUREMENTS:
        if getattr(args, key):
            value = (
                eval_suite.attempt(skipped, name, module.run, args, loaded) if args.suite else module.run(args, loaded)
            )
            if value is not None:
                results[key] = value
    if args.suite:
        eval_suite.finish(args, loaded, results, skipped)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def bounds(args: argparse.Namespace, loaded, weights: str) -> dict:
    """The bounds (an autoregressive run's exact likelihood) on held-out data, printed unless ``--json``."""
    unit = unit_of(loaded.codec)  # bits per dimension for images, per character for character-level text

    def progress(label: str, held_out: HeldOut):
        if label in ("continuous", EXACT) and not args.json:
            print(f"md4 eval: {held_out.description}, step {loaded.step}, {weights} weights, {args.precision}")
        return batch_progress(held_out.batches, held_out.count, f"{label} bound", args.no_progress)

    def show(label: str, est: BoundEstimate) -> None:
        bits = f"{est.bits_per_token:.4f} ± {est.bits_per_token_stderr:.4f} bits/{unit}"
        if unit == "token" and est.bits_per_char is not None:  # text of several characters per token
            bits += f" = {est.bits_per_char:.4f} ± {est.bits_per_char_stderr:.4f} bits/char"
        if label == EXACT and not args.json:
            print(
                f"NLL (exact): {bits}, "
                f"perplexity = {est.perplexity:.3f} ({est.num_sequences} sequences of {est.tokens_per_sequence}, "
                "exact: no Monte-Carlo draws, not a bound)"
            )
        elif not args.json:
            print(
                f"{label} bound: {bits}, "
                f"perplexity <= {est.perplexity:.3f} ({est.num_sequences} sequences of {est.tokens_per_sequence}, "
                f"{est.draws} draws each, seed {args.seed})"
            )

    evaluation = evaluate_run(
        loaded,
        args.data,
        args.split,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        draws=args.draws,
        steps=args.steps,
        max_batches=args.max_batches,
        seed=args.seed,
        precision=args.precision,
        progress=progress,
        on_bound=show,
    )
    return {"split": args.split, "unit": unit, **evaluation.to_dict()}
