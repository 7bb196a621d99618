"""The samplers' options and their defaults, in one place: the library, the CLI and training samples read them
here."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DEFAULT_STEPS = 256  # the one default number of reverse steps (library, CLI and training samples)
GRIDS = ("uniform", "cosine")
CATEGORICAL = ("float64", "float32-gumbel")


MAX_GUIDANCE = 1000.0  # the largest classifier-free guidance weight: far beyond any in use; guided logits stay finite
DEFAULT_SAMPLER = "ancestral"
DEFAULT_GRID = "uniform"
DEFAULT_GUIDANCE = 1.0  # classifier-free guidance weight: 1 conditions on the labels as trained
DEFAULT_TOP_P = 0.98  # the top_p sampler's nucleus; the autoregressive sampler keeps the whole distribution (1)
DEFAULT_CATEGORICAL = "float64"


@dataclass
class SampleOutput:
    """Samples with no mask id left, the number of denoiser calls (NFE) made, and, if asked for, snapshots of
    the reverse process from z_1 to the samples (mask ids included)."""

    tokens: torch.Tensor
    nfe: int
    trajectory: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class SamplingOptions:
    """The knobs shared by the samplers; each sampler reads those it uses."""

    steps: int = DEFAULT_STEPS
    grid: str = DEFAULT_GRID
    top_p: float = DEFAULT_TOP_P
    categorical: str = DEFAULT_CATEGORICAL
    temperature: float = 1.0  # the autoregressive sampler's: softmax(logits / temperature), 0 the argmax

    def __post_init__(self) -> None:
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps}.")
        if self.grid not in GRIDS:
            raise ValueError(f"Unknown time grid {self.grid!r}; valid grids are: {', '.join(GRIDS)}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.categorical not in CATEGORICAL:
            raise ValueError(
                f"Unknown categorical draw {self.categorical!r}; valid options are: {', '.join(CATEGORICAL)}."
            )
        if not 0.0 <= self.temperature < float("inf"):  # also NaN
            raise ValueError(
                f"temperature must be a finite number of at least 0 (0: the argmax), got {self.temperature}."
            )
