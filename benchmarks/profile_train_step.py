"""Where a training step's time goes: torch.profiler over whole ``Trainer.train_step`` calls of a preset.

Usage: python benchmarks/profile_train_step.py [--preset shakespeare-char] [--steps 3] [--warmup 5]
       [--threads 2] [--rows 15] [KEY=VALUE ...]

Prints the median step time of --steps unprofiled steps, then the operators with the most self CPU time over
--steps profiled ones (a markdown table: share of the profiled time, milliseconds per step, calls per step),
and the share of the optimizer and EMA updates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from md4.config import build_config
from md4.training import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="md4-profile-") as tmp:
        trainer = build_trainer(build_config(args.preset, args.overrides), Path(tmp) / "run", progress=False)
        for _ in range(args.warmup):
            trainer.train_step()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        update = trainer.ema.update
        trainer.ema.update = lambda module: record(update, module)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                trainer.train_step()
        trainer.log.close()
        trainer.lock.release()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{args.preset} {' '.join(args.overrides)}: median step {statistics.median(times):.3f} s unprofiled\n")
    print("| operator | self CPU share | ms per step | calls per step |")
    print("|---|---:|---:|---:|")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.rows]:
        share = e.self_cpu_time_total / total
        per_step = e.self_cpu_time_total / 1000 / args.steps
        print(f"| `{e.key[:60]}` | {share:.1%} | {per_step:.1f} | {e.count / args.steps:.0f} |")
    spans = {e.key: e.cpu_time_total for e in events}
    for name in ("Optimizer.step#AdamW.step", "ema_update"):
        if name in spans:
            print(f"\n{name}: {spans[name] / total:.1%} of the profiled time (inclusive)")


def record(update, module) -> None:
    with record_function("ema_update"):
        update(module)


if __name__ == "__main__":
    main()
