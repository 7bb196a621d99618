"""``data.tokenizer``: prepared text decoded back to text and encoded again with another tokenizer, as its own
cache entry.

``bpe:N`` trains a byte-level BPE of at most N tokens on the train split alone; ``hf:NAME_OR_DIR`` is a pretrained
Hugging Face tokenizer (:mod:`md4.data.hf_tokenizer`). The entry's ``meta["split_characters"]`` holds the characters
of each split, so that bounds can be given per character too (:meth:`md4.data.PreparedData.characters_per_token`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

from md4.data.cache import DataError
from md4.data.hf_tokenizer import TokenizersCodec, is_folder_name, pretrained_codec, train_bpe
from md4.data.images import PreparedImages
from md4.data.store import Built, PreparedData

BPE_PREFIX, HF_PREFIX = "bpe:", "hf:"
MIN_BPE, MAX_BPE = 257, 65536  # the 256 bytes and at least one merge; ids that fit uint16 + 1
_BPE = re.compile(r"bpe:(\d+)")


def check_tokenizer_spec(spec: str) -> None:
    """Refuse a ``data.tokenizer`` that is not ``bpe:N`` (N in 257..65536) or ``hf:NAME_OR_DIR``; reads no file."""
    if spec.startswith(HF_PREFIX) and spec[len(HF_PREFIX) :].strip():
        return
    match = _BPE.fullmatch(spec)
    if spec.startswith(BPE_PREFIX) and match is None:
        raise DataError(f"data.tokenizer={spec} is not bpe:N with N a whole number of tokens; write e.g. bpe:1024.")
    if match is None:
        raise DataError(
            f"data.tokenizer={spec} is neither bpe:N (a BPE trained on the corpus) nor hf:NAME_OR_DIR (a pretrained "
            "tokenizer); write e.g. bpe:1024, or leave data.tokenizer out for the data's own tokenizer."
        )
    if not MIN_BPE <= int(match[1]) <= MAX_BPE:
        raise DataError(
            f"data.tokenizer={spec} asks for {int(match[1])} tokens but a byte-level BPE has the 256 bytes and at "
            f"least one merge, up to {MAX_BPE}; choose N in {MIN_BPE}..{MAX_BPE}."
        )


def canonical_tokenizer(spec: str | None) -> str | None:
    """``spec`` that means the same from any working directory: an ``hf:`` folder by its resolved path."""
    if spec is None or not spec.startswith(HF_PREFIX) or not is_folder_name(spec[len(HF_PREFIX) :]):
        return spec
    return HF_PREFIX + str(Path(spec[len(HF_PREFIX) :]).expanduser().resolve())


def tokenizer_vocab_size(spec: str) -> int:
    """The vocabulary a ``data.tokenizer`` gives, before any data is read: N for ``bpe:N`` (at most; a corpus with
    fewer pairs to merge gives fewer), the pretrained tokenizer's for ``hf:`` (it is loaded)."""
    check_tokenizer_spec(spec)
    if spec.startswith(BPE_PREFIX):
        return int(spec[len(BPE_PREFIX) :])
    return pretrained_codec(spec[len(HF_PREFIX) :]).vocab_size


def derived_entry(base: PreparedData | PreparedImages, spec: str) -> tuple[str, Callable[[], Built]]:
    """The cache key of ``base`` (prepared data) encoded with the tokenizer ``spec``, and how to build it.

    The key joins the base's key, the spec and a digest of the base's fingerprint (and of the pretrained
    tokenizer's JSON), so new data or another tokenizer under the same name is another entry.
    """
    if not isinstance(base, PreparedData):
        raise DataError(f"data.tokenizer={spec} applies to text, but {base.name} are images; leave it out.")
    check_tokenizer_spec(spec)
    codec = None if spec.startswith(BPE_PREFIX) else pretrained_codec(spec[len(HF_PREFIX) :])
    digest = hashlib.sha256(base.fingerprint.encode())
    if codec is None:
        label = spec.replace(":", "")
    else:
        digest.update(json.dumps(codec.to_dict(), sort_keys=True).encode())
        label = "hf"
    key = f"{base.key}-{label}-{digest.hexdigest()[:16]}"
    return key, lambda: _retokenized(base, spec, codec)


def _retokenized(base: PreparedData, spec: str, codec: TokenizersCodec | None) -> Built:
    """Each split of ``base`` as text, encoded with ``codec``, or with a BPE trained on the train split for
    ``bpe:N``; the meta records the tokenizer, the base entry and the characters per split."""
    texts = {split: base.tokenizer.decode(tokens) for split, tokens in base.splits.items()}
    if "train" not in texts:
        raise DataError(f"{base.name} has no train split to train data.tokenizer={spec} on; prepare it again.")
    if codec is None:
        codec = TokenizersCodec(train_bpe(texts["train"], int(spec[len(BPE_PREFIX) :])))
    encoded = {split: codec.encode(text) for split, text in texts.items()}
    meta = {key: value for key, value in base.meta.items() if key != "tokens"}
    meta.update(
        tokenizer=spec,
        base={"key": base.key, "fingerprint": base.fingerprint},
        split_characters={split: len(text) for split, text in texts.items()},
    )
    return Built(codec, encoded, meta)
