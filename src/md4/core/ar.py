"""The autoregressive baseline (``model.kind = "ar"``): the md4 transformer made causal, trained on the exact
negative log-likelihood of the chain rule, ``-log p(x) = sum_n -log p(x_n | x_<n)``, in nats per sequence like
MD4's bounds (Shi et al. 2024 compare against such a model; MDLM and SEDD report the same baseline).

The network sees the sequence shifted right by one position with a begin-of-sequence id in front: the mask id V
serves as BOS (the embedding already has V + 1 rows), so the logits at position n, which a causal network
computes from input positions 0..n (BOS, x_0, ..., x_{n-1}), give p(x_n | x_<n). Examples of any shape are one
sequence in row-major order: images are modelled in raster order (row, column, channel). Samples come left to
right from :func:`md4.sample` with the ``autoregressive`` sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from md4.core.kind_contract import EXACT, ModelKindContract, mean_per_token
from md4.core.masked import ConditioningOptions, Denoiser, log_probs_at
from md4.core.noise import BatchShard
from md4.core.tokens import check_tokens
from md4.nn.contract import capabilities_of

AUTOREGRESSIVE = "autoregressive"  # the one sampler of the kind: left to right, one network pass per token


@dataclass
class AROptions(ConditioningOptions):
    """The ``[model]`` options of ``kind = "ar"``: none beyond the shared ones, and no class conditioning."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conditional:
            raise ValueError(
                "model.kind=ar has no class conditioning; set model.conditional=false, or use kind md4 for that."
            )


class Autoregressive(nn.Module, ModelKindContract):
    """An autoregressive model around a causal denoiser without time input (declared in its capabilities).

    Args:
        denoiser: ``denoiser(ids [B, *shape], t [B]) -> logits [B, *shape, V]`` whose logits at a position depend on
            the ids there and before it only (``causal``) and not on t (``time_independent``).
        vocab_size: V, the number of real tokens; the id V is the begin-of-sequence token.
        data_shape: optional per-example shape, checked on input and the default sample shape.
    """

    kind = "ar"
    bounds = (EXACT,)
    samplers = (AUTOREGRESSIVE,)
    num_classes = None

    def __init__(self, denoiser: Denoiser, vocab_size: int, data_shape: tuple[int, ...] | None = None):
        super().__init__()
        capabilities = capabilities_of(denoiser)
        if not capabilities.causal:
            raise ValueError("model.kind=ar needs a causal network; set net.causal=true (the transformer has it).")
        if not capabilities.time_independent:
            raise ValueError('model.kind=ar needs a network without time input; set net.time_conditioning="none".')
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}.")
        self.denoiser = denoiser
        self.vocab_size = int(vocab_size)
        self.data_shape = tuple(data_shape) if data_shape is not None else None

    forward = ModelKindContract.training_objective

    @classmethod
    def build(cls, options: AROptions, denoiser: Denoiser, spec) -> Autoregressive:
        """The model of a run: ``spec`` from its data (``options`` has nothing to set)."""
        return cls(denoiser, spec.vocab_size, spec.data_shape)

    @classmethod
    def check_bound(cls, num_steps: int | None) -> None:
        """Refuse a discrete-time bound in one sentence: the likelihood is exact."""
        if num_steps is not None:
            raise ValueError(
                "An ar model has the exact likelihood, not a discrete-time bound; leave the number of steps out."
            )

    @property
    def bos_id(self) -> int:
        """The begin-of-sequence id in front of every input: V, the embedding's extra row."""
        return self.vocab_size

    @property
    def mask_id(self) -> int:
        """V: in a sampler's ``init``, as for masked diffusion, the positions still to draw."""
        return self.vocab_size

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input for x [B, *shape]: BOS, x_0, ..., x_{D-2} in row-major order, in x's shape."""
        flat = x.reshape(x.shape[0], -1)
        bos = torch.full_like(flat[:, :1], self.bos_id)
        return torch.cat([bos, flat[:, :-1]], dim=1).view(x.shape)

    def logits(self, x: torch.Tensor, t: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """The logits [B, *shape, V] of p(x_n | x_<n) at every position n of x, from one pass over the shifted
        input (entries of x at or after n do not matter at n, so positions still to draw may hold any id)."""
        if labels is not None:
            raise ValueError("Labels were given but an ar model is not class-conditional; leave them out.")
        time = torch.zeros(x.shape[0], device=x.device)
        logits = self.denoiser(self.shifted(x), time if t is None else t)
        expected = (*x.shape, self.vocab_size)
        if tuple(logits.shape) != expected:
            raise ValueError(f"The network returned logits of shape {tuple(logits.shape)}; expected {expected}.")
        return logits

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """The exact negative log-likelihood sum_n -log p(x_n | x_<n) per sequence [B], in nats (float32)."""
        check_tokens(x, self.vocab_size)
        if self.data_shape is not None and tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"x has per-example shape {tuple(x.shape[1:])} but this model expects {self.data_shape}; "
                "reshape the batch or build the model with the right data_shape."
            )
        logits = self.logits(x).reshape(-1, self.vocab_size)
        logp_x, _ = log_probs_at(logits, x.flatten())
        return -logp_x.view(x.shape[0], -1).sum(1)

    def nelbo(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> torch.Tensor:
        """The exact negative log-likelihood per sequence [B] in nats (:meth:`nll`): the contract's "bound", with no
        randomness, so ``generator`` and ``shard`` change nothing."""
        self.check_bound(num_steps)
        if labels is not None:
            raise ValueError("Labels were given but an ar model is not class-conditional; leave them out.")
        return self.nll(x)

    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        shard: BatchShard | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training objective: the exact NLL averaged over the batch in nats per token, and detached metrics
        (``loss``; ``nelbo``, here the exact NLL per sequence; ``bits_per_token``), as MD4's."""
        nll = self.nelbo(x, labels=labels)
        return mean_per_token(nll, x[0].numel())
