"""Training throughput with one process and with several (torchrun, DDP over gloo on CPU), same global batch.

Usage: python benchmarks/bench_processes.py [--preset shakespeare-char] [--nproc 1 2] [--steps 60] [--repeats 2]

Each configuration trains the preset from scratch for ``--steps`` steps (no evaluation, sampling or
checkpoints in between) with ``md4 train`` or ``md4 train --nproc N``, in turn, ``--repeats`` times, and
reports the median of the logged tokens/s over the second half of the steps (start-up and warm-up excluded).
One process uses every core with torch's threads; N processes get OMP_NUM_THREADS = cores / N each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def tokens_per_second(preset: str, nproc: int, steps: int, cores: int) -> float:
    with tempfile.TemporaryDirectory(prefix="md4-bench-") as folder:
        run_dir = Path(folder) / "run"
        command = [sys.executable, "-m", "md4", "train", "--preset", preset, "--out", str(run_dir), "--no-progress"]
        if nproc > 1:
            command += ["--nproc", str(nproc)]
        command += [
            f"train.steps={steps}",
            "train.log_every=5",
            f"train.eval_every={10 * steps}",
            f"train.sample_every={10 * steps}",
            f"train.checkpoint_every={10 * steps}",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))}
        subprocess.run(command, check=True, env=env, capture_output=True)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_second"] for r in records if r["split"] == "train" and r["step"] > steps // 2]
        return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rates: dict[int, list[float]] = {n: [] for n in args.nproc}
    for _ in range(args.repeats):
        for n in args.nproc:  # interleaved, so drifting load hits every configuration alike
            rates[n].append(tokens_per_second(args.preset, n, args.steps, cores))
    base = statistics.median(rates[args.nproc[0]])
    print(f"| processes | threads each | tokens/s (median) | ratio |  ({args.preset}, {cores} cores)")
    print("|---:|---:|---:|---:|")
    for n, values in rates.items():
        median = statistics.median(values)
        print(f"| {n} | {max(1, cores // n)} | {median:,.0f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
