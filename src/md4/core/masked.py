"""What every masked-diffusion kind shares (paper Sec. 2): the denoiser call, the mask id, the masked positions'
log-probabilities, and class conditioning with label dropout for classifier-free guidance.

The denoiser is any callable ``denoiser(z_t, t[, labels=...]) -> logits`` with ``z_t`` a LongTensor [B, *shape] of
ids in 0..V (V = mask id), ``t`` a float tensor [B] and logits [B, *shape, V] over the V real tokens
(:mod:`md4.nn.contract`), which declares what else it can do in its ``capabilities``. Everything inside is in nats
per sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from md4.core.kind_contract import ModelKindContract
from md4.core.noise import BatchShard, uniform_rows
from md4.core.schedule_contract import Schedule
from md4.core.tokens import check_tokens
from md4.nn.contract import capabilities_of

Denoiser = Callable[..., torch.Tensor]


@dataclass
class ConditioningOptions:
    """The ``[model]`` options every kind shares: class conditioning with classifier-free guidance."""

    conditional: bool = False  # condition on the data's class labels
    label_dropout: float = 0.1  # training: a label becomes the "no label" id with this probability

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}.")


class MaskedDiffusion(nn.Module, ModelKindContract):
    """What every masked-diffusion kind shares: a denoiser, V real tokens and the mask id V, a schedule module,
    the data shape, the shape-checked call of the denoiser that the losses and the samplers use, and class
    conditioning: ``num_classes`` classes (None: unconditional) plus the "no label" id ``num_classes``, which
    training puts in place of a label with probability ``label_dropout`` so that sampling can guide
    (classifier-free guidance). A kind declares its name, bounds and samplers (:class:`ModelKindContract`)."""

    def __init__(
        self,
        denoiser: Denoiser,
        vocab_size: int,
        schedule: Schedule,
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

    forward = ModelKindContract.training_objective

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

        A denoiser that declares ``select`` computes its output layer at those positions alone (for a large
        vocabulary most of a step's logits work); any other has its full logits indexed. Either way only the
        masked share is upcast to float32 and normalised.
        """
        masked = z == self.mask_id
        if capabilities_of(self.denoiser).select:
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
