"""The paper-exact recipes (issue 19 item 7): the presets against the JAX release's configs, the run's own sampling
settings (stored, validated, used by training and by ``md4 sample``, overridden by flags, absent from old runs),
periodic evaluation in fp32, CIFAR-10 on all 50,000 training images, and the two downsampled ImageNets."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cli_runs import TINY_TEXT, cli
from PIL import Image
from tiny_training import release, tiny_trainer

from md4.config import Config, ConfigError, build_config, load_preset
from md4.data import DataError, downsampled_imagenet, prepare, recipe_num_classes
from md4.data import image_sources as sources
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


def test_md4_sample_uses_the_runs_settings_flags_override_them_old_runs_keep_the_defaults(corpus, tmp_path, capsys):
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

    config = json.loads((run_dir / "config.json").read_text())  # as md4 wrote it before [sample] existed
    config["train"]["sample_steps"] = config.pop("sample")["steps"]
    (run_dir / "config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "sample", run_dir, "--num", 1, "--length", 8)
    assert code == 0 and "(md4's defaults)" in err and "256 uniform steps" in err, err


def test_training_samples_follow_the_runs_settings(tmp_path):
    settings = [
        "train.sample_steps=3",
        "sample.grid=cosine",
        "sample.categorical=float32-gumbel",
        "sample.sampler=mean",
    ]
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


# ----------------------------------------------------------------------------- CIFAR-10 on all 50,000 images


def _cifar10_tarball(path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A tiny cifar-10-binary.tar.gz in the real record format: five training batches of 2 images, a test batch
    of 3; the train and test images [N, 32, 32, 3]."""
    parts = []
    with tarfile.open(path, "w:gz") as archive:
        for name in (*sources.CIFAR10_TRAIN, sources.CIFAR10_TEST):
            images = rng.integers(0, 256, (3 if name == sources.CIFAR10_TEST else 2, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, len(images), dtype=np.uint8)
            records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(len(images), -1)], 1)
            _add(archive, f"{sources.CIFAR10_FOLDER}/{name}", records.tobytes())
            parts.append(images)
    return np.concatenate(parts[:-1]), parts[-1]


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_cifar10_all_trains_on_every_training_image_and_validates_on_a_slice_of_test(
    tmp_path, monkeypatch, isolated_cache
):
    train, test = _cifar10_tarball(tmp_path / sources.CIFAR10_TARBALL, np.random.default_rng(0))
    monkeypatch.setenv(sources.CIFAR10_ENV, str(tmp_path / sources.CIFAR10_TARBALL))
    monkeypatch.setattr(sources, "CIFAR10_VALID_SLICE", 2)
    data = prepare("cifar10-all")
    assert {split: len(images) for split, images in data.splits.items()} == {"train": 10, "valid": 2, "test": 3}
    assert (data.splits["train"] == train).all() and (data.splits["test"] == test).all()
    assert (data.splits["valid"] == test[:2]).all() and data.key == "cifar10-all-L256"
    held_out = prepare("cifar10")  # md4's own split, cached under its own key, is unchanged
    assert {split: len(images) for split, images in held_out.splits.items()} == {"train": 9, "valid": 1, "test": 3}
    assert held_out.key == "cifar10-L256" and load_preset("cifar10").data.name == "cifar10-all"
    assert sources.CIFAR10_VALID_SLICE == 2 and recipe_num_classes("cifar10-all") == 10


# ----------------------------------------------------------------------------- the two downsampled ImageNets


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _imagenet_tars(folder: Path, counts: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """train_64x64.tar and valid_64x64.tar as image-net.org/small ships them: 64x64 RGB PNGs under the split's
    folder, numbered from 1 in archive order; the images of each split."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for split, count in counts.items():
        stem = downsampled_imagenet.SPLITS[split]
        images[split] = rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)
        with tarfile.open(folder / f"{stem}.tar", "w") as archive:
            for i, pixels in enumerate(images[split]):
                _add(archive, f"{stem}/{i + 1:08d}.png", _png(pixels))
    return images


def test_van_den_oord_imagenet64_from_its_tars_and_unpacked(tmp_path, monkeypatch, isolated_cache):
    images = _imagenet_tars(tmp_path / "small", {"train": 5, "valid": 3}, np.random.default_rng(1))
    monkeypatch.setattr(downsampled_imagenet, "VALID_SLICE", 2)
    monkeypatch.setattr(downsampled_imagenet, "CHUNK_ROWS", 2)  # chunks that straddle the valid cut
    monkeypatch.setenv(downsampled_imagenet.ENV, str(tmp_path / "small"))
    data = prepare("imagenet64")
    assert {split: len(x) for split, x in data.splits.items()} == {"train": 5, "valid": 2, "test": 3}
    assert (data.splits["train"] == images["train"]).all() and (data.splits["test"] == images["valid"]).all()
    assert (data.splits["valid"] == images["valid"][:2]).all()
    assert data.labels is None and data.num_classes is None and recipe_num_classes("imagenet64") is None
    assert data.key == "imagenet64-vdo-L256" and load_preset("imagenet64").data.name == "imagenet64"

    unpacked = tmp_path / "unpacked"
    for stem in downsampled_imagenet.SPLITS.values():
        with tarfile.open(tmp_path / "small" / f"{stem}.tar") as archive:
            archive.extractall(unpacked, filter="data")
    local = prepare(str(unpacked))
    assert local.fingerprint == data.fingerprint and local.key.startswith("imagenet64-vdo-")


def test_van_den_oord_imagenet64_errors(tmp_path, monkeypatch, isolated_cache):
    with pytest.raises(DataError) as err:
        prepare("imagenet64")
    message = str(err.value)
    assert "md4 cannot download it" in message and downsampled_imagenet.ENV in message
    assert str(isolated_cache / "imagenet64") in message and "imagenet64-chrabaszcz" in message
    assert message.count(". ") == 0
    folder = tmp_path / "small"
    _imagenet_tars(folder, {"train": 2, "valid": 1}, np.random.default_rng(2))
    with tarfile.open(folder / "valid_64x64.tar", "w") as archive:
        _add(archive, "valid_64x64/00000001.png", _png(np.zeros((32, 32, 3), np.uint8)))
    with pytest.raises(DataError, match=r"is a 32x32 RGB image, not 64x64 RGB"):
        prepare(str(folder))


def test_chrabaszcz_npz_batches_keep_working_under_their_own_name(tmp_path, monkeypatch, isolated_cache):
    folder = isolated_cache / "imagenet64"  # where md4 0.x looked for them, still searched
    rng = np.random.default_rng(3)
    for path, count in ((folder / "train_data_batch_1.npz", 20), (folder / "val_data.npz", 3)):
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (count, 3 * 64 * 64), dtype=np.uint8)
        np.savez(path, data=pixels, labels=list(rng.integers(1, 1001, count)))
    data = prepare("imagenet64-chrabaszcz")
    assert {split: len(x) for split, x in data.splits.items()} == {"train": 18, "valid": 2, "test": 3}
    assert data.num_classes == 1000 and data.key == "imagenet64-L256"  # md4 0.x's cache entry stays valid
    with pytest.raises(DataError, match="imagenet64-chrabaszcz data"):
        prepare("imagenet64")  # the npz are not the van den Oord data
