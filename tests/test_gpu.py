"""On a CUDA GPU (``pytest -m gpu``; skipped without one, and the rest of the suite hides GPUs): a short training
run in TF32 that resumes on the CPU, and ``md4 train --nproc 1`` in a one-rank NCCL group under DDP and FSDP2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tiny_training import tiny_trainer

from md4.notices import MD4Warning
from md4.runs.checkpoints import read_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with pytest -m gpu)"),
]


def test_a_cuda_run_trains_in_tf32_and_resumes_on_the_cpu(tmp_path):
    run_dir = tmp_path / "run"
    steps = ["train.steps=3", "train.checkpoint_every=3", "train.precision=bf16"]
    trainer = tiny_trainer(run_dir, "train.device=cuda", *steps)
    assert trainer.device.type == "cuda" and trainer.noise_generator.device.type == "cuda"
    assert torch.get_float32_matmul_precision() == "high"
    trainer.fit()
    assert read_checkpoint(run_dir).rng["noise_device"] == "cuda"
    with pytest.warns(MD4Warning, match="noise generator ran on cuda and this run trains on cpu"):
        resumed = tiny_trainer(run_dir, "train.device=cpu", "train.steps=5", *steps[1:], resume=True)
    assert resumed.step == 3
    assert resumed.fit().step == 5
    with pytest.warns(MD4Warning, match="ran on cpu and this run trains on cuda"):
        again = tiny_trainer(run_dir, "train.device=cuda", "train.steps=6", *steps[1:], resume=True)
    assert again.fit().step == 6


@pytest.mark.parametrize(
    "parallel, extra",
    [("ddp", []), ("fsdp", []), ("ddp", ["train.compile=true"]), ("fsdp", ["train.compile=true"])],
)
def test_nproc_1_trains_in_a_one_rank_nccl_group(corpus, tmp_path, parallel, extra):
    """DDP and FSDP2 (in bf16: blocks gathered in bf16), compiled or not, on one GPU over NCCL; a checkpoint
    of the uncompiled model's names."""
    command = [sys.executable, "-m", "md4", "train", "--nproc", "1", "--data", str(corpus), "--no-progress"]
    command += ["--out", str(tmp_path / "run"), "net.dim=32", "net.n_layers=1", "net.n_heads=2", "data.seq_len=32"]
    command += ["train.batch_size=8", "train.steps=3", "train.eval_every=3", "train.sample_every=3"]
    command += ["train.checkpoint_every=3", "train.device=cuda", "train.precision=bf16", f"train.parallel={parallel}"]
    done = subprocess.run([*command, *extra], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    mode = "FSDP2" if parallel == "fsdp" else "DDP"
    assert f"1 process in a nccl group ({mode})" in done.stderr and "finished at step 3" in done.stdout
    assert not any("_orig_mod" in name for name in read_checkpoint(tmp_path / "run").model)
