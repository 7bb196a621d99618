"""A held-out n-gram language model that scores samples, and the entropy of a sample's tokens.

Generative perplexity needs a reference model of the data; until md4 has an autoregressive baseline, an
interpolated Kneser-Ney n-gram model (Chen & Goodman 1998) fitted on the training split plays that part: it is
cheap to fit on characters and gives every token a nonzero probability. Low perplexity alone rewards repetitive
text, so :func:`sample_entropy` (Zheng et al. 2024, "Masked diffusion models are secretly time-agnostic masked
models and exploit inaccurate categorical sampling") is reported beside it to expose low-diversity samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_ORDER = 6  # characters: the lowest held-out perplexity on shakespeare among orders 3-7 (docs/benchmarks.md)
MIN_DISCOUNT = 0.1  # keeps every probability positive when a level has no singletons (e.g. periodic data)


def _as_ids(tokens, vocab_size: int, dims: tuple[int, ...], what: str) -> np.ndarray:
    ids = np.asarray(tokens)
    if ids.ndim not in dims or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what} must be an integer array with {' or '.join(map(str, dims))} dimensions of token ids.")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{what} holds ids in [{ids.min()}, {ids.max()}] but vocab_size is {vocab_size}.")
    return ids.astype(np.int64)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == query] for each query, 0 where the key is absent (``keys`` sorted)."""
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[at] == query, values[at], 0)


@dataclass
class Level:
    """One order k of the model: counts of k-grams (coded h * V + w, sorted) and of their (k - 1)-token contexts h.

    ``counts`` are raw counts c(h w) for the highest order a position uses, or continuation counts N1+(. h w),
    the number of distinct tokens seen before h w, for the lower orders it interpolates with (Kneser-Ney).
    """

    grams: np.ndarray
    counts: np.ndarray
    contexts: np.ndarray  # sorted codes of the contexts h
    totals: np.ndarray  # sum_w counts(h w)
    types: np.ndarray  # N1+(h .): the number of distinct w after h
    discount: float

    @classmethod
    def of(cls, grams: np.ndarray, counts: np.ndarray, vocab_size: int) -> Level:
        """The level of sorted unique k-gram codes and their counts; discount n1 / (n1 + 2 n2) (Ney et al. 1994)."""
        contexts, start, types = np.unique(grams // vocab_size, return_index=True, return_counts=True)
        n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
        discount = max(n1 / (n1 + 2 * n2) if n1 else 0.0, MIN_DISCOUNT)
        return cls(grams, counts, contexts, np.add.reduceat(counts, start), types, discount)

    def prob(self, context: np.ndarray, token: np.ndarray, lower: np.ndarray, vocab_size: int) -> np.ndarray:
        """p(w | h) = (max(c(h w) - D, 0) + D N1+(h .) p_lower(w)) / c(h), or p_lower(w) for an unseen h."""
        total = _lookup(self.contexts, self.totals, context)
        count = _lookup(self.grams, self.counts, context * vocab_size + token)
        types = _lookup(self.contexts, self.types, context)
        mixed = (np.maximum(count - self.discount, 0.0) + self.discount * types * lower) / np.maximum(total, 1)
        return np.where(total > 0, mixed, lower)


def _gram_codes(stream: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    """The code sum_j x_{i+j} V^(k-1-j) of every k-gram of a 1-D stream."""
    codes = stream[: len(stream) - k + 1].copy()
    for j in range(1, k):
        codes = codes * vocab_size + stream[j : len(stream) - k + 1 + j]
    return codes


class NGramModel:
    """Interpolated Kneser-Ney of order n over token ids 0..V-1, its lowest order mixed with the uniform 1/V.

    The first tokens of a sequence use the orders their history allows: position i is scored with order
    min(i + 1, n), whose raw counts interpolate with continuation counts below it.
    """

    def __init__(self, vocab_size: int, order: int, raw: list[Level], continuation: list[Level]):
        self.vocab_size, self.order = vocab_size, order
        self.raw, self.continuation = raw, continuation  # index k - 1 holds order k; continuation has n - 1 levels

    @classmethod
    def fit(cls, tokens, vocab_size: int, order: int = DEFAULT_ORDER) -> NGramModel:
        """Count the n-grams of a 1-D stream of token ids (a numpy array or a CPU tensor, e.g. a training split)."""
        if int(order) != order or order < 1:
            raise ValueError(f"order must be a positive integer, got {order}.")
        if float(vocab_size) ** order >= 2.0**63:
            raise ValueError(f"{order}-grams over {vocab_size} tokens do not fit 64-bit codes; use a lower order.")
        stream = _as_ids(tokens, vocab_size, (1,), "tokens")
        if len(stream) < order:
            raise ValueError(f"A {order}-gram model needs at least {order} training tokens, got {len(stream)}.")
        raw = [
            Level.of(*np.unique(_gram_codes(stream, k, vocab_size), return_counts=True), vocab_size)
            for k in range(1, order + 1)
        ]
        continuation = [
            Level.of(*np.unique(raw[k].grams % vocab_size**k, return_counts=True), vocab_size) for k in range(1, order)
        ]
        return cls(vocab_size, order, raw, continuation)

    def _prob(self, history: np.ndarray, known: np.ndarray, token: np.ndarray) -> np.ndarray:
        """p(token | history) for rows of ``history`` [N, n - 1] whose last ``known`` [N] entries are real."""
        top = np.minimum(known, self.order - 1) + 1  # the order each row is scored with
        p = np.full(len(token), 1.0 / self.vocab_size)
        context = np.zeros(len(token), dtype=np.int64)
        for k in range(1, self.order + 1):
            if k > 1:
                context = context + history[:, -(k - 1)] * self.vocab_size ** (k - 2)
            raw = self.raw[k - 1].prob(context, token, p, self.vocab_size)
            below = self.continuation[k - 1].prob(context, token, p, self.vocab_size) if k < self.order else raw
            p = np.where(k < top, below, np.where(k == top, raw, p))
        return p

    def next_token_probs(self, context) -> np.ndarray:
        """p(w | context) for every w: [N, V] for contexts [N, C] (their last n - 1 tokens are used)."""
        ctx = _as_ids(context, self.vocab_size, (2,), "context")
        width = self.order - 1
        history = np.zeros((len(ctx), width), dtype=np.int64)
        if width:
            tail = ctx[:, -width:]
            history[:, width - tail.shape[1] :] = tail
        rows = np.repeat(np.arange(len(ctx)), self.vocab_size)
        tokens = np.tile(np.arange(self.vocab_size), len(ctx))
        known = np.full(len(rows), min(ctx.shape[1], width))
        return self._prob(history[rows], known, tokens).reshape(len(ctx), self.vocab_size)

    def log_prob(self, tokens) -> np.ndarray:
        """log p(x_i | x_<i) in nats for every token of sequences [B, L] (each sequence scored on its own)."""
        ids = _as_ids(tokens, self.vocab_size, (2,), "tokens")
        batch, length = ids.shape
        width = self.order - 1
        padded = np.concatenate([np.zeros((batch, width), dtype=np.int64), ids], axis=1)
        history = np.lib.stride_tricks.sliding_window_view(padded, width, axis=1)[:, :length]
        known = np.broadcast_to(np.arange(length), (batch, length))
        p = self._prob(history.reshape(batch * length, width), known.reshape(-1), ids.reshape(-1))
        return np.log(p).reshape(batch, length)

    def perplexity(self, tokens) -> float:
        """exp of the mean negative log-likelihood per token of sequences [B, L]: generative perplexity."""
        return math.exp(-float(self.log_prob(tokens).mean()))


def sample_entropy(tokens) -> float:
    """The mean over samples [B, L] of the entropy in bits of each sample's empirical token distribution.

    Zheng et al. (2024) use it to detect low-diversity samples: text that repeats a few tokens has low
    generative perplexity but also low entropy (a constant sample has 0, a cycle over V tokens log2 V).
    """
    ids = np.asarray(tokens)
    if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        raise ValueError("tokens must be a non-empty [B, L] array of non-negative integer token ids.")
    size = int(ids.max()) + 1
    rows = np.arange(ids.shape[0])[:, None] * size
    counts = np.bincount((ids + rows).reshape(-1), minlength=size * ids.shape[0]).reshape(-1, size)
    p = counts / ids.shape[1]
    return float((p * np.log2(1.0 / np.where(p > 0, p, 1.0))).sum(1).mean())
