"""``md4 sample``: text (with a prompt or an infilling template) or images (a grid, a strip, an infilled PNG)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from md4.cli.options import add_model_options, check_output_file, positive
from md4.config import Config
from md4.core.ar import AUTOREGRESSIVE
from md4.data import ImageCodec
from md4.device import PRECISION_CHOICES, resolve_precision, use_tf32
from md4.generation import animation
from md4.generation.images import DEFAULT_MASK, fill_image, grid_width, sample_grid
from md4.generation.pictures import save_pictures
from md4.generation.text import generate
from md4.runs.directory import LoadedRun
from md4.runs.pretrained import from_pretrained
from md4.sampling import (
    CATEGORICAL,
    DEFAULT_CATEGORICAL,
    DEFAULT_GRID,
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_TOP_P,
    GRIDS,
    MAX_GUIDANCE,
    SAMPLERS,
    default_sampler,
)
from md4.sampling.labels import class_labels
from md4.sampling.settings import SETTING_NAMES

RUN_DEFAULT = "the run's [sample] setting"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="draw samples from a trained run", description="Sample from a run's EMA weights."
    )
    p.add_argument("run", help="run directory written by md4 train, a folder written by md4 export, or hf:REPO_ID")
    p.add_argument("--num", type=int, default=4, help="number of samples (default: %(default)s)")
    p.add_argument("--steps", type=int, help=f"reverse steps T (default: {RUN_DEFAULT}, else {DEFAULT_STEPS})")
    p.add_argument(
        "--sampler",
        choices=[*SAMPLERS, AUTOREGRESSIVE],
        help="; ".join(f"{name}: {sampler.description}" for name, sampler in SAMPLERS.items())
        + f"; {AUTOREGRESSIVE}: left to right, one network pass per token (ar runs, whose only sampler it is) "
        f"(default: {RUN_DEFAULT}, else {DEFAULT_SAMPLER}, or {AUTOREGRESSIVE} for an ar run)",
    )
    p.add_argument("--grid", choices=GRIDS, help=f"time grid (default: {RUN_DEFAULT}, else {DEFAULT_GRID})")
    p.add_argument(
        "--top-p",
        type=float,
        help=f"nucleus mass for --sampler top_p and {AUTOREGRESSIVE} (default: {RUN_DEFAULT}, else {DEFAULT_TOP_P} "
        "for top_p and 1, none, for autoregressive)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help=f"{AUTOREGRESSIVE} sampler: draw from softmax(logits / temperature), 0 the most likely token "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--categorical",
        choices=CATEGORICAL,
        help="how tokens are drawn: float64 is exact; float32-gumbel is the JAX release's (implicitly truncated) "
        f"(default: {RUN_DEFAULT}, else {DEFAULT_CATEGORICAL})",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="network arithmetic: auto is bf16 where the hardware multiplies bf16 matrices (a GPU, or a CPU with "
        "AVX512-BF16 or AMX; about twice as fast, the same sample quality: docs/benchmarks.md) and fp32 elsewhere; "
        "draws stay float64 (default: %(default)s)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the network with torch.compile first: ~20 s once, then faster steps (docs/benchmarks.md); "
        "worth it for hundreds of steps",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_text_options(p)
    p.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        help="classifier-free guidance of a class-conditional model: 1 conditions, 0 ignores the labels, "
        "> 1 follows them more closely (default: %(default)s)",
    )
    add_image_options(p)
    p.add_argument(
        "--animate",
        metavar="OUT",
        help="also write the reverse process as an animation: images, a GIF of the grid as its masks resolve; text, "
        "the samples' tokens appearing in the order they unmask, coloured by step, given text bold and "
        "underlined (OUT ends in .gif or .svg)",
    )
    add_model_options(p)
    p.set_defaults(func=run)


def add_text_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--length",
        type=int,
        help="sample length in tokens (default: the training seq_len; with --infill, the template's length)",
    )
    p.add_argument("--prompt", help="text the samples start with (kept fixed)")
    p.add_argument("--infill", help="text with holes to fill, e.g. 'To be, or ___ to be'; other tokens stay fixed")
    p.add_argument("--hole", default="_", help="the hole character for --infill (default: %(default)s)")


def add_image_options(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    for name in ("num", "steps", "length", "per_class", "scale"):
        positive(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.prompt == "":
        raise ValueError("--prompt is empty; give the text the samples start with, or leave --prompt out.")
    check_guidance(args.guidance)
    if args.out:
        check_output_file(Path(args.out), "--out", "sample.png")
    loaded = from_pretrained(args.run, device=args.device, use_ema=not args.no_ema, step=args.checkpoint)
    device = next(loaded.model.parameters()).device
    use_tf32(device, not args.no_tf32)
    if args.compile:  # every step calls the network on z of one shape: one graph
        loaded.model.denoiser = torch.compile(loaded.model.denoiser, dynamic=False)
    images = isinstance(loaded.codec, ImageCodec)
    check_sample_options(args, loaded, images)
    if args.animate:
        animation.check_animation_path(Path(args.animate), images)
        check_output_file(Path(args.animate), "--animate", "reverse.gif")
    settings, origins = chosen_settings(args, loaded.config)
    sampler = settings["sampler"] or default_sampler(loaded.model)
    if sampler == AUTOREGRESSIVE and args.infill is not None:
        raise ValueError(
            f"--infill fills holes anywhere, but {args.run} samples left to right ({AUTOREGRESSIVE}); "
            "use --prompt, or an md4 run to infill."
        )
    print(f"md4: sampling settings: {describe_settings(settings, origins, sampler)}", file=sys.stderr)
    options = {
        **settings,
        "sampler": sampler,
        "temperature": args.temperature,
        "precision": resolve_precision(device, args.precision),
        "guidance": args.guidance,
    }
    start = time.time()
    count, nfe = sample_images(args, loaded, options) if images else sample_texts(args, loaded, options)
    if sampler == AUTOREGRESSIVE:
        how = "left to right"
    else:
        how = f"{settings['steps']} {settings['grid']} steps" if SAMPLERS[sampler].uses_grid else "no grid"
    print(
        f"md4: {count} samples, {sampler} sampler, {how}, {nfe} network calls, network in "
        f"{options['precision']}, {time.time() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


def chosen_settings(args: argparse.Namespace, config: Config) -> tuple[dict[str, Any], dict[str, str]]:
    """The sampling settings to use and where each came from: a flag, else the run's ``[sample]`` table, else md4's
    defaults (a run written before md4 recorded the table keeps them, as it sampled then)."""
    recorded = config.run_sampling
    run_origin = "the run's config" if config.sample_recorded else "md4's defaults"
    settings, origins = recorded.options(), {}
    for name in SETTING_NAMES:
        flag = getattr(args, name)
        if flag is not None:
            settings[name] = flag
        origins[name] = f"--{name.replace('_', '-')}" if flag is not None else run_origin
    return settings, origins


def describe_settings(settings: dict[str, Any], origins: dict[str, str], sampler: str) -> str:
    """The settings in one line, grouped by where they came from, e.g. ``steps 1000, grid cosine (the run's
    config); sampler ancestral (--sampler)``."""
    shown = {**settings, "sampler": sampler}
    if shown["top_p"] is None:
        shown["top_p"] = "the sampler's own"
    groups: dict[str, list[str]] = {}
    for name in SETTING_NAMES:
        groups.setdefault(origins[name], []).append(f"{name} {shown[name]}")
    return "; ".join(f"{', '.join(items)} ({origin})" for origin, items in groups.items())


def sample_texts(args: argparse.Namespace, loaded: LoadedRun, options: dict) -> tuple[int, int]:
    """Print text samples (a conditional model's classes in turn); how many, and the network calls made."""
    labels = class_labels(loaded.model.num_classes, args.num, device=next(loaded.model.parameters()).device)
    if args.animate:
        length = max(args.length or loaded.model.data_shape[0], len(args.infill or ""))
        options = {**options, "snapshots": animation.text_snapshots(args.num * length)}
    out = generate(
        loaded.model,
        loaded.codec,
        args.num,
        length=args.length,
        prompt=args.prompt,
        infill=args.infill,
        hole=args.hole,
        labels=labels,
        seed=args.seed,
        **options,
    )
    for i, text in enumerate(out.texts):
        print(f"=== sample {i} ===\n{text}")
    if args.animate:
        path = animation.save_text_animation(
            Path(args.animate), loaded.codec, out.trajectory, int(loaded.model.vocab_size)
        )
        print(f"md4: wrote {path}", file=sys.stderr)
    return len(out.texts), out.nfe


def sample_images(args: argparse.Namespace, loaded: LoadedRun, options: dict) -> tuple[int, int]:
    """Write image samples as PNG files (a grid, or an infilling panel, and a reverse-process strip) and print an
    ASCII preview of the first image; how many samples, and the network calls made."""
    model, codec = loaded.model, loaded.codec
    if args.animate:
        options = {**options, "snapshots": animation.IMAGE_SNAPSHOTS}
    if args.infill_image:
        given = torch.as_tensor(codec.read_png(args.infill_image))
        drawn = fill_image(model, codec, given, args.num, mask=args.mask or DEFAULT_MASK, seed=args.seed, **options)
    else:
        drawn = sample_grid(
            model, codec, args.num, per_class=args.per_class, strip=args.strip, seed=args.seed, **options
        )
    out = Path(args.out) if args.out else loaded.output_dir() / "samples" / "sample.png"
    written = save_pictures(out, drawn.picture, drawn.strip, args.scale)
    if args.animate:
        per_row = args.num if args.infill_image else grid_width(len(drawn.output.tokens), args.per_class)
        frames = animation.image_frames(codec, drawn.output.trajectory, per_row)
        written.append(animation.save_gif(frames, Path(args.animate), args.scale))
    print(codec.decode(drawn.output.tokens[0].cpu()))
    for path in written:
        print(f"md4: wrote {path}", file=sys.stderr)
    count = args.per_class * model.num_classes if args.per_class else args.num
    return count, drawn.output.nfe


def check_guidance(guidance: float) -> None:
    """Refuse a guidance weight that is not a number from 0 to :data:`md4.sampling.MAX_GUIDANCE`."""
    if not 0.0 <= guidance <= MAX_GUIDANCE:  # also NaN
        raise ValueError(
            f"--guidance must be a number from 0 (ignore the labels) to {MAX_GUIDANCE:g}, with 1 for plain "
            f"conditioning, got {guidance}."
        )


def check_sample_options(args: argparse.Namespace, loaded: LoadedRun, images: bool) -> None:
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
    if args.guidance not in (0.0, 1.0) and loaded.model.num_classes is None:
        raise ValueError(
            f"--guidance {args.guidance:g} weighs class labels, and {args.run} is not class-conditional (train one "
            "with model.conditional=true); leave --guidance out."
        )
