"""The masking-schedule contract: what the losses and the samplers ask of any schedule, shared by every token
(MD4, paper Sec. 2) or per token (GenMD4, paper Sec. 5).

alpha(t) is the probability that a token is still unmasked at time t, decreasing from ~1 at t = 0 to ~0 at t = 1.
Going back in time, a masked position unmasks at the hazard rate h(t) = -alpha'(t) / (1 - alpha(t)) (= -w(t),
the loss weight of Eq. 4); for a per-token schedule h_v(t) depends on the value v the position unmasks to, and the
reverse process unmasks to v at rate mu[v] h_v(t). The exact (first-hitting) sampler draws the next event of a
dominating process with per-position rate ``hazard_bound(t) >= max_v h_v(t)`` (:meth:`Schedule.candidate_time`)
and accepts it with probability sum_v mu[v] h_v / hazard_bound (thinning); for a shared schedule the bound is the
hazard itself, so every candidate is an event.

A schedule is an ``nn.Module`` owned by its model, so a learnable schedule's parameters live in the state dict,
the optimizer and the EMA like any weight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn


class Schedule(nn.Module, ABC):
    """A masking schedule. ``per_token`` declares whether alpha has a trailing vocabulary axis ``[..., V]``."""

    name: str
    per_token: ClassVar[bool]
    eps: float

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t): ``[*t.shape]``, or ``[*t.shape, V]`` for a per-token schedule."""

    @abstractmethod
    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """The loss weight alpha'(t) / (1 - alpha(t)) <= 0 of Eq. 4, shaped like :meth:`alpha`."""

    def hazard(self, t: torch.Tensor) -> torch.Tensor:
        """h(t) = -alpha'(t) / (1 - alpha(t)) >= 0: the rate, going back in time, at which a masked position
        unmasks (to value v, for a per-token schedule); shaped like :meth:`alpha`."""
        return -self.weight(t)

    @abstractmethod
    def hazard_bound(self, t: torch.Tensor) -> torch.Tensor:
        """An upper bound of the hazard over the values, ``[*t.shape]``: the hazard itself when it is shared."""

    @abstractmethod
    def candidate_time(self, t: torch.Tensor, count: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Going back from t (float64), the time s <= t of the first event among ``count`` positions that each
        fire at rate :meth:`hazard_bound`, given u ~ U(0, 1): the solution of
        count * int_s^t hazard_bound = -log u."""

    @abstractmethod
    def time_of_masked_fraction(self, fraction: torch.Tensor) -> torch.Tensor:
        """A time t at which a share ``fraction`` of the positions is masked (in expectation over the values):
        the time a sampler that unmasks by count (MaskGIT's confident decoding) shows the network."""
