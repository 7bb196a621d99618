"""md4: masked (absorbing) discrete diffusion (MD4, Shi et al., NeurIPS 2024) in PyTorch."""
__version__ = "0.1.0"
