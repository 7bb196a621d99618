"""``md4 bench``'s report: the machine, the peaks, and the training and sampling tables (aligned or markdown)."""

from __future__ import annotations

from md4.bench.suite import DTYPES, MODES

TRAIN_COLUMNS = "model|mode|parameters|batch|s/step|tokens/s|MFLOP/token|TFLOP/s|MFU|compile (s)|peak RSS (MiB)"
CUDA_TRAIN_COLUMNS = "MFU of datasheet bf16|peak CUDA (MiB)"
SAMPLING_COLUMNS = "model|precision|ancestral sampling|NFE|seconds|s/step|token-steps/s|peak RSS (MiB)"


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """Rows as a markdown table, or as aligned columns for a terminal."""
    if markdown:
        rule = ["---" if i < 2 else "---:" for i in range(len(header))]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        for cells in [header, *rows]
    )


def train_cells(row: dict, cuda: bool) -> list[str]:
    """One training row's cells."""
    if "error" in row:
        return [row["model"], row["mode"]] + ["failed"] * (TRAIN_COLUMNS.count("|") - 1 + 2 * cuda)
    compile_s = f"{row['warmup_extra_s']:.0f}" if MODES[row["mode"]][1] else "-"
    cells = [
        row["model"],
        row["mode"],
        f"{row['parameters']:,}",
        f"{row['batch']} x {row['seq_len']}",
        f"{row['seconds_per_step']:.3f}",
        f"{row['tokens_per_second']:,.0f}",
        f"{row['flops_per_token'] / 1e6:,.1f}",
        f"{row['tflops']:.4f}",
        f"{row['mfu']:.1%}",
        compile_s,
        f"{row['peak_rss_mib']:,.0f}",
    ]
    if not cuda:
        return cells
    datasheet = f"{row['mfu_datasheet']:.1%}" if "mfu_datasheet" in row else "-"
    return [*cells, datasheet, f"{row['peak_cuda_mib']:,.0f}"]


def format_report(report: dict, markdown: bool = False) -> str:
    """The machine, the peaks, the training table and the sampling table."""
    m = report["machine"]
    cuda = m["device"] != "cpu"
    flags = ", ".join(f"{flag} {'yes' if m[flag] else 'no'}" for flag in ("amx_bf16", "avx512_bf16"))
    peaks = ", ".join(
        f"{p} {report['peak_flops'][p] / 1e12:.3f} (start {report['peak_flops_start'][p] / 1e12:.3f}, end "
        f"{report['peak_flops_end'][p] / 1e12:.3f})"
        for p in DTYPES
    )
    lines = [
        f"{m['cpu']} ({flags}); torch {m['torch']}, {m['threads']} threads; device {m['device']}",
        f"matrix-product peak, TFLOP/s, the better of two measurements: {peaks}",
        f"suite wall time {report['wall_s']:.0f} s; MFU is over the peak of the mode's precision; compile: cold caches",
    ]
    if cuda:
        sheet = report.get("datasheet_bf16_flops")
        known = f"{sheet / 1e12:.1f} TFLOP/s" if sheet else "not known for this GPU"
        lines.append(f"datasheet dense bf16 peak: {known}; steps timed with CUDA events")
    lines.append("")
    header = TRAIN_COLUMNS.split("|") + (CUDA_TRAIN_COLUMNS.split("|") if cuda else [])
    lines.append(table(header, [train_cells(row, cuda) for row in report["train"]], markdown))
    if report["sampling"]:
        header = SAMPLING_COLUMNS.split("|") + (["peak CUDA (MiB)"] if cuda else [])
        rows = [sampling_cells(row, cuda) for row in report["sampling"]]
        lines += ["", table(header, rows, markdown)]
    return "\n".join(lines)


def sampling_cells(row: dict, cuda: bool) -> list[str]:
    """One sampling row's cells."""
    if "error" in row:
        return [row["model"], row["mode"].removeprefix("sample-")] + ["failed"] * (
            SAMPLING_COLUMNS.count("|") - 1 + cuda
        )
    cells = [
        row["model"],
        row["precision"],
        f"{row['samples']} x {row['length']}, {row['steps']} steps",
        str(row["nfe"]),
        f"{row['seconds']:.2f}",
        f"{row['seconds_per_step']:.4f}",
        f"{row['token_steps_per_second']:,.0f}",
        f"{row['peak_rss_mib']:,.0f}",
    ]
    return cells + [f"{row['peak_cuda_mib']:,.0f}"] if cuda else cells
