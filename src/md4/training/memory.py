"""How much device memory a training step takes, and the micro-batch that fits: an estimate per device of the
weights, gradients, AdamW state and EMA, and of the activations the backward pass keeps, counted tensor by tensor
for the transformer denoiser; on a GPU, ``train.grad_accum`` is raised until the per-device micro-batch fits the
free memory (or the run is refused in one sentence naming settings that fit)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from md4.config import Config, ConfigError
from md4.core.masked import LOSS_CHUNK_ELEMENTS
from md4.device import resolve_precision
from md4.nn.transformer import Transformer
from md4.nn.transformer_config import TransformerConfig
from md4.notices import warn
from md4.training.parallel import training_device

STATE_BYTES = 20  # per parameter: fp32 weights 4, gradients 4, AdamW's two moments 8, the EMA copy 4
FREE_FRACTION = 0.85  # what a step may plan to use of the free memory (allocator slack, kernels' workspaces)
GIB = 1024**3


@dataclass(frozen=True)
class StepMemory:
    """Bytes per device of one training step, by part."""

    state: int  # weights, gradients, AdamW moments, EMA (and bf16 copies of the weights under autocast)
    activations: int  # what the blocks keep for the backward pass
    output: int  # the output layer at the masked positions: logits, their gradient, the loss's chunks

    @property
    def total(self) -> int:
        return self.state + self.activations + self.output


def block_bytes_per_token(net: TransformerConfig, bf16: bool) -> int:
    """Bytes one transformer block keeps per token for the backward pass (fused attention, no [L, L] scores).

    Under bf16 autocast the residual stream and the norms stay float32 (4 bytes) and the matrix products' inputs
    and outputs are bf16 (2): per block 8d for each norm's input and modulated output (16d for two), the qkv
    input 2d, its output 6d (v is a view of it), the rotated q and k 4d, the attention output 2d, the out
    projection's input 2d, each gated branch's output 2d (4d), the MLP's two bf16 inputs 4d, and 8h in the
    gated MLP (w1 x, act(w1 x), w3 x, their product): 40d + 8h. In float32 the bf16 items double and the MLP's
    two inputs are the modulated output itself: 52d + 16h. Residual dropout (not per channel) adds a byte per
    element for each of its two masks.
    """
    d, h = net.dim, net.mlp_hidden
    per_token = 40 * d + 8 * h if bf16 else 52 * d + 16 * h
    if net.dropout > 0 and not net.channel_dropout:
        per_token += 2 * d
    return per_token


def step_memory(
    net: TransformerConfig,
    num_parameters: int,
    micro_batch: int,
    seq_len: int,
    *,
    bf16: bool,
    checkpointing: bool,
    shards: int = 1,
    draws: int = 1,
    masked_fraction: float = 0.5,
) -> StepMemory:
    """The estimate for ``micro_batch`` sequences of ``seq_len`` tokens per device, ``draws`` noise draws each
    (GenMD4 evaluates two in one call), the model's state split over ``shards`` processes (FSDP2), the output layer
    at ``masked_fraction`` of the positions (the mean of the linear schedule's masking), with or without
    activation checkpointing (then only each block's float32 input is kept, and one block is recomputed at a
    time)."""
    tokens = micro_batch * seq_len * draws
    state = STATE_BYTES * num_parameters // shards + (2 * num_parameters if bf16 else 0)
    block = block_bytes_per_token(net, bf16) * tokens
    residual = 4 * net.dim * tokens
    layers = net.n_layers * residual + block if checkpointing else net.n_layers * block
    activations = layers + 3 * residual  # the embedding's output, the final norm's input and modulated output
    logit_bytes = 2 if bf16 else 4
    masked = math.ceil(masked_fraction * tokens)
    output = 2 * logit_bytes * masked * net.vocab_size + logit_bytes * masked * net.dim
    output += 3 * 4 * min(LOSS_CHUNK_ELEMENTS, masked * net.vocab_size)  # a chunk's float32 temporaries
    return StepMemory(state, activations, output)


def fitting_grad_accum(needed, batch_size: int, processes: int, grad_accum: int, free: int) -> int | None:
    """The smallest ``grad_accum`` >= the given one that splits the global batch evenly and whose per-device
    micro-batch needs (``needed(rows)``, bytes) at most ``FREE_FRACTION`` of ``free`` bytes; None if even one row
    does not fit."""
    for accum in range(grad_accum, batch_size // processes + 1):
        if batch_size % (processes * accum) == 0 and needed(batch_size // (processes * accum)) <= FREE_FRACTION * free:
            return accum
    return None


def fit_to_memory(config: Config, net: TransformerConfig | None, num_parameters: int, free: int, world) -> Config:
    """``config`` with ``train.grad_accum`` raised to the smallest value whose micro-batch fits ``free`` bytes on
    every process (one notice says so), unchanged when it fits already or the network is not a transformer;
    refuses in one sentence, naming the settings that fit, when nothing does."""
    if net is None:
        return config
    t = config.train
    shards = world.size if t.parallel == "fsdp" and world.distributed else 1
    draws = 2 if config.model.get("kind") == "genmd4" else int(config.model.get("draws", 1))
    scored = 1.0 if config.model.get("kind") == "ar" else 0.5  # ar: the output layer at every position

    def needed(bf16: bool, checkpointing: bool):
        return lambda rows: (
            step_memory(
                net,
                num_parameters,
                rows,
                config.data.seq_len,
                bf16=bf16,
                checkpointing=checkpointing,
                shards=shards,
                draws=draws,
                masked_fraction=scored,
            ).total
        )

    bf16 = t.precision == "bf16"
    accum = fitting_grad_accum(needed(bf16, t.activation_checkpointing), t.batch_size, world.size, t.grad_accum, free)
    every = world.gather(0 if accum is None else accum)  # the processes agree: the largest need wins
    if 0 in every:
        raise ConfigError(_refusal(config, needed, free, world.size))
    accum = max(every)
    if accum == t.grad_accum:
        return config
    rows = t.batch_size // (world.size * accum)
    warn(
        f"train.grad_accum={t.grad_accum} gives micro-batches too large for this device's "
        f"{free / GIB:.1f} GiB free, so this run uses train.grad_accum={accum} ({rows} sequence(s) per device per "
        f"micro-batch, about {needed(bf16, t.activation_checkpointing)(rows) / GIB:.1f} GiB); the run's config "
        "records it."
    )
    return dataclasses.replace(config, train=dataclasses.replace(t, grad_accum=accum))


def _refusal(config: Config, needed, free: int, processes: int) -> str:
    """The sentence that refuses a run whose every micro-batch is too large, with the settings that fit."""
    t = config.train
    options = []
    for precision in ("bf16",) if t.precision == "bf16" else ("bf16", t.precision):
        for checkpointing in (False, True):
            accum = fitting_grad_accum(needed(precision == "bf16", checkpointing), t.batch_size, processes, 1, free)
            if accum is not None:
                options.append(
                    f"train.precision={precision} train.activation_checkpointing={str(checkpointing).lower()} "
                    f"train.grad_accum={accum}"
                )
    one_row = needed(t.precision == "bf16", t.activation_checkpointing)(1)
    fits = f"settings that fit: {'; '.join(options)}" if options else "a smaller net or data.seq_len"
    return (
        f"This run does not fit the device: even one sequence per micro-batch needs about {one_row / GIB:.1f} GiB "
        f"of the {free / GIB:.1f} GiB free; use {fits}."
    )


def fit_to_device(config: Config, model: torch.nn.Module, world) -> Config:
    """On a GPU, :func:`fit_to_memory` with the training device's free memory (``torch.cuda.mem_get_info``); on
    any other device ``config`` as it is."""
    device = training_device(config.train.device, world)
    if device.type != "cuda":
        return config
    free = torch.cuda.mem_get_info(device)[0]
    net = model.denoiser.config if isinstance(model.denoiser, Transformer) else None
    concrete = dataclasses.replace(
        config, train=dataclasses.replace(config.train, precision=resolve_precision(device, config.train.precision))
    )
    fitted = fit_to_memory(concrete, net, sum(p.numel() for p in model.parameters()), free, world)
    return dataclasses.replace(fitted, train=dataclasses.replace(fitted.train, precision=config.train.precision))
