"""Likelihood bounds on held-out data: NELBO in nats, bits per token and perplexity, with standard errors; and the
evaluation of a run on its held-out data (:mod:`md4.held_out`) that ``md4 eval`` and the demo print."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from md4.core.kind_contract import DISCRETE, ModelKindContract
from md4.core.units import bits_per_token, perplexity
from md4.data import (
    Batch,
    CharTokenizer,
    ImageCodec,
)
from md4.device import autocast
from md4.distributed import World, derived_seed
from md4.held_out import HeldOut, held_out_batches

DEFAULT_BOUND_STEPS = 1000  # T of the discrete-time bound (the paper evaluates with 1000 steps)


def unit_of(codec) -> str:
    """What a bit is counted per: a dimension (sub-pixel) of an image, a character of character-level text, or a
    token (GPT-2's BPE, raw tokens)."""
    if isinstance(codec, ImageCodec):
        return "dim"
    return "char" if isinstance(codec, CharTokenizer) else "token"


def has_discrete_bound(model) -> bool:
    """Whether the model's kind has the discrete-time bound L_T (Eq. 3) besides the continuous one (Eq. 4)."""
    return isinstance(model, ModelKindContract) and DISCRETE in model.bounds


@dataclass
class BoundEstimate:
    """A Monte-Carlo estimate of the NELBO over a set of sequences; bits and perplexity are upper bounds."""

    nelbo: float  # nats per sequence, mean over sequences
    stderr: float  # standard error of that mean (sequences are the independent units)
    num_sequences: int
    tokens_per_sequence: int
    draws: int
    num_steps: int | None  # None: continuous-time bound; T: discrete-time bound

    @property
    def bits_per_token(self) -> float:
        return bits_per_token(self.nelbo, self.tokens_per_sequence)

    @property
    def bits_per_token_stderr(self) -> float:
        return bits_per_token(self.stderr, self.tokens_per_sequence)

    @property
    def perplexity(self) -> float:
        return perplexity(self.nelbo, self.tokens_per_sequence)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "bits_per_token": self.bits_per_token,
            "bits_per_token_stderr": self.bits_per_token_stderr,
            "perplexity": self.perplexity,
        }


@torch.no_grad()
def estimate_nelbo(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    draws: int = 1,
    num_steps: int | None = None,
    seed: int = 0,
    precision: str = "fp32",
    world: World | None = None,
) -> BoundEstimate:
    """Average ``draws`` NELBO draws per sequence (fixed seed), then the mean and standard error over sequences.

    ``batches`` yield ``(x, labels or None)``; labels reach only a conditional model. ``num_steps=None``
    estimates the continuous-time bound (paper Eq. 4), an integer T the discrete-time one (Eq. 3).
    With a ``world`` of several processes each takes every size-th batch and they pool the values: the same
    estimate as one process.
    """
    if draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws}.")
    world = world or World()
    device = next(model.parameters()).device
    per_batch: list[tuple[int, torch.Tensor]] = []
    tokens = None
    for index, (x, labels) in enumerate(batches):
        tokens = x[0].numel()
        if index % world.size != world.rank:
            continue
        generator = torch.Generator(device=device).manual_seed(derived_seed(seed, index))  # any process, same draws
        x = x.to(device)
        labels = None if labels is None or model.num_classes is None else labels.to(device)
        with autocast(device, precision):
            total = sum(
                model.nelbo(x, labels=labels, num_steps=num_steps, generator=generator).double() for _ in range(draws)
            )
        per_batch.append((index, (total / draws).cpu()))
    if tokens is None:
        raise ValueError("No evaluation data: the split is empty or shorter than one sequence.")
    if world.distributed:
        per_batch = sorted(item for rank_items in world.gather(per_batch) for item in rank_items)
    values = torch.cat([value for _, value in per_batch])
    if not bool(values.isfinite().all()):
        raise ValueError(
            "The bound is not finite for some sequences: the model's weights or the data are broken; "
            "evaluate an earlier checkpoint (--checkpoint STEP)."
        )
    stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return BoundEstimate(float(values.mean()), stderr, len(values), tokens, draws, num_steps)


@dataclass
class RunEvaluation:
    """The bounds of a run on held-out data: ``continuous`` and, for a kind that has it, ``discrete``."""

    data: str  # the held-out data, described
    bounds: dict[str, BoundEstimate]

    def to_dict(self) -> dict:
        return {"data": self.data, **{name: estimate.to_dict() for name, estimate in self.bounds.items()}}


Progress = Callable[[str, HeldOut], Iterable[Batch]]  # (bound's label, its data) -> the batches to evaluate


def evaluate_run(
    run,
    data: str | None = None,
    split: str = "test",
    *,
    batch_size: int | None = None,
    draws: int = 1,
    steps: int | None = DEFAULT_BOUND_STEPS,
    max_batches: int | None = None,
    seed: int = 0,
    precision: str = "fp32",
    progress: Progress | None = None,
    on_bound: Callable[[str, BoundEstimate], None] | None = None,
) -> RunEvaluation:
    """Estimate a loaded run's continuous-time bound (Eq. 4) and, when its kind has one and ``steps`` is not None,
    the discrete-time bound with T = ``steps`` (Eq. 3) on held-out data (:func:`held_out_batches`; batches of
    the run's batch size by default), each with :func:`estimate_nelbo`.

    ``progress(label, held_out)`` is called as each bound starts and returns the batches to use (e.g. wrapped
    in a progress bar); ``on_bound(label, estimate)`` as each one ends. Labels are ``continuous`` and
    ``discrete T=steps``.
    """
    batch_size = batch_size or run.config.train.batch_size
    bounds = [("continuous", "continuous", None)]
    if steps is not None and has_discrete_bound(run.model):
        bounds.append(("discrete", f"discrete T={steps}", steps))
    estimates, description = {}, ""
    for name, label, num_steps in bounds:
        held_out = held_out_batches(run, data, split, batch_size, max_batches)
        batches = held_out.batches if progress is None else progress(label, held_out)
        estimates[name] = estimate_nelbo(
            run.model, batches, draws=draws, num_steps=num_steps, seed=seed, precision=precision
        )
        description = held_out.description
        if on_bound is not None:
            on_bound(label, estimates[name])
    return RunEvaluation(description, estimates)
