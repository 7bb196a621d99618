"""Devices without a GPU: TF32 on CUDA only (and its key and flag), the trainer's samples in the run's precision, a
single process's cuda:N made current, torchrun's ranks checked against the visible GPUs, and a process group of one
(``md4 train --nproc 1``). GPUs are hidden from the suite (conftest.py); test_gpu.py runs on one."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
from cli_runs import TINY_TEXT, cli
from tiny_training import release, tiny_trainer

from md4 import distributed
from md4.cli.banner import describe
from md4.config import ConfigError, build_config
from md4.device import autocast, fast_bf16, resolve_precision, use_tf32
from md4.distributed import World
from md4.training.parallel import Parallel, training_device

CPU = torch.device("cpu")


def test_the_suite_sees_no_gpu():
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()


@pytest.fixture
def matmul_precision():
    """Puts torch's fp32 precision settings back after the test."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def test_tf32_is_switched_on_and_off_for_a_gpu_and_never_for_the_cpu(matmul_precision):
    use_tf32(torch.device("cuda", 0))
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    use_tf32(torch.device("cuda", 0), enabled=False)
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    use_tf32(CPU, enabled=True)  # the CPU's arithmetic stays as it is
    assert torch.get_float32_matmul_precision() == "highest"


def test_the_tf32_key_validates_and_reaches_the_device(tmp_path, monkeypatch):
    assert build_config("shakespeare-char", []).train.tf32
    with pytest.raises(ConfigError, match="train.tf32 must be bool, got 'maybe'"):
        build_config("shakespeare-char", ["train.tf32=maybe"])
    calls = []
    monkeypatch.setattr("md4.training.trainer.use_tf32", lambda device, enabled: calls.append((device, enabled)))
    release(tiny_trainer(tmp_path / "run", "train.tf32=false"))
    assert calls == [(CPU, False)]


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_sample_and_eval_use_tf32_unless_told_not_to(tmp_path, corpus, capsys, monkeypatch, command):
    run_dir = tmp_path / "run"
    code, _, err = cli(
        capsys, "train", "--data", corpus, "--out", run_dir, "--no-progress", *TINY_TEXT, "train.steps=2"
    )
    assert code == 0, err
    calls = []
    monkeypatch.setattr(
        f"md4.cli.{'sample' if command == 'sample' else 'evaluate'}.use_tf32", lambda d, e: calls.append(e)
    )
    options = ["--num", "1", "--steps", "2"] if command == "sample" else ["--max-batches", "1", "--no-progress"]
    for extra in ([], ["--no-tf32"]):
        code, _, err = cli(capsys, command, run_dir, "--device", "cpu", *options, *extra)
        assert code == 0, err
    assert calls == [True, False]


@pytest.mark.parametrize("flags", [{}, {"avx512_bf16": True}, {"amx_bf16": True}, {"avx512_bf16": False, "avx2": True}])
def test_auto_precision_is_bf16_exactly_where_the_cpu_multiplies_bf16(monkeypatch, flags):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    expected = "bf16" if any(flags.get(name) for name in ("avx512_bf16", "amx_bf16")) else "fp32"
    assert fast_bf16(CPU) == (expected == "bf16") and resolve_precision(CPU, "auto") == expected
    assert resolve_precision(CPU, "fp32") == "fp32" and resolve_precision(CPU, "bf16") == "bf16"
    with autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") == (expected == "bf16")
    with pytest.raises(ValueError, match="Unknown precision 'fp16'; use one of auto, bf16, fp32"):
        resolve_precision(CPU, "fp16")


def test_sample_runs_the_network_in_bf16_by_default_where_it_is_fast(tmp_path, corpus, capsys):
    run_dir = tmp_path / "run"
    code, _, err = cli(
        capsys, "train", "--data", corpus, "--out", run_dir, "--no-progress", *TINY_TEXT, "train.steps=2"
    )
    assert code == 0, err
    expected = "bf16" if fast_bf16(CPU) else "fp32"
    for extra, shown in (([], expected), (["--precision", "fp32"], "fp32"), (["--precision", "bf16"], "bf16")):
        code, _, err = cli(capsys, "sample", run_dir, "--device", "cpu", "--num", "1", "--steps", "2", *extra)
        assert code == 0 and f"network in {shown}," in err, err


def test_the_trainers_samples_are_drawn_in_the_runs_precision(tmp_path):
    trainer = tiny_trainer(tmp_path / "run", "train.precision=bf16", "train.sample_steps=3")
    seen = []
    hook = trainer.ema.module.denoiser.register_forward_pre_hook(
        lambda module, args: seen.append(torch.is_autocast_enabled("cpu"))
    )
    try:
        path = trainer.write_samples()
    finally:
        hook.remove()
        release(trainer)
    assert path is not None and seen and all(seen)


class CudaCalls:
    """torch.cuda as a machine with ``count`` GPUs shows it, recording the GPUs made current."""

    def __init__(self, monkeypatch, count: int):
        self.current: list = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_device", self.current.append)


def test_a_single_process_on_cuda_n_makes_that_gpu_current(monkeypatch):
    cuda = CudaCalls(monkeypatch, count=4)
    assert training_device("cuda:2", World()) == torch.device("cuda", 2)
    assert cuda.current == [torch.device("cuda", 2)]
    assert training_device("cuda", World()) == torch.device("cuda", 0)  # the current one, made explicit
    assert training_device("cuda:2", World(size=2)) == torch.device("cuda", 0)  # torchrun: LOCAL_RANK's, current
    assert len(cuda.current) == 1


def test_a_rank_without_a_gpu_of_its_own_is_one_sentence(monkeypatch):
    cuda = CudaCalls(monkeypatch, count=1)
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"GPU 1 \(its LOCAL_RANK\) but only 1 GPU\(s\) are visible") as err:
        distributed.connect("auto")
    assert str(err.value).endswith("train.device=cpu.") and cuda.current == [] and not dist.is_initialized()


def test_one_process_under_torchrun_joins_a_group_of_one(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    world = distributed.connect("cpu")
    try:
        assert world == World(0, 1, 0, grouped=True) and world.distributed and distributed.backend() == "gloo"
        model = torch.nn.Linear(2, 2)
        model.denoiser = torch.nn.Identity()
        wrapped = Parallel.of(world, CPU, "ddp").wrap(model, checkpointing=False, compile=False)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        assert Parallel.of(world, CPU, "fsdp").sharded
        assert world.mean(torch.tensor([3.0])).item() == 3.0
    finally:
        distributed.disconnect()


@pytest.mark.parametrize("flags", [{"avx512_bf16": True}, {"avx2": True}])
def test_training_in_auto_precision_is_bf16_exactly_where_it_is_fast_and_the_run_keeps_auto(
    tmp_path, monkeypatch, flags
):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    trainer = tiny_trainer(tmp_path / "run", "train.precision=auto", "train.steps=1")
    try:
        expected = "bf16" if flags.get("avx512_bf16") else "fp32"
        assert trainer.t.precision == expected and trainer.config.train.precision == "auto"
        assert f"in {expected} (train.precision=auto) into" in describe(trainer, resume=False)
        trainer.fit()
        assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"] == "auto"
    finally:
        release(trainer)
