"""Training speed of the image demo's candidate networks on binarised MNIST, side by side: the `mnist` preset's
full-resolution UNet and the `demo-mnist` UViT, each in fp32 and under bf16 autocast.

Usage: python benchmarks/demo_image_speed.py [--rounds 3] [--steps 8]

Every round times a few training steps of each candidate in turn (after two warm-up steps, batch 32, 2 levels),
so the machine's load falls on all alike; prints the median training images per second over the rounds as a
markdown table (docs/results.md, "The ten-minute demos").
"""

from __future__ import annotations

import argparse
import statistics

from compare_image_networks import seconds_per_step

from md4.config import DEMO_IMAGE_PRESET, IMAGE_PRESET

COMMON = ["data.levels=2", "train.batch_size=32", "train.time_limit=none"]
CANDIDATES = {
    "`mnist` preset UNet (width 32, 4 + 2 + 5 blocks)": (IMAGE_PRESET, []),
    "`demo-mnist` UViT (width 16, 1 + 2 blocks, 4-layer DiT over 4 x 4 patches)": (DEMO_IMAGE_PRESET, []),
}
PRECISIONS = ("fp32", "bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, (preset, overrides) in CANDIDATES.items():
            for precision in PRECISIONS:
                options = [*COMMON, *overrides, f"train.precision={precision}"]
                seconds.setdefault((name, precision), []).append(seconds_per_step(preset, options, args.steps))
    print("| network | precision | training images/s (median) |")
    print("|---|---|---:|")
    for (name, precision), times in seconds.items():
        print(f"| {name} | {precision} | {32 / statistics.median(times):.0f} |")


if __name__ == "__main__":
    main()
