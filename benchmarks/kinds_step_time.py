"""The training-step time of each model kind on the CPU demo's network, side by side: MD4, MD4 with K noise draws
(``model.draws=K``), GenMD4 (two draws for its REINFORCE leave-one-out gradient) and the autoregressive baseline.
The ratios set the step counts of an equal-wall-clock comparison (docs/results.md).

Usage: python benchmarks/kinds_step_time.py [--rounds 5] [--steps 5] [--precision fp32]

Each round times ``--steps`` forward and backward passes of every kind in turn (after one untimed pass), on the
shakespeare-char preset's batch (32 x 128) of random tokens; the table gives each kind's median seconds per step
over the rounds and its ratio to MD4's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from md4.config import build_config
from md4.device import autocast
from md4.models import DataSpec, build_model

KINDS = {
    "md4": ("shakespeare-char", []),
    "md4, 2 draws": ("shakespeare-char", ["model.draws=2"]),
    "genmd4": ("genmd4-shakespeare-char", []),
    "ar": ("ar-shakespeare-char", []),
}
VOCAB = 84  # the shakespeare corpus's characters


def step_seconds(model, x: torch.Tensor, steps: int, precision: str) -> float:
    """Seconds per forward and backward pass of the training loss, over ``steps`` passes."""
    start = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        with autocast(x.device, precision):
            loss = model.loss(x)[0]
        loss.backward()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    torch.manual_seed(0)
    models, batches = {}, {}
    for name, (preset, overrides) in KINDS.items():
        config = build_config(preset, overrides)
        models[name] = build_model(config, DataSpec(VOCAB, (config.data.seq_len,))).train()
        batches[name] = torch.randint(0, VOCAB, (config.train.batch_size, config.data.seq_len))
        step_seconds(models[name], batches[name], 1, args.precision)  # warm up
    times = {name: [] for name in KINDS}
    for _ in range(args.rounds):
        for name in KINDS:
            times[name].append(step_seconds(models[name], batches[name], args.steps, args.precision))
    base = statistics.median(times["md4"])
    print(f"| kind | s/step (median of {args.rounds} rounds) | ratio to md4 |\n|---|---:|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {statistics.median(seconds):.3f} | {statistics.median(seconds) / base:.2f} |")


if __name__ == "__main__":
    main()
