"""Training loop, checkpoints and resume: exactness and failure handling on a tiny real corpus."""

import copy
import json
import os
import signal

import pytest
import torch

from md4.config import ConfigError, build_config
from md4.core.md4 import MD4
from md4.core.schedules import PolynomialSchedule
from md4.data import ArrayDataset, RawCodec, TokenStream, prepare
from md4.evaluate import estimate_nelbo
from md4.models import DataSpec, build_model
from md4.runs.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from md4.runs.directory import RunError, load_run, resume_config
from md4.sampling import sample
from md4.training import Trainer, train

TINY = [
    "net.dim=32",
    "net.n_layers=1",
    "net.n_heads=2",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.log_every=1",
    "train.eval_every=100",
    "train.eval_batches=1",
    "train.sample_every=100",
    "train.sample_steps=8",
    "train.checkpoint_every=3",
    "train.warmup_steps=2",
]


def merged(*overrides):
    """Overrides with later ones replacing earlier ones of the same key (a key given twice is warned about)."""
    return list({text.split("=", 1)[0]: text for text in overrides}.values())


def tiny_config(corpus, *extra):
    return build_config("shakespeare-char", merged(*TINY, *extra), data=str(corpus))


def train_losses(run_dir):
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_resume_continues_exactly(corpus, tmp_path):
    full = train(tiny_config(corpus, "train.steps=6"), tmp_path / "full", progress=False)
    train(tiny_config(corpus, "train.steps=3"), tmp_path / "split", progress=False)
    resumed = train(
        resume_config(tmp_path / "split", ["train.steps=6"]), tmp_path / "split", resume=True, progress=False
    )
    assert full.step == resumed.step == 6
    assert train_losses(tmp_path / "full") == train_losses(tmp_path / "split")
    a = load_checkpoint(list_checkpoints(tmp_path / "full")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "split")[-1])
    for key in a.model:
        assert torch.equal(a.model[key], b.model[key]) and torch.equal(a.ema[key], b.ema[key])


def test_run_directory_alone_rebuilds_the_model(corpus, tmp_path):
    train(tiny_config(corpus, "train.steps=3"), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.step == 3 and not run.model.training
    out = sample(run.model, 2, steps=4, seed=0)
    assert out.tokens.shape == (2, 32) and int(out.tokens.max()) < run.codec.vocab_size
    ckpt = load_checkpoint(run.checkpoint)
    assert set(ckpt.state) >= {"step", "tokens_seen"} and "data" in ckpt.rng and ckpt.optimizer["state"]


def test_keeps_the_last_n_checkpoints_and_writes_logs(corpus, tmp_path):
    train(
        tiny_config(
            corpus,
            "train.steps=8",
            "train.checkpoint_every=2",
            "train.keep_checkpoints=2",
            "train.sample_every=4",
            "train.eval_every=4",
        ),
        tmp_path / "run",
        progress=False,
    )
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step_00000006", "step_00000008"]
    run_dir = tmp_path / "run"
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step_00000004.txt", "step_00000008.txt"]
    assert any(p.name.startswith("events") for p in (run_dir / "tb").iterdir())
    valid = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if '"valid"' in line]
    assert [r["step"] for r in valid] == [4, 8] and all(r["bits_per_token"] > 0 for r in valid)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_ctrl_c_saves_and_stops_cleanly_then_resumes(corpus, tmp_path):
    config = tiny_config(corpus, "train.steps=10", "train.checkpoint_every=100")
    prepared = prepare(str(corpus))

    class InterruptAtThirdBatch(TokenStream):
        calls = 0

        def train_batch(self, batch_size, generator):
            InterruptAtThirdBatch.calls += 1
            if InterruptAtThirdBatch.calls == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return super().train_batch(batch_size, generator)

    torch.manual_seed(0)
    data = InterruptAtThirdBatch(prepared, 32)
    model = build_model(config, DataSpec.of(data))
    result = Trainer(config, model, data, tmp_path / "run", progress=False).fit()
    assert result.interrupted and result.step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000003"]
    resumed = train(resume_config(tmp_path / "run", []), tmp_path / "run", resume=True, progress=False)
    assert resumed.step == 10 and not resumed.interrupted


def test_failed_save_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    import md4.runs.checkpoints as checkpoint

    run_dir = tmp_path / "run"
    train(tiny_config(corpus, "train.steps=3"), run_dir, progress=False)
    before = {p.name: p.read_bytes() for p in list_checkpoints(run_dir)[-1].iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(CheckpointError, match=r"No space left on the device .* needs about [\d,]+ MB; free some space"):
        train(resume_config(run_dir, ["train.steps=6"]), run_dir, resume=True, progress=False)
    kept = list_checkpoints(run_dir)
    assert [p.name for p in kept] == ["step_00000003"]
    assert {p.name: p.read_bytes() for p in kept[0].iterdir()} == before
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    load_checkpoint(kept[0])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest"])
def test_corrupt_checkpoint_is_a_clear_error(corpus, tmp_path, damage):
    run_dir = tmp_path / "run"
    train(tiny_config(corpus, "train.steps=3"), run_dir, progress=False)
    ckpt = list_checkpoints(run_dir)[-1]
    weights = ckpt / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (ckpt / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="corrupt|incomplete"):
        load_run(run_dir)
    with pytest.raises(CheckpointError):
        train(resume_config(run_dir, ["train.steps=6"]), run_dir, resume=True, progress=False)


def test_resume_refuses_a_different_config_or_vocabulary(corpus, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(corpus, "train.steps=3"), run_dir, progress=False)
    with pytest.raises(ConfigError, match=r"net.dim \(32 -> 48\)"):
        train(resume_config(run_dir, ["net.dim=48"]), run_dir, resume=True, progress=False)
    other = corpus.with_name("other.txt")
    other.write_text("completely different letters: XYZ 0123456789 " * 100)
    config = resume_config(run_dir, [])
    config.data.name = str(other)
    with pytest.raises(ConfigError, match="data.name|vocabulary"):
        train(config, run_dir, resume=True, progress=False)


def test_new_run_refuses_to_overwrite_an_existing_one(corpus, tmp_path):
    train(tiny_config(corpus, "train.steps=3"), tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="--resume"):
        train(tiny_config(corpus, "train.steps=3"), tmp_path / "run", progress=False)


def test_grad_accumulation_averages_micro_batches(corpus, tmp_path):
    """With grad_accum = 2 the step's batch of 4 is two micro-batches of 2, and the gradient is the mean of
    their gradients (not their sum)."""
    config = tiny_config(corpus, "train.grad_accum=2", "train.grad_clip=0", "train.precision=fp32")
    data = TokenStream(prepare(str(corpus)), 32)
    torch.manual_seed(0)
    model = build_model(config, DataSpec.of(data))
    reference = copy.deepcopy(model)
    trainer = Trainer(config, model, data, tmp_path / "run", progress=False)
    seen = {}
    step = trainer.optimizer.step

    def capture(*args, **kwargs):
        seen.update({name: p.grad.clone() for name, p in trainer.model.named_parameters()})
        return step(*args, **kwargs)

    trainer.optimizer.step = capture
    data_state, noise_state = trainer.data_generator.get_state(), trainer.noise_generator.get_state()
    trainer.train_step()
    assert trainer.tokens_seen == 4 * 32  # train.batch_size is the whole step's batch

    data_generator, noise_generator = torch.Generator(), torch.Generator()  # replay the two micro-batches by hand
    data_generator.set_state(data_state)
    noise_generator.set_state(noise_state)
    for _ in range(2):
        x, labels = data.train_batch(2, data_generator)
        reference.loss(x, labels=labels, generator=noise_generator)[0].backward()
    for name, p in reference.named_parameters():
        if p.grad is not None and p.grad.abs().max() > 0:
            assert torch.allclose(seen[name], p.grad / 2, atol=1e-7, rtol=1e-5), name
            assert not torch.allclose(seen[name], p.grad, atol=1e-7, rtol=1e-5), name


def test_labelled_data_of_any_shape_trains_evaluates_and_reloads(tmp_path):
    """Labels reach the model in training and evaluation: a class-conditional network refuses to run without them."""
    g = torch.Generator().manual_seed(0)
    labels = {split: torch.randint(0, 3, (n,), generator=g) for split, n in (("train", 64), ("valid", 16))}
    images = {
        split: (y[:, None, None] + torch.randint(0, 2, (len(y), 2, 3), generator=g)) for split, y in labels.items()
    }
    data = ArrayDataset(images, RawCodec(5), labels=labels, num_classes=3)
    overrides = [*TINY, "train.steps=4", "train.sample_every=4", "train.eval_every=4", "model.conditional=true"]
    config = build_config("shakespeare-char", merged(*overrides, "data.name=in-memory"))
    model = build_model(config, DataSpec.of(data))
    assert model.denoiser.config.num_classes == 3
    result = Trainer(config, model, data, tmp_path / "run", progress=False).fit()
    assert result.step == 4 and result.valid_bits_per_token > 0
    samples = (tmp_path / "run" / "samples" / "step_00000004.txt").read_text().split("----------")
    assert len(samples) == 2 and all(len(block.split()) == 6 for block in samples)  # 2 x 3 ids each
    run = load_run(tmp_path / "run")
    assert run.spec == DataSpec(5, (2, 3), 3) and isinstance(run.codec, RawCodec)
    with pytest.raises(ValueError, match="class-conditional"):
        run.model.nelbo(images["valid"])
    estimate = estimate_nelbo(run.model, data.eval_batches("valid", 8))
    assert estimate.num_sequences == 16 and estimate.tokens_per_sequence == 6


def test_a_run_directory_of_md4_0_1_is_refused_clearly(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text('{"type": "text8"}')
    with pytest.raises(RunError, match="written by md4 0.1"):
        load_run(tmp_path)


class LearnablePoly(PolynomialSchedule):
    """alpha~(t) = 1 - t^k with a learnable k = softplus(theta): a schedule with parameters, as GenMD4 will have."""

    def __init__(self):
        super().__init__(1.0)
        self.theta = torch.nn.Parameter(torch.tensor(0.5413))  # softplus(0.5413) = 1

    def raw_alpha(self, t):
        return 1.0 - t ** torch.nn.functional.softplus(self.theta).to(t.dtype)

    def raw_dalpha(self, t):
        k = torch.nn.functional.softplus(self.theta).to(t.dtype)
        return -k * t.clamp_min(1e-12) ** (k - 1.0)


def test_a_learnable_schedule_is_trained_averaged_and_saved(corpus, tmp_path):
    config = tiny_config(corpus, "train.steps=3", "train.lr=0.05", "train.ema_decay=0.5")
    data = TokenStream(prepare(str(corpus)), 32)
    net = build_model(config, DataSpec.of(data)).denoiser
    model = MD4(net, data.vocab_size, schedule=LearnablePoly(), data_shape=(32,))
    trainer = Trainer(config, model, data, tmp_path / "run", progress=False)
    assert any(p is model.schedule.theta for group in trainer.optimizer.param_groups for p in group["params"])
    trainer.fit()
    theta, ema_theta = model.schedule.theta.item(), trainer.ema.module.schedule.theta.item()
    assert theta != pytest.approx(0.5413) and ema_theta != pytest.approx(0.5413) and ema_theta != pytest.approx(theta)
    saved = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert float(saved.model["schedule.theta"]) == pytest.approx(theta)
    assert float(saved.ema["schedule.theta"]) == pytest.approx(ema_theta)


def test_activation_checkpointing_trains_alike_and_can_be_switched_on_resume(corpus, tmp_path):
    """The same losses with the blocks recomputed in the backward pass, also when switched on at a resume;
    a network without it refuses the option clearly."""
    plain = train(tiny_config(corpus, "train.steps=4"), tmp_path / "plain", progress=False)
    train(tiny_config(corpus, "train.steps=2"), tmp_path / "ckpt", progress=False)
    resumed = train(
        resume_config(tmp_path / "ckpt", ["train.steps=4", "train.activation_checkpointing=true"]),
        tmp_path / "ckpt",
        resume=True,
        progress=False,
    )
    assert plain.step == resumed.step == 4
    for step, loss in train_losses(tmp_path / "plain").items():
        assert train_losses(tmp_path / "ckpt")[step] == pytest.approx(loss, rel=1e-4)
    with pytest.raises(ConfigError, match="activation_checkpointing is supported by the transformer, not by net"):
        build_config("mnist", ["train.activation_checkpointing=true"])
