"""Sampling speed and sample quality of a trained text run, sampler by sampler, against the number of network calls.

Usage:
    python benchmarks/bench_sampling.py --run RUN [--cached-run RUN_TI] [--batch 8] [--repeats 1]
    python benchmarks/bench_sampling.py --run RUN [--cached-run RUN_TI] --against REV [--repeats 3]

The first form samples ``--batch`` sequences of the run's length with: ancestral at T = 8 ... 1000 grid steps; the
cached ancestral sampler (the same loop on a network that ignores t, whose output the sampler reuses while z is
unchanged: the run's own if it ignores t, else ``--cached-run``, a run trained with net.time_conditioning=none) at T
= 64, 256, 1000; exact (one call per token); and confident (MaskGIT-style) at T = 8 ... 128 calls; each in float32
and under bf16 autocast, one after the other so that drifting load hits both alike. It prints a markdown table:
network calls (NFE), samples/s (median over repeats, after a warm-up), and the quality of all repeats' samples:
generative perplexity under an n-gram model fitted on the run's training split (md4.ngram) and the mean entropy of
each sample's tokens in bits, with held-out test text as the reference.

The second form times ``sample()`` of the working tree against ``git show REV:src/md4/sampling.py`` side by side
(interleaved, medians) on the run's model and on fixed logits over a GPT-2-sized vocabulary (the loop's own cost).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from md4.core.md4 import MD4
from md4.device import autocast
from md4.ngram import DEFAULT_ORDER, NGramModel, sample_entropy
from md4.nn.contract import capabilities_of
from md4.runs.directory import cached_run_data, load_run
from md4.sampling import sample

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "bf16")
REFERENCE_ROWS = 256  # held-out sequences scored for the reference row


def configurations(cached: bool) -> list[tuple[str, str, int]]:
    """(row label, sampler, steps; 0 for exact) in table order; ``cached`` rows use the network that ignores t."""
    rows = [("ancestral", "ancestral", t) for t in (8, 16, 32, 64, 128, 256, 1000)]
    rows += [("cached", "ancestral", t) for t in (64, 256, 1000)] if cached else []
    rows += [("exact", "exact", 0)]
    return rows + [("confident", "confident", t) for t in (8, 16, 32, 64, 128)]


def timed_sample(model, num: int, precision: str = "fp32", sample_fn=sample, **kwargs):
    """(seconds, output) of one sampling call under ``precision``."""
    with autocast(torch.device("cpu"), precision):
        start = time.perf_counter()
        out = sample_fn(model, num, **kwargs)
    return time.perf_counter() - start, out


def quality_table(args) -> None:
    run = load_run(args.run, device="cpu")
    data = cached_run_data(run.source, run.run_dir)
    length = run.config.data.seq_len
    start = time.perf_counter()
    scorer = NGramModel.fit(data.splits["train"], run.model.vocab_size, args.order)
    fit = time.perf_counter() - start
    print(f"n-gram scorer: order {args.order}, fitted on {len(data.splits['train']):,} training tokens in {fit:.1f} s")
    models = {"main": run.model}
    if capabilities_of(run.model.denoiser).time_independent:
        print("The run's network ignores t, so its ancestral rows are already the cached sampler.")
    elif args.cached_run:
        models["cached"] = load_run(args.cached_run, device="cpu").model
        print(f"The run's network is time-conditioned; cached rows: {args.cached_run} (a network that ignores t).")
    else:
        print("The run's network is time-conditioned, so there are no cached rows; pass --cached-run.")
    for model in models.values():  # warm-up
        for precision in PRECISIONS:
            timed_sample(model, 2, precision, shape=(length,), steps=4)
    rows = configurations("cached" in models)
    seconds, samples, calls = {}, {}, {}
    for repeat in range(args.repeats):
        for label, sampler, steps in rows:
            model = models["cached" if label == "cached" else "main"]
            for precision in PRECISIONS:
                key = (label, steps, precision)
                elapsed, out = timed_sample(
                    model, args.batch, precision, shape=(length,), sampler=sampler, steps=max(steps, 1), seed=repeat
                )
                seconds.setdefault(key, []).append(elapsed)
                samples.setdefault(key, []).append(out.tokens)
                calls.setdefault(key, []).append(out.nfe)
            print(f"repeat {repeat}: {label} T={steps} done", file=sys.stderr)
    test = np.asarray(data.splits["test"])
    reference = test[: REFERENCE_ROWS * length].reshape(-1, length)
    print(f"\n{args.batch} samples x {length} tokens per call, {args.repeats} repeat(s)\n")
    print(
        "| sampler | T | NFE | samples/s fp32 | samples/s bf16 | gen. PPL fp32 | entropy fp32 | gen. PPL bf16 "
        "| entropy bf16 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ppl, entropy = scorer.perplexity(reference), sample_entropy(reference)
    print(f"| held-out test text ({len(reference)} x {length}) | | | | | {ppl:.2f} | {entropy:.2f} | | |")
    for label, _, steps in rows:
        cells = [label, str(steps) if steps else "-", f"{statistics.mean(calls[(label, steps, 'fp32')]):.0f}"]
        cells += [f"{args.batch / statistics.median(seconds[(label, steps, p)]):.2f}" for p in PRECISIONS]
        for precision in PRECISIONS:
            tokens = torch.cat(samples[(label, steps, precision)]).numpy()
            cells += [f"{scorer.perplexity(tokens):.2f}", f"{sample_entropy(tokens):.2f}"]
        print("| " + " | ".join(cells) + " |")


# ------------------------------------------------------------------ before/after
def sampling_at(rev: str) -> types.ModuleType:
    """md4.sampling as it was at git revision ``rev``, imported beside the working tree's."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/md4/sampling.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("md4.sampling_at_rev")
    module.__package__ = "md4"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{rev}:src/md4/sampling.py", "exec"), module.__dict__)
    return module


def fixed_logits_model(vocab: int, length: int) -> MD4:
    """A model whose logits are fixed noise [L, V] whatever z and t: what remains is the sampling loop's cost."""
    logits = 4.0 * torch.randn(length, vocab, generator=torch.Generator().manual_seed(0))
    return MD4(lambda z, t: logits.expand(*z.shape, vocab), vocab_size=vocab, schedule="linear")


def loop_comparison(args) -> None:
    before = sampling_at(args.against).sample
    run = load_run(args.run, device="cpu")
    length = run.config.data.seq_len
    cases = [
        ("run, ancestral T = 32", run.model, args.batch, dict(steps=32)),
        ("run, top_p T = 32", run.model, args.batch, dict(steps=32, sampler="top_p")),
    ]
    if args.cached_run:  # one sequence: most of the 1000 steps unmask nothing and skip the network
        cases.append(("cached run, ancestral T = 1000", load_run(args.cached_run, device="cpu").model, 1, {}))
    small, big = fixed_logits_model(run.model.vocab_size, length), fixed_logits_model(50257, length)
    cases += [
        (f"fixed logits, V = {run.model.vocab_size}, ancestral T = 256", small, args.batch, dict(steps=256)),
        (
            f"fixed logits, V = {run.model.vocab_size}, top_p T = 256",
            small,
            args.batch,
            dict(steps=256, sampler="top_p"),
        ),
        ("fixed logits, V = 50257, ancestral T = 8", big, 4, dict(steps=8)),
        ("fixed logits, V = 50257, top_p T = 8", big, 4, dict(steps=8, sampler="top_p")),
    ]
    versions = {args.against: before, "working tree": sample}
    seconds = {(case[0], name): [] for case in cases for name in versions}
    same: dict[str, bool] = {}
    for _, model, _, kwargs in cases:  # warm-up
        for fn in versions.values():
            timed_sample(model, 2, sample_fn=fn, shape=(length,), **kwargs | dict(steps=2))
    for repeat in range(args.repeats):
        for label, model, batch, kwargs in cases:
            outputs = []
            for name, fn in versions.items():
                elapsed, out = timed_sample(model, batch, sample_fn=fn, shape=(length,), seed=repeat, **kwargs)
                outputs.append(out.tokens)
                seconds[(label, name)].append(elapsed)
            same[label] = same.get(label, True) and torch.equal(*outputs)
            times = ", ".join(f"{name} {seconds[(label, name)][-1]:.3f} s" for name in versions)
            print(f"repeat {repeat}: {label}: {times}", file=sys.stderr)
    print(f"\nmedian seconds per sample() call over {args.repeats} repeats after a warm-up, float32\n")
    print(f"| case | batch x length | {args.against} (s) | working tree (s) | speed-up | same tokens for a seed |")
    print("|---|---|---:|---:|---:|---|")
    for label, _, batch, _ in cases:
        old, new = (statistics.median(seconds[(label, name)]) for name in versions)
        same_tokens = "yes" if same[label] else "no"
        print(f"| {label} | {batch} x {length} | {old:.3f} | {new:.3f} | {old / new:.2f}x | {same_tokens} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained text run (its EMA weights are sampled)")
    parser.add_argument("--cached-run", help="a run on the same data whose network ignores t, for the cached rows")
    parser.add_argument("--batch", type=int, default=8, help="samples per sample() call (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of every case (default: %(default)s)")
    parser.add_argument("--order", type=int, default=DEFAULT_ORDER, help="n-gram scorer order (default: %(default)s)")
    parser.add_argument("--against", metavar="REV", help="time the sampling loop at git REV against the working tree")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.against:
        loop_comparison(args)
    else:
        quality_table(args)


if __name__ == "__main__":
    main()
