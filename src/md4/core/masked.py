"""What every masked-diffusion kind shares (paper Sec. 2): the denoiser call, the mask id, the masked positions'
log-probabilities, and class conditioning with label dropout for classifier-free guidance.

The denoiser is any callable ``denoiser(z_t, t[, labels=...]) -> logits`` with ``z_t`` a LongTensor [B, *shape] of
ids in 0..V (V = mask id), ``t`` a float tensor [B] and logits [B, *shape, V] over the V real tokens
(:mod:`md4.nn.contract`), which declares what else it can do in its ``capabilities``. Everything inside is in nats
per sequence.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from md4.core.kind_contract import ModelKindContract
from md4.core.noise import BatchShard, uniform_rows
from md4.core.schedule_contract import Schedule
from md4.core.tokens import check_tokens
from md4.nn.contract import capabilities_of

Denoiser = Callable[..., torch.Tensor]
# float32 elements of one chunk of the loss's log-softmax (256 MB): rows = this // V, so every vocabulary up to
# ~65k tokens normalises 1000+ rows at once and a small one (text8, images) all of a batch's rows in one chunk.
LOSS_CHUNK_ELEMENTS = 1 << 26


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
    loss_chunk_elements = LOSS_CHUNK_ELEMENTS  # see log_probs_at

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

    def masked_index(self, z: torch.Tensor) -> torch.Tensor:
        """The flat row-major positions [M] of z's masked tokens: one ``nonzero`` (one host sync on a GPU) that
        every selection of a step reuses through ``index_select``."""
        return (z == self.mask_id).flatten().nonzero().squeeze(1)

    def logits_at(
        self, z: torch.Tensor, t: torch.Tensor, index: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The denoiser's logits [M, V] at the flat row-major positions ``index`` [M] of z (in increasing order:
        :meth:`masked_index`, or the positions a sampling step unmasks), in its own dtype.

        A denoiser that declares ``select_index`` (or ``select``, given the boolean mask of those positions)
        computes its output layer at those positions alone (for a large vocabulary most of a step's logits work);
        any other has its full logits indexed.
        """
        capabilities = capabilities_of(self.denoiser)
        if "torch._dynamo" in sys.modules:  # torch.compile was used: a compiled denoiser takes any M unrecompiled
            sys.modules["torch._dynamo"].maybe_mark_dynamic(index, 0)
        if capabilities.select_index:
            logits = self.denoiser(z, t, labels=labels, select=index)
        elif capabilities.select:
            chosen = torch.zeros(z.numel(), dtype=torch.bool, device=z.device).index_fill_(0, index, True)
            logits = self.denoiser(z, t, labels=labels, select=chosen.view(z.shape))
        else:
            logits = self.logits(z, t, labels).reshape(-1, self.vocab_size).index_select(0, index)
        if logits.dim() != 2 or logits.shape[-1] != self.vocab_size:
            raise ValueError(
                f"The denoiser returned selected logits of shape {tuple(logits.shape)}; "
                f"expected [M, {self.vocab_size}]."
            )
        return logits

    def masked_log_probs(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(index [M], log mu[n, x_n] [M], sum_v mu[n, v] weights_v [M] or None)`` at the M masked positions of
        z_t in row-major order (:meth:`masked_index`), in float32: all the NELBO needs (unmasked positions carry no
        loss, Eq. 4). The log-softmax runs in row chunks (:func:`log_probs_at`), so its memory is bounded."""
        index = self.masked_index(z)
        logits = self.logits_at(z, t, index, labels)
        targets = x.flatten().index_select(0, index)
        return (index, *log_probs_at(logits, targets, weights, self.loss_chunk_elements))

    @staticmethod
    def sum_masked(index: torch.Tensor, values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Per-sequence sums [B] of ``values`` [M] given at the flat positions ``index`` of a batch of ``shape``."""
        full = torch.zeros(shape.numel(), dtype=values.dtype, device=values.device)
        return full.index_copy(0, index, values).view(shape[0], -1).sum(1)


def _terms(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None):
    """log mu[n, x_n] and, with ``weights``, sum_v mu[n, v] weights_v, for rows of logits, in float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logp_x = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp_x, None if weights is None else (logp.exp() * weights).sum(-1)


def log_probs_at(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    chunk_elements: int = LOSS_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log softmax(logits)[n, targets_n], sum_v softmax(logits)[n, v] weights_v or None)`` [M] each, in float32,
    computed in chunks of ``chunk_elements // V`` rows, so the float32 [rows, V] temporaries stay within
    ``chunk_elements`` whatever M. With gradients on, each chunk is recomputed in the backward pass (nothing of
    size [M, V] in float32 is kept); one chunk gives exactly the unchunked values, several the same values row by
    row."""
    rows = max(1, chunk_elements // logits.shape[-1])
    if logits.shape[0] <= rows:
        return _terms(logits, targets, weights)
    recompute = torch.is_grad_enabled() and (logits.requires_grad or (weights is not None and weights.requires_grad))
    parts = []
    for chunk, chunk_targets in zip(logits.split(rows), targets.split(rows), strict=True):
        if recompute:
            parts.append(
                checkpoint(_terms, chunk, chunk_targets, weights, use_reentrant=False, preserve_rng_state=False)
            )
        else:
            parts.append(_terms(chunk, chunk_targets, weights))
    logp_x = torch.cat([p[0] for p in parts])
    return logp_x, None if weights is None else torch.cat([p[1] for p in parts])
