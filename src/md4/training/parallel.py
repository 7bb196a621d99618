"""How one rank's model runs among the others: its device, sharding with FSDP2 (the model and its average alike),
DistributedDataParallel otherwise, the denoiser compiled or recomputing its activations, gradients reduced after
the last micro-batch of a step only, and each rank's own stream of torch's global generator."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from md4 import distributed
from md4.device import resolve_device
from md4.distributed import World, derived_seed


def training_device(name: str, world: World) -> torch.device:
    """The device ``train.device`` names, with a GPU's index made explicit (under torchrun: LOCAL_RANK's GPU, which
    :func:`md4.distributed.connect` made current); a single process's ``cuda:N`` is made the current GPU, so
    everything that uses the current one (caches, streams, collectives) uses it too."""
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if device.index is None or world.distributed:
        return torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class Parallel:
    """The parallel layout of one rank: ``sharded`` with FSDP2 when several processes train with
    ``train.parallel="fsdp"``, replicated under DistributedDataParallel when several train otherwise."""

    world: World
    device: torch.device
    sharded: bool

    @classmethod
    def of(cls, world: World, device: torch.device, mode: str) -> Parallel:
        return cls(world, device, world.distributed and mode == "fsdp")

    def shard(self, model: torch.nn.Module, average: torch.nn.Module, precision: str = "fp32") -> None:
        """Shard the model and its average alike, so the EMA update stays local (nothing when not sharded); in a
        bf16 run their blocks are gathered in bf16 and their gradients reduced in fp32."""
        if self.sharded:
            param_dtype = torch.bfloat16 if precision == "bf16" else None
            distributed.shard(model, param_dtype)
            distributed.shard(average, param_dtype)

    def seed_rank_stream(self, seed: int, step: int) -> None:
        """Ranks other than 0 get their own stream of torch's global generator (dropout), from (seed, rank, step)."""
        if self.world.rank > 0:
            torch.manual_seed(derived_seed(seed, self.world.rank, step))

    def wrap(self, model: torch.nn.Module, checkpointing: bool, compile: bool) -> torch.nn.Module:
        """Switch on the denoiser's activation checkpointing and compile it, as asked; the module to call for the
        training loss: the model, or DistributedDataParallel around it when several processes replicate it.

        The denoiser alone is compiled, lazily, so its graph is first traced inside DDP's forward, where dynamo's
        DDPOptimizer cuts it at DDP's gradient buckets: each bucket's all-reduce overlaps the rest of the backward
        pass. Compiling the DDP module itself overlaps no more and breaks its graph at DDP's own code and at the
        loss's generator draws."""
        if checkpointing:
            model.denoiser.checkpointing = True
        if compile:
            model.denoiser = torch.compile(model.denoiser)
        if self.world.distributed and not self.sharded:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=device_ids)
        return model

    def gradient_sync(
        self, model: torch.nn.Module, forward: torch.nn.Module, last_micro_batch: bool
    ) -> AbstractContextManager:
        """Gradients are reduced over the ranks after the last micro-batch of a step only."""
        if self.sharded:
            model.set_requires_gradient_sync(last_micro_batch)
        elif self.world.distributed and not last_micro_batch:
            return forward.no_sync()
        return nullcontext()
