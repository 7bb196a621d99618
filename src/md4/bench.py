"""``md4 bench``: throughput, model FLOP utilisation (MFU) and peak memory of whole training steps.

Each (model, mode) runs in a fresh process (``python -m md4.bench --one JOB``) so that its peak memory is its
own. The machine's matrix-product peak of each precision is measured in the same run, and MFU is the model's
FLOP rate over the peak of the precision it computes in. Models train on random tokens of their preset's
vocabulary and shape: no dataset is read or downloaded, and the timings do not depend on the tokens.

Model FLOPs per token: every ``nn.Linear`` counts ``6 x weights x (rows it is applied to) / tokens`` (forward
2, backward 4), so per-token layers count ``6 x weights`` and per-example ones (the time MLP, the adaLN
modulations) a ``1 / seq_len`` share of that; attention adds ``12 x n_layers x seq_len x dim`` (QK^T and
attention-weighted V, forward and backward). Embedding lookups, norms and element-wise work are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from md4.config import build_config, data_spec_guess
from md4.data import ArrayDataset, RawCodec
from md4.device import resolve_device
from md4.models import DataSpec, build_model
from md4.sampling import sample
from md4.training import Trainer

SAMPLE_NUM, SAMPLE_STEPS = 8, 64  # the sampling line: 8 samples, 64 reverse steps
DATASET_ROWS = 256  # random training examples each benchmark draws its batches from
PEAK_SIZES = {"cpu": (1024, 2048, 3072), "cuda": (4096, 8192)}  # square matrix sizes of the peak measurement
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16-compile": ("bf16", True)}  # precision, compile


@dataclass(frozen=True)
class BenchModel:
    """A benchmarked network: a preset with overrides, how many steps time it by default, and whether the
    default suite times its sampling too (sampling the text8 network takes minutes on a CPU)."""

    preset: str
    overrides: tuple[str, ...] = ()
    steps: int = 5
    warmup: int = 1
    sampled: bool = True


MODELS = {
    "demo": BenchModel("shakespeare-char", (), steps=20, warmup=3),
    "text8": BenchModel("text8", ("train.batch_size=8",), steps=3, warmup=1, sampled=False),
    "6x384": BenchModel(
        "text8", ("net.n_layers=6", "net.dim=384", "net.n_heads=6", "train.batch_size=8"), steps=5, warmup=2
    ),
}


# ------------------------------------------------------------------ machine
def machine(device: torch.device) -> dict:
    """What the numbers were measured on: processor, bf16 instructions, torch, threads, accelerator."""
    info = {
        "cpu": platform.processor() or platform.machine(),
        "amx_bf16": False,
        "avx512_bf16": False,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        first: dict[str, str] = {}  # the first processor's fields
        for key, _, value in (line.partition(":") for line in cpuinfo.read_text().splitlines()):
            first.setdefault(key.strip(), value.strip())
        flags = set(first.get("flags", "").split())
        info.update(cpu=first.get("model name", info["cpu"]), amx_bf16="amx_bf16" in flags)
        info["avx512_bf16"] = "avx512_bf16" in flags
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(precision: str, device: torch.device, sizes: tuple[int, ...], repeats: int = 3) -> float:
    """FLOP/s of ``torch.mm`` of square matrices in ``precision``: the best size's median of ``repeats`` runs."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(DTYPES[precision])
        b = torch.randn(n, n, device=device).to(DTYPES[precision])
        torch.mm(a, b)  # warm-up: kernel choice, allocation
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n**3 / statistics.median(times))
    return best


def measure_peaks(device: torch.device, sizes: tuple[int, ...] | None = None) -> dict[str, float]:
    """The matrix-product peak (FLOP/s) of each precision on ``device``."""
    sizes = sizes or PEAK_SIZES[device.type]
    return {precision: matmul_peak(precision, device, sizes) for precision in DTYPES}


# -------------------------------------------------------------------- model
def model_config(model: BenchModel, mode: str, device: str):
    """The preset's config with the model's overrides, the mode's precision and compile, and the device."""
    precision, compiled = MODES[mode]
    settings = [f"train.precision={precision}", f"train.compile={str(compiled).lower()}", f"train.device={device}"]
    return build_config(model.preset, [*model.overrides, *settings])


def random_dataset(spec: DataSpec, rows: int = DATASET_ROWS) -> ArrayDataset:
    """``rows`` examples of uniformly random tokens with the spec's vocabulary and shape."""
    tokens = torch.randint(0, spec.vocab_size, (rows, *spec.data_shape), generator=torch.Generator().manual_seed(0))
    return ArrayDataset({"train": tokens}, RawCodec(spec.vocab_size))


def train_flops_per_token(config, spec: DataSpec) -> float:
    """Model FLOPs of one training token (forward and backward; see the module's docstring), counted on the
    meta device: no memory, no arithmetic."""
    with torch.device("meta"):
        denoiser = build_model(config, spec).denoiser.eval()
    linear = 0
    tokens = math.prod(spec.data_shape)

    def count(module, inputs, output):
        nonlocal linear
        linear += 2 * inputs[0].numel() * module.out_features  # 2 x rows x in x out

    hooks = [m.register_forward_hook(count) for m in denoiser.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        denoiser(torch.zeros(1, *spec.data_shape, dtype=torch.long, device="meta"), torch.zeros(1, device="meta"))
    for hook in hooks:
        hook.remove()
    net = denoiser.config
    return 3 * linear / tokens + 12 * net.n_layers * tokens * net.dim


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory, and the device's peak allocated memory on CUDA, in MiB."""
    memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if device.type == "cuda":
        memory["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return memory


def train_row(model: BenchModel, mode: str, device: str, steps: int | None = None, warmup: int | None = None) -> dict:
    """Time whole training steps (loss, backward, clipping, AdamW, EMA) of one model in one mode, in this
    process: parameters, tokens/s, model FLOP rate, warm-up (compile) time and peak memory."""
    steps, warmup = steps or model.steps, warmup or model.warmup
    config = model_config(model, mode, device)
    spec = data_spec_guess(config)
    data = random_dataset(spec)
    torch.manual_seed(config.train.seed)
    network = build_model(config, DataSpec.of(data))
    with tempfile.TemporaryDirectory(prefix="md4-bench-") as run_dir:
        trainer = Trainer(config, network, data, run_dir, progress=False)
        try:
            times = [timed_step(trainer) for _ in range(warmup + steps)]
        finally:
            trainer.log.close()
            trainer.lock.release()
    seconds = statistics.median(times[warmup:])
    tokens = config.train.batch_size * math.prod(spec.data_shape)
    flops = train_flops_per_token(config, spec)
    return {
        "parameters": sum(p.numel() for p in network.parameters()),
        "batch": config.train.batch_size,
        "seq_len": math.prod(spec.data_shape),
        "steps": steps,
        "warmup": warmup,
        "seconds_per_step": seconds,
        "tokens_per_second": tokens / seconds,
        "flops_per_token": flops,
        "tflops": flops * tokens / seconds / 1e12,
        "warmup_extra_s": sum(times[:warmup]) - warmup * seconds,  # compilation, for a compiled mode
        **peak_memory(trainer.device),
    }


def timed_step(trainer: Trainer) -> float:
    """Seconds of one ``Trainer.train_step``, its device work included."""
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_step()
    synchronize(trainer.device)
    return time.perf_counter() - start


def sampling_row(model: BenchModel, device: str) -> dict:
    """Seconds and peak memory of drawing :data:`SAMPLE_NUM` samples in :data:`SAMPLE_STEPS` steps (float32)."""
    config = model_config(model, "fp32", device)
    torch.manual_seed(config.train.seed)
    network = build_model(config, data_spec_guess(config)).to(resolve_device(device)).eval()
    where = next(network.parameters()).device
    synchronize(where)
    start = time.perf_counter()
    sample(network, SAMPLE_NUM, steps=SAMPLE_STEPS, seed=0)
    synchronize(where)
    return {"samples": SAMPLE_NUM, "steps": SAMPLE_STEPS, "seconds": time.perf_counter() - start, **peak_memory(where)}


# -------------------------------------------------------------------- suite
def run_job(job: dict) -> dict:
    """One benchmark in this process: a training ``mode`` of ``model``, or its sampling (``mode="sample"``)."""
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    model = MODELS[job["model"]]
    if job["mode"] == "sample":
        return sampling_row(model, job["device"])
    return train_row(model, job["mode"], job["device"], job.get("steps"), job.get("warmup"))


def run_in_child(job: dict) -> dict:
    """Run a job in a fresh Python process (its own peak memory) with empty compiler caches (a cold compile);
    ``{"error": ...}`` if that process fails."""
    command = [sys.executable, "-m", "md4.bench", "--one", json.dumps(job)]
    with tempfile.TemporaryDirectory(prefix="md4-bench-cache-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"error": f"exit code {done.returncode}"}
    return json.loads(lines[-1])


def run_suite(
    models=tuple(MODELS),
    modes=tuple(MODES),
    sampled=None,
    device: str = "auto",
    threads: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    log=lambda line: print(line, file=sys.stderr),
) -> dict:
    """Measure the peaks, then train each model in each mode and time the sampling of the ``sampled`` models
    (None: those of ``models`` marked ``sampled``), each in a process of its own."""
    begin = time.perf_counter()
    sampled = [m for m in models if MODELS[m].sampled] if sampled is None else sampled
    where = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    report = {"machine": machine(where), "peak_flops_start": measure_peaks(where), "train": [], "sampling": []}
    log(f"md4 bench: matrix-product peak {tflops(report['peak_flops_start'])} ({time.perf_counter() - begin:.0f} s)")
    base = {"device": where.type, "threads": report["machine"]["threads"], "steps": steps, "warmup": warmup}
    jobs = [{**base, "model": m, "mode": mode} for m in models for mode in modes]
    jobs += [{**base, "model": m, "mode": "sample"} for m in sampled]
    for job in jobs:
        start = time.perf_counter()
        row = {"model": job["model"], "mode": job["mode"], **run_in_child(job)}
        report["sampling" if job["mode"] == "sample" else "train"].append(row)
        log(f"md4 bench: {job['model']} {job['mode']}: {summary(row)} ({time.perf_counter() - start:.0f} s)")
    report["peak_flops_end"] = measure_peaks(where)
    log(f"md4 bench: matrix-product peak {tflops(report['peak_flops_end'])} at the end")
    report["peak_flops"] = {p: max(report["peak_flops_start"][p], report["peak_flops_end"][p]) for p in DTYPES}
    for row in report["train"]:
        if "tflops" in row:
            row["mfu"] = row["tflops"] * 1e12 / report["peak_flops"][MODES[row["mode"]][0]]
    report["wall_s"] = time.perf_counter() - begin
    return report


def tflops(peaks: dict[str, float]) -> str:
    """Peaks as ``fp32 0.186 TFLOP/s, bf16 0.430 TFLOP/s``."""
    return ", ".join(f"{precision} {flops / 1e12:.3f} TFLOP/s" for precision, flops in peaks.items())


def summary(row: dict) -> str:
    """A progress line's account of one result."""
    if "error" in row:
        return f"failed ({row['error']}; its error is above)"
    if "samples" in row:
        return f"{row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']:,.0f} MiB"
    compiled = f", compile {row['warmup_extra_s']:.0f} s" if MODES[row["mode"]][1] else ""
    return f"{row['seconds_per_step']:.3f} s/step{compiled}, peak RSS {row['peak_rss_mib']:,.0f} MiB"


# ------------------------------------------------------------------- output
TRAIN_COLUMNS = "model|mode|parameters|batch|s/step|tokens/s|MFLOP/token|TFLOP/s|MFU|compile (s)|peak RSS (MiB)"


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
        return [row["model"], row["mode"]] + ["failed"] * (TRAIN_COLUMNS.count("|") - 1 + cuda)
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
    return cells + [f"{row['peak_cuda_mib']:,.0f}"] if cuda else cells


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
        "",
    ]
    header = TRAIN_COLUMNS.split("|") + (["peak CUDA (MiB)"] if cuda else [])
    lines.append(table(header, [train_cells(row, cuda) for row in report["train"]], markdown))
    if report["sampling"]:
        header = ["model", "sampling", "seconds", "peak RSS (MiB)"] + (["peak CUDA (MiB)"] if cuda else [])
        rows = [sampling_cells(row, cuda) for row in report["sampling"]]
        lines += ["", table(header, rows, markdown)]
    return "\n".join(lines)


def sampling_cells(row: dict, cuda: bool) -> list[str]:
    """One sampling row's cells."""
    if "error" in row:
        return [row["model"]] + ["failed"] * (3 + cuda)
    cells = [
        row["model"],
        f"{row['samples']} x {row['steps']} steps, fp32",
        f"{row['seconds']:.1f}",
        f"{row['peak_rss_mib']:,.0f}",
    ]
    return cells + [f"{row['peak_cuda_mib']:,.0f}"] if cuda else cells


def main() -> None:
    """``python -m md4.bench --one JOB``: run one job (JSON) and print its result as one JSON line."""
    parser = argparse.ArgumentParser(description="One md4 bench job, in a process of its own (used by md4 bench).")
    parser.add_argument("--one", required=True, metavar="JOB", help="the job as JSON")
    result = run_job(json.loads(parser.parse_args().one))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
