"""md4 bench: FLOP counting, the matrix-product peak, one tiny training row, the report and the command's options."""

import json
import math

import pytest
import torch

from md4 import bench
from md4.cli import build_parser, main
from md4.config import build_config
from md4.models import DataSpec

TINY = ("net.dim=32", "net.n_layers=1", "net.n_heads=2", "data.seq_len=16", "train.batch_size=4")


def test_flops_per_token_matches_the_closed_form():
    config = build_config("shakespeare-char", list(TINY))
    d, hidden, vocab, seq, features = 32, 96, 84, 16, 256  # hidden: 8 * 32 // 3 = 85, rounded up to 32s
    masked = 0.5  # linear schedule: 1 - alpha(t) = (1 - 2 eps) t + eps, whose mean over t is 1/2
    per_token = 3 * d * d + d * d + 3 * d * hidden + d * vocab * masked  # qkv, out, w1 w3 w2, logits where masked
    per_example = features * d + d * d + 6 * d * d + 2 * d * d  # time MLP, block and final adaLN modulations
    attention = 12 * 1 * seq * d
    expected = 6 * per_token + 6 * per_example / seq + attention
    assert bench.train_flops_per_token(config, DataSpec(vocab, (seq,))) == pytest.approx(expected)


def test_the_output_layer_counts_at_the_mean_masked_fraction_of_the_schedule():
    from md4.core.schedules import get_schedule

    assert bench.mean_masked_fraction(get_schedule("linear", 1e-4)) == pytest.approx(0.5, abs=1e-9)
    # cosine: 1 - alpha~(t) = cos(pi (1 - t) / 2), whose mean is 2 / pi
    cosine = (1 - 2e-4) * (2 / math.pi) + 1e-4
    assert bench.mean_masked_fraction(get_schedule("cosine", 1e-4)) == pytest.approx(cosine, abs=1e-6)


def test_datasheet_peaks_match_the_most_specific_name():
    assert bench.datasheet_peak("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert bench.datasheet_peak("NVIDIA H100 PCIe") == pytest.approx(756e12)
    assert bench.datasheet_peak("NVIDIA H200") == pytest.approx(989.4e12)
    assert bench.datasheet_peak("NVIDIA A100-SXM4-80GB") == pytest.approx(312e12)
    assert bench.datasheet_peak("NVIDIA L40S") == pytest.approx(362.1e12)
    assert bench.datasheet_peak("NVIDIA L4") == pytest.approx(121e12)
    assert bench.datasheet_peak("Tesla V100-SXM2-16GB") is None


def test_gpus_get_their_own_batches_and_the_openwebtext_row(monkeypatch):
    assert "owt-gpt2-small" not in bench.default_models(torch.device("cpu"))
    assert bench.default_models(torch.device("cuda")) == list(bench.MODELS)
    assert bench.model_config(bench.MODELS["text8"], "bf16", "cpu").train.batch_size == 8
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench.model_config(bench.MODELS["text8"], "bf16", "cuda").train.batch_size == 128
    assert bench.model_config(bench.MODELS["owt-gpt2-small"], "bf16", "cuda").train.batch_size == 32


def test_matmul_peak_is_positive_and_finite():
    peaks = bench.measure_peaks(torch.device("cpu"), sizes=(64, 128))
    assert set(peaks) == {"fp32", "bf16"}
    assert all(math.isfinite(flops) and flops > 0 for flops in peaks.values())


def test_one_tiny_training_row_is_sane(monkeypatch):
    monkeypatch.setitem(bench.MODELS, "tiny", bench.BenchModel("shakespeare-char", TINY, steps=2, warmup=1))
    row = bench.run_job({"model": "tiny", "mode": "bf16", "device": "cpu", "threads": 2})
    peak = bench.measure_peaks(torch.device("cpu"), sizes=(256,))["bf16"]
    assert row["batch"] == 4 and row["seq_len"] == 16 and row["tokens_per_second"] > 0
    assert 0 < row["tflops"] * 1e12 / peak < 1.5
    assert row["peak_rss_mib"] > 0 and row["parameters"] > 0
    report = {
        "machine": bench.machine(torch.device("cpu")),
        **{key: {"fp32": peak, "bf16": peak} for key in ("peak_flops", "peak_flops_start", "peak_flops_end")},
        "train": [
            {"model": "tiny", "mode": "bf16", "mfu": 0.01, **row},
            {"model": "tiny", "mode": "fp32", "error": "1"},
        ],
        "sampling": [],
        "wall_s": 1.0,
    }
    text = bench.format_report(report, markdown=True)
    assert "| tiny | bf16 | " in text and "| tiny | fp32 | failed |" in text
    gpu = {**report, "machine": {**report["machine"], "device": "NVIDIA H100 80GB HBM3"}}
    gpu["datasheet_bf16_flops"] = bench.datasheet_peak(gpu["machine"]["device"])
    gpu["train"] = [{**gpu["train"][0], "mfu_datasheet": 0.5, "peak_cuda_mib": 2048.0}, gpu["train"][1]]
    lines = bench.format_report(gpu, markdown=True).splitlines()
    assert any("datasheet dense bf16 peak: 989.4 TFLOP/s" in line for line in lines)
    row = next(line for line in lines if line.startswith("| tiny | bf16"))
    assert row.endswith("| 50.0% | 2,048 |")
    assert next(line for line in lines if line.startswith("| tiny | fp32")).count("failed") == 11


def test_parser_accepts_the_options():
    args = build_parser().parse_args(
        ["bench", "--models", "demo", "6x384", "--modes", "fp32", "bf16-compile", "--steps", "3", "--warmup", "1",
         "--threads", "2", "--device", "cpu", "--json", "out.json", "--markdown", "--sampling"]
    )  # fmt: skip
    assert args.models == ["demo", "6x384"] and args.modes == ["fp32", "bf16-compile"] and args.sampling == []
    assert (args.steps, args.warmup, args.threads, args.device, args.markdown) == (3, 1, 2, "cpu", True)
    defaults = build_parser().parse_args(["bench"])
    assert defaults.models is None and defaults.modes == list(bench.MODES) and defaults.sampling is None


def test_unknown_model_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "--models", "gpt2"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid choice: 'gpt2'" in error and "demo" in error


def test_zero_steps_is_refused(capsys):
    assert main(["bench", "--steps", "0"]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_runs_a_job_in_a_child_process(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--models", "demo", "--modes", "fp32", "--steps", "1", "--warmup", "1", "--sampling", "--json"]
    assert main([*argv, str(out)]) == 0
    (row,) = json.loads(out.read_text())["train"]
    assert row["model"] == "demo" and 0 < row["mfu"] < 1.5 and row["peak_rss_mib"] > 100
    printed = capsys.readouterr()
    assert "peak RSS (MiB)" in printed.out and "md4 bench: demo fp32:" in printed.err


def test_a_sampling_row_times_each_precision(monkeypatch):
    monkeypatch.setitem(bench.MODELS, "tiny", bench.BenchModel("shakespeare-char", TINY))
    rows = [bench.run_job({"model": "tiny", "mode": f"sample-{p}", "device": "cpu"}) for p in ("fp32", "bf16")]
    for row, precision in zip(rows, ("fp32", "bf16"), strict=True):
        assert row["precision"] == precision and row["length"] == 16 and 0 < row["nfe"] <= bench.SAMPLE_STEPS
        assert row["seconds_per_step"] == pytest.approx(row["seconds"] / bench.SAMPLE_STEPS)
        expected = bench.SAMPLE_NUM * 16 * bench.SAMPLE_STEPS / row["seconds"]
        assert row["token_steps_per_second"] == pytest.approx(expected)
    report = {
        "machine": bench.machine(torch.device("cpu")),
        **{key: {"fp32": 1e11, "bf16": 2e11} for key in ("peak_flops", "peak_flops_start", "peak_flops_end")},
        "train": [],
        "sampling": [
            {"model": "tiny", "mode": "sample-fp32", **rows[0]},
            {"model": "tiny", "mode": "sample-bf16", "error": "1"},
        ],
        "wall_s": 1.0,
    }
    lines = bench.format_report(report, markdown=True).splitlines()
    assert any(line.startswith(f"| tiny | fp32 | 8 x 16, 64 steps | {rows[0]['nfe']} |") for line in lines)
    assert any(line.startswith("| tiny | bf16 | failed |") for line in lines)
