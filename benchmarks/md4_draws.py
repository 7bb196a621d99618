"""What K noise draws per sequence (``model.draws=K``) buy: the spread of MD4's training loss over the noise on a
trained run's data, against the cost of a training step, for each K.

Usage: python benchmarks/md4_draws.py --run RUN [--draws 1 2 4] [--repeats 100] [--batches 2]

For each K the run's model (its online weights, in training mode) computes the training loss ``--repeats`` times
with fresh noise on each of ``--batches`` training batches (random windows of the training split, the run's batch
size and length), and times a few forward and backward passes at the run's precision. It prints the standard
deviation of the loss over the noise (mean over batches), the median seconds of one forward and backward pass, and
the variance times the seconds (the cost of a given precision: below K = 1's, the draws pay for their work).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from md4.data.batches import random_windows
from md4.device import autocast
from md4.runs.directory import cached_run_data, load_run

TIMED_PASSES = 4


def loss_spread(model, x: torch.Tensor, repeats: int, seed: int) -> float:
    """The standard deviation of the training loss over ``repeats`` fresh noise draws."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return statistics.stdev(float(model.loss(x, generator=generator)[0]) for _ in range(repeats))


def pass_seconds(model, x: torch.Tensor, precision: str) -> float:
    """The median seconds of a forward and backward pass of the training loss."""
    seconds = []
    for _ in range(TIMED_PASSES):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            loss, _ = model.loss(x)
        loss.backward()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--draws", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args()
    run = load_run(args.run, device="cpu", use_ema=False)
    model = run.model.train()
    train = cached_run_data(run.source, run.run_dir).splits["train"]
    size, length, precision = run.config.train.batch_size, run.config.data.seq_len, run.config.train.precision
    windows = torch.Generator().manual_seed(0)
    batches = [random_windows(train, size, length, windows) for _ in range(args.batches)]
    print(f"{args.run}: batch {size} x {length}, {precision}, {args.repeats} noise draws per batch, fp32 losses")
    print("| K | loss std over the noise (nats/token) | s per forward+backward | variance x seconds |")
    print("|---:|---:|---:|---:|")
    for draws in args.draws:
        model.draws = draws
        std = statistics.mean(loss_spread(model, x, args.repeats, i) for i, x in enumerate(batches))
        seconds = pass_seconds(model, batches[0], precision)
        print(f"| {draws} | {std:.4f} | {seconds:.3f} | {std**2 * seconds:.5f} |", flush=True)


if __name__ == "__main__":
    main()
