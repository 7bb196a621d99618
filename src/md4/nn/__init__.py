"""Denoiser backbones: callables mapping (z_t [B, *shape], t [B]) to logits [B, *shape, V]."""
