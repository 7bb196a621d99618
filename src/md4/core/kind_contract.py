"""The model-kind contract: what training, evaluation and sampling may ask of a model kind (MD4, GenMD4, and
later others), declared as fields and methods, never probed.

A kind is an ``nn.Module`` around a denoiser (:mod:`md4.nn.contract`) with ``vocab_size``, ``data_shape`` and
``num_classes``; it computes its training loss for this process's rows of a batch (``shard``: the noise layout of
:mod:`md4.core.noise`) and a Monte-Carlo draw of its bound. What differs between kinds is declared here: which
bounds it has, which samplers apply, and which of its parameters train at their own learning rate. A capability a
kind lacks is refused by :meth:`ModelKindContract.check_bound` / :meth:`ModelKindContract.check_sampler` in one
sentence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from md4.core.noise import BatchShard
from md4.core.units import bits_per_token

CONTINUOUS, DISCRETE = "continuous", "discrete"  # the continuous-time bound (Eq. 4); the discrete-time L_T (Eq. 3)
EXACT = "exact"  # no bound but the exact negative log-likelihood (an autoregressive model's): no randomness


class ModelKindContract(ABC):
    """Mixed into a kind's ``nn.Module`` (``class Kind(nn.Module, ModelKindContract)``, the order FSDP2's class
    swap needs): its declared capabilities and the calls every kind answers. The module's ``forward`` is bound to
    :meth:`training_objective` (``forward = ModelKindContract.training_objective``): the trainer calls it, and so
    does DistributedDataParallel when it wraps the model."""

    kind: ClassVar[str]  # the name in the registry (``[model] kind``)
    bounds: ClassVar[tuple[str, ...]] = (CONTINUOUS,)  # or (EXACT,): nelbo is the exact NLL, the same every draw
    # the samplers that apply, the first the kind's default; None: every one in md4.sampling.SAMPLERS
    samplers: ClassVar[tuple[str, ...] | None] = None

    vocab_size: int
    data_shape: tuple[int, ...] | None
    num_classes: int | None

    @abstractmethod
    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar to backpropagate (nats per token) and detached metrics (``loss``, ``nelbo``,
        ``bits_per_token`` at least) for this process's rows of a batch."""

    @abstractmethod
    def nelbo(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """One Monte-Carlo draw of a bound in nats per sequence [B]: continuous time for ``num_steps=None``, the
        discrete-time bound with T steps otherwise (only for kinds whose ``bounds`` hold ``discrete``); for a kind
        whose ``bounds`` are ``(EXACT,)``, the exact negative log-likelihood (``num_steps=None``)."""

    def training_objective(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective, :meth:`loss` (a kind's ``forward``)."""
        return self.loss(x, labels=labels, generator=generator, shard=shard)

    def own_learning_rates(self) -> list[tuple[list[nn.Parameter], float]]:
        """Parameters that train at their own peak learning rate (e.g. GenMD4's schedule with ``theta_lr``), as
        (parameters, learning rate) pairs; every other parameter trains at ``train.lr``."""
        return []

    @classmethod
    def check_bound(cls, num_steps: int | None) -> None:
        """Refuse, in one sentence, a bound this kind does not have."""
        wanted = CONTINUOUS if num_steps is None else DISCRETE
        if num_steps is None and EXACT in cls.bounds:
            return
        if wanted not in cls.bounds:
            raise ValueError(
                f"A {cls.kind} model has only the {' and '.join(cls.bounds)} bound, not the {wanted}-time one; "
                + ("leave the number of steps out." if num_steps is not None else "give a number of steps.")
            )

    @classmethod
    def check_sampler(cls, name: str) -> None:
        """Refuse, in one sentence, a sampler that does not apply to this kind."""
        if cls.samplers is not None and name not in cls.samplers:
            raise ValueError(
                f"The {name} sampler does not apply to {cls.kind} models; use one of {', '.join(cls.samplers)}."
            )


def mean_per_token(nelbo: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A per-sequence loss [B] in nats (a NELBO, or an exact NLL) as a kind's training loss: its batch mean per
    token, and the detached metrics every kind logs (``loss``, ``nelbo`` per sequence, ``bits_per_token``)."""
    loss = nelbo.mean() / num_tokens
    metrics = {
        "loss": loss.detach(),
        "nelbo": nelbo.detach().mean(),
        "bits_per_token": bits_per_token(nelbo.detach().mean(), num_tokens),
    }
    return loss, metrics
