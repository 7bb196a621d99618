"""What computing mu only at the positions a step unmasks saves: a sampling step of a GPT-2-vocabulary model with
the output layer and softmax at those rows alone (``md4 sample``) against the same network giving mu everywhere
(how every step worked before ``Network.rows``), side by side.

Usage: python benchmarks/sampling_rows.py [--model owt-gpt2-small] [--batch 2] [--steps 16] [--rounds 2]

The network has the preset's shape and random weights (speed does not depend on them). Each round times whole
ancestral ``sample()`` calls (``--steps`` steps, float64 draws) for both ways in fp32 and in bf16 autocast, one
after the other; it prints the medians over rounds per step and the speed-up of the rows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from md4 import MD4
from md4.bench.suite import MODELS, model_config
from md4.config import data_spec_guess
from md4.device import autocast
from md4.models import build_model
from md4.sampling import sample


def seconds_per_step(model, batch: int, length: int, steps: int, precision: str) -> float:
    with autocast(torch.device("cpu"), precision), torch.inference_mode():
        start = time.perf_counter()
        sample(model, batch, shape=(length,), steps=steps, seed=0)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="owt-gpt2-small", choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = model_config(MODELS[args.model], "fp32", "cpu")
    spec = data_spec_guess(config)
    torch.manual_seed(0)
    rows = build_model(config, spec).eval()
    network = rows.denoiser
    everywhere = MD4(lambda z, t, labels=None: network(z, t), rows.vocab_size, schedule=rows.schedule)
    (length,) = spec.data_shape
    print(f"{args.model}: {sum(p.numel() for p in rows.parameters()):,} parameters, V = {spec.vocab_size}, "
          f"batch {args.batch} x {length}, {args.steps} ancestral steps, {torch.get_num_threads()} threads")  # fmt: skip
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for precision in ("fp32", "bf16"):
            for way, model in (("rows", rows), ("everywhere", everywhere)):
                value = seconds_per_step(model, args.batch, length, args.steps, precision)
                seconds.setdefault((precision, way), []).append(value)
                print(f"  {precision} {way}: {value:.3f} s/step", flush=True)
    print("| network | mu everywhere (s/step) | mu at the unmasking rows (s/step) | speed-up |")
    print("|---|---:|---:|---:|")
    for precision in ("fp32", "bf16"):
        full, some = (statistics.median(seconds[(precision, way)]) for way in ("everywhere", "rows"))
        print(f"| {precision} | {full:.3f} | {some:.3f} | {full / some:.2f}x |")


if __name__ == "__main__":
    main()
