"""Denoisers for pixels at equal CPU time: which network learns an image set best in a fixed budget.

Usage: python benchmarks/compare_image_networks.py [--data mnist] [--minutes 12] [--out runs/image-nets]

For each candidate network (a small and a wider UNet, and the transformer over pixels with axial positions,
all class-conditional) the script times a few training steps, sets ``train.steps`` so that the run's whole
warm-up and cosine schedule fits in ``--minutes``, trains, and evaluates the continuous-time bound on the test
split (bits per dimension, one draw per image, seed 0). Prints a markdown table and writes ``summary.json`` and
each run's sample grid under ``--out``. Reruns reuse finished runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from md4.config import build_config
from md4.evaluate import estimate_nelbo
from md4.held_out import held_out_batches
from md4.models import count_parameters
from md4.runs.directory import is_run, load_run
from md4.training import build_trainer

CANDIDATES = {
    "unet-32x4": ["model.net=unet", "net.feature_dim=32", "net.n_layers=4", "net.dropout=0"],
    "unet-64x4": ["model.net=unet", "net.feature_dim=64", "net.n_layers=4", "net.dropout=0"],
    "transformer-128x4": [
        "model.net=transformer",
        "net.dim=128",
        "net.n_layers=4",
        "net.n_heads=4",
        "net.axial_positions=true",
    ],
}


def seconds_per_step(preset: str, overrides: list[str], steps: int = 8) -> float:
    """The mean time of a training step over a short throw-away run (after two warm-up steps)."""
    with tempfile.TemporaryDirectory(prefix="md4-probe-") as probe:
        config = build_config(preset, [*overrides, f"train.steps={steps}"])
        trainer = build_trainer(config, Path(probe) / "run", progress=False)
        for _ in range(2):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(steps - 2):
            trainer.train_step()
        trainer.log.close()
        trainer.lock.release()
        return (time.perf_counter() - start) / (steps - 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--out", default="runs/image-nets")
    parser.add_argument("--only", nargs="*", help="candidate names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    chosen = {name: o for name, o in CANDIDATES.items() if not args.only or name in args.only}
    # Every candidate is timed before any trains, so the budgets are measured under the same load.
    budgets = {}
    for name, overrides in chosen.items():
        run_dir = out / name
        if is_run(run_dir):
            budgets[name] = json.loads((run_dir / "config.json").read_text())["train"]["steps"]
        else:
            budgets[name] = int(args.minutes * 60 / seconds_per_step(args.preset, overrides))
    results = []
    for name, overrides in chosen.items():
        run_dir, steps = out / name, budgets[name]
        config = build_config(args.preset, [*overrides, f"train.steps={steps}"])
        started = time.time()
        result = build_trainer(config, run_dir, resume=is_run(run_dir), progress=False).fit()
        run = load_run(run_dir)
        batches = held_out_batches(run, None, "test", 256).batches
        test = estimate_nelbo(run.model, batches, seed=0, precision=config.train.precision)
        results.append(
            {
                "network": name,
                "parameters": count_parameters(config, run.spec),
                "steps": steps,
                "train_seconds": result.seconds,
                "wall_seconds": time.time() - started,
                "test_bits_per_dim": test.bits_per_token,
                "test_stderr": test.bits_per_token_stderr,
            }
        )
        (out / "summary.json").write_text(json.dumps(results, indent=2))
        print(f"{name}: {test.bits_per_token:.4f} bits/dim after {steps} steps", flush=True)
    print("\n| network | parameters | steps | train time (s) | test bits/dim |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['network']} | {r['parameters']:,} | {r['steps']} | {r['train_seconds']:.0f} "
            f"| {r['test_bits_per_dim']:.4f} ± {r['test_stderr']:.4f} |"
        )


if __name__ == "__main__":
    main()
