"""Data: codecs and tokenizers, corpus and image recipes cached as memory-mapped token arrays, and datasets that
batch them."""

from md4.data.batches import ArrayDataset, Batch, Dataset, TokenStream, eval_chunks, prepared_of, random_windows
from md4.data.cache import DataError, cache_dir, token_dtype
from md4.data.codec import Codec, RawCodec, codec_from_dict
from md4.data.hf_tokenizer import TokenizersCodec
from md4.data.images import ImageCodec, ImageDataset, PreparedImages
from md4.data.recipes import (
    available_recipes,
    canonical_name,
    dataset_of,
    is_image_recipe,
    load_cached,
    open_dataset,
    prepare,
    recipe_descriptions,
    recipe_image_shape,
    recipe_num_classes,
    recipe_vocab_size,
)
from md4.data.retokenize import canonical_tokenizer, check_tokenizer_spec, tokenizer_vocab_size
from md4.data.store import PreparedData
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
    "ImageCodec",
    "ImageDataset",
    "PreparedData",
    "PreparedImages",
    "RawCodec",
    "Text8Tokenizer",
    "TokenStream",
    "Tokenizer",
    "TokenizersCodec",
    "available_recipes",
    "cache_dir",
    "canonical_name",
    "canonical_tokenizer",
    "check_tokenizer_spec",
    "codec_from_dict",
    "dataset_of",
    "eval_chunks",
    "is_image_recipe",
    "load_cached",
    "open_dataset",
    "prepare",
    "prepared_of",
    "random_windows",
    "recipe_descriptions",
    "recipe_image_shape",
    "recipe_num_classes",
    "recipe_vocab_size",
    "token_dtype",
    "tokenizer_vocab_size",
    "wikifil",
]
