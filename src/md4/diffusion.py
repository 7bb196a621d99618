"""MD4: masked diffusion with the continuous- and discrete-time NELBO (Shi et al. 2024).

The denoiser is any callable ``denoiser(z_t, t[, labels=...]) -> logits`` with
``z_t`` a LongTensor [B, *shape] of ids in 0..V (V = mask id), ``t`` a float
tensor [B] and logits [B, *shape, V] over the V real tokens. Everything inside
is in nats per sequence; :func:`bits_per_token` and :func:`perplexity` convert
at the edges.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .schedules import DEFAULT_EPS, MaskingSchedule, get_schedule

Denoiser = Callable[..., torch.Tensor]


def bits_per_token(nelbo: torch.Tensor | float, num_tokens: int) -> torch.Tensor | float:
    """NELBO in nats per sequence -> bits per token/char/dimension (method file Sec. 5)."""
    return nelbo / (num_tokens * math.log(2.0))


def perplexity(nelbo: torch.Tensor | float, num_tokens: int) -> torch.Tensor | float:
    """NELBO in nats per sequence -> perplexity bound exp(NELBO / D)."""
    if isinstance(nelbo, torch.Tensor):
        return torch.exp(nelbo / num_tokens)
    return math.exp(nelbo / num_tokens)


def antithetic_times(batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Low-discrepancy times t_i = (u + i / B) mod 1, u ~ U(0, 1) (paper App. E)."""
    u = torch.rand((), device=device, generator=generator)
    return torch.remainder(u + torch.arange(batch_size, device=device) / batch_size, 1.0)


def check_tokens(x: torch.Tensor, vocab_size: int, allow_mask: bool = False, name: str = "x") -> None:
    """Raise ValueError unless x is an integer tensor [B, *shape] of ids in range."""
    if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be an integer tensor of token ids, got {kind}; convert it with .long().")
    if x.dim() < 2:
        raise ValueError(
            f"{name} must have shape [batch, *data_shape], got shape {tuple(x.shape)}; add a batch dimension."
        )
    top = vocab_size if allow_mask else vocab_size - 1
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > top):
        raise ValueError(
            f"{name} holds ids in [{int(x.min())}, {int(x.max())}] but they must lie in [0, {top}] "
            f"for vocab_size={vocab_size}{' (mask id included)' if allow_mask else ''}; check the tokenizer."
        )


class MD4(nn.Module):
    """Masked diffusion model of paper Sec. 2-4 around any denoiser.

    Args:
        denoiser: callable following the contract in the module docstring.
        vocab_size: V, the number of real tokens; the mask id is V.
        schedule: a :class:`MaskingSchedule` or its name (``linear``, ``cosine``, ``polyK``, ``geometric``).
        eps: the schedule's clamp (release: 1e-4); must be > 0 so every weight is finite.
        data_shape: optional per-example shape (e.g. ``(256,)`` or ``(32, 32, 3)``), checked on input.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        vocab_size: int,
        schedule: str | MaskingSchedule = "linear",
        eps: float = DEFAULT_EPS,
        data_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}.")
        self.denoiser = denoiser
        self.vocab_size = int(vocab_size)
        self.schedule = get_schedule(schedule, eps=eps)
        if self.schedule.eps <= 0:
            raise ValueError("The schedule's eps must be > 0 so the loss weight stays finite at t = 0; use e.g. 1e-4.")
        self.data_shape = tuple(data_shape) if data_shape is not None else None

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def time_independent(self) -> bool:
        """True when the denoiser ignores t (samplers may then cache its output)."""
        return bool(getattr(self.denoiser, "time_independent", False))

    # ----------------------------------------------------------------- checks
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

    # -------------------------------------------------------------- forward q
    def _expand(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))

    def forward_sample(
        self, x: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw z_t ~ q(z_t | x): keep each token with probability alpha(t), else mask (method Sec. 2)."""
        alpha = self._expand(self.schedule.alpha(t.double()).float(), x)
        keep = torch.rand(x.shape, device=x.device, generator=generator) < alpha
        return torch.where(keep, x, torch.full_like(x, self.mask_id))

    def log_probs(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log mu_theta(z_t, t) in float32, shape [B, *shape, V]."""
        logits = self.denoiser(z, t) if labels is None else self.denoiser(z, t, labels=labels)
        expected = (*z.shape, self.vocab_size)
        if tuple(logits.shape) != expected:
            raise ValueError(f"The denoiser returned logits of shape {tuple(logits.shape)}; expected {expected}.")
        return F.log_softmax(logits.float(), dim=-1)

    def _masked_log_likelihood(self, x, z, t, labels):
        """sum over masked n of log mu(z_t, t)[n, x_n], per sequence [B]."""
        logp = self.log_probs(z, t, labels).gather(-1, x.unsqueeze(-1)).squeeze(-1)
        masked = z == self.mask_id
        return torch.where(masked, logp, torch.zeros_like(logp)).flatten(1).sum(1)

    # ----------------------------------------------------------------- losses
    def continuous_loss(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One-sample estimate of the diffusion term of L_inf (paper Eq. 4), nats per sequence [B].

        w(t) * sum_{masked n} log mu(z_t, t)[n, x_n] with w = alpha'/(1 - alpha); t is antithetic if not given.
        """
        self._check_input(x)
        if t is None:
            t = antithetic_times(x.shape[0], x.device, generator)
        self._check_times(t, x.shape[0])
        z = self.forward_sample(x, t, generator)
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
        """-E log p(x | z_0): a token masked at t = 0 (probability 1 - alpha(0)) costs log V; [B]."""
        num_tokens = x[0].numel()
        alpha0 = float(self.schedule.alpha(torch.tensor(0.0, dtype=torch.float64)))
        value = num_tokens * (1.0 - alpha0) * math.log(self.vocab_size)
        return torch.full((x.shape[0],), value, device=x.device)

    def nelbo(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One Monte-Carlo draw of the NELBO in nats per sequence [B].

        ``num_steps=None`` gives the continuous-time bound L_inf (Eq. 4); an integer T the discrete-time L_T (Eq. 3).
        Both add the reconstruction term; the prior term at t = 1 is negligible (alpha(1) = eps) and omitted,
        as in the release.
        """
        if num_steps is None:
            diffusion = self.continuous_loss(x, labels=labels, generator=generator)
        else:
            diffusion = self.discrete_loss(x, num_steps, labels=labels, generator=generator)
        return diffusion + self.reconstruction_loss(x)

    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training objective: the continuous NELBO averaged over the batch, in nats per token.

        Returns the scalar to backpropagate and detached metrics (nats per sequence and bits per token).
        """
        nelbo = self.nelbo(x, labels=labels, generator=generator)
        num_tokens = x[0].numel()
        loss = nelbo.mean() / num_tokens
        metrics = {
            "loss": loss.detach(),
            "nelbo": nelbo.detach().mean(),
            "bits_per_token": bits_per_token(nelbo.detach().mean(), num_tokens),
        }
        return loss, metrics

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        return self.loss(x, labels=labels)

    def sample(self, num_samples: int, **kwargs):
        """Draw samples with :func:`md4.sampling.sample`; ``kwargs`` are that function's options."""
        from .sampling import sample

        shape = kwargs.pop("shape", None) or self.data_shape
        if shape is None:
            raise ValueError("Pass shape=(...) or build MD4 with data_shape so the sampler knows the sample size.")
        kwargs.setdefault("time_independent", self.time_independent)
        return sample(self.denoiser, self.schedule, (num_samples, *shape), self.vocab_size, **kwargs)
