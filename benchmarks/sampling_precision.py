"""Does sampling with the network in bf16 change sample quality? fp32 against bf16 autocast, seed by seed.

Usage:
    python benchmarks/sampling_precision.py --run RUN [--seeds 6] [--batch 16] [--steps 256] [--sampler ancestral]

For each seed it draws ``--batch`` samples of the run's length with the network in float32 and again under bf16
autocast (the draws themselves stay float64 in both), and scores every set with an n-gram model fitted on the run's
training split (md4.ngram): generative perplexity and the mean per-sample token entropy in bits, with held-out test
text as the reference. It prints a markdown table: per precision the mean over seeds with its standard error, the
paired difference bf16 - fp32 with its standard error, the share of tokens that the two precisions draw alike from
the same seed, and the seconds per step of each.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from md4.device import autocast
from md4.ngram import DEFAULT_ORDER, NGramModel, sample_entropy
from md4.runs.directory import cached_run_data, load_run
from md4.sampling import sample
from md4.sampling.options import DEFAULT_SAMPLER, DEFAULT_STEPS

PRECISIONS = ("fp32", "bf16")
REFERENCE_ROWS = 64


def mean_and_error(values: list[float]) -> str:
    """``mean ± standard error`` of ``values``."""
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {error:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER)
    parser.add_argument("--order", type=int, default=DEFAULT_ORDER)
    args = parser.parse_args()

    run = load_run(args.run, device="cpu")
    data = cached_run_data(run.source, run.run_dir)
    length = run.config.data.seq_len
    scorer = NGramModel.fit(data.splits["train"], run.model.vocab_size, args.order)
    device = torch.device("cpu")
    quality = {p: {"ppl": [], "entropy": [], "seconds": []} for p in PRECISIONS}
    same = []
    for seed in range(args.seeds):
        tokens = {}
        for precision in PRECISIONS:
            start = time.perf_counter()
            with autocast(device, precision):
                out = sample(run.model, args.batch, shape=(length,), steps=args.steps, sampler=args.sampler, seed=seed)
            quality[precision]["seconds"].append((time.perf_counter() - start) / args.steps)
            tokens[precision] = out.tokens.numpy()
            quality[precision]["ppl"].append(scorer.perplexity(tokens[precision]))
            quality[precision]["entropy"].append(sample_entropy(tokens[precision]))
        same.append(float((tokens["fp32"] == tokens["bf16"]).mean()))
        print(f"seed {seed}: " + ", ".join(f"{p} ppl {quality[p]['ppl'][-1]:.2f}" for p in PRECISIONS), flush=True)
    test = np.asarray(data.splits["test"])
    reference = test[: REFERENCE_ROWS * length].reshape(-1, length)
    print(
        f"\n{args.run}: {args.seeds} seeds x {args.batch} samples x {length} tokens, {args.sampler}, "
        f"{args.steps} steps; n-gram order {args.order}; held-out text: gen. PPL "
        f"{scorer.perplexity(reference):.2f}, entropy {sample_entropy(reference):.3f} bits\n"
    )
    print("| | fp32 | bf16 | bf16 - fp32 (paired) |")
    print("|---|---:|---:|---:|")
    for key, label in (("ppl", "generative perplexity"), ("entropy", "entropy (bits)"), ("seconds", "s/step")):
        diff = [b - a for a, b in zip(quality["fp32"][key], quality["bf16"][key], strict=True)]
        cells = [mean_and_error(quality[p][key]) for p in PRECISIONS] + [mean_and_error(diff)]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"| tokens drawn alike from the same seed | {mean_and_error(same)} | | |")


if __name__ == "__main__":
    main()
