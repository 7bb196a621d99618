"""The optimiser: AdamW over parameter groups (weight decay by scope, parameters at their own learning rate), the
learning-rate schedule (linear warm-up, cosine decay) and the exponential moving average of the weights."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from md4.core.kind_contract import ModelKindContract


def learning_rate(step: int, config) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    t = config
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def parameter_groups(model: torch.nn.Module, weight_decay: float, scope: str, lr: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on every parameter (``scope="all"``, the release) or only on weights of rank >= 2.

    Parameters a model kind trains at their own peak rate (:meth:`ModelKindContract.own_learning_rates`, e.g.
    GenMD4's schedule with ``theta_lr``) get a group each, after the others, whose ``lr_scale`` keeps that rate in
    the same warm-up and decay as the rest.
    """
    own = model.own_learning_rates() if isinstance(model, ModelKindContract) else []
    apart = {p for params, _ in own for p in params}
    params = [p for p in model.parameters() if p.requires_grad and p not in apart]
    if scope == "all":
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    decay = weight_decay if scope == "all" else 0.0
    for own_params, own_lr in own:
        groups.append({"params": list(own_params), "weight_decay": decay, "lr_scale": own_lr / lr})
    return groups


def fused_optimizer(device: torch.device, sharded: bool) -> bool:
    """Whether AdamW runs as one fused kernel: on CUDA, and on CPU for a model that is not sharded (the CPU
    kernel takes plain tensors, not FSDP2's sharded ones); the same update as the per-tensor loop."""
    return device.type == "cuda" or (device.type == "cpu" and not sharded)


def build_optimizer(model: torch.nn.Module, train, device: torch.device, sharded: bool) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` with the ``[train]`` table's rate, decay and betas."""
    return torch.optim.AdamW(
        parameter_groups(model, train.weight_decay, train.weight_decay_scope, train.lr),
        lr=train.lr,
        betas=(train.beta1, train.beta2),
        fused=fused_optimizer(device, sharded),
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` times its ``lr_scale`` (1 unless the group trains at its own rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class EMA:
    """Exponential moving average of a module's weights (evaluation and sampling use it)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        ema = list(self.module.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in module.parameters()], 1.0 - self.decay)
