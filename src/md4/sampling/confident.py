"""MaskGIT's parallel decoding (Chang et al. 2022): not the reverse process, an approximate sampler for comparison."""

from __future__ import annotations

import torch

from md4.sampling.draws import categorical
from md4.sampling.grid import Sampler


class ConfidentSampler(Sampler):
    """MaskGIT's parallel decoding (Chang et al. 2022): each of ``steps`` network calls unmasks the masked positions
    where mu is most confident, confidence being max_v mu[v] (MaskGIT ranks by the drawn token's probability, with
    noise), and draws their tokens from mu.

    A row with m masked positions and r calls left unmasks ceil(m / r) of them, so all are unmasked after
    min(steps, max m) calls. The positions are ranked before any token is drawn (ties to the first), so each
    token is a plain draw from mu at its position; but neither the order nor the joint unmasking of several
    positions from their separate marginals is the reverse process, so the samples are approximate even at one
    token per call. The network sees the t at which the row's masked fraction is masked
    (:meth:`md4.core.schedule_contract.Schedule.time_of_masked_fraction`); the schedule plays no other part.
    """

    description = "MaskGIT-style: each of --steps calls unmasks the most confident masked positions (approximate)"
    uses_grid = False

    def run(self, net, schedule, z, mask_id, options, generator, observe):
        observe(z)
        batch, shape = z.shape[0], z.shape
        z = z.reshape(batch, -1)
        masked = z == mask_id
        calls = min(options.steps, int(masked.sum(1).max()))
        rank = torch.arange(z.shape[1], device=z.device)
        for i in range(calls):
            count = masked.sum(1)
            fraction = count.double() / z.shape[1]
            t = schedule.time_of_masked_fraction(fraction)
            probs = net(z.reshape(shape), t).reshape(batch, z.shape[1], -1)
            confidence = torch.where(masked, probs.amax(-1), -1.0)
            order = confidence.argsort(dim=1, descending=True, stable=True)
            take = (count + calls - i - 1) // (calls - i)  # ceil(m / r)
            chosen = torch.zeros_like(masked).scatter(1, order, rank < take[:, None])
            z = torch.where(chosen, categorical(probs, generator, options.categorical), z)
            masked = masked & ~chosen
            observe(z.reshape(shape))
        return z.reshape(shape)
