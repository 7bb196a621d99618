"""``md4.Pipeline``: a trained model, its codec and its sampling settings in one object, in the style of diffusers'
pipelines: load once (an exported folder, ``hf:REPO_ID`` or a run), then ``generate`` and ``infill``.

    pipe = md4.Pipeline.from_pretrained("hf:user/md4-shakespeare")
    texts = pipe.generate(num=2, steps=128, prompt="ROMEO:")
    filled = pipe.infill("To be, or ___ to be", steps=64)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from md4.data import ImageCodec
from md4.device import autocast
from md4.generation.pictures import rgb
from md4.generation.text import generate
from md4.runs.directory import LoadedRun
from md4.runs.pretrained import from_pretrained
from md4.sampling import default_sampler, sample
from md4.sampling.labels import class_labels


class Pipeline:
    """Sampling from one trained model. Every call takes the options of :func:`md4.sample` (``steps``, ``sampler``,
    ``grid``, ``top_p``, ``categorical``, ``guidance``); those not given are the model's own ``[sample]`` settings."""

    def __init__(self, loaded: LoadedRun, precision: str = "auto") -> None:
        self.loaded, self.precision = loaded, precision

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], device: str = "auto", precision: str = "auto") -> Pipeline:
        """The pipeline of an exported folder, ``hf:REPO_ID`` or an md4 run directory (its EMA weights)."""
        return cls(from_pretrained(source, device), precision)

    @property
    def model(self):
        return self.loaded.model

    @property
    def codec(self):
        return self.loaded.codec

    @property
    def images(self) -> bool:
        """Whether the model draws images (``generate`` then returns pixels)."""
        return isinstance(self.codec, ImageCodec)

    def _options(self, given: dict[str, Any]) -> dict[str, Any]:
        options = {**self.loaded.config.run_sampling.options(), **{k: v for k, v in given.items() if v is not None}}
        options["sampler"] = options.get("sampler") or default_sampler(self.model)
        return options

    def generate(
        self, num: int = 1, *, prompt: str | None = None, length: int | None = None, seed: int = 0, **options: Any
    ) -> list[str] | np.ndarray:
        """``num`` samples: texts (starting with ``prompt``, of ``length`` tokens), or images as RGB pixels uint8
        [num, H, W, 3] (a class-conditional model's classes in turn)."""
        device = next(self.model.parameters()).device
        labels = class_labels(self.model.num_classes, num, device=device)
        if not self.images:
            out = generate(
                self.model, self.codec, num, length=length, prompt=prompt, labels=labels, precision=self.precision,
                seed=seed, **self._options(options),
            )  # fmt: skip
            return out.texts
        if prompt is not None or length is not None:
            raise ValueError("prompt and length are for text models, and this model draws images; leave them out.")
        with autocast(device, self.precision):
            out = sample(self.model, num, labels=labels, seed=seed, **self._options(options))
        return rgb(self.codec, out.tokens)

    __call__ = generate

    def infill(self, template: str, *, hole: str = "_", num: int = 1, seed: int = 0, **options: Any) -> list[str]:
        """``num`` completions of ``template`` whose ``hole`` characters are filled in; the rest stays fixed."""
        if self.images:
            raise ValueError(
                "infill takes a text template, and this model draws images; use md4 sample --infill-image."
            )
        labels = class_labels(self.model.num_classes, num, device=next(self.model.parameters()).device)
        out = generate(
            self.model, self.codec, num, infill=template, hole=hole, labels=labels, precision=self.precision,
            seed=seed, **self._options(options),
        )  # fmt: skip
        return out.texts
