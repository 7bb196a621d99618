"""First-hitting sampling: jump from one unmasking event to the next, with no time grid and no discretisation
error."""

from __future__ import annotations

import torch

from md4.sampling.draws import categorical
from md4.sampling.grid import Sampler


def inverse_alpha(schedule, target: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """t with alpha(t) = target, by bisection in float64 (alpha is decreasing on [0, 1])."""
    lo = torch.zeros_like(target, dtype=torch.float64)
    hi = torch.ones_like(target, dtype=torch.float64)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = schedule.alpha(mid) > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def next_unmask_time(schedule, t: torch.Tensor, num_masked: torch.Tensor, generator) -> torch.Tensor:
    """When, going back from t, the first of ``num_masked`` masked positions unmasks.

    Each masked position unmasks at an independent time tau with P(tau <= s | tau <= t) = (1 - alpha_s) / (1 - alpha_t),
    so the latest of m of them solves 1 - alpha_s = (1 - alpha_t) u^(1/m), u ~ U(0, 1) (first-hitting sampling).
    """
    u = torch.rand(t.shape, dtype=torch.float64, device=t.device, generator=generator)
    one_minus = (1.0 - schedule.alpha(t)) * u ** (1.0 / num_masked.clamp_min(1).double())
    return torch.minimum(inverse_alpha(schedule, 1.0 - one_minus), t)


class ExactSampler(Sampler):
    """Jump from one unmasking event to the next: no time grid and no discretisation error.

    Shared schedule (MD4): every position unmasks at its own time whatever its value, so the next event time
    is drawn directly and a sequence with D masked positions takes exactly D network calls.

    Per-token polynomial schedule (GenMD4): going back in time a masked position unmasks to v at rate
    mu[v] w_v / t, so its rate depends on mu. Events are drawn by thinning: candidate times at the bounding rate
    (number masked) * max(w) / t, each accepted with probability sum_n sum_v mu_n[v] w_v / (number masked *
    max(w)) with mu evaluated at the candidate time; the position is then drawn with probability proportional
    to sum_v mu_n[v] w_v and the value proportional to mu_n[v] w_v. This simulates the continuous-time reverse
    process exactly, also for a time-dependent network; a rejected candidate costs a network call unless the
    network ignores t. Other per-token schedules are not supported.
    """

    description = "first-hitting: no time grid, no discretisation error (MD4: one network call per token)"
    uses_grid = False

    def check(self, schedule) -> None:
        if schedule.per_token and not hasattr(schedule, "exponents"):
            raise ValueError(
                f"The exact sampler supports shared schedules and GenMD4's per-token polynomial, not "
                f"{schedule.name}; use the ancestral sampler."
            )

    def run(self, net, schedule, z, mask_id, options, generator, observe):
        observe(z)
        if schedule.per_token:
            w = schedule.exponents.detach().double()
            return self._run_per_token(net, w, z, mask_id, options, generator, observe)
        batch = z.shape[0]
        t = torch.ones(batch, dtype=torch.float64, device=z.device)
        while True:
            masked = (z == mask_id).reshape(batch, -1)
            count = masked.sum(1)
            if not bool(count.any()):
                return z
            active = count > 0
            t = torch.where(active, next_unmask_time(schedule, t, count, generator), t)
            probs = net(z, t)
            probs = probs.reshape(batch, -1, probs.shape[-1])
            choice = categorical(masked.double(), generator, "float64")  # uniform among the masked positions
            token = categorical(probs[torch.arange(batch, device=z.device), choice], generator, options.categorical)
            z = _unmask(z, active, choice, token)
            observe(z)

    @staticmethod
    def _run_per_token(net, w, z, mask_id, options, generator, observe):
        batch = z.shape[0]
        w_max = float(w.max())
        t = torch.ones(batch, dtype=torch.float64, device=z.device)
        rows = torch.arange(batch, device=z.device)
        while True:
            masked = (z == mask_id).reshape(batch, -1)
            count = masked.sum(1)
            if not bool(count.any()):
                return z
            active = count > 0
            u = torch.rand(batch, dtype=torch.float64, device=z.device, generator=generator)
            t = torch.where(active, t * u ** (1.0 / (count.clamp_min(1) * w_max)), t)
            probs = net(z, t).double()
            probs = probs.reshape(batch, -1, probs.shape[-1])
            rates = (probs * w).sum(-1) * masked  # sum_v mu_n[v] w_v for each masked position
            keep = torch.rand(batch, dtype=torch.float64, device=z.device, generator=generator)
            accepted = active & (keep * count.clamp_min(1) * w_max < rates.sum(1))
            if bool(accepted.any()):
                choice = categorical(rates, generator, "float64")
                token = categorical(probs[rows, choice] * w, generator, options.categorical)
                z = _unmask(z, accepted, choice, token)
                observe(z)


def _unmask(z: torch.Tensor, rows: torch.Tensor, position: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """z with ``token`` written at the flat ``position`` of each row where ``rows`` is True."""
    batch = z.shape[0]
    flat = z.reshape(batch, -1).clone()
    chosen = rows.nonzero().squeeze(-1)
    flat[chosen, position[chosen]] = token[chosen]
    return flat.reshape(z.shape)
