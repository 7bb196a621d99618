"""Training with several processes (torchrun, DDP over gloo on CPU): the same parameters as one process, resume on
another number of processes, agreement to stop on a signal, and a bounded failure when a rank dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from md4.config import ConfigError, build_config
from md4.core.genmd4 import GenMD4
from md4.core.md4 import MD4
from md4.core.noise import BatchShard
from md4.data import ArrayDataset, TokenStream, prepare
from md4.runs.checkpoints import list_checkpoints, load_checkpoint, read_checkpoint
from md4.training import local_micro_batch

TINY = [
    "net.dim=32",
    "net.n_layers=1",
    "net.n_heads=2",
    "data.seq_len=32",
    "train.batch_size=8",
    "train.log_every=1",
    "train.eval_every=3",
    "train.eval_batches=3",
    "train.sample_every=100",
    "train.sample_steps=4",
    "train.checkpoint_every=3",
    "train.warmup_steps=2",
    "train.precision=fp32",
]


def md4_command(corpus: Path, run_dir: Path, *extra: str, nproc: int | None = None) -> list[str]:
    """``md4 train`` on the corpus, by torchrun with ``nproc`` processes, or as one plain process."""
    launcher = [sys.executable, "-m", "md4"]
    if nproc is not None:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        launcher += ["-m", "md4"]
    return [*launcher, "train", "--data", str(corpus), "--out", str(run_dir), "--no-progress", *TINY, *extra]


def run(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def valid_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "valid"]


def assert_same_parameters(a_dir: Path, b_dir: Path) -> None:
    a, b = (load_checkpoint(list_checkpoints(d)[-1]) for d in (a_dir, b_dir))
    assert a.state["step"] == b.state["step"]
    for key in a.model:
        assert torch.allclose(a.model[key], b.model[key], rtol=1e-4, atol=1e-6), key
        assert torch.allclose(a.ema[key], b.ema[key], rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize("parallel", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp"])  # DDP also in test_hf_mlm's slow set
def test_two_processes_reach_the_parameters_of_one(corpus, tmp_path, parallel):
    """Two ranks over gloo with the global batch split in two (and two micro-batches each, gradients reduced
    after the second) reach the one-process parameters and validation bound, whether the model is replicated
    (DDP) or sharded (FSDP2); the checkpoints are the same files either way."""
    extra = ["train.steps=6", "train.grad_accum=2", "train.sample_every=3"]
    two = run(md4_command(corpus, tmp_path / "two", *extra, f"train.parallel={parallel}", nproc=2))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "finished at step 6 (all 2 processes)" in two.stdout
    one = run(md4_command(corpus, tmp_path / "one", *extra))
    assert one.returncode == 0, one.stderr[-3000:]
    assert_same_parameters(tmp_path / "one", tmp_path / "two")
    assert [r["step"] for r in valid_records(tmp_path / "two")] == [3, 6]
    for a, b in zip(valid_records(tmp_path / "one"), valid_records(tmp_path / "two"), strict=True):
        assert (
            a["num_sequences"] == b["num_sequences"] > 16
        )  # three batches of 8: two on rank 0, one on 1 (FSDP2: which repeats a micro-batch to keep in step)
        assert a["nelbo"] == pytest.approx(b["nelbo"], rel=1e-5)
    samples = sorted(p.name for p in (tmp_path / "two" / "samples").iterdir())
    assert samples == sorted(p.name for p in (tmp_path / "one" / "samples").iterdir()) and len(samples) == 2
    # rank 0 alone wrote the run: one log line per step, and nothing of the other rank's
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(6) == 2  # the train and valid lines of the last step, once each


@pytest.mark.slow  # ~30 s: two process groups; the default suite keeps DDP's and FSDP2's own runs
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])  # one checkpoint format
def test_resume_on_another_number_of_processes(corpus, tmp_path, parallel):
    """Three steps on two processes, then three more on one, land where six steps on one process land."""
    split = tmp_path / "split"
    first = run(md4_command(corpus, split, "train.steps=3", f"train.parallel={parallel}", nproc=2))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run([*md4_command(corpus, split, "train.steps=6"), "--resume"])
    assert second.returncode == 0, second.stderr[-3000:]
    whole = run(md4_command(corpus, tmp_path / "whole", "train.steps=6"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert_same_parameters(tmp_path / "whole", split)


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """The rank of each worker process torchrun started, read from their environments."""
    found = {}
    for child in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        rank = [e for e in environ if e.startswith(b"RANK=")]
        if rank:
            found[int(rank[0][5:])] = int(child)
    return found


def start_long_run(corpus: Path, run_dir: Path) -> tuple[subprocess.Popen, dict[int, int]]:
    """Two ranks training for many steps; returns once both run and step 2 is logged."""
    command = md4_command(corpus, run_dir, "train.steps=100000", "train.checkpoint_every=100000", nproc=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if launcher.poll() is not None:
            pytest.fail(f"training ended early: {launcher.stderr.read()[-3000:]}")
        if metrics.exists() and metrics.read_text().count('"train"') >= 2:
            workers = worker_pids(launcher)
            if len(workers) == 2:
                return launcher, workers
        time.sleep(0.2)
    launcher.kill()
    pytest.fail("the two ranks did not start training within two minutes")


def test_sigterm_to_one_rank_stops_every_rank_with_one_checkpoint(corpus, tmp_path):
    """A SIGTERM that reaches rank 1 alone: all ranks agree, rank 0 saves, torchrun exits 0; resume continues."""
    run_dir = tmp_path / "run"
    launcher, workers = start_long_run(corpus, run_dir)
    os.kill(workers[1], signal.SIGTERM)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM at step" in out and "(all 2 processes)" in out
    saved = list_checkpoints(run_dir)
    assert len(saved) == 1
    step = read_checkpoint(run_dir).state["step"]
    assert 2 <= step < 100000
    resumed = run([*md4_command(corpus, run_dir, f"train.steps={step + 2}"), "--resume"])
    assert resumed.returncode == 0 and f"finished at step {step + 2}" in resumed.stdout, resumed.stderr[-3000:]


def test_a_rank_that_dies_stops_the_others_within_a_bounded_time(corpus, tmp_path):
    """SIGKILL to rank 1: torchrun notices, stops rank 0 and exits with an error instead of hanging."""
    launcher, workers = start_long_run(corpus, tmp_path / "run")
    killed = time.time()
    os.kill(workers[1], signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert time.time() - killed < 60
    assert "FAILED" in err or "failed" in err
    assert not Path(f"/proc/{workers[0]}").exists() or "zombie" in Path(f"/proc/{workers[0]}/status").read_text()


def test_nproc_shortcut_and_the_global_batch_check(corpus, tmp_path):
    """``md4 train --nproc 2`` launches torchrun; a global batch that does not split evenly is refused at once."""
    command = [sys.executable, "-m", "md4", "train", "--nproc", "2", "--data", str(corpus)]
    command += ["--out", str(tmp_path / "run"), "--no-progress", *TINY, "train.steps=2", "train.batch_size=6"]
    command += ["train.grad_accum=2"]
    refused = run(command)  # refused before torchrun starts: one sentence, exit code 2
    assert refused.returncode == 2 and refused.stderr.count("md4: error:") == 1, refused.stderr[-3000:]
    assert "train.batch_size=6 is the global batch" in refused.stderr and "a multiple of 4" in refused.stderr
    assert "Traceback" not in refused.stderr and "torchrun" not in refused.stderr
    good = run([*command[:-2], "train.batch_size=4", "train.grad_accum=2"])
    assert good.returncode == 0 and "finished at step 2 (all 2 processes)" in good.stdout, good.stderr[-3000:]


def test_local_micro_batch_divides_the_global_batch():
    assert local_micro_batch(32, 2, 4) == 4
    with pytest.raises(ConfigError, match="divide evenly into 4 process"):
        local_micro_batch(30, 1, 4)
    with pytest.raises(ConfigError, match="multiple of 2"):
        build_config("shakespeare-char", ["train.batch_size=5", "train.grad_accum=2"])


@pytest.mark.parametrize("kind", ["md4", "genmd4"])
def test_shards_of_a_batch_see_the_noise_of_the_whole_batch(kind):
    """Each shard's rows get the times, masks and label dropout they would get in the whole batch."""
    torch.manual_seed(0)
    vocab, n, d = 5, 6, 7
    embedding = torch.nn.Embedding(vocab + 1, vocab)

    def network(z, t, labels=None):
        return embedding(z)

    if kind == "md4":
        model = MD4(network, vocab, "linear", data_shape=(d,), num_classes=3, label_dropout=0.5)
    else:
        model = GenMD4(network, vocab, data_shape=(d,), num_classes=3, label_dropout=0.5)
    labels = torch.randint(0, 3, (n,))
    dropped = model.training_labels(labels, torch.Generator().manual_seed(3))
    dropped_parts = [
        model.training_labels(labels[a:b], torch.Generator().manual_seed(3), BatchShard(a, n))
        for a, b in ((0, 2), (2, 6))
    ]
    assert torch.equal(torch.cat(dropped_parts), dropped)
    x = torch.randint(0, vocab, (n, d))
    whole = model.nelbo(x, generator=torch.Generator().manual_seed(3))
    parts = [
        model.nelbo(x[a:b], generator=torch.Generator().manual_seed(3), shard=BatchShard(a, n))
        for a, b in ((0, 2), (2, 6))
    ]
    assert torch.equal(torch.cat(parts), whole)
    unsharded = model.nelbo(x[2:6], generator=torch.Generator().manual_seed(3))
    assert not torch.equal(unsharded, whole[2:6])  # the layout is what makes them agree


def test_parts_of_a_training_batch_are_disjoint_rows_of_the_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text("abcdefghij" * 100)
    stream = TokenStream(prepare(str(text)), 16)
    rows = {"train": torch.arange(50).reshape(10, 5) % 10}
    array = ArrayDataset(rows, stream.codec, labels={"train": torch.arange(10)}, num_classes=10)
    for data in (stream, array):
        whole = data.train_batch(8, torch.Generator().manual_seed(1))
        parts = [data.train_batch(8, torch.Generator().manual_seed(1), slice(a, a + 4)) for a in (0, 4)]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
        if whole[1] is not None:
            assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def test_ctrl_c_to_md4_train_nproc_stops_cleanly_with_the_one_process_exit_code(corpus, tmp_path):
    """A terminal's Ctrl-C (SIGINT to the foreground group) reaches ``md4 train --nproc 2``, which passes it to the
    workers: one checkpoint, no torchrun traceback, and exit 130 as for one process."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "md4", "train", "--nproc", "2", "--data", str(corpus), "--out", str(run_dir)]
    command += [
        "--no-progress",
        *TINY,
        "train.steps=100000",
        "train.checkpoint_every=100000",
        "train.eval_every=100000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        assert time.time() < deadline and launcher.poll() is None, "training did not start"
        time.sleep(0.2)
    os.killpg(launcher.pid, signal.SIGINT)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err[-3000:]
    assert "stopped by SIGINT" in out and "Traceback" not in err
    assert len(list_checkpoints(run_dir)) == 1


@pytest.mark.slow  # three runs, two of them compiled (about a minute on two cores)
def test_compiled_runs_write_the_checkpoints_of_plain_ones(corpus, tmp_path):
    """train.compile=true on two FSDP2 processes (compiled after sharding) and on one process saves the files an
    uncompiled run saves: the same names, the same values up to the compiler's rounding (issue 22's KeyError)."""
    extra = ["train.steps=3", "train.sample_every=3"]
    two = run(md4_command(corpus, tmp_path / "two", *extra, "train.parallel=fsdp", "train.compile=true", nproc=2))
    assert two.returncode == 0, two.stderr[-3000:]
    one = run(md4_command(corpus, tmp_path / "one", *extra, "train.compile=true"))
    assert one.returncode == 0, one.stderr[-3000:]
    plain = run(md4_command(corpus, tmp_path / "plain", *extra))
    assert plain.returncode == 0, plain.stderr[-3000:]
    expected = load_checkpoint(list_checkpoints(tmp_path / "plain")[-1])
    for name in ("two", "one"):
        ckpt = load_checkpoint(list_checkpoints(tmp_path / name)[-1])
        assert list(ckpt.model) == list(expected.model) and list(ckpt.ema) == list(expected.ema), name
        groups = [g["params"] for g in ckpt.optimizer["param_groups"]]
        assert groups == [g["params"] for g in expected.optimizer["param_groups"]], name
        assert set(ckpt.optimizer["state"]) == set(expected.optimizer["state"]), name
    assert_same_parameters(tmp_path / "plain", tmp_path / "two")
    assert_same_parameters(tmp_path / "plain", tmp_path / "one")


@pytest.mark.slow  # two runs; the group of one itself: test_devices.py
def test_nproc_1_trains_in_a_process_group_of_one_like_one_process(corpus, tmp_path):
    """``md4 train --nproc 1`` joins a gloo group of one and trains under DDP (NCCL on a GPU), reaching the
    parameters of one plain process."""
    command = [sys.executable, "-m", "md4", "train", "--nproc", "1", "--data", str(corpus)]
    grouped = run([*command, "--out", str(tmp_path / "grouped"), "--no-progress", *TINY, "train.steps=3"])
    assert grouped.returncode == 0, grouped.stderr[-3000:]
    assert "1 process in a gloo group (DDP)" in grouped.stderr
    plain = run(md4_command(corpus, tmp_path / "plain", "train.steps=3"))
    assert plain.returncode == 0 and "group" not in plain.stderr, plain.stderr[-3000:]
    assert_same_parameters(tmp_path / "plain", tmp_path / "grouped")


@pytest.mark.slow  # three runs (about a minute on two cores); the dtypes themselves: test_training_parallel.py
def test_a_bf16_fsdp_run_trains_resumes_and_follows_one_bf16_process(corpus, tmp_path):
    """Two FSDP2 ranks in bf16 (blocks gathered in bf16 over gloo, gradients reduced in fp32) train three steps,
    resume for three more, and their losses stay close to one bf16 process's."""
    bf16 = ["train.precision=bf16", "train.parallel=fsdp"]
    first = run(md4_command(corpus, tmp_path / "two", "train.steps=3", *bf16, nproc=2))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run([*md4_command(corpus, tmp_path / "two", "train.steps=6", *bf16, nproc=2), "--resume"])
    assert second.returncode == 0 and "finished at step 6" in second.stdout, second.stderr[-3000:]
    one = run(md4_command(corpus, tmp_path / "one", "train.steps=6", "train.precision=bf16"))
    assert one.returncode == 0, one.stderr[-3000:]
    lines = {d: (tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two")}
    records = {d: [r for r in map(json.loads, lines[d]) if r["split"] == "train"] for d in lines}
    assert [r["step"] for r in records["two"]] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(records["one"], records["two"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2), (a, b)
    for a, b in zip(valid_records(tmp_path / "one"), valid_records(tmp_path / "two"), strict=True):
        assert a["nelbo"] == pytest.approx(b["nelbo"], rel=2e-2)


DDP_COMPILE_SCRIPT = """
import torch, torch.distributed as dist
from md4.distributed import World
from md4.training.parallel import Parallel

dist.init_process_group("gloo")
torch.manual_seed(0)


class Model(torch.nn.Module):  # a denoiser of 36 MB: two of DDP's 25 MB gradient buckets
    def __init__(self):
        super().__init__()
        self.denoiser = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(9)])

    def forward(self, x, generator=None):
        return self.denoiser(x + torch.rand(x.shape, generator=generator)).square().mean()


world = World(dist.get_rank(), 2, dist.get_rank(), grouped=True)
forward = Parallel(world, torch.device("cpu"), sharded=False).wrap(Model(), checkpointing=False, compile=True)
generator = torch.Generator().manual_seed(1)
for _ in range(2):
    forward(torch.randn(4, 1024), generator=generator).backward()
dist.destroy_process_group()
"""


@pytest.mark.slow  # compiles a 36 MB network on two processes (about a minute on two cores)
def test_the_compiled_denoiser_under_ddp_is_cut_at_the_gradient_buckets(tmp_path):
    """DDP wraps the model whose denoiser is compiled: the denoiser's graph is first compiled inside DDP's forward,
    where dynamo's DDPOptimizer cuts it at DDP's gradient buckets, so each bucket's all-reduce starts while the
    backward pass of the graphs before it still runs (compiling the DDP module itself adds graph breaks at DDP's own
    code and at the generator's draw, and overlaps no more)."""
    script = tmp_path / "ddp_compile.py"
    script.write_text(DDP_COMPILE_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_LOGS": "ddp_graphs,graph_breaks"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "---submod_1 graph---" in done.stderr  # at least two bucket-sized graphs
    assert "Graph break" not in done.stderr
