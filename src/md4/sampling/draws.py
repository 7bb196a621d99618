"""The draws the samplers make: time grids, exact categorical draws (float64 inverse CDF) or the release's float32
Gumbel-max, nucleus (top-p) truncation, and a prefix's starting z_1.

Categorical draws are exact in float64 by default; ``float32-gumbel`` can never pick tokens below ~1e-8
probability and so acts as an implicit top-p (paper Sec. 6).
"""

from __future__ import annotations

import math

import torch

from md4.sampling.options import CATEGORICAL, SamplingOptions

NUCLEUS_TOP_K = 64  # nucleus() looks for the nucleus among this many largest probabilities before sorting a row


def time_grid(num_steps: int, grid: str = "uniform", device=None) -> torch.Tensor:
    """Times t_T = 1 > ... > t_0 = 0 (float64, length num_steps + 1).

    ``cosine`` maps each uniform point u to cos(pi/2 (1 - u)), spending more steps near t = 0.
    """
    SamplingOptions(steps=num_steps, grid=grid)
    u = torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=torch.float64, device=device)
    if grid == "uniform":
        return u
    t = torch.cos(0.5 * math.pi * (1.0 - u))
    t[0], t[-1] = 1.0, 0.0
    return t


# ---------------------------------------------------------- categorical draws
def categorical(probs: torch.Tensor, generator: torch.Generator | None, method: str = "float64") -> torch.Tensor:
    """One draw per row of ``probs`` [..., K] (rows need not be normalised); ``method`` is one of CATEGORICAL."""
    if method == "float64":
        u = torch.rand(probs.shape[:-1] + (1,), dtype=torch.float64, device=probs.device, generator=generator)
        return _inverse_cdf(probs.cumsum(-1, dtype=torch.float64), u)
    if method == "float32-gumbel":
        tiny = torch.finfo(torch.float32).tiny
        u = torch.rand(probs.shape, dtype=torch.float32, device=probs.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(tiny)))
        return (torch.log(probs.float()) + gumbel).argmax(-1)
    raise ValueError(f"Unknown categorical draw {method!r}; valid options are: {', '.join(CATEGORICAL)}.")


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index where u [..., 1] in [0, 1) falls in the cumulative sums ``cdf`` [..., K] scaled to their total."""
    idx = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).squeeze(-1)
    return idx.clamp_max(cdf.shape[-1] - 1)


def _keep_nucleus(probs: torch.Tensor, top_p: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [N, V] with only their nucleus among their k largest values kept, and whether k reached top_p."""
    top, order = probs.topk(k, dim=-1)
    mass = top.cumsum(-1)
    kept = torch.zeros_like(probs).scatter(-1, order, torch.where(mass - top < top_p, top, torch.zeros_like(top)))
    return kept, mass[:, -1] >= top_p


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches top_p (always the most likely one); renormalise.

    The nucleus is looked for among the NUCLEUS_TOP_K largest probabilities (torch.topk) and only rows whose
    nucleus is larger are sorted in full: the same result as sorting every row (up to the order of ties).
    """
    flat = probs.reshape(-1, probs.shape[-1])
    k = min(NUCLEUS_TOP_K, flat.shape[-1])
    kept, found = _keep_nucleus(flat, top_p, k)
    if k < flat.shape[-1] and not bool(found.all()):
        rest = (~found).nonzero().squeeze(-1)
        kept[rest] = _keep_nucleus(flat[rest], top_p, flat.shape[-1])[0]
    kept = kept.reshape(probs.shape)
    return kept / kept.sum(-1, keepdim=True)


def prefix_init(prefix: torch.Tensor, shape: tuple[int, ...], mask_id: int) -> torch.Tensor:
    """A starting z_1 of ``shape`` [B, L] whose first tokens are ``prefix`` ([P] or [B, P]), the rest masked."""
    batch, length = shape
    prefix = prefix.long().reshape(-1, prefix.shape[-1]).expand(batch, -1)
    if prefix.shape[1] > length:
        raise ValueError(f"The prefix has {prefix.shape[1]} tokens but samples are only {length} long; shorten it.")
    init = torch.full(shape, mask_id, dtype=torch.long, device=prefix.device)
    init[:, : prefix.shape[1]] = prefix
    return init
