"""Tokenizers: codecs for text (text8 characters, corpus characters, GPT-2 BPE) that also encode."""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np

from md4.data.cache import DataError, token_dtype
from md4.data.codec import CODECS, Codec, as_ids


def _as_ids(ids: Any, vocab_size: int) -> np.ndarray:
    """Turn a sequence, numpy array or torch tensor of ids into a checked 1-D int64 array."""
    arr = as_ids(ids, vocab_size)
    if arr.ndim != 1:
        raise DataError(f"decode takes a 1-D sequence of ids but got shape {arr.shape}; decode one row at a time.")
    return arr


class Tokenizer(Codec):
    """A codec for text: also maps text to ids in ``[0, vocab_size)``."""

    eos_id: int | None = None

    @abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """Return the ids of ``text`` as a 1-D array of dtype ``token_dtype(vocab_size)``."""

    def encode_batch(self, texts: Iterable[str]) -> list[np.ndarray]:
        """Encode several texts (subclasses may do it in parallel)."""
        return [self.encode(text) for text in texts]


def _code_points(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` as an unsigned integer array (one byte each when ASCII)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


class CharTokenizer(Tokenizer):
    """One id per character: id ``i`` is ``chars[i]``."""

    def __init__(self, chars: str) -> None:
        if not chars:
            raise DataError("a CharTokenizer needs at least one character; build it from a non-empty corpus.")
        if len(set(chars)) != len(chars):
            raise DataError("the CharTokenizer vocabulary lists a character twice; give each character once.")
        self.chars = chars
        self.vocab_size = len(chars)
        codes = [ord(c) for c in chars]
        # Dense code point -> id table; unknown code points (including all beyond it) map to vocab_size.
        self._table = np.full(max(256, max(codes) + 2), self.vocab_size, dtype=token_dtype(self.vocab_size))
        self._table[codes] = np.arange(self.vocab_size)
        self._char_array = np.array(list(chars))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of the sorted unique characters of ``text``."""
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> np.ndarray:
        codes = _code_points(text)
        if codes.dtype != np.uint8:
            codes = np.minimum(codes, len(self._table) - 1)
        ids = self._table[codes]
        unknown = ids == self.vocab_size
        if unknown.any():
            i = int(np.argmax(unknown))
            raise DataError(self._unknown_message(text[i], i))
        return ids

    def _unknown_message(self, char: str, position: int) -> str:
        return (
            f"character {char!r} (U+{ord(char):04X}) at position {position} is not in this "
            "CharTokenizer's vocabulary; build the tokenizer from a corpus that contains it."
        )

    def decode(self, ids: Any) -> str:
        return "".join(self._char_array[_as_ids(ids, self.vocab_size)].tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars}


class Text8Tokenizer(CharTokenizer):
    """text8's alphabet: ``a``-``z`` are 0..25 and space is 26 (V = 27)."""

    def __init__(self) -> None:
        super().__init__("abcdefghijklmnopqrstuvwxyz ")

    def _unknown_message(self, char: str, position: int) -> str:
        return (
            f"text8 text holds only lowercase a-z and spaces but found {char!r} at position {position}; "
            "filter the text the way text8 is made (md4.data.wikifil) before encoding."
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": "text8"}


class GPT2Tokenizer(Tokenizer):
    """GPT-2 byte-pair encoding through tiktoken (V = 50257, ``<|endoftext|>`` = 50256).

    Text is encoded as ordinary text: a literal ``<|endoftext|>`` in it is not the EOS token.
    The BPE files are located on first use (see ``md4.data.bpe.load_gpt2_encoding``).
    """

    vocab_size = 50257
    eos_id = 50256

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self._cache_dir = cache_dir
        self._encoding: Any = None

    @property
    def encoding(self) -> Any:
        """The ``tiktoken.Encoding``, loaded on first use."""
        if self._encoding is None:
            from md4.data.bpe import load_gpt2_encoding

            self._encoding = load_gpt2_encoding(self._cache_dir)
        return self._encoding

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.encoding.encode_ordinary(text), dtype=token_dtype(self.vocab_size))

    def encode_batch(self, texts: Iterable[str]) -> list[np.ndarray]:
        dtype = token_dtype(self.vocab_size)
        return [np.array(ids, dtype=dtype) for ids in self.encoding.encode_ordinary_batch(list(texts))]

    def decode(self, ids: Any) -> str:
        return self.encoding.decode(_as_ids(ids, self.vocab_size).tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"type": "gpt2"}


CODECS.update(
    text8=lambda d: Text8Tokenizer(),
    char=lambda d: CharTokenizer(d["chars"]),
    gpt2=lambda d: GPT2Tokenizer(),
)
