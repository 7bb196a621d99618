"""Devices and arithmetic precision: where a model runs and whether its matrix products use bf16."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("bf16", "fp32")  # network arithmetic for training, evaluation and sampling


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"Device {name} was asked for but CUDA is not available here; use cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on the device for ``precision="bf16"``, nothing for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
