"""Whole training steps of several presets or variants side by side: loss, backward, optimizer and EMA, on the
real data.

Usage: python benchmarks/bench_train_step.py [--presets shakespeare-char genmd4-shakespeare-char]
       [--variants "train.batch_size=64" "net.dim=256 net.n_heads=4"] [--steps 30] [--warmup 5] [--threads 2]
       [KEY=VALUE ...]

Builds a trainer for each preset, or for each variant of the first preset (a variant is a space-separated list
of overrides, applied after the common ones; "" is the preset itself), runs --warmup steps, then times --steps
steps with the trainers interleaved one step at a time, so load drifts hit all alike. Prints the median seconds
per step, tokens per second and the ratio to the first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from md4.config import build_config
from md4.training import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["shakespeare-char", "genmd4-shakespeare-char"])
    parser.add_argument("--variants", nargs="+", help="override lists to compare on the first preset")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.variants:
        base = args.presets[0]
        runs = {variant or base: (base, args.overrides + variant.split()) for variant in args.variants}
    else:
        runs = {preset: (preset, args.overrides) for preset in args.presets}
    with tempfile.TemporaryDirectory(prefix="md4-bench-") as tmp:
        trainers = {
            name: build_trainer(build_config(preset, overrides), Path(tmp) / f"run{i}", progress=False)
            for i, (name, (preset, overrides)) in enumerate(runs.items())
        }
        for trainer in trainers.values():
            for _ in range(args.warmup):
                trainer.train_step()
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(args.steps):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step()
                times[name].append(time.perf_counter() - start)
        for trainer in trainers.values():
            trainer.log.close()
            trainer.lock.release()
    first = statistics.median(next(iter(times.values())))
    print(f"median of {args.steps} interleaved steps after {args.warmup} warm-up steps, {args.threads} threads\n")
    print("| run | seconds per step | tokens/s | time ratio |")
    print("|---|---:|---:|---:|")
    for name, trainer in trainers.items():
        seconds = statistics.median(times[name])
        tokens = trainer.t.batch_size * trainer.data.data_shape[0]
        for size in trainer.data.data_shape[1:]:
            tokens *= size
        print(f"| {name} | {seconds:.3f} | {tokens / seconds:,.0f} | {seconds / first:.2f}x |")


if __name__ == "__main__":
    main()
