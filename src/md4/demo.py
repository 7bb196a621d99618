"""The CPU demo (``md4 demo``): train a small preset on its own data for the preset's time limit (or resume, or
reuse, the run in its folder), evaluate the continuous-time bound (Eq. 4) on the first examples of the valid and
test splits, and sample: text with and without a prompt, and the share of the samples' words that are real; or, for
images, a grid with a row per class judged by a classifier of the training images, an unconditional grid, the
reverse process and an infilled test image; and the reverse process as an animation (``demo-reverse.svg`` or
``demo-reverse.gif``). Everything is summarised in the run's ``demo.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from md4.config import DEMO_IMAGE_PRESET, DEMO_PRESET, build_config, load_preset
from md4.evaluate import BoundEstimate, evaluate_run, unit_of
from md4.generation import animation, pictures
from md4.generation.images import fill_image, sample_grid
from md4.generation.text import generate
from md4.held_out import held_out_batches
from md4.quality.class_accuracy import ClassAccuracy, class_accuracy, run_judge
from md4.quality.corpus import reference_sequences, run_corpus, split_tokens
from md4.quality.words import known_word_share, vocabulary
from md4.runs.directory import LoadedRun, is_run, load_run, resume_config
from md4.sampling.labels import class_labels
from md4.training.trainer import Trainer, TrainResult, build_trainer

DEMO_PROMPT = "ROMEO:"
PER_CLASS = 10  # image demo: samples of each class, a row each (and the width of the unconditional grid)
UNCONDITIONAL_ROWS = 10  # image demo of an unconditional model: rows of the grids
COMPLETIONS = 6  # image demo: completions of the infilled test image
SCALE = 4  # image demo: pixel size in the PNGs
ANIMATION_SCALE = 2  # image demo: pixel size in the reverse process's GIF (a smaller file)
EVAL_EXAMPLES = 2048  # held-out sequences or images the bounds are estimated on, at most (the first ones)
WORD_SAMPLES = 16  # text demo: samples whose words are looked up in the training text
CLASS_GUIDANCE = 2.0  # image demo: classifier-free guidance of the class grid (1 names 75% of its digits, 2 98%)


@dataclass
class DemoResult:
    """How the demo's training ended and, unless it was interrupted, what the demo found (``demo.json``)."""

    run_dir: Path
    training: TrainResult
    summary: dict[str, Any] = field(default_factory=dict)  # demo.json's content; empty when training was interrupted
    unit: str = "token"  # what a bit is counted per: char for text, dim for images (see :func:`bits`)
    valid: BoundEstimate | None = None
    test: BoundEstimate | None = None
    test_data: str = ""  # the test split, described
    outputs: dict[str, str] = field(default_factory=dict)  # text: the samples; images: the paths of the PNGs
    preview: str = ""  # images: the first class's first sample as text
    class_accuracy: ClassAccuracy | None = None  # images of a class-conditional model: the class grid, judged

    @property
    def interrupted(self) -> bool:
        return self.training.interrupted


def demo_run_dir(images: bool) -> Path:
    """Where the demo trains by default."""
    return Path("runs/demo-mnist" if images else "runs/demo")


def train_demo(
    preset: str,
    run_dir: Path,
    overrides: list[str],
    progress: bool,
    on_start: Callable[[Trainer, bool], None] | None = None,
) -> TrainResult:
    """Train (or resume, or reuse) a demo run on the preset's own data; ``on_start(trainer, resumed)`` is called
    before training starts."""
    resume = is_run(run_dir)
    if resume:
        config = resume_config(run_dir, overrides, data=load_preset(preset).data.name)
    else:
        config = build_config(preset, overrides)
    trainer = build_trainer(config, run_dir, resume, progress)
    if on_start is not None:
        on_start(trainer, resume)
    return trainer.fit()


def run_demo(
    images: bool = False,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    on_start: Callable[[Trainer, bool], None] | None = None,
) -> DemoResult:
    """Train the demo-shakespeare preset (or demo-mnist with ``images``) for its time limit into ``run_dir`` (default:
    :func:`demo_run_dir`), then evaluate, sample and write ``demo.json``; a run interrupted by a signal stops
    after training (running the demo again continues it)."""
    run_dir = Path(run_dir or demo_run_dir(images))
    start = time.time()
    training = train_demo(DEMO_IMAGE_PRESET if images else DEMO_PRESET, run_dir, list(overrides), progress, on_start)
    if training.interrupted:
        return DemoResult(run_dir, training)
    run = load_run(run_dir)
    batches = -(-EVAL_EXAMPLES // run.config.train.batch_size)
    valid, test = (
        evaluate_run(run, split=split, steps=None, max_batches=batches, precision=run.config.train.precision)
        for split in ("valid", "test")
    )
    result = DemoResult(run_dir, training, valid=valid.bounds["continuous"])
    result.test, result.test_data = test.bounds["continuous"], test.data
    result.unit = "char" if result.test.bits_per_char is not None else unit_of(run.codec)
    test_bits, test_stderr = bits(result.test)
    result.summary = {
        "run_dir": str(run_dir),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "train_seconds": round(training.seconds, 1),
        "steps": training.step,
        "planned_steps": training.planned_steps,  # what train.time_limit (--minutes) allowed; None without one
        "train_tokens_per_second": round(training.tokens_per_second),
        f"valid_bits_per_{result.unit}": bits(result.valid)[0],
        f"test_bits_per_{result.unit}": test_bits,
        f"test_bits_per_{result.unit}_stderr": test_stderr,
        "test_sequences": result.test.num_sequences,
    }
    if images:
        result.outputs, result.preview, grid = demo_images(run, run_dir)
        if run.model.num_classes is not None:
            result.class_accuracy = judge_class_grid(run, grid)
            result.summary["class_accuracy"] = result.class_accuracy.to_dict()
    else:
        result.outputs = demo_texts(run, run_dir)
        result.summary.update(word_shares(run))
    result.summary.update(result.outputs)
    result.summary["wall_seconds"] = round(time.time() - start, 1)
    (run_dir / "demo.json").write_text(json.dumps(result.summary, indent=2))
    return result


def bits(estimate: BoundEstimate) -> tuple[float, float]:
    """A bound and its standard error in bits per character for text (comparable between character and BPE
    models), else per dimension."""
    if estimate.bits_per_char is not None:
        return estimate.bits_per_char, estimate.bits_per_char_stderr
    return estimate.bits_per_token, estimate.bits_per_token_stderr


def demo_texts(run: LoadedRun, run_dir: Path) -> dict[str, str]:
    """The text demo's samples: one unconditional, one prompted with :data:`DEMO_PROMPT`, whose reverse process is
    drawn as ``demo-reverse.svg``."""
    model, settings = run.model, run.config.sample.options()
    labels = class_labels(model.num_classes, 1, device=next(model.parameters()).device)
    (unconditional,) = generate(model, run.codec, 1, labels=labels, seed=0, **settings).texts
    snapshots = animation.text_snapshots(model.data_shape[0])
    prompted = generate(model, run.codec, 1, labels=labels, seed=1, prompt=DEMO_PROMPT, snapshots=snapshots, **settings)
    path = animation.save_text_animation(
        run_dir / "demo-reverse.svg", run.codec, prompted.trajectory, int(model.vocab_size)
    )
    return {"sample_unconditional": unconditional, "sample_prompted": prompted.texts[0], "animation": str(path)}


def word_shares(run: LoadedRun) -> dict[str, float]:
    """The share of the words of :data:`WORD_SAMPLES` samples that occur in the training text, and the same share of
    the test split's first :data:`WORD_SAMPLES` sequences (:mod:`md4.quality.words`)."""
    prepared, length = run_corpus(run), run.model.data_shape[0]
    known = vocabulary(run.codec.decode(np.asarray(split_tokens(prepared, "train"), dtype=np.int64)))
    samples = generate(run.model, run.codec, WORD_SAMPLES, seed=2, **run.config.sample.options()).texts
    real = reference_sequences(split_tokens(prepared, "test"), WORD_SAMPLES, length)
    return {
        "samples_known_word_share": round(known_word_share(samples, known), 4),
        "test_known_word_share": round(known_word_share([run.codec.decode(row) for row in real], known), 4),
    }


def demo_images(run: LoadedRun, run_dir: Path) -> tuple[dict[str, str], str, torch.Tensor]:
    """The image demo's pictures: a grid with a row per class (guidance :data:`CLASS_GUIDANCE`), an unconditional
    grid (guidance 0), the reverse process of a sample of each class as a strip and of the whole class grid as a
    GIF, and completions of the bottom half of a test image; their paths, the first sample as text, and the class
    grid's tokens. An unconditional model draws both grids unconditionally."""
    codec, model = run.codec, run.model
    conditional = model.num_classes is not None
    options: dict[str, Any] = {
        "per_class": PER_CLASS if conditional else None,
        "per_row": PER_CLASS,
        "steps": run.config.sample.steps,
        "grid": "cosine",
    }
    num = UNCONDITIONAL_ROWS * PER_CLASS
    guidance = CLASS_GUIDANCE if conditional else 1.0
    grid = sample_grid(
        model,
        codec,
        num,
        strip=True,
        strip_every=PER_CLASS,
        snapshots=animation.IMAGE_SNAPSHOTS,
        seed=0,
        guidance=guidance,
        **options,
    )
    free = sample_grid(model, codec, num, guidance=0.0 if conditional else 1.0, seed=1, **options)
    paths = {
        "class_grid": pictures.save_png(grid.picture, run_dir / "demo-classes.png", SCALE),
        "unconditional_grid": pictures.save_png(free.picture, run_dir / "demo-unconditional.png", SCALE),
        "strip": pictures.save_png(grid.strip, run_dir / "demo-strip.png", SCALE),
        "animation": animation.save_gif(
            animation.image_frames(codec, grid.output.trajectory, PER_CLASS),
            run_dir / "demo-reverse.gif",
            ANIMATION_SCALE,
        ),
    }
    images, image_labels = next(held_out_batches(run, None, "test", 1).batches)
    device = next(model.parameters()).device
    labels = image_labels.expand(COMPLETIONS).to(device) if conditional else None
    filled = fill_image(model, codec, images[0], COMPLETIONS, labels=labels, steps=options["steps"], seed=0)
    paths["infill"] = pictures.save_png(filled.picture, run_dir / "demo-infill.png", SCALE)
    tokens = grid.output.tokens
    return {name: str(path) for name, path in paths.items()}, codec.decode(tokens[0].cpu()), tokens


def judge_class_grid(run: LoadedRun, tokens: torch.Tensor) -> ClassAccuracy:
    """How many of each row of the class grid (tokens [classes * PER_CLASS, H, W, C]) a classifier trained on the
    run's own images names as the row's class (:mod:`md4.quality.class_accuracy`)."""
    labels = class_labels(run.model.num_classes, len(tokens), PER_CLASS)
    return class_accuracy(run_judge(run), tokens.cpu().numpy(), labels)
