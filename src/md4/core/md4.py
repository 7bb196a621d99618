"""MD4: masked diffusion with the continuous- and discrete-time NELBO (Shi et al. 2024, Sec. 2-4).

Everything inside is in nats per sequence; :func:`md4.core.units.bits_per_token` converts at the edges. Samples
come from :func:`md4.sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from md4.core.kind_contract import CONTINUOUS, DISCRETE, mean_per_token
from md4.core.masked import ConditioningOptions, Denoiser, MaskedDiffusion
from md4.core.noise import BatchShard, antithetic_times, uniform_rows
from md4.core.schedule_contract import Schedule
from md4.core.schedules import DEFAULT_EPS, MaskingSchedule, check_eps, get_schedule, log_snr, parse_schedule


@dataclass
class MD4Options(ConditioningOptions):
    """The ``[model]`` options of ``kind = "md4"``: the masking schedule and its clamp eps, the noise draws per
    training sequence, and conditioning."""

    schedule: str = "linear"
    eps: float = DEFAULT_EPS
    draws: int = 1  # training: noise draws (t, z_t) per sequence, averaged, in one network call

    def __post_init__(self) -> None:
        super().__post_init__()
        check_draws(self.draws)
        # An unknown name or a bad eps fails here, before any data is read; the parsed family (not a dataclass
        # field) builds the schedule in MD4.build.
        self._family = parse_schedule(self.schedule)
        check_eps(self.eps)

    def build_schedule(self) -> MaskingSchedule:
        """The schedule these options name."""
        family, arguments = self._family
        return family(**arguments, eps=self.eps)


def check_draws(draws) -> None:
    """Refuse, in one sentence, a number of noise draws that is not a positive integer."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"model.draws must be a positive integer (1: one noise draw per sequence), got {draws!r}.")


class MD4(MaskedDiffusion):
    """Masked diffusion model of paper Sec. 2-4 around any denoiser.

    Args:
        denoiser: callable following the contract in the module docstring.
        vocab_size: V, the number of real tokens; the mask id is V.
        schedule: a :class:`md4.core.schedule_contract.Schedule` shared by every token, e.g. a
            :class:`MaskingSchedule` (owned by the model from here on), or the name of one (``linear``, ``cosine``,
            ``polyK``, ``geometric``), built with ``eps``.
        eps: the clamp of a schedule given by name (default 1e-4, the release's); a schedule module has its own.
        data_shape: optional per-example shape (e.g. ``(256,)`` or ``(32, 32, 3)``), checked on input and used
            by :func:`md4.sample` as the default sample shape.
        num_classes, label_dropout: class conditioning (see :class:`MaskedDiffusion`).
        draws: noise draws K per training sequence: the training loss averages K draws of (t, z_t ~ q(z_t | x)),
            the times antithetic over all K B rows, all in one network call on a K-fold batch (an unbiased estimate
            of the same NELBO with lower variance, for K times the network's work). Evaluation draws as it is told.
    """

    kind = "md4"
    bounds = (CONTINUOUS, DISCRETE)

    def __init__(
        self,
        denoiser: Denoiser,
        vocab_size: int,
        schedule: str | Schedule = "linear",
        eps: float | None = None,
        data_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        label_dropout: float = 0.0,
        draws: int = 1,
    ):
        check_draws(draws)
        if isinstance(schedule, Schedule):
            if eps is not None:
                raise ValueError("eps belongs to the schedule; pass it when building the schedule, not to MD4.")
        else:
            schedule = get_schedule(schedule, DEFAULT_EPS if eps is None else eps)
        if schedule.per_token:
            raise ValueError(f"MD4 needs a schedule shared by every token, but {schedule.name} is per token.")
        super().__init__(denoiser, vocab_size, schedule, data_shape, num_classes, label_dropout)
        self.draws = draws

    @classmethod
    def build(cls, options: MD4Options, denoiser: Denoiser, spec) -> MD4:
        """The model of a run: ``options`` from the config's ``[model]`` table, ``spec`` from its data (its
        ``num_classes`` is None unless the model is conditional)."""
        return cls(
            denoiser,
            spec.vocab_size,
            options.build_schedule(),
            None,
            spec.data_shape,
            spec.num_classes,
            options.label_dropout,
            options.draws,
        )

    # -------------------------------------------------------------- forward q
    def forward_sample(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """Draw z_t ~ q(z_t | x): keep each token with probability alpha(t), else mask (paper Sec. 2)."""
        alpha = self._expand(self.schedule.alpha(t.double()).float(), x)
        keep = uniform_rows(x.shape, x.device, generator, shard) < alpha
        return torch.where(keep, x, torch.full_like(x, self.mask_id))

    def _masked_log_likelihood(self, x, z, t, labels):
        """sum over masked n of log mu(z_t, t)[n, x_n], per sequence [B]."""
        index, logp_x, _ = self.masked_log_probs(x, z, t, labels)
        return self.sum_masked(index, logp_x, x.shape)

    # ----------------------------------------------------------------- losses
    def continuous_loss(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
        draws: int = 1,
    ) -> torch.Tensor:
        """One-sample estimate of the diffusion term of L_inf (paper Eq. 4), nats per sequence [B] (the mean of
        ``draws`` of them: :meth:`_mean_of_draws`).

        w(t) * sum_{masked n} log mu(z_t, t)[n, x_n] with w = alpha'/(1 - alpha); t is antithetic if not given.
        """
        self._check_input(x)
        if draws > 1:
            return self._mean_of_draws(x, t, labels, generator, shard, draws)
        if t is None:
            t = antithetic_times(x.shape[0], x.device, generator, shard)
        else:
            self._check_times(t, x.shape[0])
        z = self.forward_sample(x, t, generator, shard)
        weight = self.schedule.weight(t.double()).float()
        return weight * self._masked_log_likelihood(x, z, t.float(), labels)

    def _mean_of_draws(self, x, t, labels, generator, shard, draws: int) -> torch.Tensor:
        """The diffusion term averaged over ``draws`` draws of (t, z_t) per sequence, all in one network call on a
        ``draws``-fold batch: the times antithetic over every draw of every row of the (whole, sharded) batch, or
        each draw at the given t [B]; [B]."""
        batch = x.shape[0]
        if t is None:
            start, total = (0, batch) if shard is None else (shard.start, shard.total)
            t = antithetic_times(draws * total, x.device, generator).view(draws, total)[:, start : start + batch]
        else:
            self._check_times(t, batch)
            t = t.expand(draws, batch)
        z = torch.cat([self.forward_sample(x, t[k], generator, shard) for k in range(draws)])
        times = t.reshape(-1)
        repeated = x.repeat(draws, *([1] * (x.dim() - 1)))
        ll = self._masked_log_likelihood(repeated, z, times.float(), None if labels is None else labels.repeat(draws))
        return (self.schedule.weight(times.double()).float() * ll).view(draws, batch).mean(0)

    def discrete_loss(
        self,
        x: torch.Tensor,
        num_steps: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """One-sample estimate of the diffusion term of L_T (paper Eq. 3), nats per sequence [B].

        A step i in 1..T per sequence (stratified over the batch), weighted by
        T (alpha_s - alpha_t) / (1 - alpha_t) = -T expm1(g_t - g_s) alpha_s with g = log(alpha / (1 - alpha)).
        """
        self._check_input(x)
        if int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps}.")
        u = antithetic_times(x.shape[0], x.device, generator, shard)
        step = torch.clamp(torch.floor(u * num_steps), max=num_steps - 1) + 1  # i in 1..T
        t, s = (step / num_steps).double(), ((step - 1) / num_steps).double()
        alpha_t, alpha_s = self.schedule.alpha(t), self.schedule.alpha(s)
        weight = -torch.expm1(log_snr(alpha_t) - log_snr(alpha_s)) * alpha_s
        z = self.forward_sample(x, t.float(), generator, shard)
        return -num_steps * weight.float() * self._masked_log_likelihood(x, z, t.float(), labels)

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """-E log p(x | z_0): a token masked at t = 0 (probability 1 - alpha(0)) costs log V; [B].

        Differentiable in the schedule's parameters, if it has any.
        """
        alpha0 = self.schedule.alpha(torch.zeros((), dtype=torch.float64, device=x.device))
        value = x[0].numel() * (1.0 - alpha0) * math.log(self.vocab_size)
        return value.float().expand(x.shape[0])

    def nelbo(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """One Monte-Carlo draw of the NELBO in nats per sequence [B].

        ``num_steps=None`` gives the continuous-time bound L_inf (Eq. 4); an integer T the discrete-time L_T (Eq. 3).
        Both add the reconstruction term; the prior term at t = 1 is negligible (alpha(1) = eps) and omitted,
        as in the release.
        """
        self.check_bound(num_steps)
        if num_steps is None:
            diffusion = self.continuous_loss(x, labels=labels, generator=generator, shard=shard)
        else:
            diffusion = self.discrete_loss(x, num_steps, labels=labels, generator=generator, shard=shard)
        return diffusion + self.reconstruction_loss(x)

    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training objective: the continuous NELBO averaged over the batch (and over ``draws`` noise draws of each
        sequence), in nats per token.

        Returns the scalar to backpropagate and detached metrics (nats per sequence and bits per token).
        ``shard``: this process's rows of a batch split over processes (:class:`BatchShard`).
        """
        labels = self.training_labels(labels, generator, shard)
        if self.draws == 1:
            nelbo = self.nelbo(x, labels=labels, generator=generator, shard=shard)
        else:
            diffusion = self.continuous_loss(x, labels=labels, generator=generator, shard=shard, draws=self.draws)
            nelbo = diffusion + self.reconstruction_loss(x)
        return mean_per_token(nelbo, x[0].numel())
