"""Hugging Face ``tokenizers``: a byte-level BPE trained on a corpus, any pretrained tokenizer, and the codec that
wraps either (Hugging Face tokenizers, a dependency of md4).

md4 holds a ``tokenizers.Tokenizer`` rather than a ``transformers.AutoTokenizer``: its JSON is the whole tokenizer
(normaliser, pre-tokeniser, model, decoder, added tokens), so ``to_dict`` carries it and a run directory decodes
with no other file; it needs neither transformers nor torch; and it can encode the text of special tokens as
ordinary text (``encode_special_tokens``). transformers is used only to convert a folder that has no
``tokenizer.json`` (a slow tokenizer's ``vocab.txt`` or SentencePiece model) into one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from md4.data.cache import DataError, token_dtype
from md4.data.codec import CODECS
from md4.data.tokenizers import Tokenizer, _as_ids

PIECE_CHARS = 1 << 18  # text is encoded in pieces of about this many characters,
PIECES_AT_ONCE = 16  # this many at a time, in parallel
_PIECE_CUT = re.compile(r"(?<=\S) ")  # a space after a non-space: every pre-tokeniser md4 meets splits there
MASK_NAMES = ("[MASK]", "<mask>")  # BERT's and RoBERTa's, when a tokenizer's config does not name its mask
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.*", "merges.txt"]


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "data.tokenizer needs Hugging Face tokenizers, a dependency of md4; install it with "
            "pip install 'tokenizers>=0.19'."
        ) from None
    return tokenizers


def text_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters, each cut before a space that follows a non-space.

    Byte-level BPE (GPT-2's pre-tokeniser), BERT's and SentencePiece's Metaspace pre-tokenisers all split there,
    so encoding the pieces gives the tokens of the whole text; a tokenizer whose normaliser prepends a marker to
    every text (Llama 2's) differs by a token at each cut.
    """
    pieces, start = [], 0
    while len(text) - start > size:
        cut = _PIECE_CUT.search(text, start + size)
        if cut is None:
            break
        pieces.append(text[start : cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


def train_bpe(text: str, vocab_size: int) -> str:
    """The JSON of a byte-level BPE (GPT-2's scheme: bytes, GPT-2's pre-tokeniser, merges) trained on ``text``.

    Its vocabulary is the 256 bytes plus up to ``vocab_size - 256`` merges (fewer when the text has fewer pairs to
    merge); no special tokens. The same text gives the same JSON (the trainer breaks ties by the pair itself).
    """
    tokenizers = _tokenizers()
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    bpe.train_from_iterator(text_pieces(text), trainer=trainer)
    return bpe.to_str()


class TokenizersCodec(Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` as md4's tokenizer; ``to_dict`` holds its whole JSON.

    Text is encoded without the tokenizer's special tokens: none is added (no ``[CLS]``/``[SEP]``), and a special
    token's text (``[MASK]``) in the input is encoded as ordinary text. Decoding gives what the tokenizer's
    decoder gives: exactly the text for a byte-level BPE; lowercased and re-spaced text for a normalising one such
    as BERT's WordPiece.

    ``special_ids``: the ids of its special tokens; ``mask_token_id`` and ``unk_id``: its mask and unknown
    tokens' ids, or None.
    """

    def __init__(self, tokenizer_json: str, mask_token: str | None = None) -> None:
        try:
            self._tokenizer = _tokenizers().Tokenizer.from_str(tokenizer_json)
        except Exception as err:  # tokenizers raises its own exception type for every malformed JSON
            raise DataError(
                f"this is not a Hugging Face tokenizer's JSON ({err}); save it with Tokenizer.save."
            ) from err
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._tokenizer.encode_special_tokens = True
        self._json = tokenizer_json
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        if not vocab:
            raise DataError("this Hugging Face tokenizer has no tokens; train or choose one that has.")
        self.vocab_size = max(vocab.values()) + 1
        special = {i: t.content for i, t in self._tokenizer.get_added_tokens_decoder().items() if t.special}
        self.special_ids = frozenset(special)
        names = [mask_token] if mask_token is not None else list(MASK_NAMES)
        self.mask_token = next((name for name in names if name in special.values()), None)
        self.mask_token_id = None if self.mask_token is None else vocab[self.mask_token]
        self.unk_id = _unknown_id(json.loads(tokenizer_json).get("model", {}), vocab)

    def encode(self, text: str) -> np.ndarray:
        """The ids of ``text``, encoded in pieces (:func:`text_pieces`), ``PIECES_AT_ONCE`` in parallel at a time
        (the tokenizer's encodings hold far more than the ids, so memory stays bounded for any corpus)."""
        dtype, pieces, arrays = token_dtype(self.vocab_size), text_pieces(text), []
        for first in range(0, len(pieces), PIECES_AT_ONCE):
            encodings = self._tokenizer.encode_batch(pieces[first : first + PIECES_AT_ONCE], add_special_tokens=False)
            arrays.extend(np.array(encoding.ids, dtype=dtype) for encoding in encodings)
        return np.concatenate(arrays)

    def decode(self, ids: Any) -> str:
        return self._tokenizer.decode(_as_ids(ids, self.vocab_size).tolist(), skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "tokenizers", "tokenizer": json.loads(self._json), "mask_token": self.mask_token}


def _unknown_id(model: Mapping[str, Any], vocab: Mapping[str, int]) -> int | None:
    """The unknown token's id: a BPE's or WordPiece's ``unk_token``, a Unigram's ``unk_id``; None without one."""
    if isinstance(model.get("unk_id"), int):
        return model["unk_id"]
    return vocab.get(model.get("unk_token") or "")


def _configured_mask(folder: Path) -> str | None:
    """The mask token a pretrained tokenizer's folder names (``tokenizer_config.json``, ``special_tokens_map.json``)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            mask = json.loads((folder / name).read_text(encoding="utf-8")).get("mask_token")
        except (OSError, ValueError, AttributeError):
            continue
        mask = mask.get("content") if isinstance(mask, dict) else mask
        if isinstance(mask, str):
            return mask
    return None


def is_folder_name(location: str) -> bool:
    """Whether ``hf:LOCATION`` names a local folder (an existing path, or one written as a path) and not a hub id."""
    return location.startswith(("/", ".", "~")) or Path(location).expanduser().exists()


def _hub_folder(repo_id: str) -> Path:
    """A local copy of the tokenizer files of the hub repository ``repo_id``."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=TOKENIZER_FILES))
    except Exception as err:  # the hub client raises many kinds of network and lookup errors
        raise DataError(
            f"could not fetch the tokenizer {repo_id!r} from the Hugging Face hub ({type(err).__name__}); save it "
            "into a folder (tokenizer.save_pretrained) and write data.tokenizer=hf:FOLDER."
        ) from err


def _converted(folder: Path) -> str:
    """The tokenizer JSON of a folder without ``tokenizer.json``, converted by transformers."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder)).backend_tokenizer.to_str()
    except Exception as err:  # transformers raises many kinds of errors for folders it cannot read
        raise DataError(
            f"{folder} has no tokenizer.json and transformers could not read a tokenizer there ({err}); "
            "point data.tokenizer=hf: at a folder written by save_pretrained."
        ) from err


def pretrained_codec(location: str) -> TokenizersCodec:
    """The pretrained tokenizer in a local folder or, for a hub id, downloaded from the Hugging Face hub."""
    folder = Path(location).expanduser() if is_folder_name(location) else _hub_folder(location)
    if not folder.is_dir():
        raise DataError(
            f"no tokenizer folder at {folder}; write data.tokenizer=hf:FOLDER with a folder holding tokenizer.json."
        )
    file = folder / "tokenizer.json"
    text = file.read_text(encoding="utf-8") if file.is_file() else _converted(folder)
    return TokenizersCodec(text, _configured_mask(folder))


CODECS.update(tokenizers=lambda d: TokenizersCodec(json.dumps(d["tokenizer"]), d["mask_token"]))
