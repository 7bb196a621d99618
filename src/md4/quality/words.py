"""Whether samples are made of real words: the share of a text's words that occur in the training text.

A direct reading of "do the samples read as English words", whatever the tokenizer: a character model must spell
each word, a BPE model can still join pieces into non-words. A word is a run of letters, with inner apostrophes
("o'er", "'tis" counts as "tis"), compared in lower case. Real held-out text scores a little under 1 (names and
rare words the training text lacks), so the measure is reported beside the test split's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


def words(text: str) -> list[str]:
    """The words of ``text``, in lower case."""
    return [word.lower() for word in WORD.findall(text)]


def vocabulary(text: str) -> frozenset[str]:
    """The distinct words of ``text``."""
    return frozenset(words(text))


def known_word_share(texts: Iterable[str], known: frozenset[str]) -> float:
    """The share of the words of ``texts`` that are in ``known`` (nan when the texts have no word)."""
    found = [word for text in texts for word in words(text)]
    return sum(word in known for word in found) / len(found) if found else float("nan")
