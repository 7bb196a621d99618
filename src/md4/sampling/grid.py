"""The sampler interface and the grid samplers: ancestral, top-p and mean steps on a time grid (paper Alg. 2,
App. G)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial

import torch

from md4.core.schedule_contract import Schedule
from md4.sampling.draws import categorical, time_grid
from md4.sampling.network import Network
from md4.sampling.options import SamplingOptions

StepRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Generator | None, str], torch.Tensor]


def ancestral_step(mu, alpha_s, alpha_t, mask_id, generator, method):
    """Draw z_s over V + 1 outcomes (Alg. 2): mu_v (a_s - a_t)/(1 - a_t) per value, the rest stays masked.

    ``alpha_s``/``alpha_t`` are float64 scalars (a shared schedule) or [V] (a per-token one); index V is the mask id.
    """
    unmask = (alpha_s - alpha_t) / (1.0 - alpha_t)  # in float64: a_s - a_t cancels near t = 0
    stay = (mu * ((1.0 - alpha_s) / (1.0 - alpha_t)).to(mu.dtype)).sum(-1, keepdim=True)
    return categorical(torch.cat([mu * unmask.to(mu.dtype), stay], dim=-1), generator, method)


def mean_step(mu, alpha_s, alpha_t, mask_id, generator, method):
    """Draw x0 ~ mu, then unmask it with probability (a_s - a_t) / (1 - a_t) of its value (paper App. G)."""
    x0 = categorical(mu, generator, method)
    unmask = (alpha_s - alpha_t) / (1.0 - alpha_t)
    if unmask.dim():  # a per-token schedule: the drawn value's own probability
        unmask = unmask[x0]
    u = torch.rand(x0.shape, dtype=unmask.dtype, device=mu.device, generator=generator)
    return torch.where(u < unmask, x0, torch.full_like(x0, mask_id))


# ------------------------------------------------------------------ samplers
class Sampler(ABC):
    """A whole sampler: from z_1 (mask ids at the positions to generate) to clean tokens."""

    description: str
    uses_grid: bool = True  # whether ``steps`` and ``grid`` matter

    @abstractmethod
    def run(
        self,
        net: Network,
        schedule: Schedule,
        z: torch.Tensor,
        mask_id: int,
        options: SamplingOptions,
        generator,
        observe,
    ) -> torch.Tensor:
        """The final tokens (no mask id left); ``net`` counts the network calls; ``observe(z)`` sees every state."""


class GridSampler(Sampler):
    """Steps t_i -> t_{i-1} on a time grid with one step rule; positions still masked at t = 0 take argmax mu.

    With a shared schedule (MD4) and float64 draws the three step rules are one transition: a masked position
    unmasks with probability (a_s - a_t) / (1 - a_t) whatever mu, to a draw from mu (its nucleus for top_p). So
    the unmasking positions are drawn first and mu is computed, truncated and drawn from at their rows alone
    (:meth:`Network.rows`): O(unmasking x V) work per step rather than O(B x L x V), for one wait on the device
    (finding those positions); and a step that unmasks nothing calls no network at all, time-conditioned or not,
    so the NFE is the number of steps that change z (at most the number of masked positions, as the exact sampler's). Otherwise
    (a per-token schedule, or the release's float32 Gumbel draw over V + 1 outcomes) the step rule is drawn at
    every position and kept at the masked ones. Both stop once nothing is masked.
    """

    def __init__(
        self,
        step: StepRule,
        description: str,
        truncate: Callable[[torch.Tensor, SamplingOptions], torch.Tensor] | None = None,
    ):
        self.step, self.description, self.truncate = step, description, truncate

    def run(self, net, schedule, z, mask_id, options, generator, observe):
        times = time_grid(options.steps, options.grid, device=z.device)
        alphas = schedule.alpha(times)  # [T + 1] or [T + 1, V], float64
        shared = not schedule.per_token and options.categorical == "float64"
        step, mu_of = (self._unmask_some, net.rows) if shared else (self._everywhere, net)
        batch = z.shape[0]
        observe(z)
        left = int((z == mask_id).sum())
        for i in range(options.steps):
            if not left:
                return z
            mu = partial(mu_of, z, times[i].expand(batch))  # called only if the step needs it
            z, unmasked = step(mu, z, alphas[i + 1], alphas[i], mask_id, options, generator)
            left -= unmasked
            observe(z)
        if left:
            z = torch.where(z == mask_id, net(z, times[-1].expand(batch)).argmax(-1), z)
            observe(z)
        return z

    def _truncated(self, mu: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
        return mu if self.truncate is None else self.truncate(mu, options)

    def _everywhere(self, mu, z, alpha_s, alpha_t, mask_id, options, generator) -> tuple[torch.Tensor, int]:
        """The step rule drawn at every position and kept at the masked ones; z and how many were unmasked."""
        step = self.step(self._truncated(mu(), options), alpha_s, alpha_t, mask_id, generator, options.categorical)
        unmasked = (z == mask_id) & (step != mask_id)
        return torch.where(unmasked, step, z), int(unmasked.sum())

    def _unmask_some(self, mu, z, alpha_s, alpha_t, mask_id, options, generator) -> tuple[torch.Tensor, int]:
        """A shared-schedule step: the unmasking positions first, then (only if there are any) mu at those positions
        alone (``mu(index)``) and their tokens; z and how many there were."""
        u = torch.rand(z.shape, dtype=torch.float64, device=z.device, generator=generator)
        chosen = ((z == mask_id) & (u < (alpha_s - alpha_t) / (1.0 - alpha_t))).flatten().nonzero().squeeze(1)
        if not len(chosen):
            return z, 0
        tokens = categorical(self._truncated(mu(chosen), options), generator, "float64")
        return z.flatten().index_copy(0, chosen, tokens).view(z.shape), len(tokens)
