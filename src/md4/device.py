"""Devices and arithmetic precision: where a model runs, whether its matrix products use bf16, and whether a GPU's
fp32 ones use TF32."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("bf16", "fp32")  # network arithmetic for training, evaluation and sampling
# training's and sampling's choices: ``auto`` is bf16 where the hardware multiplies bf16 matrices, fp32 elsewhere
# (docs/guide.md); evaluation takes a concrete one
PRECISION_CHOICES = ("auto", *PRECISIONS)


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


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a GPU with bf16 support, or a CPU with AVX512-BF16
    or AMX (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def resolve_precision(device: torch.device, precision: str) -> str:
    """``precision`` with ``auto`` made concrete: bf16 where :func:`fast_bf16`, else fp32."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISION_CHOICES)}.")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on the device for ``precision="bf16"`` (or ``auto`` where bf16 is fast), nothing for fp32."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def use_tf32(device: torch.device, enabled: bool = True) -> None:
    """On a CUDA ``device``, fp32 matrix products and convolutions in TF32 when ``enabled`` (torch's "high" fp32
    precision: fp32 range with a 10-bit mantissa, several times the fp32 rate on Ampere and later GPUs), in true
    fp32 otherwise. Other devices are left as they are (the CPU's arithmetic never changes)."""
    if device.type != "cuda":
        return
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
