"""The ``md4`` command line: train, sample, eval, data, presets and the CPU demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from md4.sampling import GRIDS, PRECISIONS, SAMPLER_NAMES

DEMO_PRESET = "shakespeare-char"
DEMO_PROMPT = "ROMEO:"


# ------------------------------------------------------------------ train
def cmd_train(args) -> int:
    from md4.config import build_config, resume_config
    from md4.train import train

    run_dir = Path(args.out or f"runs/{args.preset}")
    if args.resume:
        config = resume_config(run_dir, args.overrides, data=args.data)
    else:
        config = build_config(args.preset, args.overrides, data=args.data)
    print(f"md4: training {args.preset} on {config.data.name} into {run_dir}", file=sys.stderr)
    result = train(config, run_dir, resume=args.resume, progress=not args.no_progress)
    state = "stopped by Ctrl-C at" if result.interrupted else "finished at"
    valid = "n/a" if result.valid_bits_per_token is None else f"{result.valid_bits_per_token:.4f}"
    print(
        f"md4: {state} step {result.step} in {result.seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s); "
        f"valid bits/token {valid}; checkpoint in {run_dir}/checkpoints"
    )
    return 130 if result.interrupted else 0


# ----------------------------------------------------------------- sample
def infill_template(text: str, hole: str, tokenizer, mask_id: int) -> list[int]:
    """Encode ``text`` with each run of ``hole`` characters becoming that many masked tokens."""
    ids: list[int] = []
    segment = ""
    i = 0
    while i < len(text):
        if text[i] == hole:
            if segment:
                ids.extend(int(v) for v in tokenizer.encode(segment))
                segment = ""
            ids.append(mask_id)
        else:
            segment += text[i]
        i += 1
    if segment:
        ids.extend(int(v) for v in tokenizer.encode(segment))
    if mask_id not in ids:
        raise ValueError(f"The --infill text has no hole character {hole!r}; mark the positions to fill with it.")
    return ids


def generate(
    run,
    num: int,
    steps: int,
    sampler: str,
    grid: str,
    top_p: float,
    precision: str,
    seed: int,
    length: int | None = None,
    prompt: str | None = None,
    infill: str | None = None,
    hole: str = "_",
):
    """Samples from a loaded run as (texts, nfe)."""
    from md4.sampling import prefix_init

    model, tokenizer = run.model, run.tokenizer
    if num < 1 or steps < 1:
        raise ValueError(f"--num and --steps must be positive integers, got --num {num} and --steps {steps}.")
    device = next(model.parameters()).device
    init = None
    if prompt is not None and infill is not None:
        raise ValueError("Pass either --prompt or --infill, not both.")
    if infill is None:
        length = length or run.config.data.seq_len
    if prompt is not None:
        ids = torch.as_tensor(tokenizer.encode(prompt).astype("int64"), device=device)
        init = prefix_init(ids, (num, length), model.mask_id)
    elif infill is not None:
        ids = infill_template(infill, hole, tokenizer, model.mask_id)
        length = max(len(ids), length or 0)
        init = torch.full((num, length), model.mask_id, dtype=torch.long, device=device)
        init[:, : len(ids)] = torch.tensor(ids, device=device)
    out = model.sample(
        num,
        shape=(length,),
        num_steps=steps,
        sampler=sampler,
        grid=grid,
        top_p=top_p,
        precision=precision,
        seed=seed,
        init=init,
        device=device,
    )
    return [tokenizer.decode(row.tolist()) for row in out.tokens.cpu()], out.nfe


def cmd_sample(args) -> int:
    from md4.run import load_run

    run = load_run(args.run, device=args.device, use_ema=not args.no_ema)
    start = time.time()
    texts, nfe = generate(
        run,
        args.num,
        args.steps,
        args.sampler,
        args.grid,
        args.top_p,
        args.precision,
        args.seed,
        args.length,
        args.prompt,
        args.infill,
        args.hole,
    )
    for i, text in enumerate(texts):
        print(f"=== sample {i} ===\n{text}")
    how = "exact sampler" if args.sampler == "exact" else f"{args.steps} {args.grid} steps"
    print(f"md4: {len(texts)} samples, {how}, {nfe} network calls, {time.time() - start:.1f} s", file=sys.stderr)
    return 0


# ------------------------------------------------------------------- eval
def eval_batches(run, data: str | None, split: str, batch_size: int, max_batches: int | None):
    """Evaluation chunks: the run's own split, another recipe, or any text file (encoded with the run's tokenizer)."""
    import numpy as np

    from md4.data import TextBatches, eval_chunks, prepare
    from md4.data.errors import DataError
    from md4.data.textfile import read_corpus, text_files

    seq_len = run.config.data.seq_len
    if data is not None and Path(data).exists():
        text = read_corpus(text_files(Path(data)), Path(data))
        tokens = np.asarray(run.tokenizer.encode(text))
        max_chunks = None if max_batches is None else max_batches * batch_size
        return eval_chunks(tokens, seq_len, batch_size, max_chunks), f"{data} (all {len(tokens)} tokens)"
    prepared = prepare(data or run.config.data.name, seq_len=seq_len)
    if prepared.tokenizer.to_dict() != run.tokenizer.to_dict():
        raise DataError(
            f"Dataset {prepared.name!r} uses a different vocabulary from this model; "
            "evaluate on a text file (it is encoded with the model's tokenizer) or the run's own dataset."
        )
    source = TextBatches(prepared, seq_len)
    return source.eval_batches(split, batch_size, max_batches), f"{prepared.name} [{split}]"


def cmd_eval(args) -> int:
    from md4.evaluate import estimate_nelbo
    from md4.run import load_run

    run = load_run(args.run, device=args.device, use_ema=not args.no_ema)
    batch_size = args.batch_size or run.config.train.batch_size
    results = {"run": str(args.run), "step": run.step}
    for label, steps in (("continuous", None), (f"discrete T={args.steps}", args.steps)):
        batches, name = eval_batches(run, args.data, args.split, batch_size, args.max_batches)
        est = estimate_nelbo(
            run.model, batches, draws=args.draws, num_steps=steps, seed=args.seed, precision=args.precision
        )
        results["data"] = name
        results["continuous" if steps is None else "discrete"] = est.to_dict()
        if not args.json:
            print(
                f"{name}, {label} bound: {est.bits_per_token:.4f} ± {est.bits_per_token_stderr:.4f} bits/token, "
                f"perplexity <= {est.perplexity:.3f} ({est.num_sequences} sequences of {est.tokens_per_sequence}, "
                f"{est.draws} draws each, seed {args.seed})"
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


# ------------------------------------------------------- data and presets
def cmd_data(args) -> int:
    from md4.data import prepare, recipe_descriptions

    if args.action == "list":
        for name, text in recipe_descriptions().items():
            print(f"{name:20s} {text}")
        return 0
    prepared = prepare(args.name)
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in prepared.splits.items())
    print(f"{prepared.name}: vocabulary {prepared.tokenizer.vocab_size}; tokens: {sizes}")
    return 0


def cmd_presets(args) -> int:
    from md4.config import Config, preset_description, preset_names, preset_text

    if args.name:
        print(preset_text(args.name), end="")
        return 0
    for name in preset_names():
        print(f"{name:18s} {preset_description(name)}")
    print("\nEvery key (override with section.key=value):")
    for section, values in Config().to_dict().items():
        print(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


# ------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    """Train the Shakespeare preset, sample (unconditional and prompted), and evaluate on the valid and test splits."""
    from md4.config import build_config, resume_config
    from md4.evaluate import estimate_nelbo
    from md4.run import load_run
    from md4.train import train

    run_dir = Path(args.out)
    config = build_config(DEMO_PRESET, args.overrides)
    start = time.time()
    resume = (run_dir / "config.json").exists()
    if resume:
        print(f"md4 demo: resuming the run in {run_dir}", file=sys.stderr)
        config = resume_config(run_dir, args.overrides)
    result = train(config, run_dir, resume=resume, progress=not args.no_progress)
    if result.interrupted:
        print(f"md4 demo: stopped at step {result.step}; run `md4 demo --out {run_dir}` again to continue.")
        return 130
    run = load_run(run_dir)
    steps = config.train.sample_steps
    (unconditional,), _ = generate(run, 1, steps, "ancestral", "uniform", 1.0, "float64", seed=0)
    (prompted,), _ = generate(run, 1, steps, "ancestral", "uniform", 1.0, "float64", seed=1, prompt=DEMO_PROMPT)
    bounds = {}
    for split in ("valid", "test"):
        batches, name = eval_batches(run, None, split, config.train.batch_size, None)
        bounds[split] = estimate_nelbo(run.model, batches, seed=0, precision=config.train.precision)
    valid, test = bounds["valid"], bounds["test"]
    summary = {
        "run_dir": str(run_dir),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "wall_seconds": round(time.time() - start, 1),
        "train_tokens_per_second": round(result.tokens_per_second),
        "valid_bits_per_char": valid.bits_per_token,
        "test_bits_per_char": test.bits_per_token,
        "test_bits_per_char_stderr": test.bits_per_token_stderr,
        "test_sequences": test.num_sequences,
        "sample_unconditional": unconditional,
        "sample_prompted": prompted,
    }
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(f"\n=== unconditional sample ===\n{unconditional}\n\n=== prompted sample ({DEMO_PROMPT!r}) ===\n{prompted}\n")
    print(
        f"test bits/char <= {test.bits_per_token:.3f} ± {test.bits_per_token_stderr:.3f} on {name}; "
        f"valid {valid.bits_per_token:.3f}; {summary['parameters']:,} parameters; "
        f"{result.tokens_per_second:.0f} train tokens/s; {summary['wall_seconds']:.0f} s in all"
    )
    print(
        f"curves: {run_dir / 'curves.png'}; summary: {run_dir / 'demo.json'}; "
        f"more: md4 sample {run_dir} --num 4, md4 eval {run_dir}"
    )
    return 0


# ----------------------------------------------------------------- parser
def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that load a trained run."""
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="md4", description="Masked discrete diffusion (MD4): train, sample, evaluate."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model", description="Train an MD4 model into a run directory.")
    p.add_argument("--preset", default=DEMO_PRESET, help="a preset from `md4 presets` (default: %(default)s)")
    p.add_argument("--data", help="dataset: a recipe name (`md4 data list`), hf:NAME, or a text file/folder")
    p.add_argument("--out", help="run directory (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides such as train.lr=3e-4 model.n_layers=6 (see `md4 presets`)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run", description="Sample from a run's EMA weights.")
    p.add_argument("run", help="run directory written by md4 train")
    p.add_argument("--num", type=int, default=4, help="number of samples (default: %(default)s)")
    p.add_argument("--steps", type=int, default=256, help="reverse steps T (default: %(default)s)")
    p.add_argument(
        "--sampler",
        choices=list(SAMPLER_NAMES),
        default="ancestral",
        help="ancestral, top_p or mean on a time grid, or exact (one network call per token; --steps unused)",
    )
    p.add_argument("--grid", choices=GRIDS, default="uniform", help="time grid (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.98, help="nucleus mass for --sampler top_p (default: %(default)s)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float64",
        help="float64: exact draws; float32-gumbel: the JAX release's (implicitly truncated) draws",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--length",
        type=int,
        help="sample length in tokens (default: the training seq_len; with --infill, the template's length)",
    )
    p.add_argument("--prompt", help="text the samples start with (kept fixed)")
    p.add_argument("--infill", help="text with holes to fill, e.g. 'To be, or ___ to be'; other tokens stay fixed")
    p.add_argument("--hole", default="_", help="the hole character for --infill (default: %(default)s)")
    add_model_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "eval",
        help="likelihood bounds on held-out data",
        description="NELBO bounds (continuous time and discrete T) in bits/token and perplexity.",
    )
    p.add_argument("run", help="run directory written by md4 train")
    p.add_argument("--split", default="valid", help="valid or test of the run's dataset (default: %(default)s)")
    p.add_argument(
        "--data", help="another dataset: a recipe name or any text file (encoded with the model's tokenizer)"
    )
    p.add_argument("--draws", type=int, default=1, help="Monte-Carlo draws K per sequence (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1000, help="T of the discrete-time bound (default: %(default)s)")
    p.add_argument("--max-batches", type=int, help="evaluate only this many batches (default: all)")
    p.add_argument("--batch-size", type=int, help="sequences per batch (default: the run's batch size)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="network precision (default: %(default)s)"
    )
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="list or prepare datasets", description="Datasets are cached once, memory-mapped.")
    data_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="list or prepare")
    data_sub.add_parser("list", help="the dataset recipes")
    prep = data_sub.add_parser("prepare", help="download/tokenise a dataset into the cache (MD4_CACHE_DIR)")
    prep.add_argument("name", help="a recipe name, hf:NAME[:CONFIG], or a text file/folder")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("presets", help="list the presets, or print one", description="Run presets and config keys.")
    p.add_argument("name", nargs="?", help="print this preset's TOML")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "demo",
        help="the 10-minute CPU demo: train on Shakespeare, sample, evaluate",
        description="Train the shakespeare-char preset, sample, and evaluate on the test split.",
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=300")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # our errors: one sentence saying what is wrong and what to do
        if os.environ.get("MD4_DEBUG"):
            raise
        print(f"md4: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the training loop (which saves and stops by itself)
        print("md4: interrupted; nothing was written after the last completed step.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
