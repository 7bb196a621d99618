"""A pretrained masked language model (Hugging Face ``AutoModelForMaskedLM``: BERT, RoBERTa, DistilBERT, ModernBERT)
as MD4's denoiser.

An MLM trained with BERT's objective predicts the masked tokens of a sequence from its unmasked ones: the mean
parameterisation mu_theta(z_t) of MD4 (Shi et al., NeurIPS 2024, Sec. 2) without the time input. The optimal
denoiser of absorbing diffusion needs none (Ou et al., "Your Absorbing Discrete Diffusion Secretly Models the
Conditional Distributions of Clean Data", 2024), so the network is declared time-independent and the samplers
reuse its output while z is unchanged; an optional learned time embedding, added to the input embeddings and
zero-initialised (the pretrained model exactly at first), makes it time-dependent. Fine-tuning BERT as a
diffusion model follows DiffusionBERT (He et al., ACL 2023).

Ids: md4's mask id V (= vocab_size, the tokenizer's length) is given to the MLM as its ``[MASK]``; the logits are
sliced to the V real tokens (an embedding table may have padding rows, e.g. ModernBERT's). The tokenizer's
special tokens (pad, cls, sep, mask, bos, eos and added special tokens) get the dtype's lowest logit at every
position, so no sampler draws them and no data token is one of them. ``[UNK]`` is kept: a WordPiece tokenizer
encodes characters outside its vocabulary to it, so it is data.

Attention is bidirectional with no padding mask (md4's sequences are full length), in PyTorch's fused
``scaled_dot_product_attention`` (``attn_implementation="sdpa"``): flash or memory-efficient kernels on a GPU, no
[L, L] mask materialised.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from md4.nn.contract import DenoiserCapabilities
from md4.nn.inputs import check_time_and_labels
from md4.nn.transformer import timestep_embedding

TIME_FEATURES = 256  # width of the sinusoidal features of 1000 t fed to the optional time embedding
ATTENTION = "sdpa"


@dataclass(frozen=True)
class MaskedLMFacts:
    """What md4 reads of a masked LM's folder or hub id before building it: its transformers config, its
    tokenizer's length, ``[MASK]`` id and special ids (without ``[UNK]``, which is data)."""

    config: Any
    tokenizer_length: int
    mask_token_id: int
    special_ids: tuple[int, ...]

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model embeds (RoBERTa-like models start counting after the pad id)."""
        limit = self.config.to_dict().get("max_position_embeddings")
        if limit is None:
            return None
        if "roberta" in self.config.model_type and self.config.pad_token_id is not None:
            limit -= self.config.pad_token_id + 1
        return int(limit)


def _stamp(path: str) -> tuple[tuple[str, int, int], ...]:
    """The files of a local folder with their modification times and sizes (empty for a hub id): a re-saved
    folder is read again."""
    folder = Path(path)
    if not folder.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()))


def read_masked_lm(path: str) -> MaskedLMFacts:
    """The facts of the masked LM at ``path`` (a folder written by ``save_pretrained``, or a hub id); ValueError in
    one sentence for anything that is not a masked LM with a tokenizer that fits it."""
    if not path:
        raise ValueError(
            "net.path is empty; set it to a masked LM's folder or hub id, e.g. net.path=bert-base-uncased."
        )
    return _read(os.fspath(path), _stamp(path))


@functools.lru_cache(maxsize=8)
def _read(path: str, stamp: tuple) -> MaskedLMFacts:
    try:
        from transformers import AutoConfig, AutoTokenizer
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING
    except ImportError:
        raise ValueError("model.net=hf-mlm needs Hugging Face transformers; pip install 'md4[mlm]'.") from None

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError):
        raise ValueError(
            f"net.path={path!r} is not a model: it has no transformers config.json; give a folder written by "
            "save_pretrained or a hub id of a masked LM."
        ) from None
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise ValueError(
            f"net.path={path!r} holds a {config.model_type!r} model, which is not a masked LM; give a masked LM "
            "such as BERT, RoBERTa, DistilBERT or ModernBERT."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError):
        raise ValueError(
            f"net.path={path!r} has no tokenizer md4 can load; save the model's tokenizer there too "
            "(tokenizer.save_pretrained)."
        ) from None
    if tokenizer.mask_token_id is None:
        raise ValueError(f"The tokenizer of net.path={path!r} has no mask token, which md4 needs as its mask id.")
    length = len(tokenizer)
    if length > config.vocab_size:
        raise ValueError(
            f"The tokenizer of net.path={path!r} has {length} tokens but the model's embedding table has "
            f"{config.vocab_size} rows; the tokenizer does not belong to these weights."
        )
    specials = sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id})
    return MaskedLMFacts(config, length, int(tokenizer.mask_token_id), tuple(specials))


@dataclass
class HFMaskedLMConfig:
    """The ``[net]`` keys of ``model.net = "hf-mlm"``; the data fields are filled from the data. Validated on
    construction: the folder is read (config and tokenizer, not the weights)."""

    vocab_size: int
    path: str = ""  # a folder written by save_pretrained, or a hub id, of an AutoModelForMaskedLM
    # A learned embedding of t added to the input embeddings (then time-dependent). Not named time_embedding: the
    # transformer's key of that name (a string) would carry over when a preset's net is switched to hf-mlm.
    time_embed: bool = False
    pretrained: bool = True  # load the folder's weights; false: random weights from its config
    num_classes: int | None = None
    data_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        facts = read_masked_lm(self.path)
        if self.num_classes is not None:
            raise ValueError("The hf-mlm network has no class conditioning; set model.conditional=false.")
        if self.vocab_size != facts.tokenizer_length:
            raise ValueError(
                f"The data have {self.vocab_size} token ids but the tokenizer of net.path={self.path!r} has "
                f"{facts.tokenizer_length}; the run's codec must be the MLM's tokenizer: set "
                f"data.tokenizer=hf:{self.path}."
            )
        length = None if self.data_shape is None else math.prod(self.data_shape)
        if length is not None and facts.max_positions is not None and length > facts.max_positions:
            raise ValueError(
                f"An example has {length} tokens but the masked LM embeds at most {facts.max_positions} positions; "
                f"lower data.seq_len to {facts.max_positions} or less."
            )


def build_masked_lm(facts: MaskedLMFacts, path: str, pretrained: bool) -> nn.Module:
    """The ``AutoModelForMaskedLM`` in float32 with SDPA attention: its weights read from ``path`` when
    ``pretrained`` and the default device is not ``meta`` (where only shapes are wanted), else initialised from
    its config."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging

    config = copy.deepcopy(facts.config)
    if not pretrained or torch.get_default_device().type == "meta":
        return AutoModelForMaskedLM.from_config(config, dtype=torch.float32, attn_implementation=ATTENTION)
    bar = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # md4 prints its own progress
    try:
        return AutoModelForMaskedLM.from_pretrained(
            path, config=config, dtype=torch.float32, attn_implementation=ATTENTION
        )
    except OSError:
        raise ValueError(
            f"net.path={path!r} has no weights to load; set net.pretrained=false to start from random weights."
        ) from None
    finally:
        if bar:
            logging.enable_progress_bar()


class HFMaskedLM(nn.Module):
    """MD4 denoiser around a pretrained masked LM: ``(z_t [B, *shape], t [B]) -> logits [B, *shape, V]``."""

    # Activation checkpointing through transformers' own switch (activation_checkpointing_enable).
    capabilities = DenoiserCapabilities(checkpointing=True)

    def __init__(self, config: HFMaskedLMConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        facts = read_masked_lm(config.path)
        self.mask_token_id = facts.mask_token_id
        self.capabilities = dataclasses.replace(type(self).capabilities, time_independent=not config.time_embed)
        self.mlm = build_masked_lm(facts, config.path, config.pretrained)
        width = self.mlm.get_input_embeddings().embedding_dim
        self.time_embed = nn.Linear(TIME_FEATURES, width) if config.time_embed else None
        if self.time_embed is not None:  # zero: the pretrained MLM exactly at first
            nn.init.zeros_(self.time_embed.weight)
            nn.init.zeros_(self.time_embed.bias)
        excluded = torch.zeros(config.vocab_size, dtype=torch.bool)
        excluded[list(facts.special_ids)] = True
        self.register_buffer("excluded", excluded, persistent=False)

    @property
    def checkpointing(self) -> bool:
        return self.mlm.is_activation_checkpointing

    @checkpointing.setter
    def checkpointing(self, on: bool) -> None:
        if on:
            self.mlm.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.mlm.activation_checkpointing_disable()

    def forward(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the V real tokens at every position, the special tokens' at the dtype's minimum."""
        if z.is_floating_point() or z.dim() < 2:
            raise ValueError(f"z must be an integer tensor [B, L] of token ids, got {z.dtype} {tuple(z.shape)}.")
        batch, *shape = z.shape
        check_time_and_labels(t, labels, batch, None)
        ids = z.reshape(batch, -1).long()
        ids = torch.where(ids == self.vocab_size, self.mask_token_id, ids)
        if self.time_embed is None:
            logits = self.mlm(input_ids=ids).logits
        else:
            tokens = self.mlm.get_input_embeddings()(ids)
            time = self.time_embed(timestep_embedding(t, TIME_FEATURES, "md4").to(tokens.dtype))
            logits = self.mlm(inputs_embeds=tokens + time[:, None]).logits
        logits = logits[..., : self.vocab_size].masked_fill(self.excluded, torch.finfo(logits.dtype).min)
        return logits.reshape(batch, *shape, self.vocab_size)
