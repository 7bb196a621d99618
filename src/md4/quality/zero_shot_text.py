"""The detokenisers of the zero-shot protocol: each corpus's raw text is turned back into ordinary prose before it
is GPT-2 tokenised, as SEDD (Lou et al. 2024, "Discrete Diffusion Modeling by Estimating the Ratios of the Data
Distribution", Sec. 5.1 and its released data code) and MDLM (Sahoo et al. 2024, "Simple and Effective Masked
Diffusion Language Models", Sec. 4.1 and its released data code) do; both papers use the same rules, which md4
applies in the same order so that the token streams, and so the perplexities, are comparable.

Each rule is a literal replacement or a regular expression, applied once, in order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Rule = tuple[str, str] | tuple[re.Pattern[str], str]


def _apply(rules: Sequence[Rule], text: str) -> str:
    for pattern, replacement in rules:
        if isinstance(pattern, re.Pattern):
            text = pattern.sub(replacement, text)
        else:
            text = text.replace(pattern, replacement)
    return text


def _between(opening: str, closing: str) -> re.Pattern[str]:
    """A bracketed span with the spaces inside its brackets captured apart from its content: ``( a b )``."""
    o, c = re.escape(opening), re.escape(closing)
    return re.compile(rf"{o}\s*([^{c}]*?)\s*{c}")


# WikiText (Merity et al. 2016) splits numbers with " @-@ ", " @,@ ", " @.@ ", spaces out punctuation and
# headings ("= = Career = ="), and writes a space before each line break. (The reference code's first regular
# expression, r"/' [0-9]/", matches literal slashes that WikiText never has; it changes nothing and is left out.)
WIKITEXT_RULES: tuple[Rule, ...] = (
    ("s '", "s'"),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    *((f" {mark} ", f"{mark} ") for mark in ":;.!?,"),
    *((_between(o, c), rf"{o}\1{c}") for o, c in ("()", "[]", "{}", '""', "''")),
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
)

# The Penn Treebank (Marcus et al. 1993, Mikolov's language-modelling text) is lower-cased and tokenised: clitics
# split off ("do n't", "it 's"), numbers replaced by N, rare words by <unk>, slashes escaped.
PTB_RULES: tuple[Rule, ...] = (
    (" 's", "'s"),
    ("s ' ", "s' "),
    (" n't", "n't"),
    (" \n ", "\n"),
    ("\\/", "/"),
    # " N N N " overlaps itself: each pass turns every other N into 1; the reference code makes ten passes.
    *((" N ", " 1 "),) * 10,
    ("$ 1", "$1"),
    ("# 1", "#1"),
    ("<unk>", "?"),
)

# One Billion Words (Chelba et al. 2013): tokenised sentences, punctuation and quotes spaced out.
LM1B_RULES: tuple[Rule, ...] = (
    ("http : / / ", "http://"),
    ("https : / / ", "https://"),
    (re.compile(r" '(\w+)"), r"'\1"),
    (re.compile(r" (\w+) \. "), r" \1. "),
    (re.compile(r" (\w+) \.$"), r" \1."),
    (" ? ", "? "),
    (re.compile(r" \?$"), "?"),
    (" ! ", "! "),
    (re.compile(r" !$"), "!"),
    (" , ", ", "),
    (" : ", ": "),
    (" ; ", "; "),
    (" / ", "/"),
    (re.compile(r'" ([^"]+) "'), r'"\1"'),
    (re.compile(r"' ([^']+) '"), r"'\1'"),
    (re.compile(r"\( ([^()]+) \)"), r"(\1)"),
    (re.compile(r"\[ ([^\[\]]+) \]"), r"[\1]"),
    ("$ ", "$"),
    ("\N{POUND SIGN} ", "\N{POUND SIGN}"),
)


def wikitext(text: str) -> str:
    """WikiText-2 and WikiText-103 (raw) lines as prose."""
    return _apply(WIKITEXT_RULES, text)


def ptb(text: str) -> str:
    """A Penn Treebank sentence as prose (``<unk>`` becomes ``?``, ``N`` becomes ``1``)."""
    return _apply(PTB_RULES, text)


def lm1b(text: str) -> str:
    """A One Billion Words sentence as prose."""
    return _apply(LM1B_RULES, text)


def lambada(text: str) -> str:
    """A LAMBADA passage (OpenAI's release): curly double quotes made straight, led by a line break."""
    return (
        "\n"
        + text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"').replace("\N{RIGHT DOUBLE QUOTATION MARK}", '"').strip()
    )


def scientific_papers(text: str) -> str:
    """An arXiv or PubMed article (Cohan et al. 2018): the WikiText rules, then the One Billion Words ones."""
    return lm1b(wikitext(text))


def unchanged(text: str) -> str:
    """AG News is ordinary prose: no detokeniser."""
    return text


Detokeniser = Callable[[str], str]
