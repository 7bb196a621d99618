import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from oracle import OracleDenoiser  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def oracle():
    return OracleDenoiser()


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A small real text file on disk, with the data cache isolated in tmp_path."""
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"To be, or not to be, that is the question {i}." for i in range(300)))
    return path
