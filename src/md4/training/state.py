"""What a checkpoint holds: the model, its average (EMA), the optimizer, the generators (torch's global one, CUDA's,
the data's and the noise's), the step and the tokens seen; saving them and putting them back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from md4 import distributed
from md4.distributed import World
from md4.runs.checkpoints import Checkpoint, CheckpointError, latest_checkpoint, list_checkpoints, save_checkpoint
from md4.training.optimizer import EMA


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
        )

    def rng_states(self) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The generators' states: torch's global one, the data's, the noise's, and CUDA's where there is CUDA."""
        rng = {
            "torch": torch.get_rng_state(),
            "data": self.data_generator.get_state(),
            "noise": self.noise_generator.get_state(),
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

    def restore_generators(self, ckpt: Checkpoint) -> None:
        """The generators' states of ``ckpt``; a checkpoint from before the noise had its own generator goes on
        from a fresh one."""
        try:
            torch.set_rng_state(ckpt.rng["torch"].cpu())
            if "cuda" in ckpt.rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in ckpt.rng["cuda"]])
            self.data_generator.set_state(ckpt.rng["data"].cpu())
            if "noise" in ckpt.rng:
                self.noise_generator.set_state(ckpt.rng["noise"].cpu())
        except (TypeError, RuntimeError, ValueError, AttributeError) as err:
            raise CheckpointError(
                f"Checkpoint file {ckpt.path / 'trainer.pt'} holds damaged generator states ({type(err).__name__}); "
                "delete that checkpoint directory or resume from an older one."
            ) from None
