"""MD4 against GenMD4 on the CPU demo corpus: the same network, steps or wall-clock, several seeds.

Usage: python benchmarks/compare_genmd4.py [--out runs/compare] [--seeds 0 1] [--steps 1500] [--equal-time-steps 750]

Trains, for each seed, the ``shakespeare-char`` preset (MD4, linear schedule), ``genmd4-shakespeare-char`` for the
same number of steps, and ``genmd4-shakespeare-char`` for ``--equal-time-steps`` (about the same wall-clock as
MD4, since GenMD4 runs its network on two draws a step). Each run is evaluated on the whole test split (the
continuous-time bound, one draw per sequence, seed 0) and draws one unconditional sample. Prints a markdown table
and writes ``summary.json`` and the learned schedule of each GenMD4 run (``schedule.png``) under ``--out``.
Reruns reuse finished runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from md4.config import build_config
from md4.evaluate import estimate_nelbo
from md4.generation.schedule_plot import plot_schedule, ranked_exponents
from md4.generation.text import generate
from md4.held_out import held_out_batches
from md4.runs.directory import is_run, load_run, resume_config
from md4.training import build_trainer


def run_one(out: Path, preset: str, seed: int, steps: int) -> dict:
    """Train (or reuse) one run, evaluate it on the test split and sample from it."""
    overrides = [f"train.seed={seed}", f"train.steps={steps}"]
    resume = is_run(out)
    config = resume_config(out, overrides) if resume else build_config(preset, overrides)
    result = build_trainer(config, out, resume, progress=False).fit()
    run = load_run(out)
    batches = held_out_batches(run, None, "test", config.train.batch_size).batches
    test = estimate_nelbo(run.model, batches, seed=0, precision=config.train.precision)
    summary = {
        "preset": preset,
        "seed": seed,
        "steps": steps,
        "train_seconds": result.seconds,
        "tokens_per_second": result.tokens_per_second,
        "test_bits_per_char": test.bits_per_token,
        "test_stderr": test.bits_per_token_stderr,
        "sample": generate(run.model, run.codec, 1, steps=config.sample.steps, seed=0).texts[0],
    }
    if run.model.schedule.per_token:
        plot_schedule(run.model, run.codec, out / "schedule.png", title=f"{preset}, seed {seed}, {steps} steps")
        summary["w"] = {label: w for w, label in ranked_exponents(run.model, run.codec)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--equal-time-steps", type=int, default=750)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    plans = [
        ("MD4 (linear)", "shakespeare-char", args.steps),
        ("GenMD4, same steps", "genmd4-shakespeare-char", args.steps),
        ("GenMD4, same wall-clock", "genmd4-shakespeare-char", args.equal_time_steps),
    ]
    results = []
    for label, preset, steps in plans:
        for seed in args.seeds:
            summary = run_one(out / f"{preset}-{steps}-seed{seed}", preset, seed, steps)
            results.append({"label": label, **summary})
            (out / "summary.json").write_text(json.dumps(results, indent=2))
            print(f"{label}, seed {seed}: {summary['test_bits_per_char']:.4f} bits/char", flush=True)
    print("\n| model | steps | seed | test bits/char | train tokens/s | train time (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['label']} | {r['steps']} | {r['seed']} | {r['test_bits_per_char']:.3f} ± {r['test_stderr']:.3f} "
            f"| {r['tokens_per_second']:,.0f} | {r['train_seconds']:.0f} |"
        )
    print("\n| model | mean test bits/char over seeds |")
    print("|---|---:|")
    for label, _, _ in plans:
        values = [r["test_bits_per_char"] for r in results if r["label"] == label]
        print(f"| {label} | {statistics.mean(values):.3f} (n = {len(values)}) |")


if __name__ == "__main__":
    main()
