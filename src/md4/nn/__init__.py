"""Denoiser backbones: callables mapping (z_t [B, *shape], t [B]) to logits [B, *shape, V]."""

from md4.nn.transformer import Transformer, TransformerConfig

__all__ = ["Transformer", "TransformerConfig"]
