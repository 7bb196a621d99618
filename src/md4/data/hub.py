"""``hf:NAME[:CONFIG]``: any Hugging Face dataset with a "text" column, GPT-2 tokenised and packed
(each document followed by the end-of-text token).

Needs the optional ``datasets`` package (``pip install md4[hub]``) and a network.
Missing test / validation splits are carved off the end of train (0.5% of its documents each),
so a stream without them reads train | valid | test in document order.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from md4.data.cache import DataError, token_dtype
from md4.data.store import Built
from md4.data.tokenizers import GPT2Tokenizer, Tokenizer

PREFIX = "hf:"
VALID_NAMES = ("validation", "valid", "dev")
CARVE_FRACTION = 0.005


def parse_hub_name(spec: str) -> tuple[str, str | None]:
    """``"hf:NAME[:CONFIG]"`` -> ``(NAME, CONFIG or None)``."""
    name, _, config = spec[len(PREFIX) :].partition(":")
    if not spec.startswith(PREFIX) or not name:
        raise DataError(f"{spec!r} is not a hub dataset; write it as hf:NAME or hf:NAME:CONFIG.")
    return name, config or None


def hub_key(name: str, config: str | None) -> str:
    """The cache folder name of a hub dataset: readable, and unique through a hash of the exact name and config."""
    spec = f"{name}:{config}" if config else name
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"hf-{name}" + (f"-{config}" if config else ""))
    return f"{readable}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def iter_packed(docs: Iterable[str], tokenizer: Tokenizer, *, batch_docs: int = 1024) -> Iterator[np.ndarray]:
    """Tokenise ``docs`` into one stream ``doc_1 EOS doc_2 EOS ...``, yielded in chunks of ``batch_docs`` documents.

    Empty documents are skipped.
    """
    if tokenizer.eos_id is None:
        raise DataError(
            f"{type(tokenizer).__name__} has no end-of-text token to separate documents; use GPT2Tokenizer."
        )
    eos = np.array([tokenizer.eos_id], dtype=token_dtype(tokenizer.vocab_size))
    docs = iter(docs)
    while batch := list(itertools.islice(docs, batch_docs)):
        if texts := [doc for doc in batch if doc]:
            yield np.concatenate([part for ids in tokenizer.encode_batch(texts) for part in (ids, eos)])


def _carve(dataset: Any, k: int) -> tuple[Any, Any]:
    """Split the last ``k`` documents off ``dataset``."""
    n = len(dataset)
    if n - k < 1:
        raise DataError(
            f"the train split has only {n} documents, too few to carve off valid and test; use a larger dataset."
        )
    return dataset.select(range(n - k)), dataset.select(range(n - k, n))


def _assign_splits(dataset_dict: Any) -> dict[str, Any]:
    if "train" not in dataset_dict:
        raise DataError(f"the dataset has no train split (it has {sorted(dataset_dict)}); pick another dataset.")
    train = dataset_dict["train"]
    k = max(1, int(len(train) * CARVE_FRACTION))
    valid = next((dataset_dict[s] for s in VALID_NAMES if s in dataset_dict), None)
    test = dataset_dict.get("test")
    if test is None:
        train, test = _carve(train, k)
    if valid is None:
        train, valid = _carve(train, k)
    return {"train": train, "valid": valid, "test": test}


def _texts(dataset: Any) -> Iterator[str]:
    for batch in dataset.iter(batch_size=1000):
        yield from batch["text"]


def no_remote_code(version: str) -> dict[str, Any]:
    """The ``load_dataset`` arguments that keep a dataset's own loading script from running: ``datasets`` 4 and
    newer run no loading script at all (and only log an error for the argument); 2.16 to 3.x need
    ``trust_remote_code=False``, which 2.16 to 2.19 did not default to; older versions cannot be told, so they are
    refused."""
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    if major >= 4:
        return {}
    if (major, minor) >= (2, 16):
        return {"trust_remote_code": False}
    raise DataError(
        f"datasets {version} may run a hub dataset's own code and cannot be told not to; upgrade it with "
        "`pip install -U 'datasets>=4'` (or `pip install -U md4[hub]`)."
    )


def build_hub(name: str, config: str | None, cache: Path | None = None) -> Built:
    """Download the dataset with ``datasets`` and stream each split's packed GPT-2 tokens."""
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            "hub datasets need the optional `datasets` package; install it with `pip install md4[hub]`."
        ) from err
    dataset_dict = datasets.load_dataset(name, config, **no_remote_code(datasets.__version__))
    splits = _assign_splits(dataset_dict)
    for split, dataset in splits.items():
        if "text" not in dataset.column_names:
            raise DataError(
                f"the {split} split of {name} has no 'text' column (it has {dataset.column_names}); "
                "pick a text dataset."
            )
    tokenizer = GPT2Tokenizer(cache_dir=cache)
    meta = {
        "source": f"{PREFIX}{name}" + (f":{config}" if config else ""),
        "documents": {split: len(dataset) for split, dataset in splits.items()},
    }
    return Built(tokenizer, {s: iter_packed(_texts(d), tokenizer) for s, d in splits.items()}, meta)
