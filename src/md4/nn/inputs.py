"""The checks every denoiser makes of its conditioning inputs: one time per example, and class labels exactly
when the network is class-conditional (the "no label" id is ``num_classes``)."""

from __future__ import annotations

import torch


def check_time_and_labels(t: torch.Tensor, labels: torch.Tensor | None, batch: int, num_classes: int | None) -> None:
    """Raise ValueError unless ``t`` is [B] and ``labels`` is [B] for a conditional network, None otherwise."""
    if t.shape != (batch,):
        raise ValueError(f"t must have shape [B]=[{batch}], got {tuple(t.shape)}; pass one time per example.")
    if num_classes is None:
        if labels is not None:
            raise ValueError("labels were given but the model has no classes; set num_classes or do not pass labels.")
    elif labels is None or labels.shape != (batch,):
        got = None if labels is None else tuple(labels.shape)
        raise ValueError(
            f"The model is class-conditional (num_classes={num_classes}) and needs labels of shape [B]=[{batch}], "
            f"got {got}; pass one class id per example (num_classes for no label)."
        )
