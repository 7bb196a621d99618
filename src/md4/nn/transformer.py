"""Bidirectional transformer denoiser, following the text network of the MD4 release; made causal (with a KV cache
for incremental decoding) it is also the network of the autoregressive baseline.

Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data", NeurIPS 2024 (arXiv 2406.04329),
and the authors' JAX release (github.com/google-deepmind/md4, ``md4/networks/transformer.py``): RoPE attention
without biases, gated MLP ``w2(act(w1 x) * w3 x)``, time conditioning by adaLN-Zero (Peebles & Xie 2023) on a
sinusoidal embedding of ``1000 * t``, a final adaLN and a zero-initialised logits layer, and an optional small
"outside" token embedding (text8). :meth:`TransformerConfig.release_text8` and
:meth:`TransformerConfig.release_openwebtext` build the release's networks layer for layer; the defaults are
md4's own variant (see docs/guide.md).

Contract: ``model(z_t [B, *shape], t [B], labels=None) -> logits [B, *shape, V]``; the mask id is ``V``, so
``V + 1`` ids are embedded and ``V`` logits are returned. A class-conditional network embeds ``num_classes + 1``
label ids: the last, ``num_classes``, means "no label" (for classifier-free guidance).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from md4.nn.attention import attention
from md4.nn.contract import DenoiserCapabilities
from md4.nn.inputs import check_time_and_labels
from md4.nn.kv_cache import KVCache, LayerCache
from md4.nn.transformer_config import MLP_ACTIVATIONS, TransformerConfig

INIT_STD = 0.02
# Standard deviation of N(0, 1) truncated to [-2, 2]; JAX's truncated_normal variance scaling divides by it.
TRUNCATED_NORMAL_STD = 0.87962566103423978


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 ``cos, sin [L, head_dim // 2]`` of rotary embeddings (RoPE, Su et al. 2021)."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of ``x [..., L, head_dim]`` by the angles of :func:`rope_angles`.

    ``<apply_rope(q)_m, apply_rope(k)_n>`` depends on positions only through ``m - n``. The release rotates
    interleaved channel pairs ``(2i, 2i + 1)`` instead of ``(i, i + head_dim / 2)``: a fixed permutation of
    the q and k channels, absorbed by the learned projections, so the two define the same function class.
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int, layout: str = "release") -> torch.Tensor:
    """Sinusoidal features ``[B, dim]`` of ``1000 * t`` in float32 (dim even, >= 4), ``i < dim / 2``:

    ``"release"``: ``sin`` then ``cos`` of ``1000 t * exp(-log(10000) i / (dim / 2 - 1))``, as the release;
    ``"md4"``: ``cos`` then ``sin`` of ``1000 t * exp(-log(10000) i / (dim / 2))``.
    The two differ only by a permutation and a slight stretch of the frequencies fed to a learned layer.
    """
    half = dim // 2
    scale = half - 1 if layout == "release" else half
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / scale)
    args = 1000.0 * t.to(torch.float32)[:, None] * freqs[None, :]
    first, second = (args.sin(), args.cos()) if layout == "release" else (args.cos(), args.sin())
    return torch.cat((first, second), dim=-1)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, normalising in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class ChannelDropout(nn.Module):
    """The release's Dropout1d on ``[B, L, C]``: one Bernoulli keep-mask per (example, channel), shared by
    every position, scaled by ``1 / (1 - p)``; the identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], 1, x.shape[-1], device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def _modulation(config: TransformerConfig, n: int) -> nn.Sequential:
    """adaLN modulation ``act(c) -> n * dim`` (zero-initialised by :meth:`Transformer.reset_parameters`)."""
    act = nn.SiLU() if config.modulation_act == "silu" else MLP_ACTIVATIONS[config.mlp_type]()
    return nn.Sequential(act, nn.Linear(config.conditioning_width, n * config.dim, bias=config.cond_bias))


class Attention(nn.Module):
    """Multi-head self-attention (bidirectional, or causal with ``config.causal``) with a fused qkv projection,
    RoPE and dropout on the attention probabilities in training mode; a causal one may extend a KV cache."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.causal = config.causal
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerCache | None = None
    ) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # the new positions' queries see every cached key and value
            k, v = cache.extend(k, v)
        y = attention(q, k, v, self.attn_dropout, self.training, self.causal)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class GatedMLP(nn.Module):
    """``w2(act(w1 x) * w3 x)``: GLU (sigmoid), SwiGLU (SiLU) or GEGLU (GELU); Shazeer 2020."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.act = MLP_ACTIVATIONS[config.mlp_type]()
        self.w1 = nn.Linear(config.dim, config.mlp_hidden, bias=False)
        self.w3 = nn.Linear(config.dim, config.mlp_hidden, bias=False)
        self.w2 = nn.Linear(config.mlp_hidden, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block; adaLN-Zero (Peebles & Xie 2023) when conditioned, as in MD4.

    Conditioned: ``x + gate * drop(f(LN(x) * (1 + scale) + shift))`` with affine-free LayerNorm and
    a zero-initialised modulation, so the block starts as the identity. Otherwise RMSNorm.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attn = Attention(config)
        self.mlp = GatedMLP(config)
        self.dropout = ChannelDropout(config.dropout) if config.channel_dropout else nn.Dropout(config.dropout)
        if config.conditioned:
            self.norm1 = nn.LayerNorm(config.dim, eps=config.norm_eps, elementwise_affine=False)
            self.norm2 = nn.LayerNorm(config.dim, eps=config.norm_eps, elementwise_affine=False)
            self.modulation = _modulation(config, 6)
        else:
            self.norm1 = RMSNorm(config.dim, config.norm_eps)
            self.norm2 = RMSNorm(config.dim, config.norm_eps)
            self.modulation = None

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        if self.modulation is None:
            x = x + self.dropout(self.attn(self.norm1(x), cos, sin, cache))
            return x + self.dropout(self.mlp(self.norm2(x)))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.dropout(self.attn(_modulate(self.norm1(x), shift1, scale1), cos, sin, cache))
        return x + gate2 * self.dropout(self.mlp(_modulate(self.norm2(x), shift2, scale2)))


def _lecun_normal_(weight: torch.Tensor, scale: float = 1.0) -> None:
    """JAX's ``variance_scaling(scale, "fan_in", "truncated_normal")``: a normal truncated at two of its
    standard deviations, widened so that the result has variance ``scale / fan_in``."""
    std = math.sqrt(scale / weight.shape[1]) / TRUNCATED_NORMAL_STD
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)


class Transformer(nn.Module):
    """MD4 bidirectional denoiser: ``(z_t [B, *shape], t [B]) -> logits [B, *shape, V]``.

    Any trailing shape (text ``[B, L]``, pixels ``[B, H, W, C]``) is flattened into one sequence; with
    ``axial_positions`` each position also gets the sum of learned per-axis embeddings of its coordinates.
    With ``time_conditioning="none"`` the output ignores ``t`` (declared ``time_independent``), which lets
    samplers cache logits between steps where nothing was unmasked. With ``causal=True`` each position attends
    to itself and the positions before it (row-major), and ``cache=KVCache`` decodes a sequence incrementally
    (both declared: ``causal``, ``cache``).
    """

    capabilities = DenoiserCapabilities(select=True, select_index=True, checkpointing=True)
    # Activation checkpointing: with gradients on, each block's activations are recomputed in the backward
    # pass (torch.utils.checkpoint, dropout masks replayed), about one more forward pass for much less memory.
    checkpointing = False

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        time_independent = config.time_conditioning == "none"
        self.capabilities = dataclasses.replace(
            type(self).capabilities, time_independent=time_independent, causal=config.causal, cache=config.causal
        )
        d, c = config.dim, config.conditioning_width

        if config.outside_embed_dim is None:
            self.embed = nn.Embedding(config.vocab_size + 1, d)
        else:
            self.embed = nn.Sequential(
                nn.Embedding(config.vocab_size + 1, config.outside_embed_dim),
                nn.Linear(config.outside_embed_dim, d, bias=config.embed_bias),
            )
        self.embed_dropout = nn.Dropout(config.dropout if config.embed_dropout else 0.0)
        self.position_embed = None if config.max_positions is None else nn.Embedding(config.max_positions, d)
        self.axial_embed = (
            nn.ModuleList(nn.Embedding(n, d) for n in config.data_shape) if config.axial_positions else None
        )
        if time_independent:
            self.time_mlp = None
        else:
            hidden = c if config.time_hidden is None else config.time_hidden
            self.time_mlp = nn.Sequential(
                nn.Linear(config.time_features, hidden, bias=config.cond_bias),
                nn.SiLU(),
                nn.Linear(hidden, c, bias=config.cond_bias),
            )
        # num_classes + 1 rows: the last id, num_classes, is "no label" (classifier-free guidance).
        self.class_embed = None if config.num_classes is None else nn.Embedding(config.num_classes + 1, c)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        if config.conditioned:
            self.final_norm = nn.LayerNorm(d, eps=config.norm_eps, elementwise_affine=False)
            self.final_modulation = _modulation(config, 2)
        else:
            self.final_norm = RMSNorm(d, config.norm_eps)
            self.final_modulation = None
        self.logits = nn.Linear(d, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every weight; biases zero, adaLN modulations and the logits layer zero (adaLN-Zero).

        ``init="gpt2"``: N(0, 0.02) weights, residual-writing projections (attention out, MLP w2) scaled by
        ``1 / sqrt(2 n_layers)``. ``init="release"``: the release's Flax defaults, lecun-normal linear
        weights (variance ``1 / fan_in``, truncated) and normal embeddings of variance ``1 / features``,
        with depth-scaled MLP weights w1, w2, w3 of variance ``(2 / n_layers) / fan_in``.
        """
        release = self.config.init == "release"
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if release:
                    _lecun_normal_(module.weight)
                else:
                    nn.init.normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=module.embedding_dim**-0.5 if release else INIT_STD)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        depth_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            if release:
                for linear in (block.mlp.w1, block.mlp.w3, block.mlp.w2):
                    _lecun_normal_(linear.weight, 2.0 / self.config.n_layers)
            else:
                nn.init.normal_(block.attn.out.weight, std=depth_std)
                nn.init.normal_(block.mlp.w2.weight, std=depth_std)
        for modulation in [block.modulation for block in self.blocks] + [self.final_modulation]:
            if modulation is not None:
                for p in modulation.parameters():
                    nn.init.zeros_(p)
        nn.init.zeros_(self.logits.weight)

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def _axial_positions(self) -> torch.Tensor:
        """``[prod(data_shape), dim]``: at each position, the sum of its coordinates' rows of the axis tables."""
        shape = self.config.data_shape
        total = 0
        for axis, table in enumerate(self.axial_embed):
            view = [1] * len(shape) + [-1]
            view[axis] = shape[axis]
            total = total + table.weight.view(view)
        return total.reshape(-1, self.config.dim)

    def _condition(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Conditioning ``[B, conditioning_width]``: time MLP of sinusoidal(1000 t), plus class embedding."""
        c = None
        if self.time_mlp is not None:
            c = self.time_mlp(timestep_embedding(t, self.config.time_features, self.config.time_embedding))
        if self.class_embed is not None:
            e = self.class_embed(labels)
            c = e if c is None else c + e
        return c

    def _check_inputs(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> None:
        batch = z.shape[0] if z.dim() else 0
        if z.is_floating_point() or z.is_complex() or z.dtype == torch.bool:
            raise ValueError(f"z must be an integer tensor of token ids, got dtype {z.dtype}; pass a LongTensor.")
        if z.dim() < 2:
            raise ValueError(
                f"z must have shape [B, *shape] with at least 2 dims, got {tuple(z.shape)}; add a batch dimension."
            )
        check_time_and_labels(t, labels, batch, self.config.num_classes)

    @staticmethod
    def _flat_index(select: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Flat row-major positions [M] from ``select``: already such an index, or a boolean mask of z's shape."""
        if select.dtype == torch.bool:
            if select.shape != z.shape:
                raise ValueError(f"select must have z's shape {tuple(z.shape)}, got {tuple(select.shape)}.")
            return select.flatten().nonzero().squeeze(1)
        if select.dim() != 1 or select.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"select must be a boolean mask of z's shape or a 1-D integer index, got {select.dtype} "
                f"of shape {tuple(select.shape)}."
            )
        return select

    def _embed(self, ids: torch.Tensor, start: int, shape: list[int], whole: bool) -> torch.Tensor:
        """Token embeddings of ``ids [B, n]`` at positions ``start .. start + n - 1`` with the learned absolute or
        axial positions, if any; ``whole``: ids are whole examples of ``shape`` (else a cache's next positions)."""
        end = start + ids.shape[1]
        x = self.embed(ids)
        if self.position_embed is not None:
            if end > self.config.max_positions:
                raise ValueError(
                    f"The input has {end} positions but max_positions="
                    f"{self.config.max_positions}; raise max_positions in the model config."
                )
            x = x + self.position_embed(torch.arange(start, end, device=ids.device))
        if self.axial_embed is not None:
            if whole and tuple(shape) != self.config.data_shape:
                raise ValueError(
                    f"The input has example shape {tuple(shape)} but axial positions were built for data_shape="
                    f"{self.config.data_shape}; pass examples of that shape."
                )
            table = self._axial_positions()
            if end > table.shape[0]:
                raise ValueError(f"The cache would reach position {end} but an example has {table.shape[0]}.")
            x = x + (table if whole else table[start:end])
        return x

    def forward(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        select: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, *shape, V]`` over the real tokens for every position of ``z``; with a boolean ``select``
        of z's shape, or the 1-D index of its positions in ``z.flatten()`` (no host sync), the logits ``[M, V]`` of
        the M selected positions alone, in that order (the same as indexing the full logits), so the output
        layer runs only where a loss needs it.

        With ``cache`` (an empty :class:`md4.nn.kv_cache.KVCache` at first; causal networks), ``z [B, n]`` continues the flattened sequences held in
        the cache at its next n positions, whose keys and values it appends; the logits ``[B, n, V]`` are those a
        pass over the whole sequence gives at those positions.

        Token ranges are not checked here (that would sync the GPU); the diffusion wrapper does it.
        """
        self._check_inputs(z, t, labels)
        batch, *shape = z.shape
        ids = z.reshape(batch, -1)
        if ids.dtype not in (torch.int32, torch.int64):
            ids = ids.long()
        if cache is not None and (not self.config.causal or select is not None):
            raise ValueError("A KV cache needs a causal network (causal=True) and no select; drop one of them.")
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = self.embed_dropout(self._embed(ids, start, shape, cache is None))
        c = self._condition(t, labels)
        cos, sin = rope_angles(positions, self.config.head_dim, self.config.rope_theta)
        for layer, block in enumerate(self.blocks):
            if cache is not None:
                x = block(x, c, cos, sin, cache.layer(layer))
            elif self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, c, cos, sin, use_reentrant=False)
            else:
                x = block(x, c, cos, sin)
        if cache is not None:
            cache.advance(ids.shape[1])
        x = self.final_norm(x)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
            x = _modulate(x, shift, scale)
        if select is not None:
            return self.logits(x.reshape(-1, x.shape[-1]).index_select(0, self._flat_index(select, z)))
        return self.logits(x).reshape(batch, *shape, self.vocab_size)
