"""The MD4 release's CIFAR-10 denoiser: a VDM-style UNet without downsampling.

Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data", NeurIPS 2024, and the authors'
JAX release (github.com/google-deepmind/md4, ``md4/networks/unet.py``, itself adapted from Kingma et al.'s VDM):
a 3x3 input convolution to ``feature_dim``, ``n_layers`` residual blocks, a middle of residual block,
self-attention and residual block, then ``n_layers + 1`` residual blocks on the concatenation with the skips,
all at full resolution, and a zero-initialised 3x3 convolution to ``C * V`` logits. With the defaults, V = 256
and 32 x 32 x 3 images this is the release's 28,427,520-parameter network (``md4/configs/md4/cifar10.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from md4.nn.image_blocks import NORM_EPS, Attention, ImageDenoiser, validate_image_config, zeroed


@dataclass
class UNetConfig:
    """Hyperparameters of :class:`UNet`; validated on construction."""

    vocab_size: int
    num_classes: int | None = None
    data_shape: tuple[int, ...] | None = None
    # Channels of every block, and width of the embeddings and of the conditioning vector.
    feature_dim: int = 128
    # Residual blocks before the middle (n_layers + 1 after it).
    n_layers: int = 32
    dropout: float = 0.1
    # Heads of the middle self-attention (release: 1).
    attention_heads: int = 1
    # GroupNorm groups (Flax's default, 32).
    groups: int = 32

    def __post_init__(self) -> None:
        if self.data_shape is not None:
            self.data_shape = tuple(self.data_shape)
        validate_image_config(self, "unet")
        if self.attention_heads < 1 or self.feature_dim % self.attention_heads:
            raise ValueError(
                f"feature_dim={self.feature_dim} is not divisible by attention_heads={self.attention_heads}; "
                "choose feature_dim as a multiple of attention_heads."
            )


class ResBlock(nn.Module):
    """The release's UNet residual block: GroupNorm, swish, 3x3 conv, plus a zero-initialised bias-free
    projection of the conditioning vector, GroupNorm, swish, dropout, zero-initialised 3x3 conv; the
    residual path is projected (1x1, the release's ``Dense``) when the channel counts differ."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.cond = zeroed(nn.Linear(cond_dim, out_channels, bias=False))
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = None if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.cond(c)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + (x if self.skip is None else self.skip(x))


class SelfAttention(nn.Module):
    """The release's UNet attention: ``x + MHA(GroupNorm(x))`` over the ``H * W`` pixels."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.attn = Attention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        return x + self.attn(tokens).transpose(1, 2).reshape(b, ch, h, w)


class UNet(ImageDenoiser):
    """MD4 image denoiser of the release's CIFAR-10 setting: ``(z [B, H, W, C], t [B], labels) -> [B, H, W, C, V]``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        d, g, p = config.feature_dim, config.groups, config.dropout
        self.input = nn.Conv2d(config.data_shape[2] * d, d, 3, padding=1)
        self.down = nn.ModuleList(ResBlock(d, d, d, g, p) for _ in range(config.n_layers))
        self.mid1 = ResBlock(d, d, d, g, p)
        self.attn = SelfAttention(d, config.attention_heads, g)
        self.mid2 = ResBlock(d, d, d, g, p)
        self.up = nn.ModuleList(ResBlock(2 * d, d, d, g, p) for _ in range(config.n_layers + 1))
        self.out_norm = nn.GroupNorm(g, d, eps=NORM_EPS)
        self.output = zeroed(nn.Conv2d(d, config.data_shape[2] * config.vocab_size, 3, padding=1))
        self.reset_parameters()

    def backbone(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        skips = [h]
        for block in self.down:
            h = block(h, c)
            skips.append(h)
        h = self.mid2(self.attn(self.mid1(h, c)), c)
        for block in self.up:
            h = block(torch.cat((h, skips.pop()), dim=1), c)
        return self.output(F.silu(self.out_norm(h)))
