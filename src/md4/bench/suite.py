"""The benchmarks themselves: the models, the machine, its matrix-product peaks, FLOP counting and the timed
training and sampling rows, each job in a process of its own (see :mod:`md4.bench`)."""

from __future__ import annotations

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
from md4.device import autocast, resolve_device
from md4.models import DataSpec, build_model
from md4.nn.contract import capabilities_of
from md4.sampling import sample
from md4.training import Trainer

SAMPLE_NUM, SAMPLE_STEPS = 8, 64  # the sampling line: 8 samples, 64 reverse steps
DATASET_ROWS = 256  # random training examples each benchmark draws its batches from
PEAK_SIZES = {"cpu": (1024, 2048, 3072), "cuda": (4096, 8192)}  # square matrix sizes of the peak measurement
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = {"fp32": ("fp32", False), "bf16": ("bf16", False), "bf16-compile": ("bf16", True)}  # precision, compile


@dataclass(frozen=True)
class BenchModel:
    """A benchmarked network: a preset with overrides, how many steps time it by default, whether the default
    suite times its sampling too (sampling the text8 network takes minutes on a CPU), its batch on a GPU (a CPU
    batch leaves a GPU launch-bound), and the devices whose default suite includes it."""

    preset: str
    overrides: tuple[str, ...] = ()
    steps: int = 5
    warmup: int = 1
    sampled: bool = True
    cuda_batch: int | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")


SIX_BY_384 = ("net.n_layers=6", "net.dim=384", "net.n_heads=6")
MODELS = {
    "demo": BenchModel("shakespeare-char", (), steps=20, warmup=3, cuda_batch=256),
    "text8": BenchModel("text8", ("train.batch_size=8",), steps=3, warmup=1, sampled=False, cuda_batch=128),
    "6x384": BenchModel("text8", (*SIX_BY_384, "train.batch_size=8"), steps=5, warmup=2, cuda_batch=128),
    "owt-gpt2-small": BenchModel(
        "owt-gpt2-small", ("train.batch_size=1",), steps=5, warmup=2, sampled=False, cuda_batch=32, devices=("cuda",)
    ),
}

# Dense bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s, by a name fragment of torch.cuda.get_device_name
# (the first fragment that matches; more specific names first).
DATASHEET_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10", 125.0),
)


def datasheet_peak(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak (FLOP/s) of a GPU named ``device_name``, or None for one not listed."""
    for fragment, tflops in DATASHEET_BF16_TFLOPS:
        if fragment in device_name:
            return tflops * 1e12
    return None


def default_models(device: torch.device) -> list[str]:
    """The models the default suite benchmarks on this kind of device."""
    return [name for name, model in MODELS.items() if device.type in model.devices]


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
    overrides = list(model.overrides)
    if model.cuda_batch and resolve_device(device).type == "cuda":
        overrides = [o for o in overrides if not o.startswith("train.batch_size=")]
        overrides.append(f"train.batch_size={model.cuda_batch}")
    return build_config(model.preset, [*overrides, *settings])


def random_dataset(spec: DataSpec, rows: int = DATASET_ROWS) -> ArrayDataset:
    """``rows`` examples of uniformly random tokens with the spec's vocabulary and shape."""
    tokens = torch.randint(0, spec.vocab_size, (rows, *spec.data_shape), generator=torch.Generator().manual_seed(0))
    return ArrayDataset({"train": tokens}, RawCodec(spec.vocab_size))


def train_flops_per_token(config, spec: DataSpec) -> float:
    """Model FLOPs of one training token (forward and backward; see the module's docstring), counted on the
    meta device: no memory, no arithmetic."""
    with torch.device("meta"):
        model = build_model(config, spec)
    denoiser = model.denoiser.eval()
    output = denoiser.logits if capabilities_of(denoiser).select else None  # applied at the masked rows alone
    share = {output: mean_masked_fraction(model.schedule)}
    linear = 0.0
    tokens = math.prod(spec.data_shape)

    def count(module, inputs, output):
        nonlocal linear
        linear += 2 * inputs[0].numel() * module.out_features * share.get(module, 1.0)  # 2 x rows x in x out

    hooks = [m.register_forward_hook(count) for m in denoiser.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        denoiser(torch.zeros(1, *spec.data_shape, dtype=torch.long, device="meta"), torch.zeros(1, device="meta"))
    for hook in hooks:
        hook.remove()
    net = denoiser.config
    return 3 * linear / tokens + 12 * net.n_layers * tokens * net.dim


def mean_masked_fraction(schedule, points: int = 4096) -> float:
    """The mean over t ~ U(0, 1) of the masked fraction 1 - alpha(t) (midpoint rule): the share of positions
    where training computes the output layer. A learned per-token schedule's share depends on the data, so its
    output layer counts at every position (1)."""
    if schedule.per_token:
        return 1.0
    t = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    return float(1.0 - schedule.alpha(t).mean())


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
    """Seconds of one ``Trainer.train_step``, its device work included: CUDA events around it on a GPU (the
    device's own clock), the host's clock on the CPU."""
    if trainer.device.type != "cuda":
        start = time.perf_counter()
        trainer.train_step()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    synchronize(trainer.device)
    begin.record()
    trainer.train_step()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1000.0


def sampling_row(model: BenchModel, device: str, precision: str = "fp32", compiled: bool = False) -> dict:
    """Drawing :data:`SAMPLE_NUM` samples in :data:`SAMPLE_STEPS` ancestral steps (``md4 sample``'s default
    sampler) with the network in ``precision`` (``compiled``: under torch.compile, as ``md4 sample --compile``),
    after a short untimed warm-up (which compiles): seconds, seconds per step, token-steps per second (samples x
    length x steps / seconds), network calls and peak memory."""
    config = model_config(model, "fp32", device)
    torch.manual_seed(config.train.seed)
    network = build_model(config, data_spec_guess(config)).to(resolve_device(device)).eval()
    if compiled:
        network.denoiser = torch.compile(network.denoiser, dynamic=False)
    where = next(network.parameters()).device
    with autocast(where, precision):
        sample(network, SAMPLE_NUM, steps=2, seed=0)
        synchronize(where)
        start = time.perf_counter()
        out = sample(network, SAMPLE_NUM, steps=SAMPLE_STEPS, seed=0)
        synchronize(where)
    seconds = time.perf_counter() - start
    length = math.prod(out.tokens.shape[1:])
    return {
        "samples": SAMPLE_NUM,
        "steps": SAMPLE_STEPS,
        "precision": precision + (", compiled" if compiled else ""),
        "length": length,
        "nfe": out.nfe,
        "seconds": seconds,
        "seconds_per_step": seconds / SAMPLE_STEPS,
        "token_steps_per_second": SAMPLE_NUM * length * SAMPLE_STEPS / seconds,
        **peak_memory(where),
    }


# -------------------------------------------------------------------- suite
def run_job(job: dict) -> dict:
    """One benchmark in this process: a training ``mode`` of ``model``, or its sampling in a precision
    (``mode="sample-fp32"`` or ``"sample-bf16"``, with ``-compile`` under torch.compile)."""
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    model = MODELS[job["model"]]
    if job["mode"].startswith("sample-"):
        precision, _, compiled = job["mode"].removeprefix("sample-").partition("-")
        return sampling_row(model, job["device"], precision, compiled == "compile")
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
    models=None,
    modes=tuple(MODES),
    sampled=None,
    device: str = "auto",
    threads: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    log=lambda line: print(line, file=sys.stderr),
) -> dict:
    """Measure the peaks, then train each model (None: :func:`default_models`) in each mode and time the sampling
    of the ``sampled`` models (None: those of ``models`` marked ``sampled``), each in a process of its own."""
    begin = time.perf_counter()
    where = resolve_device(device)
    models = default_models(where) if models is None else models
    sampled = [m for m in models if MODELS[m].sampled] if sampled is None else sampled
    if threads:
        torch.set_num_threads(threads)
    report = {"machine": machine(where), "peak_flops_start": measure_peaks(where), "train": [], "sampling": []}
    log(f"md4 bench: matrix-product peak {tflops(report['peak_flops_start'])} ({time.perf_counter() - begin:.0f} s)")
    base = {"device": where.type, "threads": report["machine"]["threads"], "steps": steps, "warmup": warmup}
    jobs = [{**base, "model": m, "mode": mode} for m in models for mode in modes]
    jobs += [{**base, "model": m, "mode": f"sample-{precision}"} for m in sampled for precision in DTYPES]
    for job in jobs:
        start = time.perf_counter()
        row = {"model": job["model"], "mode": job["mode"], **run_in_child(job)}
        report["sampling" if job["mode"].startswith("sample-") else "train"].append(row)
        log(f"md4 bench: {job['model']} {job['mode']}: {summary(row)} ({time.perf_counter() - start:.0f} s)")
    report["peak_flops_end"] = measure_peaks(where)
    log(f"md4 bench: matrix-product peak {tflops(report['peak_flops_end'])} at the end")
    report["peak_flops"] = {p: max(report["peak_flops_start"][p], report["peak_flops_end"][p]) for p in DTYPES}
    report["datasheet_bf16_flops"] = datasheet_peak(report["machine"]["device"]) if where.type == "cuda" else None
    for row in report["train"]:
        if "tflops" in row:
            row["mfu"] = row["tflops"] * 1e12 / report["peak_flops"][MODES[row["mode"]][0]]
            if report["datasheet_bf16_flops"]:
                row["mfu_datasheet"] = row["tflops"] * 1e12 / report["datasheet_bf16_flops"]
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
        return f"{row['seconds_per_step']:.4f} s/step, peak RSS {row['peak_rss_mib']:,.0f} MiB"
    compiled = f", compile {row['warmup_extra_s']:.0f} s" if MODES[row["mode"]][1] else ""
    return f"{row['seconds_per_step']:.3f} s/step{compiled}, peak RSS {row['peak_rss_mib']:,.0f} MiB"
