"""The ``md4`` command line: train, sample, eval, data, presets and the CPU demo."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from md4.config import DEFAULT_PRESET, IMAGE_PRESET
from md4.device import PRECISIONS
from md4.evaluate import DEFAULT_BOUND_STEPS
from md4.files import write_atomic
from md4.sampling import CATEGORICAL, DEFAULT_STEPS, GRIDS, SAMPLERS

DEMO_PROMPT = "ROMEO:"
# Exit codes (README, "Exit codes"): 0 done; 1 an unexpected error; 2 bad input, refused or damaged files;
# 3 training diverged; 130 / 143 training stopped by SIGINT / SIGTERM after saving a checkpoint (also for
# md4 train --nproc; each torchrun worker exits 0, so that torchrun neither reports a failure nor restarts them).
EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3
DEFAULT_MASK = "bottom-half"  # the region md4 sample --infill-image fills
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def positive(name: str, value: int | None) -> None:
    """Refuse a count option that is zero or negative (None: not given)."""
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}.")


def check_output_file(path: Path, option: str, example: str) -> None:
    """Refuse an output file option that names a folder or a file inside a file, or one that cannot be written."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; name a file in it, such as {path / example}.")
    folder = path.parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"{option} {path} is inside {blocker}, which is a file; choose another path.")
    if not os.access(blocker or Path("."), os.W_OK):
        raise ValueError(f"{option} {path} cannot be written ({blocker} is not writable); choose another path.")


# ------------------------------------------------------------------ train
def describe(trainer, resume: bool, note: str = "") -> str:
    """The banner: what is trained on which data, into where (and ``note``, when there is one)."""
    model = trainer.config.model
    params = sum(p.numel() for p in trainer.model.parameters())
    start = f"resuming at step {trainer.step}" if resume else "training"
    classes = class_counts(trainer.data)
    return (
        f"md4: {start} a {model['kind']} model ({model['net']}, {params:,} parameters) on {trainer.config.data.name}"
        f"{f' ({classes})' if classes else ''} into {trainer.run_dir}{f'; {note}' if note else ''}"
    )


def class_counts(dataset, shown: int = 10) -> str:
    """The images each class of an image folder got, e.g. ``cat 80, dog 80`` (the first ``shown`` classes)."""
    prepared = getattr(dataset, "prepared", None)
    counts = prepared.meta.get("class_counts") if prepared is not None else None
    if not counts:
        return ""
    listed = ", ".join(f"{name} {count}" for name, count in list(counts.items())[:shown])
    return listed + (f", ... ({len(counts)} classes)" if len(counts) > shown else "")


def report(result, run_dir: Path, unit: str = "token", processes: int = 1) -> int:
    """Print how training ended and return the exit code."""
    state = f"stopped by {result.stopped_by} at" if result.stopped_by else "finished at"
    everyone = f" (all {processes} processes)" if processes > 1 else ""
    valid = "n/a" if result.valid_bits_per_token is None else f"{result.valid_bits_per_token:.4f}"
    print(
        f"md4: {state} step {result.step}{everyone} in {result.seconds:.0f} s "
        f"({result.tokens_per_second:.0f} tokens/s); valid bits/{unit} {valid}; checkpoint in {run_dir}/checkpoints"
    )
    return EXIT_SIGNAL.get(result.stopped_by, 0)


def unit_of(codec) -> str:
    """What a bit is counted per: a dimension (sub-pixel) of an image, a character of character-level text, or a
    token (GPT-2's BPE, raw tokens)."""
    from md4.data import CharTokenizer, ImageCodec

    if isinstance(codec, ImageCodec):
        return "dim"
    return "char" if isinstance(codec, CharTokenizer) else "token"


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` or ``option=VALUE``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def training_config(args, quiet: bool = False):
    """The config of an ``md4 train`` (new or resumed), its run folder, the run's own data for a resume (None:
    prepare ``config.data.name``), and a note for the banner; ``quiet`` drops the config's warnings."""
    from md4.config import build_config, default_preset, preset_note
    from md4.runs.directory import own_dataset, resume_config

    if args.checkpoint is not None and not args.resume:
        raise ValueError("--checkpoint picks the checkpoint to resume from; pass it with --resume.")
    preset = args.preset or default_preset(args.data)
    run_dir = Path(args.out or f"runs/{preset}")
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        if args.resume:
            config = resume_config(run_dir, args.overrides, data=args.data)
            return config, run_dir, own_dataset(run_dir, config, args.data), ""
        config = build_config(args.preset, args.overrides, data=args.data)
    return config, run_dir, None, "" if args.preset else preset_note(preset, args.data)


def launch_training(args) -> int:
    """``md4 train --nproc N``: check what can be checked (config, batch split, run folder, data, checkpoint) in
    this process, then start the N processes with torchrun."""
    from md4 import distributed
    from md4.runs.directory import check_run_dir_free
    from md4.training.trainer import training_data

    positive("--nproc", args.nproc)
    config, run_dir, dataset, _ = training_config(args)
    check_run_dir_free(run_dir)
    training_data(config, run_dir, args.resume, args.checkpoint, args.nproc, dataset)
    return distributed.launch(args.nproc, without_option(args.argv, "--nproc"))


def train_process(args) -> int:
    """One training process: alone, or a rank of several under torchrun."""
    from md4 import distributed
    from md4.training.trainer import build_trainer

    config, run_dir, dataset, note = training_config(args, quiet=distributed.launched_by_md4())
    world = distributed.connect(config.train.device, config.train.dist_timeout)
    finished = False
    try:
        if not world.is_main:
            warnings.simplefilter("ignore")  # rank 0 speaks for the run
        trainer = build_trainer(config, run_dir, args.resume, not args.no_progress, args.checkpoint, world, dataset)
        if world.is_main:
            print(describe(trainer, args.resume, note), file=sys.stderr)
        result = trainer.fit()
        finished = True
    finally:
        distributed.disconnect(finished)
    if not world.is_main:
        return 0
    code = report(result, run_dir, unit_of(trainer.data.codec), world.size)
    return 0 if world.distributed and result.interrupted else code


def worker_process(args) -> int:
    """A worker of ``md4 train --nproc``: md4's own error is left for the launcher, which prints it once, and the
    worker exits 0 (torchrun then reports nothing); a worker cut short because another one left that way exits 0
    quietly too. Anything else is a real failure, with its traceback."""
    from md4 import distributed

    try:
        return train_process(args)
    except ValueError as err:
        distributed.record_failure(str(err), exit_code_of(err))
        return 0
    except Exception:
        if distributed.peer_failed():
            return 0
        raise


def cmd_train(args) -> int:
    from md4 import distributed

    if args.nproc is not None and not distributed.launched_by_torchrun():
        return launch_training(args)
    return worker_process(args) if distributed.launched_by_md4() else train_process(args)


# ----------------------------------------------------------------- sample
def class_labels(run, num: int, per_class: int | None = None) -> torch.Tensor | None:
    """Labels for samples of a class-conditional run: ``per_class`` of each class in turn, or classes cycling."""
    classes = run.model.num_classes
    if classes is None:
        if per_class:
            raise ValueError("--per-class needs a class-conditional model; train one with model.conditional=true.")
        return None
    device = next(run.model.parameters()).device
    if per_class:
        return torch.arange(classes, device=device).repeat_interleave(per_class)
    return torch.arange(num, device=device) % classes


def sample_text(run, num: int, seed: int, **options):
    """Samples of a loaded text run, decoded: a :class:`md4.generation.text.Generation`."""
    from md4.generation.text import generate

    return generate(run.model, run.codec, num, labels=class_labels(run, num), seed=seed, **options)


def sample_images(run, args, options: dict) -> tuple[list[Path], int, str]:
    """Image samples of a loaded run as PNG files (a grid, or an infilling panel, and a reverse-process strip):
    the paths written, the NFE and an ASCII preview of the first image."""
    from md4.device import autocast
    from md4.generation import pictures as pictures
    from md4.generation.images import complete, image_mask
    from md4.sampling import sample

    codec, model = run.codec, run.model
    out = Path(args.out) if args.out else Path(args.run) / "samples" / "sample.png"
    written = []
    if args.infill_image:
        given = torch.as_tensor(codec.read_png(args.infill_image))
        hole = image_mask(args.mask or DEFAULT_MASK, codec.data_shape, seed=args.seed)
        labels = class_labels(run, args.num)
        result = complete(model, given, hole, args.num, labels=labels, seed=args.seed, **options)
        panel = pictures.infill_panel(codec, given, hole, result.tokens.cpu())
        written.append(pictures.save_png(panel, out, args.scale))
    else:
        labels = class_labels(run, args.num, args.per_class)
        num = len(labels) if args.per_class else args.num
        precision = options.pop("precision")
        with autocast(next(model.parameters()).device, precision):
            result = sample(model, num, labels=labels, snapshots=8 if args.strip else 0, seed=args.seed, **options)
        per_row = args.per_class or math.ceil(math.sqrt(num))
        written.append(
            pictures.save_png(pictures.tile(pictures.rows_of(codec, result.tokens, per_row)), out, args.scale)
        )
        if args.strip:
            strip = pictures.strip(codec, result.trajectory)
            written.append(pictures.save_png(strip, out.with_name(f"{out.stem}-strip.png"), args.scale))
    return written, result.nfe, codec.decode(result.tokens[0].cpu())


def cmd_sample(args) -> int:
    from md4.data import ImageCodec
    from md4.runs.directory import load_run

    for name in ("num", "steps", "length", "per_class", "scale"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.prompt == "":
        raise ValueError("--prompt is empty; give the text the samples start with, or leave --prompt out.")
    check_guidance(args.guidance)
    if args.out:
        check_output_file(Path(args.out), "--out", "sample.png")
    run = load_run(args.run, device=args.device, use_ema=not args.no_ema, step=args.checkpoint)
    images = isinstance(run.codec, ImageCodec)
    check_sample_options(args, run, images)
    options = {
        "steps": args.steps,
        "sampler": args.sampler,
        "grid": args.grid,
        "top_p": args.top_p,
        "categorical": args.categorical,
        "precision": args.precision,
        "guidance": args.guidance,
    }
    start = time.time()
    if images:
        written, nfe, preview = sample_images(run, args, options)
        print(preview)
        for path in written:
            print(f"md4: wrote {path}", file=sys.stderr)
        count = args.per_class * run.model.num_classes if args.per_class else args.num
    else:
        out = sample_text(
            run,
            args.num,
            args.seed,
            length=args.length,
            prompt=args.prompt,
            infill=args.infill,
            hole=args.hole,
            **options,
        )
        for i, text in enumerate(out.texts):
            print(f"=== sample {i} ===\n{text}")
        nfe, count = out.nfe, len(out.texts)
    how = f"{args.steps} {args.grid} steps" if SAMPLERS[args.sampler].uses_grid else "no grid"
    print(
        f"md4: {count} samples, {args.sampler} sampler, {how}, {nfe} network calls, {time.time() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


def check_guidance(guidance: float) -> None:
    """Refuse a guidance weight that is not a number from 0 to :data:`md4.sampling.MAX_GUIDANCE`."""
    from md4.sampling import MAX_GUIDANCE

    if not 0.0 <= guidance <= MAX_GUIDANCE:  # also NaN
        raise ValueError(
            f"--guidance must be a number from 0 (ignore the labels) to {MAX_GUIDANCE:g}, with 1 for plain "
            f"conditioning, got {guidance}."
        )


def check_sample_options(args, run, images: bool) -> None:
    """Refuse options that do not apply to this run or to each other, instead of ignoring them."""
    text_only = {"--prompt": args.prompt, "--infill": args.infill, "--length": args.length}
    image_only = {
        "--infill-image": args.infill_image,
        "--per-class": args.per_class,
        "--out": args.out,
        "--mask": args.mask,
    }
    wrong = [name for name, value in (text_only if images else image_only).items() if value is not None]
    if wrong or (args.strip and not images):
        kind = "text" if images else "image"
        raise ValueError(f"{(wrong or ['--strip'])[0]} is for {kind} runs, and {args.run} is not one.")
    if args.mask is not None and args.infill_image is None:
        raise ValueError("--mask chooses the region of --infill-image to fill in; pass --infill-image PNG with it.")
    if args.per_class and args.infill_image:
        raise ValueError(
            "--per-class draws a grid of every class and --infill-image completes one image; use one of them "
            "(--num sets how many completions)."
        )
    if args.guidance not in (0.0, 1.0) and run.model.num_classes is None:
        raise ValueError(
            f"--guidance {args.guidance:g} weighs class labels, and {args.run} is not class-conditional (train one "
            "with model.conditional=true); leave --guidance out."
        )


# ------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    from tqdm.auto import tqdm

    from md4.evaluate import estimate_nelbo, held_out_batches
    from md4.runs.directory import load_run

    for name in ("batch_size", "steps", "max_batches", "draws"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name))
    run = load_run(args.run, device=args.device, use_ema=not args.no_ema, step=args.checkpoint)
    batch_size = args.batch_size or run.config.train.batch_size
    weights = "raw" if args.no_ema else "EMA"
    unit = unit_of(run.codec)  # bits per dimension for images, per character for character-level text
    results = {"run": str(args.run), "step": run.step, "split": args.split, "weights": weights, "unit": unit}
    bounds = [("continuous", None)]
    if run.model.discrete_bound:
        bounds.append((f"discrete T={args.steps}", args.steps))
    for label, steps in bounds:
        held_out = held_out_batches(run, args.data, args.split, batch_size, args.max_batches)
        if steps is None and not args.json:
            print(f"md4 eval: {held_out.description}, step {run.step}, {weights} weights, {args.precision}")
        batches = tqdm(
            held_out.batches,
            total=held_out.count,
            desc=f"{label} bound",
            unit="batch",
            disable=args.no_progress,
            leave=False,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )
        est = estimate_nelbo(
            run.model, batches, draws=args.draws, num_steps=steps, seed=args.seed, precision=args.precision
        )
        results["data"] = held_out.description
        results["continuous" if steps is None else "discrete"] = est.to_dict()
        if not args.json:
            print(
                f"{label} bound: {est.bits_per_token:.4f} ± {est.bits_per_token_stderr:.4f} bits/{unit}, "
                f"perplexity <= {est.perplexity:.3f} ({est.num_sequences} sequences of {est.tokens_per_sequence}, "
                f"{est.draws} draws each, seed {args.seed})"
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


# ------------------------------------------------------- data and presets
def cmd_data(args) -> int:
    from md4.data import dataset_of, prepare, recipe_descriptions

    if args.action == "list":
        for name, text in recipe_descriptions().items():
            print(f"{name:20s} {text}")
        return 0
    prepared = prepare(args.name, levels=args.levels)
    dataset = dataset_of(prepared, seq_len=1)
    unit = "tokens" if dataset.data_shape == (1,) else f"examples of {'x'.join(map(str, dataset.data_shape))}"
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in prepared.splits.items())
    classes = f"; {dataset.num_classes} classes" if dataset.num_classes else ""
    counts = class_counts(dataset)
    print(f"{prepared.name}: vocabulary {dataset.vocab_size}{classes}; {unit}: {sizes}")
    if counts:
        print(f"images per class: {counts}")
    return 0


def cmd_inspect(args) -> int:
    from md4.generation.schedule_plot import plot_schedule, ranked_exponents
    from md4.runs.directory import load_run

    if args.out:
        check_output_file(Path(args.out), "--out", "schedule.png")
    run = load_run(args.run, device="cpu", use_ema=not args.no_ema, step=args.checkpoint)
    out = Path(args.out) if args.out else Path(args.run) / "schedule.png"
    plot_schedule(run.model, run.codec, out, title=f"{args.run}, step {run.step}")
    ranked = ranked_exponents(run.model, run.codec)
    low = ", ".join(f"{label} {w:.2f}" for w, label in ranked[:5])
    high = ", ".join(f"{label} {w:.2f}" for w, label in ranked[-5:])
    print(f"lowest w (masked early, decoded late): {low}\nhighest w (masked late, decoded early): {high}")
    print(f"md4: wrote {out}", file=sys.stderr)
    return 0


def cmd_presets(args) -> int:
    from md4.config import Config, data_spec_guess, load_preset, preset_description, preset_names, preset_text
    from md4.models import MODEL_KINDS, NETWORKS, count_parameters

    if args.name:
        config = load_preset(args.name)
        spec = data_spec_guess(config)
        print(preset_text(args.name), end="")
        print(f"\n# parameters: {count_parameters(config, spec):,} (vocabulary {spec.vocab_size})")
        return 0
    for name in preset_names():
        print(f"{name:24s} {preset_description(name)}")
    print(f"\nModel kinds: {', '.join(MODEL_KINDS)}; networks: {', '.join(NETWORKS)}.")
    print("Every key of the default kind and network (override with section.key=value):")
    for section, values in Config().to_dict().items():
        print(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


# ------------------------------------------------------------------- demo
def train_demo(preset: str, run_dir: Path, overrides: list[str], progress: bool):
    """Train (or resume, or reuse) a demo run on the preset's own data; the TrainResult."""
    from md4.config import build_config, load_preset
    from md4.runs.directory import is_run, resume_config
    from md4.training.trainer import build_trainer

    resume = is_run(run_dir)
    if resume:
        config = resume_config(run_dir, overrides, data=load_preset(preset).data.name)
    else:
        config = build_config(preset, overrides)
    trainer = build_trainer(config, run_dir, resume, progress)
    print(describe(trainer, resume).replace("md4:", "md4 demo:", 1), file=sys.stderr)
    return trainer.fit()


def cmd_demo(args) -> int:
    """Train a demo preset, sample, and evaluate on the valid and test splits: Shakespeare, or MNIST with --images."""
    from md4.evaluate import estimate_nelbo, held_out_batches
    from md4.runs.directory import load_run

    run_dir = Path(args.out or ("runs/demo-mnist" if args.images else "runs/demo"))
    start = time.time()
    result = train_demo(IMAGE_PRESET if args.images else DEFAULT_PRESET, run_dir, args.overrides, not args.no_progress)
    if result.interrupted:
        again = f"md4 demo{' --images' if args.images else ''} --out {run_dir}"
        print(f"md4 demo: stopped at step {result.step}; run `{again}` again to continue.")
        return EXIT_SIGNAL[result.stopped_by]
    run = load_run(run_dir)
    config = run.config
    bounds = {}
    for split in ("valid", "test"):
        held_out = held_out_batches(run, None, split, config.train.batch_size)
        bounds[split] = estimate_nelbo(run.model, held_out.batches, seed=0, precision=config.train.precision)
    valid, test = bounds["valid"], bounds["test"]
    unit = unit_of(run.codec)
    summary = {
        "run_dir": str(run_dir),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "train_seconds": round(result.seconds, 1),
        "train_tokens_per_second": round(result.tokens_per_second),
        f"valid_bits_per_{unit}": valid.bits_per_token,
        f"test_bits_per_{unit}": test.bits_per_token,
        f"test_bits_per_{unit}_stderr": test.bits_per_token_stderr,
        "test_sequences": test.num_sequences,
    }
    summary.update(demo_images(run, run_dir) if args.images else demo_texts(run))
    summary["wall_seconds"] = round(time.time() - start, 1)
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(
        f"test bits/{unit} <= {test.bits_per_token:.3f} ± {test.bits_per_token_stderr:.3f} on {held_out.description}; "
        f"valid {valid.bits_per_token:.3f}; {summary['parameters']:,} parameters; "
        f"{result.tokens_per_second:.0f} train tokens/s; {summary['wall_seconds']:.0f} s in all"
    )
    print(
        f"curves: {run_dir / 'curves.png'}; summary: {run_dir / 'demo.json'}; "
        f"more: md4 sample {run_dir} --num 4, md4 eval {run_dir}"
    )
    return 0


def demo_texts(run) -> dict:
    """The text demo's samples: one unconditional, one prompted; printed and returned for demo.json."""
    steps = run.config.train.sample_steps
    (unconditional,) = sample_text(run, 1, seed=0, steps=steps).texts
    (prompted,) = sample_text(run, 1, seed=1, steps=steps, prompt=DEMO_PROMPT).texts
    print(f"\n=== unconditional sample ===\n{unconditional}\n\n=== prompted sample ({DEMO_PROMPT!r}) ===\n{prompted}\n")
    return {"sample_unconditional": unconditional, "sample_prompted": prompted}


def demo_images(run, run_dir: Path) -> dict:
    """The image demo's pictures: a grid with a row per class, an unconditional grid (guidance 0), the reverse
    process, an infilled test image."""
    from md4.evaluate import held_out_batches
    from md4.generation import pictures as pictures
    from md4.generation.images import complete, image_mask
    from md4.sampling import sample

    codec, model = run.codec, run.model
    steps = run.config.train.sample_steps
    per_class = 8
    labels = class_labels(run, 0, per_class)  # None for an unconditional model: then both grids are unconditional
    count = 10 * per_class if labels is None else len(labels)
    grid = sample(model, count, labels=labels, steps=steps, grid="cosine", snapshots=8, seed=0)
    guidance = 1.0 if labels is None else 0.0
    free = sample(model, count, labels=labels, guidance=guidance, steps=steps, grid="cosine", seed=1)

    def grid_png(tokens, name):
        return pictures.save_png(pictures.tile(pictures.rows_of(codec, tokens, per_class)), run_dir / name, 4)

    paths = {
        "class_grid": grid_png(grid.tokens, "demo-classes.png"),
        "unconditional_grid": grid_png(free.tokens, "demo-unconditional.png"),
        "strip": pictures.save_png(
            pictures.strip(codec, [s[::per_class] for s in grid.trajectory]), run_dir / "demo-strip.png", 4
        ),
    }
    images, image_labels = next(held_out_batches(run, None, "test", 1).batches)
    given = images[0]
    hole = image_mask("bottom-half", codec.data_shape)
    given_labels = None if labels is None else image_labels.expand(6).to(labels.device)
    completed = complete(model, given, hole, 6, labels=given_labels, steps=steps, seed=0)
    paths["infill"] = pictures.save_png(
        pictures.infill_panel(codec, given, hole, completed.tokens.cpu()), run_dir / "demo-infill.png", 4
    )
    print(f"\n=== a sample of each class ===\n{codec.decode(grid.tokens[0].cpu())}\n")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return {name: str(path) for name, path in paths.items()}


# ------------------------------------------------------------------ bench
def cmd_bench(args) -> int:
    from md4.bench import format_report, run_suite

    for name in ("steps", "warmup", "threads"):
        positive(f"--{name}", getattr(args, name))
    if args.json:
        check_output_file(Path(args.json), "--json", "bench.json")  # before minutes of measurements, not after
    report = run_suite(args.models, args.modes, args.sampling, args.device, args.threads, args.steps, args.warmup)
    print(format_report(report, args.markdown))
    if args.json:
        write_atomic(Path(args.json), json.dumps(report, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------- parser
def add_model_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that load a trained run."""
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--checkpoint", type=int, metavar="STEP", help="the checkpoint of this step (default: the newest)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="md4", description="Masked discrete diffusion (MD4): train, sample, evaluate."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model", description="Train an MD4 model into a run directory.")
    p.add_argument(
        "--preset",
        help=f"a preset from `md4 presets` (default: {DEFAULT_PRESET}, or {IMAGE_PRESET} when --data is images)",
    )
    p.add_argument(
        "--data",
        help="dataset: a recipe name (`md4 data list`), hf:NAME, a text file/folder, or a folder of images "
        "(with --resume: other data than the run's own, which is taken from the cache)",
    )
    p.add_argument("--out", help="run directory (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument(
        "--checkpoint",
        type=int,
        metavar="STEP",
        help="with --resume: continue from this step's checkpoint (newer ones are moved aside, not deleted)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine (runs torchrun --standalone --nproc_per_node N -m md4 train)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides such as train.lr=3e-4 net.n_layers=6 (see `md4 presets`)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run", description="Sample from a run's EMA weights.")
    p.add_argument("run", help="run directory written by md4 train")
    p.add_argument("--num", type=int, default=4, help="number of samples (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="reverse steps T (default: %(default)s)")
    p.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        default="ancestral",
        help="; ".join(f"{name}: {sampler.description}" for name, sampler in SAMPLERS.items()),
    )
    p.add_argument("--grid", choices=GRIDS, default="uniform", help="time grid (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.98, help="nucleus mass for --sampler top_p (default: %(default)s)")
    p.add_argument(
        "--categorical",
        choices=CATEGORICAL,
        default="float64",
        help="how tokens are drawn: float64 is exact; float32-gumbel is the JAX release's (implicitly truncated)",
    )
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="network arithmetic (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--length",
        type=int,
        help="sample length in tokens (default: the training seq_len; with --infill, the template's length)",
    )
    p.add_argument("--prompt", help="text the samples start with (kept fixed)")
    p.add_argument("--infill", help="text with holes to fill, e.g. 'To be, or ___ to be'; other tokens stay fixed")
    p.add_argument("--hole", default="_", help="the hole character for --infill (default: %(default)s)")
    p.add_argument(
        "--guidance",
        type=float,
        default=1.0,
        help="classifier-free guidance of a class-conditional model: 1 conditions, 0 ignores the labels, "
        "> 1 follows them more closely (default: %(default)s)",
    )
    p.add_argument("--per-class", type=int, help="images: this many samples of each class, one row per class")
    p.add_argument("--infill-image", help="images: a PNG of the model's size whose --mask region is filled in")
    p.add_argument(
        "--mask",
        help="images, with --infill-image: the region to fill: bottom-half, top-half, left-half, right-half, center "
        f"or random:F (default: {DEFAULT_MASK})",
    )
    p.add_argument("--out", help="images: the PNG to write (default: RUN/samples/sample.png)")
    p.add_argument("--strip", action="store_true", help="images: also write the reverse process as OUT-strip.png")
    p.add_argument("--scale", type=int, default=4, help="images: pixel size in the PNG (default: %(default)s)")
    add_model_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "eval",
        help="likelihood bounds on held-out data",
        description="NELBO bounds (continuous time and discrete T) in bits/token and perplexity.",
    )
    p.add_argument("run", help="run directory written by md4 train")
    p.add_argument("--split", default="test", help="test or valid split of the run's dataset (default: %(default)s)")
    p.add_argument(
        "--data", help="another dataset: a recipe name or any text file (encoded with the model's tokenizer)"
    )
    p.add_argument("--draws", type=int, default=1, help="Monte-Carlo draws K per sequence (default: %(default)s)")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_BOUND_STEPS,
        help="T of the discrete-time bound of MD4 (GenMD4 has only the continuous one; default: %(default)s)",
    )
    p.add_argument("--max-batches", type=int, help="evaluate only this many batches (default: all)")
    p.add_argument("--batch-size", type=int, help="sequences per batch (default: the run's batch size)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="network arithmetic (default: %(default)s)")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("data", help="list or prepare datasets", description="Datasets are cached once, memory-mapped.")
    data_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="list or prepare")
    data_sub.add_parser("list", help="the dataset recipes")
    prep = data_sub.add_parser("prepare", help="download/tokenise a dataset into the cache (MD4_CACHE_DIR)")
    prep.add_argument(
        "name", help="a recipe name, hf:NAME[:CONFIG], images:PATH[:HxW], a text file/folder, or a folder of images"
    )
    prep.add_argument("--levels", type=int, help="images: quantise each sub-pixel to this many levels")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "inspect",
        help="plot a GenMD4 run's learned per-token schedule",
        description="Write a PNG of the learned exponents w per token and alpha_v(t) at the extremes.",
    )
    p.add_argument("run", help="run directory written by md4 train (model.kind=genmd4)")
    p.add_argument("--out", help="the PNG to write (default: RUN/schedule.png)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--checkpoint", type=int, metavar="STEP", help="the checkpoint of this step (default: the newest)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("presets", help="list the presets, or print one", description="Run presets and config keys.")
    p.add_argument("name", nargs="?", help="print this preset's TOML and its model's parameter count")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "demo",
        help="the 10-minute CPU demo: train on Shakespeare (or MNIST with --images), sample, evaluate",
        description="Train the shakespeare-char preset (or mnist), sample, and evaluate on the test split.",
    )
    p.add_argument("--images", action="store_true", help="the image demo: class-conditional MNIST, ~25 minutes")
    p.add_argument("--out", help="run directory (default: runs/demo, or runs/demo-mnist with --images)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=300")
    p.set_defaults(func=cmd_demo)

    from md4.bench import MODELS, MODES, SAMPLE_NUM, SAMPLE_STEPS

    p = sub.add_parser(
        "bench",
        help="training-step throughput, MFU and peak memory of the text networks",
        description="Time whole training steps of each model in each mode, each in a fresh process, against the "
        "machine's matrix-product peak measured in the same run; print a table (progress goes to stderr).",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        metavar="MODEL",
        help="demo (shakespeare-char, 4 x 192, batch 32 x 128), text8 (the release's 88.7M network, batch 8 x 256), "
        "6x384 (text8 at 6 layers of width 384, batch 8 x 256); default: all",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        metavar="MODE",
        help="fp32 (eager), bf16 (autocast, eager), bf16-compile (autocast and torch.compile); default: all",
    )
    p.add_argument("--steps", type=int, help="timed steps of every model (default: each model's own)")
    p.add_argument("--warmup", type=int, help="untimed first steps of every model (default: each model's own)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument(
        "--sampling",
        nargs="*",
        choices=list(MODELS),
        metavar="MODEL",
        help=f"also time drawing {SAMPLE_NUM} samples in {SAMPLE_STEPS} steps with these models; none if no name is "
        f"given (default: those of --models among {', '.join(m for m in MODELS if MODELS[m].sampled)})",
    )
    p.add_argument("--json", metavar="PATH", help="also write the full results as JSON to PATH")
    p.add_argument("--markdown", action="store_true", help="print markdown tables instead of aligned columns")
    p.set_defaults(func=cmd_bench)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """md4's warnings as one line each, ``md4: warning: ...``; those of other libraries as Python shows them."""
    from md4.notices import MD4Warning

    if issubclass(category, MD4Warning):
        print(f"md4: warning: {message}", file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


def exit_code_of(err: ValueError) -> int:
    """The exit code of one of md4's own errors (README, "Exit codes")."""
    from md4.distributed import WorkerFailed
    from md4.training.trainer import TrainingDiverged

    if isinstance(err, WorkerFailed):
        return err.exit_code
    return EXIT_DIVERGED if isinstance(err, TrainingDiverged) else EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    from md4.notices import MD4Warning

    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
