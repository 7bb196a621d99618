"""The trainer's view of data: a ``Dataset`` gives random training batches and consecutive evaluation batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from md4.data.cache import DataError
from md4.data.codec import Codec
from md4.data.store import PreparedData

Batch = tuple[torch.Tensor, torch.Tensor | None]
"""Tokens int64 [B, *data_shape] and their class labels int64 [B], or None for unlabelled data."""


@runtime_checkable
class Dataset(Protocol):
    """Examples of shape ``data_shape`` with ids in ``[0, vocab_size)`` and optional class labels.

    ``train_batch`` draws all its randomness from ``generator``, so restoring the generator's state
    resumes the same stream; ``eval_batches`` yields a split's examples in a fixed order.
    ``part`` (distributed training) keeps only those rows of the batch: the draws for the whole batch are
    still made, so the generator's stream and the union of every process's part do not depend on how many
    processes share the batch. A dataset read from md4's cache may also declare ``prepared`` (see
    :func:`prepared_of`), so that runs record its fingerprint and check its splits' checksums.
    """

    codec: Codec
    vocab_size: int  # codec.vocab_size
    data_shape: tuple[int, ...]
    num_classes: int | None  # None: no labels

    def train_batch(self, batch_size: int, generator: torch.Generator, part: slice | None = None) -> Batch:
        """A random training batch (its rows ``part`` only, when given)."""
        ...

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
        """Consecutive batches of up to ``batch_size`` examples of ``split``, at most ``max_batches`` of them."""
        ...


class Prepared(Protocol):
    """Data prepared in md4's cache (text: ``PreparedData``; images: ``PreparedImages``): its canonical name, cache
    key and content fingerprint, and a check of a split against its checksum."""

    name: str
    key: str
    fingerprint: str
    meta: dict[str, Any]

    def verify(self, split: str) -> None: ...  # pragma: no cover


def prepared_of(dataset: Dataset) -> Prepared | None:
    """The prepared data in md4's cache that a dataset reads (its checksums and fingerprint), or None: in-memory
    data, or a dataset of the user's own that does not declare a ``prepared`` field (the field is optional)."""
    return getattr(dataset, "prepared", None)  # the dataset contract's one look at an optional field


def _check(tokens: np.ndarray, seq_len: int, batch_size: int) -> None:
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len and batch_size must be positive, got seq_len={seq_len} and batch_size={batch_size}.")
    if len(tokens) < seq_len:
        raise DataError(
            f"the split has {len(tokens)} tokens, fewer than seq_len={seq_len}; "
            "use a shorter seq_len or a larger corpus."
        )


def random_windows(
    tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator, part: slice | None = None
) -> torch.Tensor:
    """``[batch_size, seq_len]`` windows at uniform random offsets drawn from ``generator`` (rows ``part`` only).

    All randomness comes from the generator, so restoring its state resumes the same stream.
    """
    _check(tokens, seq_len, batch_size)
    starts = torch.randint(0, len(tokens) - seq_len + 1, (batch_size,), generator=generator).numpy()
    starts = starts if part is None else starts[part]
    index = starts[:, None] + np.arange(seq_len)
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))


def _num_chunks(tokens: np.ndarray, seq_len: int) -> int:
    """How many non-overlapping windows of ``seq_len`` fit in ``tokens`` (the ragged tail is dropped)."""
    return len(tokens) // seq_len


def eval_chunks(
    tokens: np.ndarray, seq_len: int, batch_size: int, max_chunks: int | None = None
) -> Iterator[torch.Tensor]:
    """Consecutive non-overlapping ``seq_len`` chunks in batches of up to ``batch_size`` rows, in order."""
    _check(tokens, seq_len, batch_size)
    n = _num_chunks(tokens, seq_len) if max_chunks is None else min(max_chunks, _num_chunks(tokens, seq_len))
    for first in range(0, n, batch_size):
        rows = min(batch_size, n - first)
        chunk = tokens[first * seq_len : (first + rows) * seq_len]
        yield torch.from_numpy(np.asarray(chunk, dtype=np.int64).reshape(rows, seq_len))


def _max_rows(batch_size: int, max_batches: int | None) -> int | None:
    return None if max_batches is None else max_batches * batch_size


class TokenStream:
    """A prepared corpus as unlabelled sequences of ``seq_len`` tokens: random windows for training,
    consecutive non-overlapping chunks for evaluation."""

    num_classes: int | None = None

    def __init__(self, prepared: PreparedData, seq_len: int) -> None:
        if seq_len < 1:
            raise DataError(f"seq_len must be a positive number of tokens, got {seq_len}.")
        self.prepared = prepared
        self.seq_len = seq_len
        self.codec: Codec = prepared.tokenizer
        self.vocab_size = self.codec.vocab_size
        self.data_shape = (seq_len,)

    def _split(self, split: str) -> np.ndarray:
        if split not in self.prepared.splits:
            raise DataError(f"unknown split {split!r}; this corpus has {', '.join(self.prepared.splits)}.")
        return self.prepared.splits[split]

    def train_batch(self, batch_size: int, generator: torch.Generator, part: slice | None = None) -> Batch:
        return random_windows(self._split("train"), batch_size, self.seq_len, generator, part), None

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
        chunks = eval_chunks(self._split(split), self.seq_len, batch_size, _max_rows(batch_size, max_batches))
        return ((x, None) for x in chunks)


_TORCH_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)  # torch indexes these poorly: widen them
_NUMPY_WIDER = {"u2": np.int32, "u4": np.int64, "u8": np.int64}


def _as_tensor(values: Any, what: str) -> torch.Tensor:
    """An integer numpy array (copied) or torch tensor as a CPU tensor of an integer dtype that torch indexes."""
    if isinstance(values, torch.Tensor):
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise DataError(f"{what} has dtype {values.dtype}, not an integer type; convert it to integer ids.")
        values = values.detach().cpu()
        return values.long() if values.dtype in _TORCH_UNSIGNED else values
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{what} has dtype {array.dtype}, not an integer type; convert it to integer ids.")
    dtype = _NUMPY_WIDER.get(f"{array.dtype.kind}{array.dtype.itemsize}", array.dtype.newbyteorder("="))
    return torch.from_numpy(np.array(array, dtype=dtype))


def _check_range(values: torch.Tensor, size: int, what: str, name: str) -> None:
    if values.numel() and (values.min() < 0 or values.max() >= size):
        raise DataError(
            f"{what} holds ids in [{int(values.min())}, {int(values.max())}], outside [0, {size}); "
            f"map them into range or raise {name}."
        )


class ArrayDataset:
    """In-memory examples of any shape, e.g. images [N, H, W, C], with optional class labels [N].

    Examples are kept in their own integer dtype (uint8 images stay one byte per value) and batches are int64.
    Training draws rows uniformly with replacement; evaluation yields a split's rows in order.
    """

    def __init__(
        self,
        splits: Mapping[str, Any],
        codec: Codec,
        labels: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
    ) -> None:
        if "train" not in splits:
            raise DataError(f"the splits are {sorted(splits)} but a 'train' split is required; add one.")
        if (labels is None) != (num_classes is None):
            raise DataError("labels and num_classes must be given together; pass both or neither.")
        self.codec = codec
        self.vocab_size = codec.vocab_size
        self.num_classes = num_classes
        self.splits = {name: _as_tensor(values, f"split {name!r}") for name, values in splits.items()}
        shapes = {name: tuple(x.shape[1:]) for name, x in self.splits.items()}
        if len(set(shapes.values())) != 1 or any(x.ndim == 0 for x in self.splits.values()):
            raise DataError(
                f"every split must hold examples [N, *data_shape] of one shape, got {shapes}; reshape them."
            )
        self.data_shape: tuple[int, ...] = shapes["train"]
        if len(self.splits["train"]) == 0:
            raise DataError("the 'train' split has no examples; add some.")
        for name, x in self.splits.items():
            _check_range(x, self.vocab_size, f"split {name!r}", "the codec's vocab_size")
        self.labels = None if labels is None else self._labels(labels)

    def _labels(self, labels: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        assert self.num_classes is not None
        if set(labels) != set(self.splits):
            raise DataError(
                f"labels are given for {sorted(labels)} but the splits are {sorted(self.splits)}; match them."
            )
        out = {}
        for name, values in labels.items():
            y = _as_tensor(values, f"labels of {name!r}")
            if y.shape != (len(self.splits[name]),):
                raise DataError(
                    f"labels of {name!r} have shape {tuple(y.shape)} but the split has {len(self.splits[name])} "
                    "examples; give one label per example."
                )
            _check_range(y, self.num_classes, f"labels of {name!r}", "num_classes")
            out[name] = y
        return out

    def _split(self, split: str) -> torch.Tensor:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; this dataset has {', '.join(self.splits)}.")
        return self.splits[split]

    def _batch(self, split: str, rows: torch.Tensor | slice) -> Batch:
        labels = None if self.labels is None else self.labels[split][rows].long()
        return self.splits[split][rows].long(), labels

    def train_batch(self, batch_size: int, generator: torch.Generator, part: slice | None = None) -> Batch:
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}.")
        rows = torch.randint(0, len(self.splits["train"]), (batch_size,), generator=generator)
        return self._batch("train", rows if part is None else rows[part])

    def eval_batches(self, split: str, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}.")
        n = len(self._split(split))
        limit = _max_rows(batch_size, max_batches)
        n = n if limit is None else min(n, limit)
        return (self._batch(split, slice(first, min(first + batch_size, n))) for first in range(0, n, batch_size))
