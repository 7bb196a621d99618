"""The runs a server offers, fixed when it starts: each loaded as ``md4 sample`` loads it, known to the page by its
index and a short name (never a path), with the sampling controls that apply to it and, for an image run, a few
test images of its own held-out split to infill."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from md4.core.ar import AUTOREGRESSIVE
from md4.core.kind_contract import ModelKindContract
from md4.data import ImageCodec
from md4.device import resolve_precision
from md4.generation.pictures import rgb
from md4.held_out import held_out_batches
from md4.runs.directory import LoadedRun
from md4.runs.hub_repo import HUB_PREFIX
from md4.runs.pretrained import from_pretrained
from md4.sampling import DEFAULT_TOP_P, GRIDS, SAMPLER_NAMES, SAMPLERS, default_sampler
from md4.serve.fields import Fields
from md4.serve.jobs import Limits

TEST_IMAGES = 12  # test images offered for infilling
MAX_SEED = 2**31 - 1


@dataclass
class Settings:
    """The sampling controls of one request, checked against the run and the server's limits."""

    sampler: str
    steps: int
    grid: str
    top_p: float | None
    seed: int

    def options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`md4.sample`."""
        return {"sampler": self.sampler, "steps": self.steps, "grid": self.grid, "top_p": self.top_p, "seed": self.seed}


@dataclass
class ServedRun:
    """A loaded run as the page sees it."""

    name: str
    loaded: LoadedRun
    samplers: tuple[str, ...]
    precision: str
    test_images: list[tuple[np.ndarray, int | None]] = field(default_factory=list)  # tokens [H, W, C], label
    test_note: str = ""  # why there are no test images

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def images(self) -> bool:
        return isinstance(self.loaded.codec, ImageCodec)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def defaults(self, limits: Limits) -> dict[str, Any]:
        """The controls' starting values: the run's ``[sample]`` settings (as ``md4 sample`` uses them), within
        the limits."""
        recorded = self.loaded.config.run_sampling
        sampler = recorded.sampler or default_sampler(self.model)
        sampler = sampler if sampler in self.samplers else self.samplers[0]
        return {
            "sampler": sampler,
            "steps": min(recorded.steps, limits.steps),
            "grid": recorded.grid,
            "top_p": recorded.top_p or (1.0 if sampler == AUTOREGRESSIVE else DEFAULT_TOP_P),
            "length": None if self.images else min(self.model.data_shape[0], limits.length),
        }

    def settings(self, fields: Fields, limits: Limits) -> Settings:
        """The request's sampler, steps, grid, top-p and seed (each the run's own when left out), refused in one
        sentence where out of range."""
        defaults = self.defaults(limits)
        sampler = fields.choice("sampler", self.samplers, defaults["sampler"])
        steps = fields.integer("steps", 1, limits.steps, defaults["steps"])
        grid = fields.choice("grid", GRIDS, defaults["grid"])
        uses_top_p = sampler in ("top_p", AUTOREGRESSIVE)
        top_p = fields.number("top_p", 0.0, 1.0, defaults["top_p"], above_low=True) if uses_top_p else None
        return Settings(sampler, steps, grid, top_p, fields.integer("seed", 0, MAX_SEED, 0))

    def describe(self, index: int, limits: Limits) -> dict[str, Any]:
        """What the page needs to show this run's controls."""
        shape = list(self.model.data_shape)
        return {
            "index": index,
            "name": self.name,
            "kind": "images" if self.images else "text",
            "model": f"{self.loaded.config.model['kind']}, {self.loaded.config.model['net']}",
            "step": self.loaded.step,
            "shape": shape,
            "classes": self.model.num_classes,
            "samplers": [
                {"name": n, "about": describe_sampler(n), "steps": uses_steps(n), "grid": uses_grid(n)}
                for n in self.samplers
            ],
            "defaults": self.defaults(limits),
            "infill": AUTOREGRESSIVE not in self.samplers,
            "test_images": [{"png": png_data_url(self.loaded.codec, t), "label": y} for t, y in self.test_images],
            "test_note": self.test_note,
        }


def describe_sampler(name: str) -> str:
    if name == AUTOREGRESSIVE:
        return "left to right, one network pass per token"
    return SAMPLERS[name].description


def uses_steps(name: str) -> bool:
    """Whether the steps control matters for this sampler (the exact and autoregressive ones have no grid)."""
    return name != AUTOREGRESSIVE and (SAMPLERS[name].uses_grid or name == "confident")


def uses_grid(name: str) -> bool:
    """Whether the time grid control matters for this sampler."""
    return name != AUTOREGRESSIVE and SAMPLERS[name].uses_grid


def png_data_url(codec, tokens: np.ndarray | torch.Tensor) -> str:
    """Tokens [H, W, C] (mask ids drawn in the marker colour), or a tile of pictures [H, W, 3] uint8, as a
    ``data:image/png`` URL."""
    pixels = tokens if isinstance(tokens, np.ndarray) and tokens.dtype == np.uint8 else rgb(codec, tokens)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def short_name(source: str) -> str:
    """The last part of a run's path or Hub name: what the page shows."""
    text = source.removeprefix(HUB_PREFIX)
    return Path(text.rstrip("/")).name or text


def test_images(loaded: LoadedRun) -> tuple[list[tuple[np.ndarray, int | None]], str]:
    """The first images of the run's test split (else its valid split) from md4's cache, with their labels; or
    none and a sentence saying why (data not cached, or no such split)."""
    reason = ""
    for split in ("test", "valid"):
        try:
            held_out = held_out_batches(loaded, None, split, batch_size=TEST_IMAGES, max_batches=1)
            images, labels = next(held_out.batches)
        except (ValueError, OSError, StopIteration) as err:
            reason = str(err) or f"The run's data has no {split} images."
            continue
        found = [
            (image.numpy(), None if labels is None else int(label))
            for image, label in zip(images, labels if labels is not None else [None] * len(images), strict=True)
        ]
        return found, ""
    return [], f"No test images: {reason} Upload a PNG instead."


def load_runs(sources: list[str], device: str = "auto", use_ema: bool = True) -> list[ServedRun]:
    """Load every run (an md4 run directory, an exported folder or ``hf:REPO_ID``) as ``md4 sample`` does; a run
    that cannot be loaded raises md4's one-sentence error naming it."""
    runs: list[ServedRun] = []
    for source in sources:
        loaded = from_pretrained(source, device=device, use_ema=use_ema)
        model = loaded.model
        declared = model.samplers if isinstance(model, ModelKindContract) else None
        samplers = tuple(declared or SAMPLER_NAMES)
        precision = resolve_precision(next(model.parameters()).device, "auto")
        name = short_name(source)
        taken = {run.name for run in runs}
        if name in taken:
            name = next(f"{name} ({k})" for k in range(2, len(runs) + 3) if f"{name} ({k})" not in taken)
        run = ServedRun(name, loaded, samplers, precision)
        if run.images:
            run.test_images, run.test_note = test_images(loaded)
        runs.append(run)
    return runs
