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
