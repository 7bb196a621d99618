"""Devices and arithmetic precision: where a model runs, whether its matrix products use bf16, and whether a GPU's
fp32 ones use TF32."""

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


def use_tf32(device: torch.device, enabled: bool = True) -> None:
    """On a CUDA ``device``, fp32 matrix products and convolutions in TF32 when ``enabled`` (torch's "high" fp32
    precision: fp32 range with a 10-bit mantissa, several times the fp32 rate on Ampere and later GPUs), in true
    fp32 otherwise. Other devices are left as they are (the CPU's arithmetic never changes)."""
    if device.type != "cuda":
        return
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
