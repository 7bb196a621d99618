"""Units at the library's edges: a NELBO in nats per sequence as bits per token / dimension or perplexity."""

from __future__ import annotations

import math

import torch


def bits_per_token(nelbo: torch.Tensor | float, num_tokens: int) -> torch.Tensor | float:
    """NELBO in nats per sequence -> bits per token/char/dimension."""
    return nelbo / (num_tokens * math.log(2.0))


def perplexity(nelbo: torch.Tensor | float, num_tokens: int) -> torch.Tensor | float:
    """NELBO in nats per sequence -> perplexity bound exp(NELBO / D)."""
    if isinstance(nelbo, torch.Tensor):
        return torch.exp(nelbo / num_tokens)
    return math.exp(nelbo / num_tokens)
