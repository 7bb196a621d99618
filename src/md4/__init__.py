"""md4: masked (absorbing) discrete diffusion (MD4, Shi et al., NeurIPS 2024) in PyTorch.

The public API: masking schedules, the :class:`MD4` objective around any denoiser,
the samplers, and the bidirectional :class:`Transformer` denoiser.
"""

from md4.diffusion import MD4, antithetic_times, bits_per_token, perplexity
from md4.nn.transformer import Transformer, TransformerConfig
from md4.sampling import SAMPLER_NAMES, SAMPLERS, SampleOutput, categorical, nucleus, prefix_init, sample, time_grid
from md4.schedules import (
    CosineSchedule,
    GeometricSchedule,
    LinearSchedule,
    MaskingSchedule,
    PolynomialSchedule,
    get_schedule,
)

__version__ = "0.1.0"

__all__ = [
    "MD4",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "CosineSchedule",
    "GeometricSchedule",
    "LinearSchedule",
    "MaskingSchedule",
    "PolynomialSchedule",
    "SampleOutput",
    "Transformer",
    "TransformerConfig",
    "antithetic_times",
    "bits_per_token",
    "categorical",
    "get_schedule",
    "nucleus",
    "perplexity",
    "prefix_init",
    "sample",
    "time_grid",
]
