"""FID and KID (md4.quality): the Fréchet distance against closed forms, KID's unbiased estimate against a hand
count, the offline features, the measurement of a tiny digits run end to end (library and ``md4 eval --fid``),
and its errors."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from cli_runs import TINY_TEXT, cli, last_error

from md4.cli import main
from md4.config import build_config
from md4.quality.features import RANDOM_CONV, RandomConvFeatures, feature_extractor, rgb_batch
from md4.quality.fid import Gaussian, fid, frechet_distance, kid, polynomial_kernel, unbiased_mmd2
from md4.quality.image_quality import image_quality, reference_images
from md4.runs.directory import load_run
from md4.training.trainer import train

TINY_DIGITS = [
    "model.net=unet",
    "model.conditional=true",
    "net.feature_dim=32",
    "net.n_layers=1",
    "train.batch_size=8",
    "train.steps=2",
    "train.log_every=1",
    "train.eval_every=100",
    "train.eval_batches=1",
    "train.sample_every=100",
    "train.sample_steps=2",
    "train.checkpoint_every=2",
    "train.warmup_steps=1",
]


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    # Diagonal covariances commute: d^2 = |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2.
    a = Gaussian(np.array([0.0, 1.0]), np.diag([4.0, 9.0]))
    b = Gaussian(np.array([3.0, -3.0]), np.diag([1.0, 16.0]))
    assert frechet_distance(a, b) == pytest.approx(9 + 16 + (2 - 1) ** 2 + (3 - 4) ** 2, abs=1e-10)
    # Non-commuting 2x2 covariances: tr sqrt(A B) = sqrt(tr(AB) + 2 sqrt(det A det B)).
    cov_a, cov_b = np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([[1.0, -0.5], [-0.5, 2.0]])
    assert not np.allclose(cov_a @ cov_b, cov_b @ cov_a)
    trace_root = math.sqrt(np.trace(cov_a @ cov_b) + 2 * math.sqrt(np.linalg.det(cov_a) * np.linalg.det(cov_b)))
    expected = 1.0 + 5.0 + 3.0 - 2 * trace_root  # |(1, 0)|^2 + tr A + tr B - 2 tr sqrt(AB)
    got = frechet_distance(Gaussian(np.array([1.0, 0.0]), cov_a), Gaussian(np.zeros(2), cov_b))
    assert got == pytest.approx(expected, abs=1e-10)
    assert frechet_distance(Gaussian(np.zeros(2), cov_a), Gaussian(np.zeros(2), cov_a)) == pytest.approx(0, abs=1e-10)


def test_fid_of_feature_sets_is_zero_for_identical_ones_and_grows_with_a_shift():
    x = np.random.default_rng(0).normal(size=(400, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8)
    shifts = [fid(x, x + s) for s in (0.5, 1.0, 2.0, 4.0)]
    assert shifts == pytest.approx([16 * s**2 for s in (0.5, 1.0, 2.0, 4.0)])  # same covariance: |shift|^2
    assert shifts == sorted(shifts)
    # Samples of two known Gaussians: the estimate approaches the closed form (here 16 * (2 - 1)^2 = 16).
    rng = np.random.default_rng(2)
    assert fid(rng.normal(size=(20000, 16)), 2 * rng.normal(size=(20000, 16))) == pytest.approx(16, rel=0.05)
    with pytest.raises(ValueError, match="N >= 2 rows"):
        fid(x[:1], x)


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 1

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    across = sum(k(x[i], y[j]) for i in range(5) for j in range(5)) / 25
    assert unbiased_mmd2(x, y) == pytest.approx(within - 2 * across)
    assert polynomial_kernel(x, y)[1, 2] == pytest.approx(k(x[1], y[2]))
    # One subset holding every row is the plain estimate.
    assert kid(x, y, subsets=1, subset_size=5).mean == pytest.approx(unbiased_mmd2(x, y))


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same, shifted = kid(a, b, subsets=20, subset_size=200), kid(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same.mean) < 3 * same.std and abs(same.mean) < 0.05 * shifted.mean
    assert shifted.mean > 0 and shifted.subset_size == 200
    assert kid(a[:50], b, subsets=2).subset_size == 50  # at most the smaller set


def test_images_become_rgb_and_the_offline_features_are_fixed():
    gray = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5, 1)
    rgb = rgb_batch(gray)
    assert rgb.shape == (2, 3, 4, 5) and rgb.dtype == torch.uint8 and torch.equal(rgb[:, 0], rgb[:, 2])
    with pytest.raises(ValueError, match="uint8"):
        rgb_batch(gray.astype(np.float32))
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = feature_extractor(RANDOM_CONV).features(images, batch_size=4)
    assert first.shape == (6, RandomConvFeatures.WIDTHS[-1]) and first.dtype == np.float64
    assert np.array_equal(first, feature_extractor(RANDOM_CONV).features(images, batch_size=6))  # seeded weights


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny class-conditional UNet trained for 2 steps on scikit-learn's 8x8 digits, in its own cache."""
    from md4.data import prepare

    root = tmp_path_factory.mktemp("fid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(root / "cache"))
        prepare("digits", cache_dir=root / "cache")
        assert main(["train", "--data", "digits", "--out", str(root / "run"), "--no-progress", *TINY_DIGITS]) == 0
        yield root / "run"


@pytest.fixture(scope="module")
def loaded(digits_run):
    return load_run(digits_run, device="cpu")


def test_reference_images_through_the_offline_features(loaded):
    extractor = feature_extractor(RANDOM_CONV)
    train_images, test_images = reference_images(loaded, "train", 200), reference_images(loaded, "test", 200)
    assert train_images.dtype == np.uint8 and train_images.shape == (200, 8, 8, 1)

    def features(pixels):
        return extractor.features(rgb_batch(pixels))

    real = features(train_images)
    brighter = [features(np.clip(train_images.astype(int) + k, 0, 255).astype(np.uint8)) for k in (16, 48, 96)]
    noise = features(np.random.default_rng(0).integers(0, 256, train_images.shape, dtype=np.uint8))
    distances = [fid(real, other) for other in brighter]
    assert fid(real, real) == pytest.approx(0, abs=1e-8)
    assert distances == sorted(distances) and distances[0] > 0  # monotone in the shift
    assert 0 < fid(real, features(test_images)) < fid(real, noise)  # another split of digits is nearer than noise


def test_fid_of_a_run_end_to_end(loaded):
    def measure():
        extractor = feature_extractor(RANDOM_CONV)
        return image_quality(loaded, 8, extractor, references=60, batch_size=3, steps=2, precision="fp32")

    result = measure()
    assert (result.samples, result.references, result.split, result.nfe) == (8, 60, "train", 2)
    assert result.fid > 0 and math.isfinite(result.kid.mean) and result.kid.subset_size == 8
    assert not result.published and result.sampler == "ancestral"
    assert measure().to_dict() | {"sampling_seconds": 0, "features_seconds": 0} == result.to_dict() | {
        "sampling_seconds": 0,
        "features_seconds": 0,
    }  # seeded: the same samples and subsets again


def test_md4_eval_fid_json_and_report(digits_run, capsys):
    options = ["--fid", 8, "--fid-features", RANDOM_CONV, "--fid-references", 50, "--fid-steps", 2, "--fid-split"]
    code, out, _ = cli(capsys, "eval", digits_run, *options, "test", "--json", "--fid-precision", "fp32")
    result = json.loads(out)
    assert code == 0 and "continuous" not in result  # a quality measurement skips the bounds
    assert result["fid"]["samples"] == 8 and result["fid"]["split"] == "test" and result["fid"]["fid"] > 0
    assert set(result["fid"]["kid"]) == {"mean", "std", "subsets", "subset_size"}
    code, out, _ = cli(capsys, "eval", digits_run, *options, "train", "--fid-precision", "fp32")
    assert code == 0 and "FID = " in out and "KID = " in out and "not with published" in out


def test_fid_errors_are_one_sentence(digits_run, capsys, monkeypatch):
    offline = ["--fid-features", RANDOM_CONV]
    code, _, err = cli(capsys, "eval", digits_run, "--fid", 1, *offline)
    assert code == 2 and "at least 2 samples" in last_error(err)
    code, _, err = cli(capsys, "eval", digits_run, "--fid", 4, *offline, "--fid-split", "nope")
    assert code == 2 and "Unknown split 'nope'" in last_error(err)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)  # as if not installed
    code, _, err = cli(capsys, "eval", digits_run, "--fid", 4)
    assert code == 2 and "pip install md4[fid]" in last_error(err)


def test_fid_refuses_a_text_run(corpus, tmp_path, capsys):
    offline = ["--fid-features", RANDOM_CONV]
    train(build_config(None, ["train.steps=1", *TINY_TEXT], data=str(corpus)), tmp_path / "text", progress=False)
    code, _, err = cli(capsys, "eval", tmp_path / "text", "--fid", 4, *offline)
    assert code == 2 and "is a text run" in last_error(err)


def test_the_suite_of_an_image_run_measures_fid_and_keeps_the_reason_it_could_not(digits_run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)  # as if not installed
    options = ["--suite", "--fid", 4, "--fid-steps", 2, "--fid-references", 20, "--max-batches", 1, "--no-progress"]
    options += ["--class-accuracy", 2, "--class-steps", 2]
    code, out, err = cli(capsys, "eval", digits_run, *options)
    results = json.loads((digits_run / "eval.json").read_text())
    assert code == 0, err
    assert "continuous" in results and "fid" not in results and "gen_ppl" not in results
    assert "pip install md4[fid]" in results["not_measured"]["FID and KID"]  # the Inception path's own sentence
    assert set(results["not_measured"]) == {"FID and KID", "generative perplexity", "zero-shot perplexity"}
    assert results["class_accuracy"]["per_class"] == 2 and "## Class accuracy" in out  # a conditional run's
    code, out, err = cli(capsys, "eval", digits_run, *options, "--fid-features", RANDOM_CONV, "--fid-precision", "fp32")
    results, report = json.loads((digits_run / "eval.json").read_text()), (digits_run / "eval.md").read_text()
    assert code == 0 and results["fid"]["samples"] == 4 and results["fid"]["references"] == 20
    assert "## Image sample quality" in report and f"{results['fid']['fid']:.4g}" in report and report in out


def test_md4_eval_reports_the_class_accuracy_of_a_conditional_run(digits_run, capsys):
    code, out, err = cli(capsys, "eval", digits_run, "--class-accuracy", 2, "--class-steps", 4, "--json")
    assert code == 0, err
    report = json.loads(out)["class_accuracy"]
    assert report["per_class"] == 2 and len(report["named"]) == 10 and 0 <= sum(report["named"]) <= 20
    assert report["accuracy"] == sum(report["named"]) / 20 and report["judge_test_accuracy"] > 0.5
    code, out, err = cli(capsys, "eval", digits_run, "--class-accuracy", 0)
    assert code == 2 and "--class-accuracy must be a positive integer" in last_error(err)
