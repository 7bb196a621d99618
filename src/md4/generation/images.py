"""Image completion (paper Alg. 2 with a context): the region to fill, and the samples that fill it."""

from __future__ import annotations

from typing import Any

import torch

from md4.device import autocast
from md4.sampling import sample

MASK_SPECS = ("bottom-half", "top-half", "left-half", "right-half", "center", "random:FRACTION")


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
    precision: str = "fp32",
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
