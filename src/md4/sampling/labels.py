"""Class labels for the samples of a class-conditional model: the classes in turn, or a row of each class."""

from __future__ import annotations

import torch


def class_labels(
    num_classes: int | None, num: int, per_class: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor | None:
    """Labels for ``num`` samples, the classes cycling (0, 1, ..., 0, 1, ...), or, with ``per_class``, that many
    of each class in turn (``num`` is then ``num_classes * per_class``); None for an unconditional model
    (``num_classes`` None)."""
    if num_classes is None:
        if per_class:
            raise ValueError("--per-class needs a class-conditional model; train one with model.conditional=true.")
        return None
    if per_class:
        return torch.arange(num_classes, device=device).repeat_interleave(per_class)
    return torch.arange(num, device=device) % num_classes
