"""Matt Mahoney's ``wikifil.pl`` in Python: the filter that turns a Wikipedia XML dump into text8.

It keeps the text of articles (not redirects), drops markup, tables, references,
URLs and image options, lowercases A-Z, spells out digits ("zero" .. "nine") and
turns every other character into a space. Like the Perl original it works on
records that end with ``>``.
"""

from __future__ import annotations

import re

_FIRST_TAG = re.compile(r"<.*>", re.ASCII)
_RULES = [
    (re.compile(pattern, re.ASCII | flags), replacement)
    for pattern, replacement, flags in [
        (r"&amp;", "&", 0),
        (r"&lt;", "<", 0),
        (r"&gt;", ">", 0),
        (r"<ref[^<]*</ref>", "", 0),  # references
        (r"<[^>]*>", "", 0),  # xhtml tags
        (r"\[http:[^\] ]*", "[", 0),  # urls, keeping their visible text
        (r"\|thumb", "", re.IGNORECASE),  # image options, keeping captions
        (r"\|left", "", re.IGNORECASE),
        (r"\|right", "", re.IGNORECASE),
        (r"\|\d+px", "", re.IGNORECASE),
        (r"\[\[image:[^\[\]]*\|", "", re.IGNORECASE),
        (r"\[\[category:([^|\]]*)[^\]]*\]\]", r"[[\1]]", re.IGNORECASE),  # categories as plain words
        (r"\[\[[a-z\-]*:[^\]]*\]\]", "", 0),  # links to other languages
        (r"\[\[[^|\]]*\|", "[[", 0),  # link targets, keeping their visible text
        (r"\{\{[^}]*\}\}", "", 0),  # templates
        (r"\{[^}]*\}", "", 0),  # tables
        (r"[\[\]]", "", 0),
        (r"&[^;]*;", " ", 0),  # other entities
    ]
]
_REDIRECT = re.compile(r"#redirect", re.ASCII | re.IGNORECASE)
_DIGITS = re.compile(r"[0-9]")
_DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NOT_LETTERS = re.compile(r"[^a-z]+")


def _visible_text(record: str) -> str:
    record = _FIRST_TAG.sub("", record, count=1)
    for pattern, replacement in _RULES:
        record = pattern.sub(replacement, record)
    record = f" {record} ".translate(_LOWER)
    record = _DIGITS.sub(lambda m: f" {_DIGIT_WORDS[int(m.group())]} ", record)
    return _NOT_LETTERS.sub(" ", record)[:-1]


def wikifil(xml: str) -> str:
    """Filter a MediaWiki XML dump to text8 format (a-z and single spaces, no leading space)."""
    pieces = []
    in_text = False
    records = xml.split(">")
    for i, record in enumerate(records):
        if i < len(records) - 1:
            record += ">"
        if "<text " in record:
            in_text = True
        if _REDIRECT.search(record):
            in_text = False
        if in_text:
            if "</text>" in record:
                in_text = False
            pieces.append(_visible_text(record))
    return " ".join("".join(pieces).split())
