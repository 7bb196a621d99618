"""GenMD4: masked diffusion with a learned per-token schedule (the paper's GenMD4), a sibling of :class:`md4.MD4`.

Each token value v has its own schedule alpha_v(t) = 1 - (1 - eps) t^{w_v} with w = softplus(theta) learned
with the network (:class:`md4.core.token_schedule.TokenPolynomialSchedule`). The continuous-time NELBO over t in [t1, 1]
is, per sequence,

    int_{t1}^1 sum_v (-w_v / t) E_q [ sum_{masked n} g_n[v] ] dt + reconstruction at t1,
    g_n[v] = (log mu_n[x_n] + 1) 1{v = x_n} - mu_n[v]

(the paper's (alpha'/(1 - alpha))^T (x + x log mu - mu)). The masking distribution q(z_t | x) depends on w, so
the gradient for w adds a REINFORCE term with a leave-one-out baseline over two draws z1, z2 at the same t:

    surrogate = 1/2 (L1 + L2) + 1/2 stopgrad(L1 - L2) (log q(z1 | x) - log q(z2 | x)).

The network gets only the pathwise gradient; the reported metric is the NELBO without the surrogate term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from md4.core.kind_contract import CONTINUOUS
from md4.core.masked import ConditioningOptions, Denoiser, MaskedDiffusion
from md4.core.noise import BatchShard, antithetic_times, uniform_rows
from md4.core.schedules import DEFAULT_EPS, check_eps
from md4.core.token_schedule import TokenPolynomialSchedule, check_w_init
from md4.core.units import bits_per_token


@dataclass
class GenMD4Options(ConditioningOptions):
    """The ``[model]`` options of ``kind = "genmd4"``."""

    w_init: float = 1.0  # the initial exponent of every token (1: MD4's linear schedule)
    t1: float = 1e-3  # the bound integrates over t in [t1, 1]; [0, t1] is the reconstruction term
    eps: float = DEFAULT_EPS  # alpha_v(1) = eps
    theta_lr: float | None = None  # learning rate of the schedule's parameters (None: train.lr)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_t1(self.t1)
        check_w_init(self.w_init)
        check_eps(self.eps)
        if self.theta_lr is not None and not (math.isfinite(self.theta_lr) and self.theta_lr > 0):
            raise ValueError(f"theta_lr must be a positive finite number (or None for train.lr), got {self.theta_lr}.")


def check_t1(t1: float) -> float:
    if not 0.0 < t1 < 1.0:
        raise ValueError(f"t1 must be in (0, 1), got {t1}; the release uses 1e-3.")
    return float(t1)


class GenMD4(MaskedDiffusion):
    """GenMD4 around any denoiser (the same contract as :class:`md4.MD4`).

    Args:
        denoiser: ``denoiser(z_t, t[, labels=]) -> logits [B, *shape, V]``.
        vocab_size: V; the mask id is V.
        w_init, t1, eps, theta_lr: see :class:`GenMD4Options`.
        data_shape: optional per-example shape, checked on input and the default sample shape.
        num_classes, label_dropout: class conditioning (see :class:`md4.core.masked.MaskedDiffusion`).
    """

    kind = "genmd4"
    bounds = (CONTINUOUS,)

    def __init__(
        self,
        denoiser: Denoiser,
        vocab_size: int,
        w_init: float = 1.0,
        t1: float = 1e-3,
        eps: float = DEFAULT_EPS,
        data_shape: tuple[int, ...] | None = None,
        theta_lr: float | None = None,
        num_classes: int | None = None,
        label_dropout: float = 0.0,
    ):
        schedule = TokenPolynomialSchedule(vocab_size, w_init, eps)
        super().__init__(denoiser, vocab_size, schedule, data_shape, num_classes, label_dropout)
        self.t1 = check_t1(t1)
        self.theta_lr = theta_lr

    @classmethod
    def build(cls, options: GenMD4Options, denoiser: Denoiser, spec) -> GenMD4:
        """The model of a run: ``options`` from the config's ``[model]`` table, ``spec`` from its data."""
        return cls(
            denoiser,
            spec.vocab_size,
            options.w_init,
            options.t1,
            options.eps,
            spec.data_shape,
            options.theta_lr,
            spec.num_classes,
            options.label_dropout,
        )

    def own_learning_rates(self) -> list[tuple[list[nn.Parameter], float]]:
        """The schedule's parameters at ``theta_lr``, when it is set."""
        return [] if self.theta_lr is None else [(list(self.schedule.parameters()), self.theta_lr)]

    @classmethod
    def check_bound(cls, num_steps: int | None) -> None:
        """Refuse the discrete-time bound, in GenMD4's own words."""
        if num_steps is not None:
            raise ValueError("GenMD4 has only a continuous-time bound; leave num_steps out.")

    # ------------------------------------------------------------- forward q
    def times(
        self, batch_size: int, device=None, generator: torch.Generator | None = None, shard: BatchShard | None = None
    ) -> torch.Tensor:
        """Antithetic times in [t1, 1]: t = t1 + (1 - t1) u."""
        return self.t1 + (1.0 - self.t1) * antithetic_times(batch_size, device, generator, shard)

    def _exponent_at(self, x: torch.Tensor) -> torch.Tensor:
        """w_{x_n} for every position [B, *shape]."""
        return self.schedule.exponents[x]

    def forward_sample(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """Draw z_t ~ q(z_t | x): keep token n with probability alpha_{x_n}(t) = 1 - (1 - eps) t^{w_{x_n}}."""
        with torch.no_grad():
            masked = (1.0 - self.schedule.eps) * self._expand(t.float(), x) ** self._exponent_at(x)
        keep = uniform_rows(x.shape, x.device, generator, shard) >= masked
        return torch.where(keep, x, torch.full_like(x, self.mask_id))

    def log_q(self, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log q(z_t | x) per sequence [B], differentiable in w: masked log(1 - eps) + w_x log t, kept
        log(1 - (1 - eps) t^{w_x})."""
        w_log_t = self._exponent_at(x) * torch.log(self._expand(t.float(), x))
        masked = math.log(1.0 - self.schedule.eps) + w_log_t
        kept = torch.log1p(-(1.0 - self.schedule.eps) * torch.exp(w_log_t))
        return torch.where(z == self.mask_id, masked, kept).flatten(1).sum(1)

    # ----------------------------------------------------------------- losses
    def diffusion_term(
        self, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """sum_v (-w_v / t) sum_{masked n} g_n[v] per sequence [B], at the given z_t (the integrand)."""
        return self._integrand(x, z, t, labels)

    def _integrand(self, x, z, t, labels):
        """The integrand from the network's log mu at the masked positions only (see masked_log_probs)."""
        w = self.schedule.exponents
        index, logp_x, mean_w = self.masked_log_probs(x, z, t.float(), labels, weights=w)  # mean_w: sum_v mu_n[v] w_v
        w_x = w.index_select(0, x.flatten().index_select(0, index))
        t_masked = t.float().index_select(0, torch.div(index, x[0].numel(), rounding_mode="floor"))
        return self.sum_masked(index, (mean_w - w_x * (logp_x + 1.0)) / t_masked, x.shape)

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """-E log p(x | z_{t1}) with p(v | masked) proportional to t1^{w_v}, per sequence [B]:
        -(1 - eps) sum_n t1^{w_{x_n}} (w_{x_n} log t1 - logsumexp_v(w_v log t1))."""
        log_t1 = math.log(self.t1)
        w_log_t1 = self._exponent_at(x) * log_t1
        log_norm = torch.logsumexp(self.schedule.exponents * log_t1, dim=0)
        per_position = -(1.0 - self.schedule.eps) * torch.exp(w_log_t1) * (w_log_t1 - log_norm)
        return per_position.flatten(1).sum(1)

    def nelbo(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """One Monte-Carlo draw of the continuous-time NELBO in nats per sequence [B] (no discrete-time bound)."""
        self.check_bound(num_steps)
        self._check_input(x)
        t = self.times(x.shape[0], x.device, generator, shard)
        z = self.forward_sample(x, t, generator, shard)
        return (1.0 - self.t1) * self.diffusion_term(x, z, t, labels) + self.reconstruction_loss(x)

    def two_draws(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """At times t [B]: the mean of two draws of the integrand, and the RLOO surrogate built on them, [B] each.

        Both draws share one network call on a doubled batch.
        """
        batch = x.shape[0]
        z = torch.cat([self.forward_sample(x, t, generator, shard), self.forward_sample(x, t, generator, shard)])
        xx, tt = torch.cat([x, x]), torch.cat([t, t])
        ll = None if labels is None else torch.cat([labels, labels])
        integrand = self._integrand(xx, z, tt, ll)
        (l1, l2), (q1, q2) = integrand.split(batch), self.log_q(xx, z, tt).split(batch)
        mean = 0.5 * (l1 + l2)
        return mean, mean + 0.5 * (l1 - l2).detach() * (q1 - q2)

    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The RLOO surrogate in nats per token (to backpropagate) and detached metrics: the NELBO (``loss``,
        ``nelbo``, ``bits_per_token``), the surrogate, and the exponents' min, mean and max."""
        self._check_input(x)
        t = self.times(x.shape[0], x.device, generator, shard)
        labels = self.training_labels(labels, generator, shard)
        mean, surrogate = self.two_draws(x, t, labels, generator, shard)
        recon = self.reconstruction_loss(x)
        nelbo = (1.0 - self.t1) * mean + recon
        surrogate = (1.0 - self.t1) * surrogate + recon
        num_tokens = x[0].numel()
        w = self.schedule.exponents.detach()
        metrics = {
            "loss": nelbo.detach().mean() / num_tokens,
            "nelbo": nelbo.detach().mean(),
            "bits_per_token": bits_per_token(nelbo.detach().mean(), num_tokens),
            "surrogate": surrogate.detach().mean() / num_tokens,
            "w_min": w.min(),
            "w_mean": w.mean(),
            "w_max": w.max(),
        }
        return surrogate.mean() / num_tokens, metrics
