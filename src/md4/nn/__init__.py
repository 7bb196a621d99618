"""Denoiser backbones: callables mapping (z_t [B, *shape], t [B], labels) to logits [B, *shape, V]."""

from md4.nn.transformer import Transformer, TransformerConfig
from md4.nn.unet import UNet, UNetConfig
from md4.nn.uvit import UViT, UViTConfig

__all__ = ["Transformer", "TransformerConfig", "UNet", "UNetConfig", "UViT", "UViTConfig"]
