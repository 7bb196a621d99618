"""What a checkpoint holds: the model, its average (EMA), the optimizer, the generators (torch's global one, CUDA's,
the data's and the noise's), the step and the tokens seen; saving them and putting them back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from md4 import distributed
from md4.distributed import World, derived_seed
from md4.notices import warn
from md4.runs.checkpoints import Checkpoint, CheckpointError, latest_checkpoint, list_checkpoints, save_checkpoint
from md4.training.optimizer import EMA

CUDA_STATE_BYTES = 16  # a CUDA (Philox) generator's state: its seed and offset; a CPU one's is 5,056 bytes


@dataclass
class TrainState:
    """Everything a resumed run needs to go on exactly where it stopped."""

    model: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    data_generator: torch.Generator
    noise_generator: torch.Generator
    step: int = 0
    tokens_seen: int = 0
    seed: int = 0  # the run's train.seed: a noise generator that cannot take its saved state is seeded from it
    planned_steps: int | None = None  # the length a time budget fixed (md4.training.budget), kept for a resume

    @classmethod
    def fresh(
        cls, model: torch.nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, seed: int, device: torch.device
    ) -> TrainState:
        """Step 0, with the data and noise generators seeded alike on every rank (the layout of
        :class:`md4.core.noise.BatchShard`): data from ``seed + 1``, noise on ``device`` from ``seed + 2``."""
        return cls(
            model,
            ema,
            optimizer,
            torch.Generator().manual_seed(seed + 1),
            torch.Generator(device).manual_seed(seed + 2),
            seed=seed,
        )

    def rng_states(self) -> dict[str, torch.Tensor | list[torch.Tensor] | str]:
        """The generators' states: torch's global one, the data's, the noise's with its device type (a CPU and a
        CUDA generator's states do not fit each other), and every visible GPU's where there is CUDA."""
        rng = {
            "torch": torch.get_rng_state(),
            "data": self.data_generator.get_state(),
            "noise": self.noise_generator.get_state(),
            "noise_device": self.noise_generator.device.type,
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def save(self, run_dir: Path, world: World, keep: int) -> Path | None:
        """Rank 0 writes a checkpoint of the step (model, EMA, optimizer, generators); other ranks return None.

        A sharded model is gathered whole first (every rank takes part), so checkpoints are the same files for
        any number of processes and either parallel mode.
        """
        states = (
            distributed.model_state(self.model),
            distributed.model_state(self.ema.module),
            distributed.optimizer_state(self.model, self.optimizer),
        )
        if not world.is_main:
            return None
        tokens = {"tokens_seen": self.tokens_seen}
        if self.planned_steps is not None:
            tokens["planned_steps"] = self.planned_steps
        return save_checkpoint(run_dir, self.step, *states, self.rng_states(), tokens, keep=keep)

    def saved_this_step(self, run_dir: Path) -> bool:
        """Whether the newest checkpoint of ``run_dir`` is this step's."""
        return bool(list_checkpoints(run_dir)) and latest_checkpoint(run_dir).name == f"step_{self.step:08d}"

    def restore_weights(self, ckpt: Checkpoint) -> None:
        """The model, its average, the optimizer, the step and the tokens seen of ``ckpt``."""
        distributed.load_model_state(self.model, ckpt.model)
        distributed.load_model_state(self.ema.module, ckpt.ema)
        try:
            distributed.load_optimizer_state(self.model, self.optimizer, ckpt.optimizer)
        except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
            raise CheckpointError(
                f"Checkpoint file {ckpt.path / 'trainer.pt'} holds an optimizer state that does not fit this model "
                f"({type(err).__name__}); delete that checkpoint directory or resume from an older one."
            ) from None
        self.step = ckpt.state["step"]
        self.tokens_seen = ckpt.state.get("tokens_seen", 0)
        planned = ckpt.state.get("planned_steps")
        self.planned_steps = (
            planned if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 0 else None
        )

    def restore_generators(self, ckpt: Checkpoint) -> None:
        """The generators' states of ``ckpt``; a checkpoint from before the noise had its own generator goes on
        from a fresh one. Resumed on another kind of device, the noise generator cannot take the saved state and
        is seeded from (seed, step) instead, and the CUDA states of GPUs that are not here are left out (each with
        a warning): the run goes on, but no longer draws the noise the first device would have drawn."""
        try:
            torch.set_rng_state(ckpt.rng["torch"].cpu())
            if "cuda" in ckpt.rng and torch.cuda.is_available():
                restore_cuda_states([s.cpu() for s in ckpt.rng["cuda"]])
            self.data_generator.set_state(ckpt.rng["data"].cpu())
            if "noise" in ckpt.rng:
                self.restore_noise(ckpt.rng["noise"].cpu(), ckpt.rng.get("noise_device"))
        except (TypeError, RuntimeError, ValueError, AttributeError) as err:
            raise CheckpointError(
                f"Checkpoint file {ckpt.path / 'trainer.pt'} holds damaged generator states ({type(err).__name__}); "
                "delete that checkpoint directory or resume from an older one."
            ) from None

    def restore_noise(self, state: torch.Tensor, device_type: str | None) -> None:
        """The noise generator's saved ``state`` (of a generator on ``device_type``; None in checkpoints from
        before the tag: told by the state's size), or a seed from (seed, step) when it was another device's."""
        if device_type is None:
            device_type = "cuda" if state.numel() == CUDA_STATE_BYTES else "cpu"
        here = self.noise_generator.device.type
        if device_type == here:
            self.noise_generator.set_state(state)
            return
        self.noise_generator.manual_seed(derived_seed(self.seed + 2, self.step))
        warn(
            f"The checkpoint's noise generator ran on {device_type} and this run trains on {here}, whose generator "
            f"cannot take its state, so the noise is seeded anew from (train.seed, step {self.step}); the run goes "
            f"on, but not with the exact noise of an uninterrupted run on {device_type}.",
            stacklevel=4,
        )


def restore_cuda_states(states: list[torch.Tensor]) -> None:
    """Each visible GPU's generator state from ``states`` (saved GPU by GPU); a warning for the states of GPUs
    that are not visible here."""
    visible = torch.cuda.device_count()
    for index, state in enumerate(states[:visible]):
        torch.cuda.set_rng_state(state, index)
    if len(states) > visible:
        warn(
            f"The checkpoint holds the CUDA generator states of {len(states)} GPUs and {visible} are visible here, "
            f"so those of GPUs {visible} to {len(states) - 1} are left out.",
            stacklevel=4,
        )
