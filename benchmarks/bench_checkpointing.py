"""Peak memory and step time of training with and without activation checkpointing, at long sequences.

Usage: python benchmarks/bench_checkpointing.py [--seq 1024] [--batch 4] [--steps 2] [--threads 2]

Each setting trains the text8 preset's network at 6 layers of width 384 (``md4 bench``'s 6x384 model) on
random tokens at the given sequence length, in a process of its own so that its peak RSS is its own; prints a
markdown table of seconds per step and peak RSS with ``train.activation_checkpointing`` off and on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from md4.bench import BenchModel, train_row

SETTINGS = {"off": "train.activation_checkpointing=false", "on": "train.activation_checkpointing=true"}


def job(args, setting: str) -> dict:
    overrides = ("net.n_layers=6", "net.dim=384", "net.n_heads=6", f"data.seq_len={args.seq}")
    model = BenchModel("text8", (*overrides, f"train.batch_size={args.batch}", SETTINGS[setting]), args.steps, 1)
    return train_row(model, "bf16", "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(job(args, args.one)))
        return
    print(f"6 x 384 text8 network, batch {args.batch} x {args.seq}, bf16, {args.threads} threads\n")
    print("| activation checkpointing | seconds per step | tokens/s | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    for setting in SETTINGS:
        command = [sys.executable, __file__, "--one", setting, *sys.argv[1:]]
        row = json.loads(subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout.splitlines()[-1])
        cells = f"{row['seconds_per_step']:.3f} | {row['tokens_per_second']:,.0f} | {row['peak_rss_mib']:,.0f}"
        print(f"| {setting} | {cells} |")


if __name__ == "__main__":
    main()
