"""Training metrics: JSON lines, TensorBoard event files, and a PNG of the curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from md4.notices import warn


class MetricsLog:
    """Appends ``{"step", "split", ...}`` records to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        """Open the log of a run that (re)starts at ``start_step``; records after it, left by a crash, are dropped."""
        self.path = run_dir / "metrics.jsonl"
        kept = [r for r in read_metrics(self.path) if r["step"] <= start_step] if self.path.exists() else []
        self.file = open(self.path, "w")
        self.file.writelines(json.dumps(r) + "\n" for r in kept)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # TensorBoard is a dependency, but a broken install should not stop training
            self.writer = None

    def scalars(self, split: str, values: dict[str, Any], step: int) -> None:
        """One record of ``split`` at ``step``: its numbers, and its labels (strings, e.g. the precision) in the JSON
        log only."""
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and v is not None}
        labels = {k: v for k, v in values.items() if isinstance(v, str)}
        self.file.write(json.dumps({"step": step, "split": split, **numbers, **labels}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(f"{split}/{key}", value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()

    def plot(self, path: Path) -> None:
        """Bits per token against step, train and validation, from ``metrics.jsonl``."""
        plot_metrics(self.path, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; unreadable lines (a torn last line after a power loss) are dropped with a
    warning."""
    records, bad = [], 0
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            else:
                bad += 1
    if bad:
        warn(f"Dropped {bad} unreadable line(s) of {path}, left by an interrupted write.", stacklevel=2)
    return records


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for split, style in (("train", "-"), ("valid", "o-")):
        points = [(r["step"], r["bits_per_token"]) for r in records if r["split"] == split and "bits_per_token" in r]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, style, label=split, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("NELBO, bits per token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png_path)
