"""Image features for FID and KID: the Inception network of the published protocol, and a small offline one.

``inception``: the TensorFlow FID Inception (the 2015-12-05 graph of Heusel et al.'s TTUR code, whose 2048-d pool
features every paper's FID is computed on), as torch-fidelity ports it (``inception-v3-compat``: the converted
weights and TensorFlow 1's bilinear resize to 299 x 299, reproducing TF-FID). md4 uses torch-fidelity's feature
extractor only, imported when asked for (the optional extra ``md4[fid]``); its weights download once into torch's
hub cache (``TORCH_HOME``), or come from a file. torch-fidelity rather than clean-fid: clean-fid's default
resize ("clean" mode, PIL bicubic) gives numbers that differ from the TF-FID ones papers report, and both
libraries need torchvision, so neither is lighter.

``random-conv``: a fixed network of three strided convolutions with weights drawn from a fixed seed (so the same
on every machine), resize to 64 x 64, global average pooling to 64 features. It needs no download, so the whole
measurement runs offline (the tests use it); its distances are not comparable with any published FID or KID.

Every extractor takes what the libraries take: uint8 RGB images [B, 3, H, W] of any size (grayscale repeated to
three channels by :func:`rgb_batch`), resized inside the extractor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

INCEPTION, RANDOM_CONV = "inception", "random-conv"
FEATURES = (INCEPTION, RANDOM_CONV)
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's download, ~92 MB


def rgb_batch(pixels: np.ndarray) -> torch.Tensor:
    """8-bit images [N, H, W, C] (C = 1 or 3) as uint8 RGB [N, 3, H, W], grayscale repeated to three channels."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"Images must be uint8 [N, H, W, 1 or 3], got {array.dtype} of shape {array.shape}.")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


class RandomConvFeatures(nn.Module):
    """Offline features: a seeded random conv net (not trained; not comparable with published FID)."""

    SIZE, SEED, WIDTHS = 64, 0, (3, 16, 32, 64)

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(self.SEED)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1)
            for c_in, c_out in zip(self.WIDTHS, self.WIDTHS[1:])
        )
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - 128.0) / 128.0
        x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x.mean(dim=(2, 3))


class _PoolFeatures(nn.Module):
    """torch-fidelity's extractor returns a tuple of the features asked for; this returns the one."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[0]


def inception_network(weights: str | Path | None = None) -> nn.Module:
    """torch-fidelity's TF-FID Inception giving the 2048-d pool features; its weights from ``weights`` or from
    torch's hub cache (downloaded there on first use)."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except (ImportError, RuntimeError, OSError) as err:  # a torchvision built for another torch fails at import
        raise ValueError(
            f"The Inception features need torch-fidelity and a torchvision built for this torch ({err}); install "
            "them with pip install md4[fid], or use --fid-features random-conv offline (not comparable with papers)."
        ) from err
    if weights is not None and not Path(weights).is_file():
        raise ValueError(
            f"The Inception weights file {weights} does not exist; pass the path of {INCEPTION_WEIGHTS_FILE}."
        )
    try:
        network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=None if weights is None else str(weights)
        )
    except (OSError, RuntimeError) as err:  # no network (URLError is an OSError), or a damaged file
        raise ValueError(
            f"The Inception weights could not be loaded ({err}); they download once from GitHub into torch's hub "
            f"cache, so run once with internet access, or copy {INCEPTION_WEIGHTS_FILE} here and pass "
            "--fid-inception-weights FILE."
        ) from err
    return _PoolFeatures(network)


@dataclass
class FeatureExtractor:
    """A named feature network, and whether its FID and KID compare with published ones."""

    name: str
    network: nn.Module
    published: bool

    def features(self, images: torch.Tensor, batch_size: int = 50, device: str | torch.device = "cpu") -> np.ndarray:
        """Features [N, D] (float64) of uint8 RGB images [N, 3, H, W], ``batch_size`` at a time."""
        self.network.to(device)
        with torch.inference_mode():
            parts = [
                self.network(images[i : i + batch_size].to(device)).double().cpu()
                for i in range(0, len(images), batch_size)
            ]
        return torch.cat(parts).numpy()


def feature_extractor(name: str, weights: str | Path | None = None) -> FeatureExtractor:
    """The extractor called ``name`` (one of :data:`FEATURES`); ``weights``: a file of the Inception weights."""
    if name == INCEPTION:
        return FeatureExtractor(INCEPTION, inception_network(weights), published=True)
    if weights is not None:
        raise ValueError(f"--fid-inception-weights is for the {INCEPTION} features; leave it out with {name}.")
    if name == RANDOM_CONV:
        return FeatureExtractor(RANDOM_CONV, RandomConvFeatures(), published=False)
    raise ValueError(f"Unknown features {name!r}; use {INCEPTION} (as papers) or {RANDOM_CONV} (offline).")
