"""md4: masked (absorbing) discrete diffusion (MD4, Shi et al., NeurIPS 2024) in PyTorch.

The public API: masking schedules (modules owned by the model), the :class:`MD4` and :class:`GenMD4` objectives
around any denoiser, the :class:`Autoregressive` baseline, the samplers (:func:`sample`, one :data:`SAMPLERS` entry each), text generation with prompts and
infilling (:func:`generate`), models shared as folders or on the Hugging Face Hub (:func:`from_pretrained`,
:func:`export_run`, :class:`Pipeline`), the bidirectional :class:`Transformer` denoiser, and the registries that build
a model from a config (:func:`build_model`, :data:`MODEL_KINDS`, :data:`NETWORKS`).
"""

from md4 import _moved
from md4.core.ar import Autoregressive
from md4.core.genmd4 import GenMD4, GenMD4Options
from md4.core.md4 import MD4, MD4Options
from md4.core.noise import antithetic_times
from md4.core.schedules import (
    CosineSchedule,
    GeometricSchedule,
    LinearSchedule,
    MaskingSchedule,
    PolynomialSchedule,
    get_schedule,
)
from md4.core.token_schedule import TokenPolynomialSchedule
from md4.core.units import bits_per_token, perplexity
from md4.generation.pipeline import Pipeline
from md4.generation.text import Generation, generate, infill_template
from md4.models import MODEL_KINDS, NETWORKS, DataSpec, build_model, count_parameters
from md4.nn.transformer import Transformer, TransformerConfig
from md4.runs.pretrained import export_run, from_pretrained
from md4.sampling import (
    DEFAULT_STEPS,
    SAMPLER_NAMES,
    SAMPLERS,
    SampleOutput,
    categorical,
    nucleus,
    prefix_init,
    sample,
    time_grid,
)

_moved.install()  # md4 0.2's module paths (md4.diffusion, md4.train, ...) keep working

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_STEPS",
    "MD4",
    "MODEL_KINDS",
    "NETWORKS",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "Autoregressive",
    "CosineSchedule",
    "DataSpec",
    "GenMD4",
    "GenMD4Options",
    "Generation",
    "GeometricSchedule",
    "LinearSchedule",
    "MD4Options",
    "MaskingSchedule",
    "Pipeline",
    "PolynomialSchedule",
    "SampleOutput",
    "TokenPolynomialSchedule",
    "Transformer",
    "TransformerConfig",
    "antithetic_times",
    "bits_per_token",
    "build_model",
    "categorical",
    "count_parameters",
    "export_run",
    "from_pretrained",
    "generate",
    "get_schedule",
    "infill_template",
    "nucleus",
    "perplexity",
    "prefix_init",
    "sample",
    "time_grid",
]
