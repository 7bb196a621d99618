"""GenMD4's learnable per-token schedule (the paper's state-dependent schedule, Sec. 5):
alpha_v(t) = 1 - (1 - eps) t^{w_v} with w = softplus(theta), one exponent per token value v.

Going back from t to s < t a masked token of value v stays masked with probability (s / t)^{w_v}: it unmasks at
the hazard rate h_v(t) = w_v / t, and -w_v / t is its loss weight alpha'_v / (1 - alpha_v).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from md4.core.schedule_contract import Schedule
from md4.core.schedules import DEFAULT_EPS, check_eps

MAX_W_INIT = 1000.0  # the largest initial GenMD4 exponent: 0.99^1000 < 1e-4


def check_w_init(w_init: float) -> float:
    """The initial exponent, checked: in (0, MAX_W_INIT] (not NaN)."""
    if not 0 < w_init <= MAX_W_INIT:  # also NaN
        raise ValueError(
            f"The initial exponent w must be in (0, {MAX_W_INIT:g}] (w = 1 is the linear schedule; at w = "
            f"{MAX_W_INIT:g} almost no token is masked before t = 0.99), got {w_init}."
        )
    return float(w_init)


class TokenPolynomialSchedule(Schedule):
    """GenMD4's learnable per-token schedule alpha_v(t) = 1 - (1 - eps) t^{w_v}, w = softplus(theta).

    ``alpha(t)`` returns ``[*t.shape, V]``. There is no eps offset at t = 0 (alpha_v(0) = 1); GenMD4 instead
    integrates over t in [t1, 1] and adds a reconstruction term at t1.
    """

    per_token: ClassVar[bool] = True
    name = "per-token polynomial"

    def __init__(self, vocab_size: int, w_init: float = 1.0, eps: float = DEFAULT_EPS):
        super().__init__()
        w_init = check_w_init(w_init)
        self.eps = check_eps(eps)
        theta = w_init + math.log(-math.expm1(-w_init))  # softplus^-1(w) = log(e^w - 1), without overflow
        self.theta = nn.Parameter(torch.full((int(vocab_size),), theta))

    @property
    def exponents(self) -> torch.Tensor:
        """w = softplus(theta) > 0, one exponent per token value [V]."""
        return torch.nn.functional.softplus(self.theta)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_v(t) = 1 - (1 - eps) t^{w_v}, shape ``[*t.shape, V]`` (computed in t's dtype)."""
        return 1.0 - (1.0 - self.eps) * t[..., None] ** self.exponents.to(t.dtype)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """alpha'_v(t) / (1 - alpha_v(t)) = -w_v / t, shape ``[*t.shape, V]``."""
        return -self.exponents.to(t.dtype) / t[..., None]

    def hazard_bound(self, t: torch.Tensor) -> torch.Tensor:
        """max_v w_v / t."""
        return self.exponents.max().to(t.dtype) / t

    def candidate_time(self, t: torch.Tensor, count: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """count * max(w) * log(t / s) = -log u: s = t u^(1 / (count max(w)))."""
        return t * u ** (1.0 / (count.clamp_min(1) * self.exponents.max().to(t.dtype)))

    def time_of_masked_fraction(self, fraction: torch.Tensor) -> torch.Tensor:
        """The fraction itself: at w = 1 (the initial schedule) a share (1 - eps) t of the tokens is masked at t."""
        return fraction

    def extra_repr(self) -> str:
        return f"vocab_size={self.theta.numel()}, eps={self.eps}"
