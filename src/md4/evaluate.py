"""Likelihood bounds on held-out data: NELBO in nats, bits per token and perplexity, with standard errors; and the
evaluation of a run on its held-out data (:mod:`md4.held_out`) that ``md4 eval`` and the demo print."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace

import torch

from md4.core.kind_contract import DISCRETE, EXACT, ModelKindContract
from md4.core.noise import BatchShard
from md4.core.units import bits_per_token, perplexity
from md4.data import Batch, CharTokenizer, ImageCodec, PreparedData, prepared_of
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


def characters_per_token(dataset, split: str) -> float | None:
    """The characters of text per token of a dataset's ``split``, when known
    (:meth:`md4.data.PreparedData.characters_per_token`); None for images and data in memory."""
    prepared = prepared_of(dataset)
    return prepared.characters_per_token(split) if isinstance(prepared, PreparedData) else None


def has_discrete_bound(model) -> bool:
    """Whether the model's kind has the discrete-time bound L_T (Eq. 3) besides the continuous one (Eq. 4)."""
    return isinstance(model, ModelKindContract) and DISCRETE in model.bounds


def is_exact(model) -> bool:
    """Whether the model's ``nelbo`` is its exact negative log-likelihood (an autoregressive model), not a bound."""
    return isinstance(model, ModelKindContract) and EXACT in model.bounds


@dataclass
class BoundEstimate:
    """A Monte-Carlo estimate of the NELBO over a set of sequences; bits and perplexity are upper bounds."""

    nelbo: float  # nats per sequence, mean over sequences
    stderr: float  # standard error of that mean (sequences are the independent units)
    num_sequences: int
    tokens_per_sequence: int
    draws: int
    num_steps: int | None  # None: continuous-time bound; T: discrete-time bound
    characters_per_token: float | None = None  # of the text evaluated, when known (:meth:`with_characters`)

    @property
    def bits_per_token(self) -> float:
        return bits_per_token(self.nelbo, self.tokens_per_sequence)

    @property
    def bits_per_token_stderr(self) -> float:
        return bits_per_token(self.stderr, self.tokens_per_sequence)

    @property
    def bits_per_char(self) -> float | None:
        """Bits per character of text, ``bits_per_token / characters_per_token`` (the split's tokens over its
        characters); None when the characters are unknown (images, raw tokens, GPT-2-tokenised hub data)."""
        return None if self.characters_per_token is None else self.bits_per_token / self.characters_per_token

    @property
    def bits_per_char_stderr(self) -> float | None:
        return None if self.characters_per_token is None else self.bits_per_token_stderr / self.characters_per_token

    def with_characters(self, characters_per_token: float | None) -> BoundEstimate:
        """This estimate for text of ``characters_per_token`` characters per token (None: unknown)."""
        return replace(self, characters_per_token=characters_per_token)

    @property
    def perplexity(self) -> float:
        return perplexity(self.nelbo, self.tokens_per_sequence)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "bits_per_token": self.bits_per_token,
            "bits_per_token_stderr": self.bits_per_token_stderr,
            "perplexity": self.perplexity,
            **(
                {}
                if self.bits_per_char is None
                else {"bits_per_char": self.bits_per_char, "bits_per_char_stderr": self.bits_per_char_stderr}
            ),
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
    micro_batch: int | None = None,
    lockstep: bool = False,
) -> BoundEstimate:
    """Average ``draws`` NELBO draws per sequence (fixed seed), then the mean and standard error over sequences.

    ``batches`` yield ``(x, labels or None)``; labels reach only a conditional model. ``num_steps=None``
    estimates the continuous-time bound (paper Eq. 4), an integer T the discrete-time one (Eq. 3). Each batch is
    evaluated in micro-batches of at most ``micro_batch`` rows (None: the whole batch) with row-addressed noise
    (:class:`md4.core.noise.BatchShard`), so the estimate does not depend on the split. With a ``world`` of several
    processes each takes every size-th batch and they pool the values: the same estimate as one process. With
    ``lockstep`` (a sharded model, whose every forward pass gathers weights from all processes) every process
    makes the same number of forward passes, repeating a micro-batch whose result it discards where it has less
    to do.
    """
    if draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws}.")
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive integer, got {micro_batch}.")
    world = world or World()
    evaluate = _BatchEvaluator(model, draws, num_steps, seed, precision, micro_batch)
    per_batch: list[tuple[int, torch.Tensor]] = []
    tokens = None
    for batch_round in _rounds(batches, world.size):
        tokens = batch_round[0][1][0][0].numel()
        mine = [(index, batch) for index, batch in batch_round if index % world.size == world.rank]
        for index, (x, labels) in mine:
            per_batch.append((index, evaluate(x, labels, index)))
        if lockstep:
            calls = max(evaluate.calls(x.shape[0]) for _, (x, _) in batch_round)
            done = sum(evaluate.calls(x.shape[0]) for _, (x, _) in mine)
            evaluate.idle(batch_round[0][1], calls - done)
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


def _rounds(batches: Iterable[Batch], size: int) -> Iterator[list[tuple[int, Batch]]]:
    """The numbered batches in rounds of ``size``: one batch per process (the last round may be short)."""
    batch_round: list[tuple[int, Batch]] = []
    for index, batch in enumerate(batches):
        batch_round.append((index, batch))
        if len(batch_round) == size:
            yield batch_round
            batch_round = []
    if batch_round:
        yield batch_round


class _BatchEvaluator:
    """The mean of ``draws`` NELBO draws per sequence of one batch, in micro-batches of at most ``micro_batch``
    rows; batch ``index`` draws its noise from a generator seeded by (seed, index), on any process."""

    def __init__(self, model, draws: int, num_steps: int | None, seed: int, precision: str, micro_batch: int | None):
        self.model, self.draws, self.num_steps, self.seed = model, draws, num_steps, seed
        self.precision, self.micro_batch = precision, micro_batch
        self.device = next(model.parameters()).device

    def calls(self, rows: int) -> int:
        """The forward passes a batch of ``rows`` takes."""
        return self.draws * (1 if self.micro_batch is None else math.ceil(rows / self.micro_batch))

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None, index: int) -> torch.Tensor:
        rows = x.shape[0]
        step = rows if self.micro_batch is None else self.micro_batch
        x = x.to(self.device)
        labels = None if labels is None or self.model.num_classes is None else labels.to(self.device)
        parts = []
        for start in range(0, rows, step):
            # One micro-batch draws exactly the noise of the whole batch; several draw its rows of that noise.
            shard = None if step >= rows else BatchShard(start, rows)
            generator = torch.Generator(device=self.device).manual_seed(derived_seed(self.seed, index))
            part = None if labels is None else labels[start : start + step]
            parts.append(self._draws(x[start : start + step], part, generator, shard) / self.draws)
        return torch.cat(parts).cpu()

    def _draws(self, x, labels, generator, shard) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return sum(
                self.model.nelbo(x, labels=labels, num_steps=self.num_steps, generator=generator, shard=shard).double()
                for _ in range(self.draws)
            )

    def idle(self, batch: Batch, calls: int) -> None:
        """``calls`` forward passes whose results are discarded (a sharded model's processes keep in step)."""
        x, labels = batch
        step = x.shape[0] if self.micro_batch is None else self.micro_batch
        x = x[:step].to(self.device)
        labels = None if labels is None or self.model.num_classes is None else labels[:step].to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        for _ in range(calls):
            with autocast(self.device, self.precision):
                self.model.nelbo(x, labels=labels, num_steps=self.num_steps, generator=generator)


@dataclass
class RunEvaluation:
    """The bounds of a run on held-out data: ``continuous`` and, for a kind that has it, ``discrete``."""

    data: str  # the held-out data, described
    bounds: dict[str, BoundEstimate]

    def to_dict(self) -> dict:
        return {"data": self.data, **{name: estimate.to_dict() for name, estimate in self.bounds.items()}}


def training_micro_batch(train) -> int:
    """The rows one process computes at once in training (``train.batch_size / train.grad_accum`` for one
    process): what fits in memory for the forward pass of evaluation too."""
    return max(1, train.batch_size // train.grad_accum)


Progress = Callable[[str, HeldOut], Iterable[Batch]]  # (bound's label, its data) -> the batches to evaluate


def evaluate_run(
    run,
    data: str | None = None,
    split: str = "test",
    *,
    batch_size: int | None = None,
    micro_batch: int | None = None,
    draws: int = 1,
    steps: int | None = DEFAULT_BOUND_STEPS,
    max_batches: int | None = None,
    seed: int = 0,
    precision: str = "fp32",
    progress: Progress | None = None,
    on_bound: Callable[[str, BoundEstimate], None] | None = None,
) -> RunEvaluation:
    """Estimate a loaded run's continuous-time bound (Eq. 4) and, when its kind has one and ``steps`` is not None,
    the discrete-time bound with T = ``steps`` (Eq. 3), or, for an autoregressive run, its exact negative
    log-likelihood (``exact``: one draw, since every draw is the same), on held-out data (:func:`held_out_batches`; batches of
    the run's batch size by default), each with :func:`estimate_nelbo`, in micro-batches of at most
    ``micro_batch`` rows (default: the run's training micro-batch, ``train.batch_size / train.grad_accum``).

    ``progress(label, held_out)`` is called as each bound starts and returns the batches to use (e.g. wrapped
    in a progress bar); ``on_bound(label, estimate)`` as each one ends. Labels are ``continuous``,
    ``discrete T=steps`` and ``exact``.
    """
    batch_size = batch_size or run.config.train.batch_size
    micro_batch = micro_batch or training_micro_batch(run.config.train)
    exact = is_exact(run.model)
    bounds = [(EXACT, EXACT, None)] if exact else [("continuous", "continuous", None)]
    draws = 1 if exact else draws
    if steps is not None and has_discrete_bound(run.model):
        bounds.append(("discrete", f"discrete T={steps}", steps))
    estimates, description = {}, ""
    for name, label, num_steps in bounds:
        held_out = held_out_batches(run, data, split, batch_size, max_batches)
        batches = held_out.batches if progress is None else progress(label, held_out)
        estimates[name] = estimate_nelbo(
            run.model,
            batches,
            draws=draws,
            num_steps=num_steps,
            seed=seed,
            precision=precision,
            micro_batch=micro_batch,
        ).with_characters(held_out.characters_per_token)
        description = held_out.description
        if on_bound is not None:
            on_bound(label, estimates[name])
    return RunEvaluation(description, estimates)
