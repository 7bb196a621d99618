"""The denoiser as the samplers see it: mu = softmax of the model's logits with classifier-free guidance, counting
the network calls (NFE); the snapshots of the reverse process, and the observer that reports each of its steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from md4.core.masked import MaskedDiffusion
from md4.core.schedule_contract import Schedule
from md4.nn.contract import capabilities_of
from md4.sampling.options import MAX_GUIDANCE


class Diffusion(Protocol):
    """What a sampler needs of a model (:class:`md4.MD4` is one): its logits come from ``denoiser``, whose declared
    capabilities (:mod:`md4.nn.contract`) say whether they depend on t."""

    vocab_size: int
    schedule: Schedule
    data_shape: tuple[int, ...] | None
    num_classes: int | None
    denoiser: Callable[..., torch.Tensor]

    def logits(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor: ...


class Network:
    """mu = softmax of the model's logits, counting the calls (NFE).

    A time-independent denoiser (the optimal one is, paper Sec. 3) gives the same mu for the same z at any t,
    so a call with z unchanged since the previous one reuses its output: grid steps that unmask nothing then
    cost no network call.

    A sampling step that needs mu at a few positions only (those it unmasks) asks for their rows
    (:meth:`rows`): a masked-diffusion model then computes its output layer and softmax there alone, which for a
    large vocabulary is much of a step (GPT-2's 50,257-token layer is a third of a small model's forward).

    Classifier-free guidance mixes the logits with and without the labels, ``l(none) + guidance * (l(labels) -
    l(none))`` ("none" is the model's "no label" id): 1 is plain conditioning, 0 ignores the labels, and more
    than 1 follows them more closely. Both are computed in one call on a doubled batch.
    """

    def __init__(self, model: Diffusion, labels: torch.Tensor | None, guidance: float = 1.0):
        self.model, self.labels, self.guidance = model, labels, float(guidance)
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:  # also NaN
            raise ValueError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g} (1: no guidance), got {guidance}.")
        if self.guidance == 0.0 and labels is None:  # ignoring labels that were never given: the model as it is
            self.guidance = 1.0
        if self.guidance != 1.0:
            if labels is None or model.num_classes is None:
                raise ValueError("Guidance needs a class-conditional model and labels; pass labels or guidance=1.")
            self.unlabelled = torch.full_like(labels, model.num_classes)
            if self.guidance == 0.0:  # exactly the unconditional model
                self.labels, self.guidance = self.unlabelled, 1.0
        self.reuse = capabilities_of(model.denoiser).time_independent
        self.nfe = 0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def _logits(self, z: torch.Tensor, t: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if self.guidance == 1.0:
            return self._model_logits(z, t, self.labels, index)
        both_index = None if index is None else torch.cat([index, index + z.numel()])
        labels = torch.cat([self.labels, self.unlabelled])
        labelled, unlabelled = (
            self._model_logits(torch.cat([z, z]), torch.cat([t, t]), labels, both_index).float().chunk(2)
        )
        return unlabelled + self.guidance * (labelled - unlabelled)

    def _model_logits(self, z, t, labels, index: torch.Tensor | None) -> torch.Tensor:
        """The model's logits at every position of z, or [M, V] at the flat positions ``index``."""
        if index is None:
            return self.model.logits(z, t, labels)
        if isinstance(self.model, MaskedDiffusion):
            return self.model.logits_at(z, t, index, labels)
        return self.model.logits(z, t, labels).reshape(-1, self.model.vocab_size).index_select(0, index)

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.reuse and self._last is not None and torch.equal(self._last[0], z):
            return self._last[1]
        logits = self._logits(z, t.float())
        self.nfe += 1
        probs = F.softmax(logits.float(), dim=-1)
        if self.reuse:
            self._last = (z.clone(), probs)
        return probs

    def rows(self, z: torch.Tensor, t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """mu [M, V] at the flat row-major positions ``index`` [M] of z (increasing) alone: one network call (or
        none, reusing a time-independent denoiser's last output for the same z), the same rows as ``self(z, t)``."""
        if self.reuse and self._last is not None and torch.equal(self._last[0], z):
            return self._last[1].reshape(-1, self._last[1].shape[-1]).index_select(0, index)
        self.nfe += 1
        return F.softmax(self._logits(z, t.float(), index).float(), dim=-1)


class Trajectory:
    """Snapshots of z_t on the way to the sample: whenever the unmasked fraction passes k / (n - 1)."""

    def __init__(self, count: int, mask_id: int):
        self.count, self.mask_id = count, mask_id
        self.states: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> None:
        if self.count < 2:
            return
        done = float((z != self.mask_id).double().mean())
        while len(self.states) < self.count and done >= len(self.states) / (self.count - 1) - 1e-12:
            self.states.append(z.clone())


class StepObserver:
    """What a sampler calls with each state when :func:`md4.sample` has an ``on_step``: the snapshots as always,
    and ``on_step`` with a copy of z whenever z differs from the state before (the first state is the start)."""

    def __init__(self, trajectory: Trajectory, on_step: Callable[[torch.Tensor], None]):
        self.trajectory, self.on_step = trajectory, on_step
        self._last: torch.Tensor | None = None

    def __call__(self, z: torch.Tensor) -> None:
        self.trajectory(z)
        if self._last is not None and torch.equal(self._last, z):
            return
        started, self._last = self._last is not None, z.clone()
        if started:
            self.on_step(z.clone())
