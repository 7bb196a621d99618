"""``md4 bench``: throughput, model FLOP utilisation (MFU) and peak memory of whole training steps.

Each (model, mode) runs in a fresh process (``python -m md4.bench --one JOB``) so that its peak memory is its
own. The machine's matrix-product peak of each precision is measured in the same run, and MFU is the model's
FLOP rate over the peak of the precision it computes in. Models train on random tokens of their preset's
vocabulary and shape: no dataset is read or downloaded, and the timings do not depend on the tokens.

Model FLOPs per token: every ``nn.Linear`` counts ``6 x weights x (rows it is applied to) / tokens`` (forward
2, backward 4), so per-token layers count ``6 x weights`` and per-example ones (the time MLP, the adaLN
modulations) a ``1 / seq_len`` share of that; the output layer of a denoiser that computes logits at the masked
positions alone counts at the masked fraction it meets in training, the mean of ``1 - alpha(t)`` over t
(about one half); attention adds ``12 x n_layers x seq_len x dim`` (QK^T and attention-weighted V, forward and
backward). Embedding lookups, norms and element-wise work are not counted.

On CUDA the models train at batches that fill a GPU (``cuda_batch``), steps are timed with CUDA events, and MFU
is reported against the measured matrix-product peak and against the GPU's datasheet bf16 peak where it is known.
"""

from md4.bench.report import format_report
from md4.bench.suite import (
    DATASHEET_BF16_TFLOPS,
    MODELS,
    MODES,
    SAMPLE_NUM,
    SAMPLE_STEPS,
    BenchModel,
    datasheet_peak,
    default_models,
    machine,
    mean_masked_fraction,
    measure_peaks,
    model_config,
    run_job,
    run_suite,
    train_flops_per_token,
    train_row,
)

__all__ = [
    "DATASHEET_BF16_TFLOPS",
    "MODELS",
    "MODES",
    "SAMPLE_NUM",
    "SAMPLE_STEPS",
    "BenchModel",
    "datasheet_peak",
    "default_models",
    "format_report",
    "machine",
    "mean_masked_fraction",
    "measure_peaks",
    "model_config",
    "run_job",
    "run_suite",
    "train_flops_per_token",
    "train_row",
]
