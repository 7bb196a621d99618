"""Text jobs: a prompt the samples start with, or an infilling template in which every ``_`` is one token to fill
(as ``md4 sample --infill``), streamed as the tokens unmask.

Events: ``start`` (each sample's tokens: the given ones' text, None where masked, and the number of steps the
sampler will take at most), one ``step`` per change of the samples (the tokens it unmasked: sample, position,
text), then ``done`` (the decoded samples, network calls, seconds)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from md4.core.ar import AUTOREGRESSIVE
from md4.device import autocast
from md4.generation.text import conditioning, infill_template
from md4.sampling import sample
from md4.sampling.labels import class_labels
from md4.serve.catalog import ServedRun, Settings
from md4.serve.fields import Fields, RequestError
from md4.serve.jobs import Emit, Event, Limits

HOLE = "_"  # in an infilling template, each one is one token to fill
MODES = ("free", "prompt", "infill")
CHARS_PER_TOKEN = 8  # a request's text may have this many characters per token of the length limit


@dataclass
class TextJob:
    """A checked text request: the starting tokens z_1 and the sampling settings."""

    run: ServedRun
    init: torch.Tensor  # [N, L], mask ids at the positions to generate
    settings: Settings

    def pieces(self, tokens: torch.Tensor | list[int]) -> list[str]:
        """Each token's own text."""
        ids = tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens
        return [self.run.loaded.codec.decode(np.array([token])) for token in ids]

    def planned_steps(self) -> int:
        """The most changes the sampler can make: one per masked token of a row (exact, autoregressive), at most
        ``steps`` for the others."""
        masked = int((self.init == self.run.model.mask_id).sum(1).max())
        if self.settings.sampler in ("exact", AUTOREGRESSIVE):
            return masked
        return min(masked, self.settings.steps + 1)  # + 1: a grid's last argmax

    def start_event(self) -> Event:
        mask_id = self.run.model.mask_id
        samples = [
            [None if token == mask_id else self.pieces([token])[0] for token in row] for row in self.init.tolist()
        ]
        return {"type": "start", "samples": samples, "planned": self.planned_steps()}

    def __call__(self, emit: Emit) -> Event:
        """Run the reverse process, emitting the start and each step; the ``done`` event."""
        model, codec, mask_id = self.run.model, self.run.loaded.codec, self.run.model.mask_id
        emit(self.start_event())
        before, step = self.init.cpu(), 0

        def on_step(z: torch.Tensor) -> None:
            nonlocal before, step
            z, step = z.cpu(), step + 1
            rows, positions = torch.nonzero((before == mask_id) & (z != mask_id), as_tuple=True)
            texts = self.pieces(z[rows, positions])
            emit({"type": "step", "step": step, "tokens": list(zip(rows.tolist(), positions.tolist(), texts))})
            before = z

        labels = class_labels(model.num_classes, len(self.init), device=self.run.device)
        started = time.perf_counter()
        with autocast(self.run.device, self.run.precision):
            out = sample(model, init=self.init, labels=labels, on_step=on_step, **self.settings.options())
        return {
            "type": "done",
            "texts": codec.decode_batch(out.tokens.cpu()),
            "steps": step,
            "nfe": out.nfe,
            "seconds": round(time.perf_counter() - started, 3),
        }


def text_job(run: ServedRun, fields: Fields, limits: Limits) -> TextJob:
    """The text job a request asks for, or one sentence saying what to change."""
    if run.images:
        raise RequestError(f"{run.name} is an image run; use its image controls.")
    settings = run.settings(fields, limits)
    mode = fields.choice("mode", MODES, "free")
    text = fields.text("text", limits.length * CHARS_PER_TOKEN)
    num = fields.integer("num", 1, limits.samples, 1)
    trained = min(run.model.data_shape[0], limits.length)
    length = None if mode == "infill" else fields.integer("length", 1, limits.length, trained)  # infill: the template's
    if mode != "free" and not text:
        raise RequestError(f"The {mode} is empty; type some text, or choose free sampling.")
    if mode == "infill" and settings.sampler == AUTOREGRESSIVE:
        raise RequestError(f"{run.name} samples left to right and cannot fill holes; use a prompt instead.")
    if mode == "infill" and HOLE not in text:
        raise RequestError(f"The template has no {HOLE}; type one {HOLE} for each token to fill.")
    prompt, infill = (text if mode == "prompt" else None), (text if mode == "infill" else None)
    if (
        infill is not None
        and (size := len(infill_template(infill, HOLE, run.loaded.codec, run.model.mask_id))) > limits.length
    ):
        raise RequestError(
            f"The template is {size} tokens long, and this server takes at most {limits.length}; shorten it."
        )
    init = conditioning(run.model, run.loaded.codec, num, length, prompt, infill, HOLE)
    if init is None:
        init = torch.full((num, length), run.model.mask_id, dtype=torch.long, device=run.device)
    if not bool((init == run.model.mask_id).any()):
        raise RequestError(
            f"The prompt fills all {length} tokens, so there is nothing to generate; make the samples longer."
        )
    return TextJob(run, init, settings)
