"""Token tensors: ids 0..V-1 are real tokens and V is the mask id (paper Sec. 2); checked at the library's edges."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_RANGES_CHECKED = ContextVar("md4_token_ranges_checked", default=False)


@contextmanager
def ranges_checked() -> Iterator[None]:
    """Inside (on this thread), :func:`check_tokens` checks dtypes and shapes but not the ids' range: for a caller
    that checked the ids where that is free, as the trainer does each batch on the CPU, since reading a GPU
    tensor's range makes the host wait for the GPU."""
    token = _RANGES_CHECKED.set(True)
    try:
        yield
    finally:
        _RANGES_CHECKED.reset(token)


def check_tokens(x: torch.Tensor, vocab_size: int, allow_mask: bool = False, name: str = "x") -> None:
    """Raise ValueError unless x is an integer tensor [B, *shape] of ids in range (the mask id V if allowed)."""
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an integer tensor of token ids, got {kind}; convert it with .long().")
    if x.dim() < 2:
        raise ValueError(
            f"{name} must have shape [batch, *data_shape], got shape {tuple(x.shape)}; add a batch dimension."
        )
    top = vocab_size if allow_mask else vocab_size - 1
    if not x.numel() or _RANGES_CHECKED.get():
        return
    low, high = torch.stack([x.min(), x.max()]).tolist()  # one device sync, not two
    if low < 0 or high > top:
        raise ValueError(
            f"{name} holds ids in [{low}, {high}] but they must lie in [0, {top}] "
            f"for vocab_size={vocab_size}{' (mask id included)' if allow_mask else ''}; check the tokenizer."
        )
