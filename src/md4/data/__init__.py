"""Data: codecs and tokenizers, corpus recipes cached as memory-mapped token arrays, and datasets that batch them."""

from md4.data.batches import ArrayDataset, Batch, Dataset, TokenStream, eval_chunks, random_windows
from md4.data.codec import Codec, RawCodec, codec_from_dict
from md4.data.recipes import (
    available_recipes,
    canonical_name,
    load_cached,
    prepare,
    recipe_descriptions,
    recipe_vocab_size,
)
from md4.data.store import DataError, PreparedData, cache_dir, token_dtype
from md4.data.tokenizers import CharTokenizer, GPT2Tokenizer, Text8Tokenizer, Tokenizer
from md4.data.wikifil import wikifil

__all__ = [
    "ArrayDataset",
    "Batch",
    "CharTokenizer",
    "Codec",
    "DataError",
    "Dataset",
    "GPT2Tokenizer",
    "PreparedData",
    "RawCodec",
    "Text8Tokenizer",
    "TokenStream",
    "Tokenizer",
    "available_recipes",
    "cache_dir",
    "canonical_name",
    "codec_from_dict",
    "eval_chunks",
    "load_cached",
    "prepare",
    "random_windows",
    "recipe_descriptions",
    "recipe_vocab_size",
    "token_dtype",
    "wikifil",
]
