"""md4 against the authors' JAX release on this machine, side by side: a training step and a sampling step.

Usage (JPY: a python with the release's JAX stack; HARNESS: a script that times the release's own jitted
``train_step`` and ``MD4.sample_step`` on random tokens and prints ``median s/step: X``):
    python benchmarks/against_release.py --jax-python $JPY --harness $HARNESS \
        [--sizes small text8] [--rounds 3]

Each round runs, one after the other so that drifting load hits all alike: the release's jitted training step
(loss, gradient, AdamW, EMA; float32), md4's (``md4 bench``'s job: the same network and batch, the preset's
dropouts) in bf16 and in fp32, the release's jitted sampling step (``MD4.sample_step`` on a half-masked batch) and
md4's ancestral sampling (``md4 sample``'s default sampler, 64 steps, per-step time) with the network in fp32 and
in bf16, eager and under torch.compile (``md4 sample --compile``; its compile time is not in the step time). ``small`` is the release's text8 network at 6 layers x 384 (md4 bench's ``6x384``), ``text8`` the whole
one; both at batch 8 x 256. It prints a markdown table of the medians over rounds and md4's speed-up over the
release (release s/step over md4 s/step).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys

MD4_MODEL = {"small": "6x384", "text8": "text8"}
ROWS = (  # (what, md4 job mode or None for the release, label)
    ("train", None, "release (JAX, fp32, jitted)"),
    ("train", "bf16", "md4 bf16"),
    ("train", "fp32", "md4 fp32"),
    ("sample", None, "release (JAX, fp32, jitted)"),
    ("sample", "sample-fp32", "md4 fp32"),
    ("sample", "sample-bf16", "md4 bf16 (md4 sample's default with fast bf16)"),
    ("sample", "sample-fp32-compile", "md4 fp32, --compile"),
    ("sample", "sample-bf16-compile", "md4 bf16, --compile"),
)


def release_seconds(args, size: str, what: str) -> float:
    """The release harness's median seconds per step."""
    command = [args.jax_python, args.harness, "--size", size, "--batch", "8"]
    command += ["--steps", "6", "--warmup", "2"] + (["--forward-only"] if what == "sample" else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(re.search(r"median s/step: ([0-9.]+)", done.stdout).group(1))


def md4_seconds(size: str, mode: str) -> float:
    """md4 bench's seconds per step of one job, in a process of its own."""
    job = {"model": MD4_MODEL[size], "mode": mode, "device": "cpu"}
    done = subprocess.run([sys.executable, "-m", "md4.bench", "--one", json.dumps(job)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax-python", required=True, help="the python of the release's JAX stack ($JPY)")
    parser.add_argument("--harness", required=True, help="release-bench/bench.py")
    parser.add_argument("--sizes", nargs="+", choices=list(MD4_MODEL), default=["small"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[tuple[str, str, str], list[float]] = {}
    for round_ in range(args.rounds):
        for size in args.sizes:
            for what, mode, label in ROWS:
                value = release_seconds(args, size, what) if mode is None else md4_seconds(size, mode)
                seconds.setdefault((size, what, label), []).append(value)
                print(f"round {round_}: {size} {what} {label}: {value:.4f} s/step", file=sys.stderr, flush=True)
    print("| network | step | program | s/step (median of rounds) | tokens/s | speed-up over the release |")
    print("|---|---|---|---:|---:|---:|")
    for size in args.sizes:
        for what, _, label in ROWS:
            median = statistics.median(seconds[(size, what, label)])
            release = statistics.median(seconds[(size, what, ROWS[0 if what == "train" else 3][2])])
            tokens = f"{8 * 256 / median:,.0f}" if what == "train" else "-"
            print(f"| {size} | {what} | {label} | {median:.4f} | {tokens} | {release / median:.2f}x |")


if __name__ == "__main__":
    main()
