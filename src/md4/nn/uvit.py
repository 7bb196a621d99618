"""The MD4 release's ImageNet 64x64 denoiser: a UViT, residual blocks around a DiT.

Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data", NeurIPS 2024, and the authors'
JAX release (github.com/google-deepmind/md4, ``md4/networks/uvit.py`` and ``md4/networks/dit.py``, after
Peebles & Xie's DiT): a 3x3 input convolution to ``feature_dim``, ``n_layers`` residual blocks, then a DiT over
patches of the full-resolution feature map (patchify by a ``patch_size`` convolution into ``dit_hidden_size``
tokens, a learned position table initialised to 2-D sin-cos, ``n_dit_layers`` adaLN-Zero blocks, an adaLN final
layer, unpatchify back to ``feature_dim`` channels), then ``n_layers + 1`` residual blocks on the concatenation
with the skips, and a zero-initialised 3x3 convolution to ``C * V`` logits. Unlike the CIFAR-10 UNet, every
GroupNorm here is modulated by the conditioning vector (the release's ``CondGroupNorm``).

The defaults are ``md4/configs/md4/imagenet64.py`` (204,595,712 parameters for V = 256 and 64 x 64 x 3);
``n_layers=24, n_dit_layers=12`` is the paper's best-likelihood setting (198,279,680 parameters). The
release's ``ch_mult`` is ``(1,)`` in its image configs, so its resampling blocks are never built and are
left out here; its DiT takes square images only, here rectangular grids are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from md4.limits import check_layers
from md4.nn.image_blocks import NORM_EPS, Attention, ImageDenoiser, validate_image_config, zeroed
from md4.nn.transformer import ChannelDropout

# Hidden width of the DiT MLP relative to dit_hidden_size (the release's mlp_ratio).
MLP_RATIO = 4


@dataclass
class UViTConfig:
    """Hyperparameters of :class:`UViT`; validated on construction."""

    vocab_size: int
    num_classes: int | None = None
    data_shape: tuple[int, ...] | None = None
    # Channels of the residual blocks, and width of the embeddings and of the conditioning vector.
    feature_dim: int = 256
    # Residual blocks before the DiT (n_layers + 1 after it); the paper's best likelihood uses 24.
    n_layers: int = 8
    # DiT blocks; the paper's best likelihood uses 12.
    n_dit_layers: int = 20
    dit_num_heads: int = 12
    dit_hidden_size: int = 768
    # One rate for every dropout: residual blocks, DiT attention probabilities, residuals and MLP.
    dropout: float = 0.1
    # Side of the square DiT patches (release: 2).
    patch_size: int = 2
    # GroupNorm groups (Flax's default, 32).
    groups: int = 32

    def __post_init__(self) -> None:
        if self.data_shape is not None:
            self.data_shape = tuple(self.data_shape)
        validate_image_config(self, "uvit")
        for name in ("n_dit_layers", "dit_num_heads", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        check_layers("n_dit_layers", self.n_dit_layers)
        if self.dit_hidden_size % self.dit_num_heads:
            raise ValueError(
                f"dit_hidden_size={self.dit_hidden_size} is not divisible by dit_num_heads={self.dit_num_heads}; "
                "choose dit_hidden_size as a multiple of dit_num_heads."
            )
        if self.dit_hidden_size < 4 or self.dit_hidden_size % 4:
            raise ValueError(
                f"dit_hidden_size must be a positive multiple of 4 for the 2-D sin-cos positions, "
                f"got {self.dit_hidden_size}."
            )
        h, w, _ = self.data_shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"The image side lengths {h} x {w} are not divisible by patch_size={self.patch_size}; "
                "choose a patch_size that divides both."
            )


def sincos_positions(dim: int, rows: int, cols: int) -> torch.Tensor:
    """The release's 2-D sin-cos table ``[rows * cols, dim]`` (row-major): the first half of the channels
    encodes the column, the second half the row, each as ``sin`` then ``cos`` of ``pos * 10000^(-k / (dim / 4))``
    for ``k < dim / 4``."""
    omega = 10000.0 ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.to(torch.float64)[:, None] * omega[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)

    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat((encode(col.flatten()), encode(row.flatten())), dim=-1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class CondGroupNorm(nn.Module):
    """The release's ``CondGroupNorm``: affine-free GroupNorm times ``1 + scale`` plus ``shift``, both from a
    zero-initialised projection of the conditioning vector."""

    def __init__(self, channels: int, cond_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=NORM_EPS, affine=False)
        self.modulation = zeroed(nn.Linear(cond_dim, 2 * channels))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(c)[:, :, None, None].chunk(2, dim=1)
        return modulate(self.norm(x), shift, scale)


class ResBlock(nn.Module):
    """The release's UViT residual block: CondGroupNorm, swish, 3x3 conv, CondGroupNorm, swish, dropout,
    zero-initialised 3x3 conv; the residual path is projected (1x1) when the channel counts differ."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = CondGroupNorm(in_channels, cond_dim, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = CondGroupNorm(out_channels, cond_dim, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = None if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, c)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h, c))))
        return h + (x if self.skip is None else self.skip(x))


class DiTBlock(nn.Module):
    """The release's adaLN-Zero DiT block: ``x + gate * f(LN(x) * (1 + scale) + shift)`` for attention (biased
    q, k, v, bias-free output, dropout on the probabilities, then channel dropout) and a GELU MLP (dropout
    after the activation and after the output), with the six modulations from swish and a zero-initialised
    projection of the conditioning vector."""

    def __init__(self, dim: int, heads: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.modulation = nn.Sequential(nn.SiLU(), zeroed(nn.Linear(cond_dim, 6 * dim)))
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.attn = Attention(dim, heads, out_bias=False, dropout=dropout)
        self.attn_dropout = ChannelDropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(dim, MLP_RATIO * dim),
            nn.GELU(approximate="tanh"),  # Flax's nn.gelu is the tanh approximation
            nn.Dropout(dropout),
            nn.Linear(MLP_RATIO * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn_dropout(self.attn(modulate(self.norm1(x), shift1, scale1)))
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """The release's DiT on a feature map ``[B, channels, H, W]`` -> ``[B, channels, H, W]``: patchify,
    add the position table, adaLN-Zero blocks, adaLN final layer (zero-initialised), unpatchify."""

    def __init__(self, channels: int, size: tuple[int, int], config: UViTConfig) -> None:
        super().__init__()
        p, d = config.patch_size, config.dit_hidden_size
        self.patch = p
        self.grid = (size[0] // p, size[1] // p)
        self.patch_embed = nn.Conv2d(channels, d, p, stride=p)
        # Learned, as in the release (a parameter initialised to the sin-cos table).
        self.pos_embed = nn.Parameter(torch.empty(self.grid[0] * self.grid[1], d))
        self.blocks = nn.ModuleList(
            DiTBlock(d, config.dit_num_heads, config.feature_dim, config.dropout) for _ in range(config.n_dit_layers)
        )
        self.final_modulation = nn.Sequential(nn.SiLU(), zeroed(nn.Linear(config.feature_dim, 2 * d)))
        self.final_norm = nn.LayerNorm(d, eps=NORM_EPS, elementwise_affine=False)
        self.final_linear = zeroed(nn.Linear(d, p * p * channels))

    def reset_positions(self) -> None:
        with torch.no_grad():
            self.pos_embed.copy_(sincos_positions(self.pos_embed.shape[1], *self.grid))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, ch = x.shape[:2]
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)
        tokens = self.final_linear(modulate(self.final_norm(tokens), shift, scale))
        # Each token holds a (p, p, channels) patch, channels fastest, as the release's unpatchify reads it.
        (gh, gw), p = self.grid, self.patch
        return tokens.view(b, gh, gw, p, p, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, gh * p, gw * p)


class UViT(ImageDenoiser):
    """MD4 denoiser of the release's ImageNet 64x64 setting: ``(z [B, H, W, C], t [B], labels) -> [B, H, W, C, V]``."""

    def __init__(self, config: UViTConfig) -> None:
        super().__init__(config)
        d, g, p = config.feature_dim, config.groups, config.dropout
        h, w, c = config.data_shape
        self.input = nn.Conv2d(c * d, d, 3, padding=1)
        self.down = nn.ModuleList(ResBlock(d, d, d, g, p) for _ in range(config.n_layers))
        self.dit = DiT(d, (h, w), config)
        self.up = nn.ModuleList(ResBlock(2 * d, d, d, g, p) for _ in range(config.n_layers + 1))
        self.out_norm = CondGroupNorm(d, d, g)
        self.output = zeroed(nn.Conv2d(d, c * config.vocab_size, 3, padding=1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Flax's defaults and the release's zeros (see :class:`ImageDenoiser`), and the sin-cos positions."""
        super().reset_parameters()
        self.dit.reset_positions()

    def backbone(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.input(x)
        skips = [h]
        for block in self.down:
            h = block(h, c)
            skips.append(h)
        h = self.dit(h, c)
        for block in self.up:
            h = block(torch.cat((h, skips.pop()), dim=1), c)
        return self.output(F.silu(self.out_norm(h, c)))
