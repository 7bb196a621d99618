"""Whole training steps of several presets side by side: loss, backward, optimizer and EMA, on the real data.

Usage: python benchmarks/bench_train_step.py [--presets shakespeare-char genmd4-shakespeare-char] [--steps 30]
       [--warmup 5] [--threads 2] [KEY=VALUE ...]

Builds a trainer for each preset (overrides apply to all), runs --warmup steps, then times --steps steps with
the presets interleaved one step at a time, so load drifts hit all alike. Prints the median seconds per step,
tokens per second and the ratio to the first preset.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from md4.config import build_config
from md4.train import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["shakespeare-char", "genmd4-shakespeare-char"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="md4-bench-") as tmp:
        trainers = {
            preset: build_trainer(build_config(preset, args.overrides), Path(tmp) / preset, progress=False)
            for preset in args.presets
        }
        for trainer in trainers.values():
            for _ in range(args.warmup):
                trainer.train_step()
        times: dict[str, list[float]] = {preset: [] for preset in trainers}
        for _ in range(args.steps):
            for preset, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step()
                times[preset].append(time.perf_counter() - start)
        for trainer in trainers.values():
            trainer.log.close()
            trainer.lock.release()
    first = statistics.median(times[args.presets[0]])
    print(f"median of {args.steps} interleaved steps after {args.warmup} warm-up steps, {args.threads} threads\n")
    print("| preset | seconds per step | tokens/s | time ratio |")
    print("|---|---:|---:|---:|")
    for preset, trainer in trainers.items():
        seconds = statistics.median(times[preset])
        tokens = trainer.t.batch_size * trainer.t.grad_accum * trainer.data.data_shape[0]
        for size in trainer.data.data_shape[1:]:
            tokens *= size
        print(f"| {preset} | {seconds:.3f} | {tokens / seconds:,.0f} | {seconds / first:.2f}x |")


if __name__ == "__main__":
    main()
