"""Scaled dot-product attention with dropout on its probabilities that is cheap on a CPU.

``softmax(q k^T / sqrt(d)) v`` (Vaswani et al. 2017) through torch's fused kernels; in training with attention
dropout on a CPU, where those kernels have no dropout and torch falls back to an unfused path that draws one
Bernoulli variable per probability, the probabilities are dropped with a mask of 16-bit random integers instead
(four from each 64-bit draw): the step of the release's text8 network at 6 x 384 spent 15% of its time in those
draws (docs/benchmarks.md). GPUs keep the fused kernels, which draw the mask inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KEEP_LEVELS = 1 << 16  # the keep probability is a multiple of 1 / KEEP_LEVELS


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape`` keeping each element independently with probability ``1 - p`` rounded to a
    multiple of 2^-16 (at most 7.6e-6 away), and the inverse of that exact probability, so that ``mask * scale``
    has mean one (inverted dropout). From the default generator, as ``torch.nn.functional.dropout``."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    kept = min(KEEP_LEVELS, max(1, round((1.0 - p) * KEEP_LEVELS)))
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform on [-2^15, 2^15)
    return lanes < kept - KEEP_LEVELS // 2, KEEP_LEVELS / kept


def dropped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scale: float):
    """``(softmax(q k^T / sqrt(d)) * keep * scale) v`` for ``q, k, v [..., L, d]`` and a mask ``keep [..., L, L]``;
    the softmax in at least float32, its product with v in v's dtype."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return torch.matmul(torch.where(keep, probs * scale, 0.0), v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, training: bool) -> torch.Tensor:
    """Non-causal attention of ``q, k, v [B, H, L, d]`` with dropout ``dropout`` on the probabilities in training."""
    p = dropout if training else 0.0
    if p > 0.0 and q.device.type == "cpu":
        return dropped_attention(q, k, v, *keep_mask((*q.shape[:-1], k.shape[-2]), p, q.device))
    return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=False)
