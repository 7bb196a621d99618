"""The denoiser contract: what the objectives and the samplers may ask of a network (paper Sec. 2, "mean
parameterisation": the network gives mu_theta(z_t, t) as logits over the V real tokens).

A denoiser is any callable ``denoiser(z_t [B, *shape], t [B], labels=None) -> logits [B, *shape, V]`` (an
``nn.Module`` or a test's exact conditionals); ``z_t`` holds ids 0..V with V the mask id, ``labels`` (only for a
class-conditional model) class ids with ``num_classes`` meaning "no label". What it can do beyond that is
declared in its ``capabilities`` (:class:`DenoiserCapabilities`), never probed: a callable without the field
has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class DenoiserCapabilities:
    """What a denoiser declares beyond the plain call."""

    select: bool = False  # ``denoiser(z, t, labels=, select=mask)`` gives the logits [M, V] of the selected positions
    # ``select=index`` also takes a LongTensor [M] of positions in ``z.flatten()`` (row-major), which the loss
    # computes once per step: no boolean indexing, so no host sync and no graph break under torch.compile
    select_index: bool = False
    time_independent: bool = False  # the output ignores t, so samplers may reuse it while z is unchanged
    checkpointing: bool = False  # has a ``checkpointing`` switch: recompute each block's activations in backward
    causal: bool = False  # the logits at a position depend on z only there and before it (row-major order)
    # ``denoiser(ids [B, n], t, cache=cache)`` continues the sequence in ``cache`` (:class:`md4.nn.kv_cache.KVCache`)
    # by n tokens at its next positions: one pass per new token for left-to-right sampling
    cache: bool = False


NO_CAPABILITIES = DenoiserCapabilities()


@runtime_checkable
class Denoiser(Protocol):
    """A network that declares its capabilities (the transformer, the UNet, the UViT)."""

    capabilities: DenoiserCapabilities

    def __call__(
        self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor: ...  # pragma: no cover


def capabilities_of(denoiser) -> DenoiserCapabilities:
    """The capabilities ``denoiser`` declares; a plain callable declares none."""
    declared = getattr(denoiser, "capabilities", NO_CAPABILITIES)  # the contract's one look at an attribute
    if not isinstance(declared, DenoiserCapabilities):
        raise TypeError(f"{type(denoiser).__name__}.capabilities must be a DenoiserCapabilities, got {declared!r}.")
    return declared
