"""Likelihood bounds on held-out data: NELBO in nats, bits per token and perplexity, with standard errors."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from md4.diffusion import MD4
from md4.run import autocast


@dataclass
class BoundEstimate:
    """A Monte-Carlo estimate of the NELBO over a set of sequences (method file Sec. 5)."""

    nelbo: float  # nats per sequence, mean over sequences
    stderr: float  # standard error of that mean (sequences are the independent units)
    num_sequences: int
    tokens_per_sequence: int
    draws: int
    num_steps: int | None  # None: continuous-time bound; T: discrete-time bound

    @property
    def bits_per_token(self) -> float:
        return self.nelbo / (self.tokens_per_sequence * math.log(2))

    @property
    def bits_per_token_stderr(self) -> float:
        return self.stderr / (self.tokens_per_sequence * math.log(2))

    @property
    def perplexity(self) -> float:
        return math.exp(self.nelbo / self.tokens_per_sequence)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "bits_per_token": self.bits_per_token,
            "bits_per_token_stderr": self.bits_per_token_stderr,
            "perplexity": self.perplexity,
        }


@torch.no_grad()
def estimate_nelbo(
    model: MD4,
    batches: Iterable[torch.Tensor],
    draws: int = 1,
    num_steps: int | None = None,
    seed: int = 0,
    precision: str = "fp32",
) -> BoundEstimate:
    """Average ``draws`` NELBO draws per sequence (fixed seed), then the mean and standard error over sequences.

    ``num_steps=None`` estimates the continuous-time bound (paper Eq. 4), an integer T the discrete-time one (Eq. 3).
    """
    if draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws}.")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    per_sequence = []
    tokens = None
    for x in batches:
        x = x.to(device)
        tokens = x[0].numel()
        with autocast(device, precision):
            total = sum(model.nelbo(x, num_steps=num_steps, generator=generator).double() for _ in range(draws))
        per_sequence.append(total / draws)
    if tokens is None:
        raise ValueError("No evaluation data: the split is empty or shorter than one sequence.")
    values = torch.cat(per_sequence)
    stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return BoundEstimate(float(values.mean()), stderr, len(values), tokens, draws, num_steps)
