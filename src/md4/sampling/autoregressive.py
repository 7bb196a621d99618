"""Left-to-right sampling from an autoregressive model (:class:`md4.core.ar.Autoregressive`): draw
x_n ~ p(x_n | x_<n) for n = P, ..., D - 1 after a given prefix of P tokens, with temperature and top-p.

With a network that takes a KV cache (declared ``cache``, :mod:`md4.nn.kv_cache`) the prefix is one pass and every
further token one pass over that token alone; otherwise each token costs a pass over the whole sequence (the
positions still to draw do not matter to a causal network). Both draw the same tokens. The draws are those of the
other samplers: float64 inverse-CDF categoricals by default (:func:`md4.sampling.draws.categorical`), the nucleus
of :func:`md4.sampling.draws.nucleus`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from md4.core.ar import Autoregressive
from md4.nn.contract import capabilities_of
from md4.nn.kv_cache import KVCache
from md4.sampling.draws import categorical, nucleus
from md4.sampling.options import SamplingOptions


def next_token(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of ``logits`` [B, V] from softmax(logits / temperature) restricted to its top-p nucleus;
    temperature 0 gives the argmax."""
    if options.temperature == 0.0:
        return logits.float().argmax(-1)
    probs = F.softmax(logits.float() / options.temperature, dim=-1)
    if options.top_p < 1.0:
        probs = nucleus(probs, options.top_p)
    return categorical(probs, generator, options.categorical)


def prefix_length(z: torch.Tensor, mask_id: int) -> int:
    """P, when every row of z [B, D] holds P given tokens followed only by mask ids; else a one-sentence error."""
    given = z != mask_id
    length = int(given[0].sum())
    if not (bool(given[:, :length].all()) and not bool(given[:, length:].any())):
        raise ValueError(
            "The autoregressive sampler continues a prefix, so init must hold the same number of given tokens in "
            "every row followed only by mask ids (no holes to infill); use a masked-diffusion run to infill."
        )
    return length


@torch.no_grad()
def left_to_right(
    model: Autoregressive,
    z: torch.Tensor,
    options: SamplingOptions,
    generator: torch.Generator | None,
    observe: Callable[[torch.Tensor], None],
    use_cache: bool = True,
) -> tuple[torch.Tensor, int]:
    """The tokens of z [B, *shape] with its masked suffix (row-major) drawn left to right, and the network passes
    made (one per drawn token); ``use_cache=False`` makes every pass a full one (the reference for the cache)."""
    batch, shape = z.shape[0], z.shape
    flat = z.reshape(batch, -1).clone()
    start, length = prefix_length(flat, model.vocab_size), flat.shape[1]
    observe(z)
    cached = use_cache and capabilities_of(model.denoiser).cache
    time = torch.zeros(batch, device=z.device)
    if cached and start < length:
        cache = KVCache(length)
        logits = model.denoiser(model.shifted(flat)[:, : start + 1], time, cache=cache)[:, -1]
    for n in range(start, length):
        if not cached:
            logits = model.logits(flat.view(shape)).reshape(batch, length, -1)[:, n]
        flat[:, n] = next_token(logits, options, generator)
        observe(flat.view(shape))
        if cached and n + 1 < length:
            logits = model.denoiser(flat[:, n : n + 1], time, cache=cache)[:, -1]
    return flat.view(shape), length - start
