"""Data: tokenizers, corpus recipes cached as memory-mapped token arrays, and batch loaders."""

from md4.data.batches import TextBatches
from md4.data.cache import cache_dir
from md4.data.errors import DataError
from md4.data.loader import eval_chunks, num_chunks, random_windows
from md4.data.packing import pack_documents
from md4.data.recipes import available_recipes, prepare, recipe_descriptions
from md4.data.store import PreparedData
from md4.data.tokenizers import (
    CharTokenizer,
    GPT2Tokenizer,
    Text8Tokenizer,
    Tokenizer,
    token_dtype,
    tokenizer_from_dict,
)
from md4.data.wikifil import wikifil

__all__ = [
    "CharTokenizer",
    "TextBatches",
    "DataError",
    "GPT2Tokenizer",
    "PreparedData",
    "Text8Tokenizer",
    "Tokenizer",
    "available_recipes",
    "cache_dir",
    "eval_chunks",
    "num_chunks",
    "pack_documents",
    "prepare",
    "random_windows",
    "recipe_descriptions",
    "tokenizer_from_dict",
    "token_dtype",
    "wikifil",
]
