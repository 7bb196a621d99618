"""The paper-exact recipes (issue 19 item 7): the presets against the JAX release's configs, the run's own sampling
settings (stored, validated, used by training and by ``md4 sample``, overridden by flags, absent from old runs),
periodic evaluation in fp32, CIFAR-10 on all 50,000 training images, and the two downsampled ImageNets."""

from __future__ import annotations

import json

import pytest
from cli_runs import TINY_TEXT, cli
from tiny_training import release, tiny_trainer

from md4.config import Config, ConfigError, build_config, load_preset
from md4.evaluate import estimate_nelbo
from md4.generation.text import generate
from md4.runs.directory import load_run
from md4.sampling import sample

# The release's configs (github.com/google-deepmind/md4, md4/configs/): every one samples "ancestral" on the
# "cosine" sampling_grid for `timesteps` steps (1000 for text, 256 for images), and its ancestral step draws with
# tfd.Categorical(...).sample, float32 Gumbel-max.
RELEASE_SAMPLING = {"sampler": "ancestral", "grid": "cosine", "categorical": "float32-gumbel", "top_p": None}
PAPER_PRESETS = {"text8": 1000, "genmd4-text8": 1000, "owt-gpt2-small": 1000, "cifar10": 256, "imagenet64": 256}


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_sample_as_the_release_does(preset):
    assert load_preset(preset).to_dict()["sample"] == {**RELEASE_SAMPLING, "steps": PAPER_PRESETS[preset]}


def test_the_demo_presets_keep_md4s_sampling_defaults():
    expected = {"sampler": None, "steps": 128, "grid": "uniform", "categorical": "float64", "top_p": None}
    assert load_preset("shakespeare-char").to_dict()["sample"] == expected  # 128 steps: its train.sample_steps


def test_text8_preset_uses_the_release_sweep():
    """md4/configs/md4/text8.py's sweep(): learning_rate=5e-4, dropout_rate=0.05, weight_decay=0.03."""
    config = load_preset("text8")
    assert config.train.lr == 5e-4 and config.train.weight_decay == 0.03
    assert config.net["dropout"] == 0.05 and config.net["attn_dropout"] == 0.05


def test_sample_settings_are_validated_in_one_sentence():
    cases = {
        "sample.grid=zigzag": "sample.grid must be one of uniform, cosine, got 'zigzag'.",
        "sample.categorical=float16": "sample.categorical must be one of float64, float32-gumbel, got 'float16'.",
        "sample.steps=0": "sample.steps must be a positive integer, got 0.",
        "sample.top_p=1.5": "sample.top_p must be in (0, 1], got 1.5.",
        "sample.sampler=autoregressive": "sample.sampler=autoregressive does not apply to md4 models",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as err:
            build_config("shakespeare-char", [override])
        assert message in str(err.value) and str(err.value).count(". ") == 0, str(err.value)
    with pytest.raises(ConfigError, match="sample.sampler=ancestral does not apply to ar models"):
        build_config("ar-shakespeare-char", ["sample.sampler=ancestral"])
    assert build_config("ar-shakespeare-char", ["sample.sampler=autoregressive"]).sample.sampler == "autoregressive"


def test_a_config_from_before_the_sample_table_loads_with_the_old_defaults():
    old = build_config("shakespeare-char", []).to_dict()
    del old["sample"]
    old["train"]["sample_steps"] = 64  # md4 before [sample] kept the training samples' steps here
    config = Config.from_dict(json.loads(json.dumps(old)))
    assert not config.sample_recorded and config.sample.steps == 64
    assert (config.sample.grid, config.sample.categorical, config.sample.sampler) == ("uniform", "float64", None)
    assert Config.from_dict(config.to_dict()).sample_recorded  # written again, it records the table
    assert build_config(None, ["train.sample_steps=7"]).sample.steps == 7  # the old override name still works
    assert build_config(None, ["steps=7"]).train.steps == 7  # a bare `steps` is still train.steps


def _trained_run(tmp_path, capsys, corpus, *overrides):
    run_dir = tmp_path / "run"
    argv = ["train", "--data", corpus, "--out", run_dir, "--no-progress", "train.steps=2", *TINY_TEXT, *overrides]
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    return run_dir


def test_md4_sample_follows_the_runs_settings_and_flags_override_them(corpus, tmp_path, capsys):
    run_dir = _trained_run(
        tmp_path, capsys, corpus, "sample.steps=5", "sample.grid=cosine", "sample.categorical=float32-gumbel"
    )
    code, out, err = cli(capsys, "sample", run_dir, "--num", 1, "--length", 24)
    assert code == 0, err
    assert "steps 5, grid cosine, categorical float32-gumbel" in err and "(the run's config)" in err
    assert "5 cosine steps" in err
    loaded = load_run(run_dir)
    mine = {"steps": 5, "grid": "cosine", "categorical": "float32-gumbel"}
    (expected,) = generate(loaded.model, loaded.codec, 1, length=24, seed=0, precision="auto", **mine).texts
    assert out.split("\n", 1)[1].rstrip("\n") == expected

    code, out, err = cli(capsys, "sample", run_dir, "--num", 1, "--length", 24, "--steps", 3, "--grid", "uniform")
    assert code == 0 and "steps 3 (--steps)" in err and "grid uniform (--grid)" in err
    assert "categorical float32-gumbel" in err and "3 uniform steps" in err


def test_md4_sample_keeps_md4s_defaults_for_a_run_from_before_the_table(corpus, tmp_path, capsys):
    run_dir = _trained_run(tmp_path, capsys, corpus, "sample.steps=5", "sample.grid=cosine")
    config = json.loads((run_dir / "config.json").read_text())
    config["train"]["sample_steps"] = config.pop("sample")["steps"]
    (run_dir / "config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "sample", run_dir, "--num", 1, "--length", 8)
    assert code == 0 and "(md4's defaults)" in err and "256 uniform steps" in err, err


def test_training_samples_follow_the_runs_settings(tmp_path):
    settings = ["train.sample_steps=3", "sample.grid=cosine", "sample.categorical=float32-gumbel", "sample.sampler=mean"]
    trainer = tiny_trainer(tmp_path / "run", *settings)
    try:
        path = trainer.write_samples()
        expected = sample(
            trainer.ema.module,
            trainer.t.num_samples,
            seed=trainer.t.seed,
            steps=3,
            grid="cosine",
            categorical="float32-gumbel",
            sampler="mean",
        )
        plain = sample(trainer.ema.module, trainer.t.num_samples, seed=trainer.t.seed, steps=3)
    finally:
        release(trainer)
    written = path.read_text()
    assert written == trainer.data.codec.write_samples(expected.tokens, tmp_path / "expected").read_text()
    assert written != trainer.data.codec.write_samples(plain.tokens, tmp_path / "plain").read_text()


def test_periodic_evaluation_of_a_bf16_run_is_in_fp32(tmp_path):
    trainer = tiny_trainer(tmp_path / "run", "train.precision=bf16", "train.ema_decay=0", "train.lr=0.03")
    try:
        for _ in range(3):  # away from the zero-initialised modulations, whose output ignores the precision
            trainer.train_step()
        result = trainer.evaluate("valid", max_batches=1)
        batches = list(trainer.data.eval_batches("valid", trainer.t.batch_size, 1))
        fp32, bf16 = (
            estimate_nelbo(trainer.ema.module, batches, seed=trainer.t.seed, precision=p, micro_batch=4)
            for p in ("fp32", "bf16")
        )
    finally:
        release(trainer)
    assert result["precision"] == "fp32"
    assert result["bits_per_token"] == pytest.approx(fp32.bits_per_token, abs=1e-12)
    assert abs(result["bits_per_token"] - bf16.bits_per_token) > 1e-7
