"""Shared parts of the image denoisers (:mod:`md4.nn.unet`, :mod:`md4.nn.uvit`), after the MD4 release.

Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data", NeurIPS 2024, and the authors'
JAX release (github.com/google-deepmind/md4, ``md4/models/backward.py``): every sub-pixel id (``V`` = mask
included) is embedded separately and the ``C`` embeddings of a pixel are concatenated into ``C * feature_dim``
channels; the network maps them to ``C * V`` channels, read as ``[B, H, W, C, V]`` logits. Time enters through
the release's ``CondEmbedding``. Weights follow Flax's defaults (truncated lecun-normal kernels, zero biases,
embeddings of variance ``1 / features``), with the layers the release zero-initialises marked by :func:`zeroed`.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import nn

from md4.limits import check_layers
from md4.nn.attention import attention
from md4.nn.contract import DenoiserCapabilities
from md4.nn.inputs import check_time_and_labels
from md4.nn.transformer import TRUNCATED_NORMAL_STD, timestep_embedding

# Flax's GroupNorm and LayerNorm epsilon.
NORM_EPS = 1e-6


def validate_image_config(config: Any, network: str) -> None:
    """Checks shared by the image network configs (data fields, feature_dim, groups, n_layers, dropout)."""
    if config.vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {config.vocab_size}.")
    if config.num_classes is not None and config.num_classes < 1:
        raise ValueError(f"num_classes must be None or a positive integer, got {config.num_classes}.")
    if config.data_shape is None:
        raise ValueError(f"The {network} network needs data_shape (H, W, C); set it from the data.")
    if len(config.data_shape) != 3 or min(config.data_shape) < 1:
        raise ValueError(
            f"The {network} network needs images of shape (H, W, C), got data_shape={config.data_shape}; "
            "use the transformer for other data."
        )
    if config.feature_dim < 4 or config.feature_dim % 2:
        raise ValueError(f"feature_dim must be an even integer of at least 4, got {config.feature_dim}.")
    if config.groups < 1:
        raise ValueError(f"groups must be a positive integer, got {config.groups}.")
    if config.feature_dim % config.groups:
        raise ValueError(
            f"feature_dim={config.feature_dim} is not divisible by groups={config.groups}; "
            "choose feature_dim as a multiple of groups."
        )
    if config.n_layers < 0:
        raise ValueError(f"n_layers must be a non-negative integer, got {config.n_layers}.")
    check_layers("n_layers", config.n_layers)
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}.")


_ZEROED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # the modules zeroed() marked


def zeroed(module: nn.Module) -> nn.Module:
    """Mark ``module`` to be zero-initialised (weights and biases) by :meth:`ImageDenoiser.reset_parameters`."""
    _ZEROED.add(module)
    return module


def lecun_normal_(weight: torch.Tensor) -> None:
    """Flax's default kernel init, ``variance_scaling(1, "fan_in", "truncated_normal")``, for a linear or
    convolution weight (fan-in: all but the output axis)."""
    std = math.sqrt(1.0 / weight[0].numel()) / TRUNCATED_NORMAL_STD
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``[B, L, dim]``, as Flax's ``MultiHeadDotProductAttention``:
    biased q, k, v projections, an output projection (biased or not), softmax of ``q k / sqrt(head_dim)``
    with dropout on the probabilities in training mode."""

    def __init__(self, dim: int, heads: int, out_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim, bias=out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, self.dropout, self.training)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class ConditionEmbedding(nn.Module):
    """The release's ``CondEmbedding``: sinusoidal features of ``1000 t`` of width ``dim``, concatenated with a
    class embedding of width ``dim`` when there are classes, then ``Dense(4 dim)``, swish, ``Dense(dim)``.

    The class table (the release's ``cond_embeddings``) has ``num_classes + 1`` rows: the last id,
    ``num_classes``, means "no label", for classifier-free guidance (the release's own default,
    ``classes = 10 + 1``, leaves room for such an id too).
    """

    def __init__(self, dim: int, num_classes: int | None) -> None:
        super().__init__()
        self.dim = dim
        self.class_embed = None if num_classes is None else nn.Embedding(num_classes + 1, dim)
        features = dim if num_classes is None else 2 * dim
        self.mlp = nn.Sequential(nn.Linear(features, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        c = timestep_embedding(t, self.dim, "release")
        if self.class_embed is not None:
            c = torch.cat((c, self.class_embed(labels)), dim=-1)
        return self.mlp(c)


class ImageDenoiser(nn.Module):
    """Base of the image denoisers: ``(z [B, H, W, C] ids in 0..V, t [B], labels) -> logits [B, H, W, C, V]``.

    Embeds each sub-pixel id (``Embed(V + 1, feature_dim)``), concatenates a pixel's ``C`` embeddings into
    ``[B, C * feature_dim, H, W]``, computes the conditioning vector ``[B, feature_dim]``, and reads the
    subclass's :meth:`backbone` output ``[B, C * V, H, W]`` as logits (channel ``c * V + v``, as the release).
    """

    capabilities = DenoiserCapabilities()  # the logits of every position, conditioned on t; no checkpointing

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.embed = nn.Embedding(config.vocab_size + 1, config.feature_dim)
        self.condition = ConditionEmbedding(config.feature_dim, config.num_classes)

    def backbone(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``[B, C * feature_dim, H, W]`` and conditioning ``[B, feature_dim]`` -> ``[B, C * V, H, W]``."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Flax's defaults for every layer, then zeros for the layers marked by :func:`zeroed`."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                lecun_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
            elif isinstance(module, nn.GroupNorm) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            if module in _ZEROED:
                for p in module.parameters():
                    nn.init.zeros_(p)

    def num_parameters(self) -> int:
        """Total number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def _check_inputs(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> None:
        shape = tuple(self.config.data_shape)
        if z.is_floating_point() or z.is_complex() or z.dtype == torch.bool:
            raise ValueError(f"z must be an integer tensor of token ids, got dtype {z.dtype}; pass a LongTensor.")
        if z.dim() != 4 or tuple(z.shape[1:]) != shape:
            raise ValueError(f"z must have shape [B, *{shape}], got {tuple(z.shape)}; pass a batch of images.")
        check_time_and_labels(t, labels, z.shape[0], self.config.num_classes)

    def forward(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, H, W, C, V]`` over the real ids for every sub-pixel of ``z``; id ranges are not checked
        here (that would sync the GPU)."""
        self._check_inputs(z, t, labels)
        b, h, w, c = z.shape
        x = self.embed(z.long()).reshape(b, h, w, -1).permute(0, 3, 1, 2)
        out = self.backbone(x, self.condition(t, labels))
        return out.permute(0, 2, 3, 1).reshape(b, h, w, c, self.vocab_size)
