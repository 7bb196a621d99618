"""A key-value cache for incremental decoding with a causal transformer: each layer keeps the keys and values of
the positions decoded so far, so continuing a sequence by one token is one pass over that token alone (its
queries attend to the cached keys), not a pass over the whole prefix again.

``logits = net(ids [B, n], t, cache=cache)`` runs the n new tokens at positions ``cache.length`` ..
``cache.length + n - 1`` and appends their keys and values; a network declares that it takes a cache in its
capabilities (:class:`md4.nn.contract.DenoiserCapabilities`).
"""

from __future__ import annotations

import torch


class LayerCache:
    """One layer's keys and values ``[B, H, max_length, d]``, allocated at the first :meth:`extend`."""

    def __init__(self, owner: KVCache):
        self.owner = owner
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v [B, H, n, d]`` at the cache's next n positions; the keys and values of every position so
        far, ``[B, H, length + n, d]`` (views, no copy of the past)."""
        start = self.owner.length
        end = start + k.shape[-2]
        if end > self.owner.max_length:
            raise ValueError(
                f"The cache holds {self.owner.max_length} positions but {end} were asked for; "
                "make the cache as long as the sequence."
            )
        if self.keys is None:
            shape = (*k.shape[:2], self.owner.max_length, k.shape[-1])
            self.keys = k.new_empty(shape)
            self.values = v.new_empty(shape)
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """The keys and values of each attention layer (:meth:`layer`, made at first use) for up to ``max_length``
    positions; ``length`` of them are filled. The network moves ``length`` on (:meth:`advance`) after its last
    layer."""

    def __init__(self, max_length: int):
        if int(max_length) != max_length or max_length < 1:
            raise ValueError(f"A cache needs a positive number of positions, got {max_length}.")
        self.max_length = int(max_length)
        self.length = 0
        self._layers: list[LayerCache] = []

    def layer(self, index: int) -> LayerCache:
        """The cache of attention layer ``index`` (0 the first)."""
        while len(self._layers) <= index:
            self._layers.append(LayerCache(self))
        return self._layers[index]

    def advance(self, n: int) -> None:
        """Count n more positions as filled (every layer has stored them)."""
        self.length += n
