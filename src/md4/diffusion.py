"""MD4: masked diffusion with the continuous- and discrete-time NELBO (Shi et al. 2024).

The denoiser is any callable ``denoiser(z_t, t[, labels=...]) -> logits`` with
``z_t`` a LongTensor [B, *shape] of ids in 0..V (V = mask id), ``t`` a float
tensor [B] and logits [B, *shape, V] over the V real tokens. Everything inside
is in nats per sequence; :func:`bits_per_token` and :func:`perplexity` convert
at the edges. Samples come from :func:`md4.sample`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .schedules import DEFAULT_EPS, MaskingSchedule, get_schedule
from .tokens import check_tokens

Denoiser = Callable[..., torch.Tensor]


def bits_per_token(nelbo: torch.Tensor | float, num_tokens: int) -> torch.Tensor | float:
    """NELBO in nats per sequence -> bits per token/char/dimension."""
    return nelbo / (num_tokens * math.log(2.0))


def perplexity(nelbo: torch.Tensor | float, num_tokens: int) -> torch.Tensor | float:
    """NELBO in nats per sequence -> perplexity bound exp(NELBO / D)."""
    if isinstance(nelbo, torch.Tensor):
        return torch.exp(nelbo / num_tokens)
    return math.exp(nelbo / num_tokens)


@dataclass(frozen=True)
class BatchShard:
    """This process's rows ``[start, start + size)`` of a batch of ``total`` rows split over processes.

    The noise of a training batch is drawn for all ``total`` rows from a generator every process seeds alike,
    and each process keeps its rows, so N processes see exactly the noise one process would (the randomness
    layout of distributed training; :mod:`md4.distributed`).
    """

    start: int
    total: int


def uniform_rows(shape, device=None, generator: torch.Generator | None = None, shard: BatchShard | None = None):
    """U(0, 1) draws of ``shape`` [B, ...]: a shard's rows of the whole batch's draws when ``shard`` is given."""
    if shard is None:
        return torch.rand(shape, device=device, generator=generator)
    whole = torch.rand((shard.total, *shape[1:]), device=device, generator=generator)
    return whole[shard.start : shard.start + shape[0]]


def antithetic_times(
    batch_size: int, device=None, generator: torch.Generator | None = None, shard: BatchShard | None = None
) -> torch.Tensor:
    """Low-discrepancy times t_i = (u + i / B) mod 1, u ~ U(0, 1) (paper App. E), laid over a whole sharded
    batch of B = ``shard.total`` rows when ``shard`` is given (row i of this process is row start + i)."""
    u = torch.rand((), device=device, generator=generator)
    start, total = (0, batch_size) if shard is None else (shard.start, shard.total)
    return torch.remainder(u + torch.arange(start, start + batch_size, device=device) / total, 1.0)


@dataclass
class ConditioningOptions:
    """The ``[model]`` options every kind shares: class conditioning with classifier-free guidance."""

    conditional: bool = False  # condition on the data's class labels
    label_dropout: float = 0.1  # training: a label becomes the "no label" id with this probability

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}.")


@dataclass
class MD4Options(ConditioningOptions):
    """The ``[model]`` options of ``kind = "md4"``: the masking schedule and its clamp eps, and conditioning."""

    schedule: str = "linear"
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        super().__post_init__()
        get_schedule(self.schedule, self.eps)  # an unknown name or a bad eps fails here, before any data is read


class MaskedDiffusion(nn.Module):
    """What every masked-diffusion kind shares: a denoiser, V real tokens and the mask id V, a schedule module,
    the data shape, the shape-checked call of the denoiser that the losses and the samplers use, and class
    conditioning: ``num_classes`` classes (None: unconditional) plus the "no label" id ``num_classes``, which
    training puts in place of a label with probability ``label_dropout`` so that sampling can guide
    (classifier-free guidance)."""

    discrete_bound = False  # whether nelbo(x, num_steps=T) gives a discrete-time bound

    def __init__(
        self,
        denoiser: Denoiser,
        vocab_size: int,
        schedule: nn.Module,
        data_shape=None,
        num_classes: int | None = None,
        label_dropout: float = 0.0,
    ):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}.")
        self.denoiser = denoiser
        self.vocab_size = int(vocab_size)
        self.schedule = schedule
        self.data_shape = tuple(data_shape) if data_shape is not None else None
        self.num_classes = num_classes
        self.label_dropout = float(label_dropout)

    def forward(self, x: torch.Tensor, labels=None, generator=None, shard: BatchShard | None = None):
        """The training objective, :meth:`loss`: what DistributedDataParallel calls when it wraps the model."""
        return self.loss(x, labels=labels, generator=generator, shard=shard)

    def training_labels(
        self, labels: torch.Tensor | None, generator=None, shard: BatchShard | None = None
    ) -> torch.Tensor | None:
        """In training mode, each label becomes the "no label" id with probability ``label_dropout``."""
        if labels is None or not self.training or self.label_dropout == 0.0 or self.num_classes is None:
            return labels
        drop = uniform_rows(labels.shape, labels.device, generator, shard) < self.label_dropout
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def time_independent(self) -> bool:
        """True when the denoiser ignores t (samplers may then cache its output)."""
        return bool(getattr(self.denoiser, "time_independent", False))

    def _check_input(self, x: torch.Tensor) -> None:
        check_tokens(x, self.vocab_size)
        if self.data_shape is not None and tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"x has per-example shape {tuple(x.shape[1:])} but this model expects {self.data_shape}; "
                "reshape the batch or build the model with the right data_shape."
            )

    @staticmethod
    def _check_times(t: torch.Tensor, batch_size: int) -> None:
        if t.shape != (batch_size,):
            raise ValueError(f"t must have shape [{batch_size}] (one time per sequence), got {tuple(t.shape)}.")
        if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
            raise ValueError(f"t must lie in [0, 1], got values in [{float(t.min())}, {float(t.max())}].")

    @staticmethod
    def _expand(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A per-sequence value [B] shaped to broadcast against x [B, *shape]."""
        return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))

    def logits(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's logits [B, *shape, V] at (z_t, t), shape-checked; the samplers call this too."""
        logits = self.denoiser(z, t) if labels is None else self.denoiser(z, t, labels=labels)
        expected = (*z.shape, self.vocab_size)
        if tuple(logits.shape) != expected:
            raise ValueError(f"The denoiser returned logits of shape {tuple(logits.shape)}; expected {expected}.")
        return logits

    def masked_log_probs(
        self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked [B, *shape], log mu [M, V])``: log mu_theta(z_t, t) in float32 at the M masked positions
        only, in row-major order, which is all the NELBO needs (unmasked positions carry no loss, Eq. 4).

        A denoiser with ``accepts_select`` computes its output layer at those positions alone (for a large
        vocabulary most of a step's logits work); any other has its full logits indexed. Either way only the
        masked share is upcast to float32 and normalised.
        """
        masked = z == self.mask_id
        if getattr(self.denoiser, "accepts_select", False):
            logits = self.denoiser(z, t, labels=labels, select=masked)
        else:
            logits = self.logits(z, t, labels)[masked]
        if logits.dim() != 2 or logits.shape[-1] != self.vocab_size:
            raise ValueError(
                f"The denoiser returned selected logits of shape {tuple(logits.shape)}; "
                f"expected [M, {self.vocab_size}]."
            )
        return masked, F.log_softmax(logits.float(), dim=-1)

    @staticmethod
    def sum_masked(masked: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Per-sequence sums [B] of ``values`` [M] given at the masked positions of ``masked`` [B, *shape]."""
        full = torch.zeros(masked.shape, dtype=values.dtype, device=values.device)
        return full.masked_scatter(masked, values).flatten(1).sum(1)


class MD4(MaskedDiffusion):
    """Masked diffusion model of paper Sec. 2-4 around any denoiser.

    Args:
        denoiser: callable following the contract in the module docstring.
        vocab_size: V, the number of real tokens; the mask id is V.
        schedule: a :class:`MaskingSchedule` module (owned by the model from here on) or the name of one
            (``linear``, ``cosine``, ``polyK``, ``geometric``), built with ``eps``.
        eps: the clamp of a schedule given by name (default 1e-4, the release's); a schedule module has its own.
        data_shape: optional per-example shape (e.g. ``(256,)`` or ``(32, 32, 3)``), checked on input and used
            by :func:`md4.sample` as the default sample shape.
        num_classes, label_dropout: class conditioning (see :class:`MaskedDiffusion`).
    """

    discrete_bound = True

    def __init__(
        self,
        denoiser: Denoiser,
        vocab_size: int,
        schedule: str | MaskingSchedule = "linear",
        eps: float | None = None,
        data_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        label_dropout: float = 0.0,
    ):
        if isinstance(schedule, MaskingSchedule):
            if eps is not None:
                raise ValueError("eps belongs to the schedule; pass it when building the schedule, not to MD4.")
        else:
            schedule = get_schedule(schedule, DEFAULT_EPS if eps is None else eps)
        if schedule.per_token:
            raise ValueError(f"MD4 needs a schedule shared by every token, but {schedule.name} is per token.")
        super().__init__(denoiser, vocab_size, schedule, data_shape, num_classes, label_dropout)

    @classmethod
    def build(cls, options: MD4Options, denoiser: Denoiser, spec) -> MD4:
        """The model of a run: ``options`` from the config's ``[model]`` table, ``spec`` from its data (its
        ``num_classes`` is None unless the model is conditional)."""
        return cls(
            denoiser,
            spec.vocab_size,
            options.schedule,
            options.eps,
            spec.data_shape,
            spec.num_classes,
            options.label_dropout,
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
        masked, logp = self.masked_log_probs(z, t, labels)
        return self.sum_masked(masked, logp.gather(-1, x[masked].unsqueeze(-1)).squeeze(-1))

    # ----------------------------------------------------------------- losses
    def continuous_loss(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """One-sample estimate of the diffusion term of L_inf (paper Eq. 4), nats per sequence [B].

        w(t) * sum_{masked n} log mu(z_t, t)[n, x_n] with w = alpha'/(1 - alpha); t is antithetic if not given.
        """
        self._check_input(x)
        if t is None:
            t = antithetic_times(x.shape[0], x.device, generator, shard)
        else:
            self._check_times(t, x.shape[0])
        z = self.forward_sample(x, t, generator, shard)
        weight = self.schedule.weight(t.double()).float()
        return weight * self._masked_log_likelihood(x, z, t.float(), labels)

    def discrete_loss(
        self,
        x: torch.Tensor,
        num_steps: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One-sample estimate of the diffusion term of L_T (paper Eq. 3), nats per sequence [B].

        A step i in 1..T per sequence (stratified over the batch), weighted by
        T (alpha_s - alpha_t) / (1 - alpha_t) = -T expm1(g_t - g_s) alpha_s with g = log(alpha / (1 - alpha)).
        """
        self._check_input(x)
        if int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps}.")
        u = antithetic_times(x.shape[0], x.device, generator)
        step = torch.clamp(torch.floor(u * num_steps), max=num_steps - 1) + 1  # i in 1..T
        t, s = (step / num_steps).double(), ((step - 1) / num_steps).double()
        weight = -torch.expm1(self.schedule.log_snr(t) - self.schedule.log_snr(s)) * self.schedule.alpha(s)
        z = self.forward_sample(x, t.float(), generator)
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
        if num_steps is None:
            diffusion = self.continuous_loss(x, labels=labels, generator=generator, shard=shard)
        else:
            if shard is not None:
                raise ValueError("The discrete-time bound is for evaluation; draw it without a shard.")
            diffusion = self.discrete_loss(x, num_steps, labels=labels, generator=generator)
        return diffusion + self.reconstruction_loss(x)

    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training objective: the continuous NELBO averaged over the batch, in nats per token.

        Returns the scalar to backpropagate and detached metrics (nats per sequence and bits per token).
        ``shard``: this process's rows of a batch split over processes (:class:`BatchShard`).
        """
        labels = self.training_labels(labels, generator, shard)
        nelbo = self.nelbo(x, labels=labels, generator=generator, shard=shard)
        num_tokens = x[0].numel()
        loss = nelbo.mean() / num_tokens
        metrics = {
            "loss": loss.detach(),
            "nelbo": nelbo.detach().mean(),
            "bits_per_token": bits_per_token(nelbo.detach().mean(), num_tokens),
        }
        return loss, metrics
