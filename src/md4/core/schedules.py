"""Masking schedules shared by every token (MD4 paper, Sec. 2 and Table 4).

A schedule gives the probability alpha(t) that a token is still unmasked at time
t in [0, 1]; it decreases from ~1 at t = 0 to ~0 at t = 1. As in the authors'
release, the raw family alpha~(t) is clamped away from 0 and 1:

    alpha(t)  = (1 - 2 eps) alpha~(t) + eps
    alpha'(t) = (1 - 2 eps) alpha~'(t)

Only the weight w(t) = alpha'(t) / (1 - alpha(t)) (<= 0) enters the
continuous-time loss (paper Eq. 4), and in continuous time the bound does not
depend on the schedule except through alpha(0) and alpha(1).

Each schedule here is a :class:`md4.core.schedule_contract.Schedule` with ``alpha(t)`` shaped like ``t``; GenMD4's
per-token schedule is :class:`md4.core.token_schedule.TokenPolynomialSchedule`.
"""

from __future__ import annotations

import math
import re
from abc import abstractmethod
from typing import Any, ClassVar

import torch

from md4.core.schedule_contract import Schedule

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


def log_snr(alpha: torch.Tensor) -> torch.Tensor:
    """g = log(alpha / (1 - alpha)) of a schedule's alpha."""
    return torch.log(alpha) - torch.log1p(-alpha)


class MaskingSchedule(Schedule):
    """alpha(t) = (1 - 2 eps) alpha~(t) + eps for a family alpha~ given by subclasses, shared by every token."""

    per_token: ClassVar[bool] = False

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

    def hazard_bound(self, t: torch.Tensor) -> torch.Tensor:
        """The hazard itself: every token unmasks at the same rate."""
        return self.hazard(t)

    def inverse_alpha(self, target: torch.Tensor) -> torch.Tensor:
        """t in [0, 1] with alpha(t) = target, in float64 (0 above alpha's range, 1 below it): the family's closed
        form :meth:`raw_inverse` of the unclamped alpha~ = (target - eps) / (1 - 2 eps)."""
        raw = ((target.double() - self.eps) / (1.0 - 2.0 * self.eps)).clamp(0.0, 1.0)
        return self.raw_inverse(raw).clamp(0.0, 1.0)

    def raw_inverse(self, raw: torch.Tensor) -> torch.Tensor:
        """t with alpha~(t) = ``raw`` (float64 in [0, 1]); families without a closed form leave it to
        :meth:`bisect_alpha`."""
        return self.bisect_alpha((1.0 - 2.0 * self.eps) * raw + self.eps)

    def bisect_alpha(self, target: torch.Tensor, iterations: int = 60) -> torch.Tensor:
        """t with alpha(t) = target, by bisection in float64 (alpha is decreasing on [0, 1])."""
        lo = torch.zeros_like(target, dtype=torch.float64)
        hi = torch.ones_like(target, dtype=torch.float64)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            above = self.alpha(mid) > target
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def candidate_time(self, t: torch.Tensor, count: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The latest of ``count`` unmasking times, each with P(tau <= s | tau <= t) = (1 - alpha_s) / (1 - alpha_t):
        the solution of 1 - alpha_s = (1 - alpha_t) u^(1/count) (first-hitting sampling), at most t."""
        one_minus = (1.0 - self.alpha(t)) * u ** (1.0 / count.clamp_min(1).double())
        return torch.minimum(self.inverse_alpha(1.0 - one_minus), t)

    def time_of_masked_fraction(self, fraction: torch.Tensor) -> torch.Tensor:
        """The t with 1 - alpha(t) = fraction (t = 1 beyond alpha's range)."""
        return self.inverse_alpha(1.0 - fraction)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """g(t) = log(alpha / (1 - alpha)), used for the discrete-time weights (paper Eq. 3)."""
        return log_snr(self.alpha(t))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, eps={self.eps}"


class LinearSchedule(MaskingSchedule):
    """alpha~(t) = 1 - t."""

    name = "linear"

    def raw_alpha(self, t):
        return 1.0 - t

    def raw_dalpha(self, t):
        return -torch.ones_like(t)

    def raw_inverse(self, raw):
        return 1.0 - raw


class CosineSchedule(MaskingSchedule):
    """alpha~(t) = 1 - cos(pi/2 (1 - t))."""

    name = "cosine"

    def raw_alpha(self, t):
        return 1.0 - torch.cos(0.5 * math.pi * (1.0 - t))

    def raw_dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))

    def raw_inverse(self, raw):
        # 1 - cos(x) = 2 sin^2(x / 2), which keeps t accurate near 1 where raw is tiny
        return 1.0 - (4.0 / math.pi) * torch.asin(torch.sqrt(0.5 * raw))


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

    def raw_inverse(self, raw):
        return (1.0 - raw) ** (1.0 / self.power)


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

    def raw_inverse(self, raw):
        # beta = -log(raw) and log(beta) is linear in t (inf and -inf at the ends, which the caller clamps)
        log_min, log_max = math.log(self.beta_min), math.log(self.beta_max)
        return (torch.log(-torch.log(raw)) - log_min) / (log_max - log_min)


_FIXED = {"linear": LinearSchedule, "cosine": CosineSchedule, "geometric": GeometricSchedule}
_POLY = re.compile(r"^poly(\d+(?:\.\d*)?|\.\d+)$")
SCHEDULE_NAMES = ("linear", "cosine", "geometric", "polyK (any real K > 0, e.g. poly2 or poly0.5)")


def parse_schedule(name: str) -> tuple[type[MaskingSchedule], dict[str, Any]]:
    """The family and its arguments (but eps) that a schedule name stands for: ``linear``, ``cosine``,
    ``geometric`` or ``polyK``."""
    if name in _FIXED:
        return _FIXED[name], {}
    match = _POLY.match(str(name))
    if match and float(match.group(1)) > 0:
        return PolynomialSchedule, {"power": float(match.group(1))}
    raise ValueError(f"Unknown masking schedule {name!r}; valid names are: {', '.join(SCHEDULE_NAMES)}.")


def get_schedule(name: str, eps: float = DEFAULT_EPS) -> MaskingSchedule:
    """Build a schedule by name: ``linear``, ``cosine``, ``geometric`` or ``polyK``."""
    family, arguments = parse_schedule(name)
    return family(**arguments, eps=eps)
