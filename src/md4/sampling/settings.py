"""The sampling settings a run keeps in its config's ``[sample]`` table: what its periodic training samples and
``md4 sample RUN`` use unless a flag says otherwise.

The defaults are md4's (ancestral on the uniform grid, exact float64 draws, 256 steps); the paper presets set the
JAX release's: its configs name ``sampling_grid = "cosine"`` and its ancestral step draws with
``tfd.Categorical(...).sample``, i.e. float32 Gumbel-max (``categorical = "float32-gumbel"``), for
``timesteps`` steps (1000 for text, 256 for images).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch

from md4.core.kind_contract import ModelKindContract
from md4.sampling.options import CATEGORICAL, DEFAULT_CATEGORICAL, DEFAULT_GRID, DEFAULT_STEPS, GRIDS

SETTING_NAMES = ("sampler", "steps", "grid", "categorical", "top_p")


@dataclass
class SampleSettings:
    """``sampler`` (None: the model kind's own, ancestral or autoregressive), ``steps``, ``grid``,
    ``categorical`` and ``top_p`` (None: the sampler's own, 0.98 for top_p and 1 for autoregressive)."""

    sampler: str | None = None
    steps: int = DEFAULT_STEPS
    grid: str = DEFAULT_GRID
    categorical: str = DEFAULT_CATEGORICAL
    top_p: float | None = None

    def check(self, samplers: Collection[str]) -> None:
        """Refuse impossible settings, one sentence each; ``samplers``: the sampler names md4 knows."""
        if self.sampler is not None and self.sampler not in samplers:
            raise ValueError(f"sample.sampler must be one of {', '.join(samplers)}, got {self.sampler!r}.")
        if self.steps < 1:
            raise ValueError(f"sample.steps must be a positive integer, got {self.steps}.")
        if self.grid not in GRIDS:
            raise ValueError(f"sample.grid must be one of {', '.join(GRIDS)}, got {self.grid!r}.")
        if self.categorical not in CATEGORICAL:
            raise ValueError(f"sample.categorical must be one of {', '.join(CATEGORICAL)}, got {self.categorical!r}.")
        if self.top_p is not None and not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"sample.top_p must be in (0, 1], got {self.top_p}.")

    def options(self) -> dict[str, Any]:
        """The settings as keyword arguments of :func:`md4.sample` and :func:`md4.generate`."""
        return dataclasses.asdict(self)

    def check_kind(self, build: Callable[[], torch.nn.Module], kind: str, masked: Collection[str]) -> None:
        """Refuse a ``sampler`` that models of ``kind`` cannot run: those the kind declares, else the ``masked``
        diffusion samplers; ``build`` makes one model, here on the meta device (no memory)."""
        if self.sampler is None:
            return
        with torch.device("meta"):
            model = build()
        names = (model.samplers if isinstance(model, ModelKindContract) else None) or tuple(masked)
        if self.sampler not in names:
            raise ValueError(
                f"sample.sampler={self.sampler} does not apply to {kind} models; use one of {', '.join(names)}."
            )
