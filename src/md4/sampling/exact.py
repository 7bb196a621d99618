"""First-hitting sampling: jump from one unmasking event to the next, with no time grid and no discretisation
error."""

from __future__ import annotations

import torch

from md4.core.schedule_contract import Schedule
from md4.sampling.draws import categorical
from md4.sampling.grid import Sampler


def next_unmask_time(schedule: Schedule, t: torch.Tensor, num_masked: torch.Tensor, generator) -> torch.Tensor:
    """When, going back from t, the next event among ``num_masked`` masked positions comes (for a shared schedule,
    the first of them unmasks; for a per-token one, a candidate to thin): :meth:`Schedule.candidate_time` at a
    fresh u ~ U(0, 1)."""
    u = torch.rand(t.shape, dtype=torch.float64, device=t.device, generator=generator)
    return schedule.candidate_time(t, num_masked, u)


class ExactSampler(Sampler):
    """Jump from one unmasking event to the next: no time grid and no discretisation error.

    Shared schedule (MD4): every position unmasks at its own time whatever its value, so the next event time
    is drawn directly and a sequence with D masked positions takes exactly D network calls; the position is drawn
    (uniformly among the masked) before the call, so mu is computed at that one position of each sequence alone.

    Per-token schedule (GenMD4): going back in time a masked position unmasks to v at rate mu[v] h_v(t), so its
    rate depends on mu. Events are drawn by thinning: candidate times at the bounding rate (number masked) *
    hazard_bound(t), each accepted with probability sum_n sum_v mu_n[v] h_v(t) / (number masked * hazard_bound(t))
    with mu evaluated at the candidate time; the position is then drawn with probability proportional to
    sum_v mu_n[v] h_v(t) and the value proportional to mu_n[v] h_v(t). This simulates the continuous-time reverse
    process exactly, also for a time-dependent network; a rejected candidate costs a network call unless the
    network ignores t.
    """

    description = "first-hitting: no time grid, no discretisation error (MD4: one network call per token)"
    uses_grid = False

    def run(self, net, schedule, z, mask_id, options, generator, observe):
        observe(z)
        if schedule.per_token:
            return self._thinned(net, schedule, z, mask_id, options, generator, observe)
        batch = z.shape[0]
        t = torch.ones(batch, dtype=torch.float64, device=z.device)
        while True:
            masked = (z == mask_id).reshape(batch, -1)
            count = masked.sum(1)
            if not bool(count.any()):
                return z
            active = count > 0
            t = torch.where(active, next_unmask_time(schedule, t, count, generator), t)
            choice = categorical(masked.double(), generator, "float64")  # uniform among the masked positions
            probs = net.rows(z, t, torch.arange(batch, device=z.device) * masked.shape[1] + choice)  # [B, V]
            token = categorical(probs, generator, options.categorical)
            z = _unmask(z, active, choice, token)
            observe(z)

    @staticmethod
    def _thinned(net, schedule: Schedule, z, mask_id, options, generator, observe):
        """Thinning of the per-token reverse process: candidates at the bounding rate, accepted at the true one."""
        batch = z.shape[0]
        t = torch.ones(batch, dtype=torch.float64, device=z.device)
        rows = torch.arange(batch, device=z.device)
        while True:
            masked = (z == mask_id).reshape(batch, -1)
            count = masked.sum(1)
            if not bool(count.any()):
                return z
            active = count > 0
            t = torch.where(active, next_unmask_time(schedule, t, count, generator), t)
            probs = net(z, t)
            probs = probs.reshape(batch, -1, probs.shape[-1])
            hazards = schedule.hazard(t).detach().double()  # h_v(t) [B, V]
            # sum_v mu_n[v] h_v(t) at each masked position, in mu's own float32 (no float64 copy of [B, L, V])
            rates = ((probs * hazards[:, None, :].to(probs.dtype)).sum(-1) * masked).double()
            bound = count.clamp_min(1) * schedule.hazard_bound(t).detach().double()
            keep = torch.rand(batch, dtype=torch.float64, device=z.device, generator=generator)
            accepted = active & (keep * bound < rates.sum(1))
            if bool(accepted.any()):
                choice = categorical(rates, generator, "float64")
                token = categorical(probs[rows, choice].double() * hazards, generator, options.categorical)
                z = _unmask(z, accepted, choice, token)
                observe(z)


def _unmask(z: torch.Tensor, rows: torch.Tensor, position: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """z with ``token`` written at the flat ``position`` of each row where ``rows`` is True."""
    batch = z.shape[0]
    flat = z.reshape(batch, -1).clone()
    chosen = rows.nonzero().squeeze(-1)
    flat[chosen, position[chosen]] = token[chosen]
    return flat.reshape(z.shape)
