"""Generation for people: prompts and infilling templates in text, samples decoded through the codec.

:func:`md4.sample` works on token tensors; :func:`generate` adds what a user of a text model types and reads:
a prompt the samples start with, or a text whose hole characters are filled in (paper Alg. 2 with the given
tokens fixed in z_1), and the decoded samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from md4.data import Tokenizer
from md4.device import autocast
from md4.notices import warn
from md4.sampling import prefix_init, sample


@dataclass
class Generation:
    """Decoded samples, their tokens and the number of network calls made."""

    texts: list[str]
    tokens: torch.Tensor
    nfe: int
    trajectory: list[torch.Tensor] = field(default_factory=list)  # with sampling option snapshots=N


def infill_template(text: str, hole: str, tokenizer, mask_id: int) -> list[int]:
    """Encode ``text`` with each ``hole`` character becoming one masked token (the mask id)."""
    if len(hole) != 1:
        raise ValueError(f"The hole marker must be one character, got {hole!r}.")
    ids: list[int] = []
    for i, segment in enumerate(text.split(hole)):
        if i:
            ids.append(mask_id)
        if segment:
            ids.extend(int(v) for v in tokenizer.encode(segment))
    if mask_id not in ids:
        raise ValueError(f"The infill text has no hole character {hole!r}; mark the positions to fill with it.")
    return ids


def warn_if_longer(model, length: int, what: str) -> None:
    """Warn when samples would be longer than the sequences the model was trained on."""
    trained = model.data_shape[0] if model.data_shape and len(model.data_shape) == 1 else None
    if trained is not None and length > trained:
        warn(
            f"{what} is {length} tokens long but the model was trained on sequences of {trained}; "
            "beyond that its samples may be poor.",
            stacklevel=3,
        )


def conditioning(
    model, codec, num: int, length: int | None, prompt: str | None, infill: str | None, hole: str
) -> torch.Tensor | None:
    """z_1 for a prompt (a fixed prefix) or an infilling template (fixed tokens around masked holes), or None."""
    if prompt is not None and infill is not None:
        raise ValueError("Pass either a prompt or an infill text, not both.")
    if prompt is None and infill is None:
        return None
    if len(model.data_shape) != 1:
        raise ValueError(
            f"Prompts and infilling are for sequences, but this model's examples have shape {model.data_shape}."
        )
    if not isinstance(codec, Tokenizer):
        raise ValueError(f"This model's data has no text form ({type(codec).__name__}), so it cannot take text.")
    device = next(model.parameters()).device
    if prompt is not None:
        if not prompt:
            raise ValueError("The prompt is empty; give the text the samples start with, or no prompt.")
        ids = torch.as_tensor(codec.encode(prompt).astype("int64"), device=device)
        return prefix_init(ids, (num, length or model.data_shape[0]), model.mask_id)
    ids = infill_template(infill, hole, codec, model.mask_id)
    warn_if_longer(model, len(ids), "The infill text")
    init = torch.full((num, max(len(ids), length or 0)), model.mask_id, dtype=torch.long, device=device)
    init[:, : len(ids)] = torch.tensor(ids, device=device)
    return init


def generate(
    model,
    codec,
    num: int = 1,
    *,
    length: int | None = None,
    prompt: str | None = None,
    infill: str | None = None,
    hole: str = "_",
    labels: torch.Tensor | None = None,
    precision: str = "auto",
    **sampling: Any,
) -> Generation:
    """Draw ``num`` samples from ``model`` and decode them with ``codec``.

    Args:
        length: tokens per sample for sequence models (default: the training length; with ``infill``, at
            least the template's length).
        prompt: text the samples start with (kept fixed).
        infill: text whose ``hole`` characters are filled in; every other token stays fixed.
        labels: class labels [num] for a class-conditional model.
        precision: the network's arithmetic: ``auto`` (bf16 where the hardware has fast bf16, else fp32), ``bf16``
            (autocast) or ``fp32``; draws stay float64 by default.
        sampling: options of :func:`md4.sample` (``steps``, ``sampler``, ``grid``, ``top_p``, ``categorical``,
            ``temperature`` for an ar model, ``seed`` or ``generator``, ``on_step`` to watch each step).
    """
    if int(num) != num or num < 1:
        raise ValueError(f"num must be a positive integer, got {num}.")
    if length is not None:
        if length < 1:
            raise ValueError(f"length must be a positive number of tokens, got {length}.")
        warn_if_longer(model, length, "The requested length")
    init = conditioning(model, codec, num, length, prompt, infill, hole)
    shape = None if length is None else (length,)
    device = next(model.parameters()).device
    with autocast(device, precision):
        out = sample(model, None if init is not None else num, shape=shape, init=init, labels=labels, **sampling)
    return Generation(codec.decode_batch(out.tokens.cpu()), out.tokens, out.nfe, out.trajectory)
