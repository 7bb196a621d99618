"""Tiny masked LMs saved the way a real checkpoint is (``save_pretrained``): a WordPiece tokenizer trained on a few
lines of text, and a randomly initialised BERT or ModernBERT of width 32 around it."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them. To die: to sleep;",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_tokenizer(lines: list[str] = TEXT, vocab_size: int = 120):
    """A BERT-style fast tokenizer (WordPiece, lowercased) trained on ``lines``; ids 0..4 are the specials."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    return BertTokenizerFast(
        tokenizer_object=tokenizer, **{f"{n}_token": f"[{n.upper()}]" for n in ("pad", "unk", "cls", "sep", "mask")}
    )


def save_masked_lm(folder: Path, family: str = "bert", extra_rows: int = 0, tokenizer=None, **options) -> Path:
    """A tiny randomly initialised masked LM of ``family`` ("bert" or "modernbert") with ``extra_rows`` padding rows
    in its embedding table (and any other config ``options``), and its tokenizer, saved to ``folder``."""
    from transformers import AutoModelForMaskedLM, BertConfig, ModernBertConfig

    tokenizer = tokenizer or wordpiece_tokenizer()
    ids = {f"{n}_token_id": tokenizer.convert_tokens_to_ids(f"[{n.upper()}]") for n in ("pad", "cls", "sep")}
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64, **options}  # fmt: skip
    size = len(tokenizer) + extra_rows
    if family == "bert":
        config = BertConfig(vocab_size=size, **shape, pad_token_id=ids["pad_token_id"])
    else:
        config = ModernBertConfig(
            vocab_size=size,
            **shape,
            **ids,
            bos_token_id=ids["cls_token_id"],
            eos_token_id=ids["sep_token_id"],
        )
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
