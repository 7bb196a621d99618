"""Scaled dot-product attention, bidirectional or causal, with dropout on its probabilities that is cheap on a CPU.

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


def causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """``[queries, keys]`` booleans: the last ``queries`` of ``keys`` positions each see themselves and the
    positions before them (bottom-right aligned, so queries appended to a cache of earlier keys see all of it)."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)


def dropped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, scale: float, causal: bool = False
):
    """``(softmax(q k^T / sqrt(d)) * keep * scale) v`` for ``q, k, v [..., L, d]`` and a mask ``keep [..., L, L]``;
    the softmax in at least float32, its product with v in v's dtype; ``causal``: scores of later keys are -inf."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return torch.matmul(torch.where(keep, probs * scale, 0.0), v)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, training: bool, causal: bool = False
) -> torch.Tensor:
    """Attention of ``q [B, H, L, d]`` over ``k, v [B, H, S, d]`` with dropout ``dropout`` on the probabilities in
    training. ``causal``: query i sees keys up to its own position, the queries being the last L of the S
    positions (L = S in training; L < S when new tokens attend to a cache of earlier ones)."""
    p = dropout if training else 0.0
    if p > 0.0 and q.device.type == "cpu":
        return dropped_attention(q, k, v, *keep_mask((*q.shape[:-1], k.shape[-2]), p, q.device), causal)
    queries, keys = q.shape[-2], k.shape[-2]
    if causal and 1 < queries < keys:  # SDPA's is_causal aligns the mask top-left: give it bottom-right
        return F.scaled_dot_product_attention(q, k, v, causal_mask(queries, keys, q.device), dropout_p=p)
    # one query after a cache sees every key; L = S is SDPA's own causal mask
    return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal and queries == keys)
