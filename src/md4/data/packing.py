"""Tokenise documents and pack them into one stream, each document followed by the EOS token."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np

from md4.data.errors import DataError
from md4.data.tokenizers import Tokenizer, token_dtype


def iter_packed(docs: Iterable[str], tokenizer: Tokenizer, *, batch_docs: int = 1024) -> Iterator[np.ndarray]:
    """Yield the packed stream in chunks of ``batch_docs`` documents; empty documents are skipped."""
    if tokenizer.eos_id is None:
        raise DataError(
            f"{type(tokenizer).__name__} has no end-of-text token to separate documents; use GPT2Tokenizer."
        )
    eos = np.array([tokenizer.eos_id], dtype=token_dtype(tokenizer.vocab_size))
    docs = iter(docs)
    while batch := list(itertools.islice(docs, batch_docs)):
        if texts := [doc for doc in batch if doc]:
            yield np.concatenate([part for ids in tokenizer.encode_batch(texts) for part in (ids, eos)])


def pack_documents(docs: Iterable[str], tokenizer: Tokenizer) -> np.ndarray:
    """The whole packed stream ``doc_1 EOS doc_2 EOS ... doc_n EOS`` as one array."""
    chunks = list(iter_packed(docs, tokenizer))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=token_dtype(tokenizer.vocab_size))
