"""Masking schedules alpha(t) for absorbing diffusion (MD4 paper, Sec. 2 and Table 4).

A schedule gives the probability alpha(t) that a token is still unmasked at time
t in [0, 1]; it decreases from ~1 at t = 0 to ~0 at t = 1. As in the authors'
release, the raw family alpha~(t) is clamped away from 0 and 1:

    alpha(t)  = (1 - 2 eps) alpha~(t) + eps
    alpha'(t) = (1 - 2 eps) alpha~'(t)

Only the weight w(t) = alpha'(t) / (1 - alpha(t)) (<= 0) enters the
continuous-time loss (paper Eq. 4), and in continuous time the bound does not
depend on the schedule except through alpha(0) and alpha(1).

A schedule is an ``nn.Module`` owned by its model, so a learnable schedule's parameters live in
the state dict, the optimizer and the EMA like any weight. ``alpha(t)`` has the shape of ``t`` for
the schedules here, which every token shares; a per-token schedule (GenMD4, the paper's state-dependent schedule) sets
``per_token = True`` and returns a trailing vocabulary axis ``[..., V]``.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod

import torch
from torch import nn

DEFAULT_EPS = 1e-4
_POLY_T_FLOOR = 1e-12


def check_eps(eps: float) -> float:
    """The schedule clamp eps, checked: in (0, 0.5) so alpha stays in (0, 1) and every loss weight is finite."""
    if not 0.0 < eps < 0.5:
        raise ValueError(
            f"The schedule's eps must be in (0, 0.5) so the loss weight stays finite at t = 0, got {eps}; "
            "the release uses 1e-4."
        )
    return float(eps)


class MaskingSchedule(nn.Module, ABC):
    """alpha(t) = (1 - 2 eps) alpha~(t) + eps for a family alpha~ given by subclasses."""

    name: str
    per_token: bool = False  # True when alpha(t) has a trailing vocabulary axis [..., V]

    def __init__(self, eps: float = DEFAULT_EPS):
        super().__init__()
        self.eps = check_eps(eps)

    @abstractmethod
    def raw_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """The unclamped family alpha~(t), 1 at t = 0 and 0 at t = 1."""

    @abstractmethod
    def raw_dalpha(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha~ / dt."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is unmasked at time t."""
        return (1.0 - 2.0 * self.eps) * self.raw_alpha(t) + self.eps

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha'(t) (<= 0)."""
        return (1.0 - 2.0 * self.eps) * self.raw_dalpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Loss weight w(t) = alpha'(t) / (1 - alpha(t)) of paper Eq. 4 (<= 0, finite for eps > 0)."""
        return self.dalpha(t) / (1.0 - self.alpha(t))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """g(t) = log(alpha / (1 - alpha)), used for the discrete-time weights (paper Eq. 3)."""
        a = self.alpha(t)
        return torch.log(a) - torch.log1p(-a)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, eps={self.eps}"


class LinearSchedule(MaskingSchedule):
    """alpha~(t) = 1 - t."""

    name = "linear"

    def raw_alpha(self, t):
        return 1.0 - t

    def raw_dalpha(self, t):
        return -torch.ones_like(t)


class CosineSchedule(MaskingSchedule):
    """alpha~(t) = 1 - cos(pi/2 (1 - t))."""

    name = "cosine"

    def raw_alpha(self, t):
        return 1.0 - torch.cos(0.5 * math.pi * (1.0 - t))

    def raw_dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))


class PolynomialSchedule(MaskingSchedule):
    """alpha~(t) = 1 - t^K for any real K > 0 (named ``polyK``, e.g. ``poly2.5``)."""

    def __init__(self, power: float, eps: float = DEFAULT_EPS):
        super().__init__(eps)
        if not power > 0:
            raise ValueError(f"Polynomial schedule power must be > 0, got {power}.")
        self.power = float(power)
        self.name = f"poly{power:g}"

    def raw_alpha(self, t):
        return 1.0 - t**self.power

    def raw_dalpha(self, t):
        # K t^(K-1); for K < 1 it diverges at t = 0, so t is floored to keep every weight finite.
        return -self.power * t.clamp_min(_POLY_T_FLOOR) ** (self.power - 1.0)


class GeometricSchedule(MaskingSchedule):
    """alpha~(t) = exp(-beta(t)), beta(t) = beta_min^(1-t) beta_max^t (paper Table 4; MDLM/SEDD)."""

    name = "geometric"

    def __init__(self, beta_min: float = 1e-5, beta_max: float = 20.0, eps: float = DEFAULT_EPS):
        super().__init__(eps)
        if not 0 < beta_min < beta_max:
            raise ValueError(f"Geometric schedule needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _beta(self, t):
        return self.beta_min ** (1.0 - t) * self.beta_max**t

    def raw_alpha(self, t):
        return torch.exp(-self._beta(t))

    def raw_dalpha(self, t):
        beta = self._beta(t)
        return -beta * math.log(self.beta_max / self.beta_min) * torch.exp(-beta)


_FIXED = {"linear": LinearSchedule, "cosine": CosineSchedule, "geometric": GeometricSchedule}
_POLY = re.compile(r"^poly(\d+(?:\.\d*)?|\.\d+)$")
SCHEDULE_NAMES = ("linear", "cosine", "geometric", "polyK (any real K > 0, e.g. poly2 or poly0.5)")


def get_schedule(name: str, eps: float = DEFAULT_EPS) -> MaskingSchedule:
    """Build a schedule by name: ``linear``, ``cosine``, ``geometric`` or ``polyK``."""
    if name in _FIXED:
        return _FIXED[name](eps=eps)
    match = _POLY.match(str(name))
    if match and float(match.group(1)) > 0:
        return PolynomialSchedule(float(match.group(1)), eps=eps)
    raise ValueError(f"Unknown masking schedule {name!r}; valid names are: {', '.join(SCHEDULE_NAMES)}.")


MAX_W_INIT = 1000.0  # the largest initial GenMD4 exponent: 0.99^1000 < 1e-4


class TokenPolynomialSchedule(nn.Module):
    """GenMD4's learnable per-token schedule alpha_v(t) = 1 - (1 - eps) t^{w_v} (GenMD4), w = softplus(theta).

    ``alpha(t)`` returns ``[*t.shape, V]``. There is no eps offset at t = 0 (alpha_v(0) = 1); GenMD4 instead
    integrates over t in [t1, 1] and adds a reconstruction term at t1. The loss weight is
    alpha'_v / (1 - alpha_v) = -w_v / t, and going back from t to s < t a masked token of value v stays masked
    with probability (s / t)^{w_v}.
    """

    per_token = True
    name = "per-token polynomial"

    def __init__(self, vocab_size: int, w_init: float = 1.0, eps: float = DEFAULT_EPS):
        super().__init__()
        if not 0 < w_init <= MAX_W_INIT:  # also NaN
            raise ValueError(
                f"The initial exponent w must be in (0, {MAX_W_INIT:g}] (w = 1 is the linear schedule; at w = "
                f"{MAX_W_INIT:g} almost no token is masked before t = 0.99), got {w_init}."
            )
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

    def extra_repr(self) -> str:
        return f"vocab_size={self.theta.numel()}, eps={self.eps}"
