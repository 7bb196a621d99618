"""Zero-shot perplexity: a GPT-2-tokenised run's bound (an autoregressive run's exact likelihood) on corpora it was
not trained on, the protocol of SEDD (Lou et al. 2024, Sec. 5.1) and MDLM (Sahoo et al. 2024, Sec. 4.1).

Each document (a row of the corpus's text column, detokenised: :mod:`md4.quality.zero_shot_text`) is GPT-2
tokenised and followed by ``<|endoftext|>`` (empty rows too, as in both papers' code: they become a lone
end-of-text), the documents are concatenated into one stream, and the stream is cut into blocks of the model's
length; the last partial block is dropped. The papers differ in one thing, the ``layout``:

- ``sedd``: blocks of L tokens of the stream, as they come;
- ``mdlm``: blocks of L - 2 tokens of the stream, each wrapped as ``<|endoftext|> block <|endoftext|>`` (GPT-2's
  BOS and EOS are the same token).

md4 follows SEDD by default: MD4 (Shi et al. 2024, Table 2) reports against SEDD's numbers, and md4 trains on
streams packed the same way (documents followed by ``<|endoftext|>``, windows that start anywhere, no BOS). Both
reference implementations group the stream in ``datasets.map`` batches of 1,000 documents per worker, dropping a
remainder in each; md4 groups the whole split at once and drops only the final remainder (less than one block per
1,000 documents more data). MDLM pads documents one per block for its LM1B-trained models; md4's networks have no
padding mask, so it offers no padded layout (MDLM's zero-shot evaluation of OpenWebText models wraps, as here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from md4.data import Batch, DataError, GPT2Tokenizer
from md4.evaluate import BoundEstimate, estimate_nelbo, is_exact, training_micro_batch
from md4.quality.zero_shot_corpora import Corpus, read_documents

LAYOUTS = ("sedd", "mdlm")


def wrap_documents(
    documents: Iterable[np.ndarray], seq_len: int, eos_id: int, layout: str = "sedd", max_chunks: int | None = None
) -> np.ndarray:
    """The blocks ``[N, seq_len]`` (int64) of tokenised ``documents``, each followed by ``eos_id``, in ``layout``
    (see the module's docstring); at most ``max_chunks`` blocks, from the start."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown zero-shot layout {layout!r}; choose {' or '.join(LAYOUTS)}.")
    body = seq_len - 2 if layout == "mdlm" else seq_len
    if body < 1:
        raise DataError(f"the mdlm layout needs sequences of at least 3 tokens, but this run's are {seq_len}.")
    eos = np.array([eos_id], dtype=np.int64)
    stream = np.concatenate([np.empty(0, dtype=np.int64), *(part for doc in documents for part in (doc, eos))])
    count = len(stream) // body if max_chunks is None else min(max_chunks, len(stream) // body)
    blocks = stream[: count * body].astype(np.int64).reshape(count, body)
    if layout == "mdlm":
        edge = np.full((count, 1), eos_id, dtype=np.int64)
        blocks = np.concatenate([edge, blocks, edge], axis=1)
    return blocks


def corpus_blocks(
    corpus: Corpus,
    tokenizer: GPT2Tokenizer,
    seq_len: int,
    folder: str | Path | None = None,
    layout: str = "sedd",
    max_chunks: int | None = None,
) -> np.ndarray:
    """The evaluation blocks of ``corpus``: read (hub or ``folder``), detokenised, GPT-2 tokenised, wrapped."""
    texts = [corpus.detokenise(text) for text in read_documents(corpus, folder)]
    blocks = wrap_documents(tokenizer.encode_batch(texts), seq_len, tokenizer.eos_id, layout, max_chunks)
    if len(blocks) == 0:
        raise DataError(
            f"{corpus.title} holds fewer tokens than one block of {seq_len}; give it its whole {corpus.split} split."
        )
    return blocks


@dataclass
class ZeroShotResult:
    """A run's bound on one corpus: per-token perplexity (an upper bound, or exact for an autoregressive run)."""

    corpus: Corpus
    layout: str
    exact: bool
    estimate: BoundEstimate

    @property
    def tokens(self) -> int:
        return self.estimate.num_sequences * self.estimate.tokens_per_sequence

    def to_dict(self) -> dict:
        return {
            "corpus": self.corpus.title,
            "source": self.corpus.source,
            "layout": self.layout,
            "bound": "exact" if self.exact else "continuous",
            "chunks": self.estimate.num_sequences,
            "tokens": self.tokens,
            **self.estimate.to_dict(),
        }


def _batches(blocks: np.ndarray, batch_size: int) -> Iterator[Batch]:
    for first in range(0, len(blocks), batch_size):
        yield torch.from_numpy(blocks[first : first + batch_size]), None


Progress = Callable[[Corpus, Iterator[Batch], int], Iterable[Batch]]  # (corpus, batches, count) -> batches to use


def zero_shot(
    run,
    corpora: list[Corpus],
    *,
    folder: str | Path | None = None,
    layout: str = "sedd",
    max_chunks: int | None = None,
    batch_size: int | None = None,
    micro_batch: int | None = None,
    draws: int = 1,
    seed: int = 0,
    precision: str = "fp32",
    progress: Progress | None = None,
) -> list[ZeroShotResult]:
    """The zero-shot perplexity of a loaded GPT-2-tokenised run (:class:`md4.runs.directory.LoadedRun`) on each of
    ``corpora``: the continuous-time NELBO (paper Eq. 4; ``draws`` Monte-Carlo draws per block), or an
    autoregressive run's exact NLL, per token of the blocks, with :func:`md4.evaluate.estimate_nelbo`."""
    if not isinstance(run.codec, GPT2Tokenizer):
        raise DataError(
            f"zero-shot perplexity needs a GPT-2-tokenised run (codec gpt2, V = 50257), but {run.run_dir} uses the "
            f"{run.codec.to_dict()['type']!r} codec; evaluate a run trained on GPT-2 tokens (e.g. owt-gpt2-small)."
        )
    seq_len = run.spec.data_shape[-1]  # a text run's examples are [seq_len]
    batch_size = batch_size or run.config.train.batch_size
    micro_batch = micro_batch or training_micro_batch(run.config.train)
    exact = is_exact(run.model)
    results = []
    for corpus in corpora:
        blocks = corpus_blocks(corpus, run.codec, seq_len, folder, layout, max_chunks)
        batches: Iterable[Batch] = _batches(blocks, batch_size)
        if progress is not None:
            batches = progress(corpus, batches, -(-len(blocks) // batch_size))
        estimate = estimate_nelbo(
            run.model, batches, draws=1 if exact else draws, seed=seed, precision=precision, micro_batch=micro_batch
        )
        results.append(ZeroShotResult(corpus, layout, exact, estimate))
    return results
