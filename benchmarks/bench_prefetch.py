"""A preset's training step with its batches drawn when asked (the CPU default) and drawn ahead on the prefetch
thread (the GPU default), in alternating blocks; and the cost of drawing and checking one batch alone.

Usage: python benchmarks/bench_prefetch.py [--preset shakespeare-char] [--blocks 4] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from md4.config import build_config
from md4.core.tokens import check_tokens
from md4.training.trainer import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--blocks", type=int, default=4, help="blocks of --steps steps per setting, alternating")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="md4-bench-") as folder:
        config = build_config(args.preset, ["train.steps=100000"])
        trainer = build_trainer(config, f"{folder}/run", progress=False)
        rows, generator = trainer.batches.rows, torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(200):
            check_tokens(trainer.data.train_batch(rows, generator)[0], trainer.model.vocab_size)
        print(f"drawing and checking one batch of {rows} rows: {(time.perf_counter() - start) / 200 * 1e6:.0f} us")
        for _ in range(3):
            trainer.train_step()
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.blocks):
            for threaded in (False, True):
                trainer.batches.close()
                trainer.batches.threaded = threaded
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step()
                seconds[threaded].append((time.perf_counter() - start) / args.steps)
        trainer.batches.close()
        trainer.log.close()
        trainer.lock.release()
    for threaded, times in seconds.items():
        blocks = ", ".join(f"{t * 1e3:.0f}" for t in times)
        print(f"{'thread' if threaded else 'inline'}: median {statistics.median(times) * 1e3:.1f} ms/step ({blocks})")


if __name__ == "__main__":
    main()
