"""Image samples with their pictures: a grid (a row per class), the reverse process as a strip, and image
completion (paper Alg. 2 with a context) with the region to fill."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from md4.device import autocast
from md4.generation import pictures
from md4.sampling import SampleOutput, sample
from md4.sampling.labels import class_labels

MASK_SPECS = ("bottom-half", "top-half", "left-half", "right-half", "center", "random:FRACTION")
DEFAULT_MASK = "bottom-half"  # the region md4 sample --infill-image fills
STRIP_SNAPSHOTS = 8  # the states of the reverse process a strip shows


def image_mask(spec: str, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """The pixels to fill in an image [H, W, C], as a boolean tensor of that shape (every channel of a pixel alike).

    ``bottom-half``, ``top-half``, ``left-half``, ``right-half``, ``center`` (the central half-size square), or
    ``random:F`` (a fraction F of the pixels, drawn with ``seed``).
    """
    height, width, channels = shape
    hole = torch.zeros(height, width, dtype=torch.bool)
    if spec == "bottom-half":
        hole[height // 2 :] = True
    elif spec == "top-half":
        hole[: height // 2] = True
    elif spec == "left-half":
        hole[:, : width // 2] = True
    elif spec == "right-half":
        hole[:, width // 2 :] = True
    elif spec == "center":
        hole[height // 4 : height // 4 + height // 2, width // 4 : width // 4 + width // 2] = True
    elif spec.startswith("random:"):
        try:
            fraction = float(spec.split(":", 1)[1])
        except ValueError:
            fraction = -1.0
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"The mask {spec!r} needs a fraction in (0, 1], e.g. random:0.7.")
        g = torch.Generator().manual_seed(seed)
        hole = torch.rand(height, width, generator=g) < fraction
    else:
        raise ValueError(f"Unknown mask {spec!r}; use one of {', '.join(MASK_SPECS)}.")
    return hole[..., None].expand(height, width, channels).clone()


def complete(
    model,
    given: torch.Tensor,
    hole: torch.Tensor,
    num: int = 1,
    *,
    labels: torch.Tensor | None = None,
    precision: str = "auto",
    **sampling: Any,
):
    """Fill the ``hole`` (a boolean tensor of the example's shape) of one example ``given`` [*data_shape] ``num``
    times; the tokens outside the hole stay exactly as given (paper Alg. 2 with a context). Returns the
    :class:`md4.sampling.SampleOutput`."""
    if tuple(given.shape) != tuple(hole.shape) or hole.dtype != torch.bool:
        raise ValueError(f"The hole must be a boolean tensor of the example's shape {tuple(given.shape)}.")
    if model.data_shape is not None and tuple(given.shape) != tuple(model.data_shape):
        raise ValueError(f"The example has shape {tuple(given.shape)} but the model's is {tuple(model.data_shape)}.")
    if not bool(hole.any()):
        raise ValueError("The hole is empty, so there is nothing to fill in.")
    device = next(model.parameters()).device
    init = torch.where(hole, torch.full_like(given, model.mask_id), given).to(device)
    with autocast(device, precision):
        return sample(model, init=init[None].expand(num, *init.shape).clone(), labels=labels, **sampling)


@dataclass
class ImageSamples:
    """Image samples and their pictures, RGB [H, W, 3] (:mod:`md4.generation.pictures` writes them as PNG)."""

    output: SampleOutput
    picture: np.ndarray  # the grid of samples, or the infilling panel
    strip: np.ndarray | None = None  # the reverse process, when it was asked for


def sample_grid(
    model,
    codec,
    num: int = 16,
    *,
    per_class: int | None = None,
    per_row: int | None = None,
    strip: bool = False,
    strip_every: int = 1,
    snapshots: int = 0,
    precision: str = "auto",
    **sampling: Any,
) -> ImageSamples:
    """Draw ``num`` images (a class-conditional model's classes in turn) or ``per_class`` of each class, laid out
    in rows of ``per_row`` (default: ``per_class``, one row per class, or a square grid).

    Args:
        strip: also draw the reverse process, one row per sample (the first ones, or every ``strip_every``-th).
        snapshots: keep this many states of the reverse process in ``output.trajectory`` (for an animation,
            :mod:`md4.generation.animation`); the strip shows 8 of them, evenly spaced.
        precision: the network's arithmetic: ``auto`` (bf16 where the hardware has fast bf16, else fp32), ``bf16``
            (autocast) or ``fp32``.
        sampling: options of :func:`md4.sample` (``steps``, ``sampler``, ``grid``, ``guidance``, ``seed``,
            ``on_step``, ...).
    """
    device = next(model.parameters()).device
    labels = class_labels(model.num_classes, num, per_class, device)
    count = len(labels) if per_class else num
    with autocast(device, precision):
        kept = max(snapshots, STRIP_SNAPSHOTS if strip else 0)
        out = sample(model, count, labels=labels, snapshots=kept, **sampling)
    grid = pictures.tile(pictures.rows_of(codec, out.tokens, per_row or grid_width(count, per_class)))
    frames = None
    if strip:
        states = out.trajectory
        shown = [states[round(j * (len(states) - 1) / (STRIP_SNAPSHOTS - 1))] for j in range(STRIP_SNAPSHOTS)]
        frames = pictures.strip(codec, [state[::strip_every] for state in shown])
    return ImageSamples(out, grid, frames)


def grid_width(count: int, per_class: int | None) -> int:
    """Images per row of a grid: ``per_class`` (a row per class), else a square."""
    return per_class or math.ceil(math.sqrt(count))


def fill_image(
    model,
    codec,
    given: torch.Tensor,
    num: int = 1,
    *,
    mask: str = DEFAULT_MASK,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    precision: str = "auto",
    **sampling: Any,
) -> ImageSamples:
    """Complete the ``mask`` region (:func:`image_mask`, a ``random:F`` one drawn with ``seed``) of one image
    ``given`` [H, W, C] ``num`` times with :func:`complete`; ``labels`` default to a class-conditional model's
    classes in turn. The picture is the infilling panel: the original, the original with the hole masked, then
    each completion."""
    hole = image_mask(mask, codec.data_shape, seed=seed)
    if labels is None:
        labels = class_labels(model.num_classes, num, device=next(model.parameters()).device)
    out = complete(model, given, hole, num, labels=labels, seed=seed, precision=precision, **sampling)
    return ImageSamples(out, pictures.infill_panel(codec, given, hole, out.tokens.cpu()))
