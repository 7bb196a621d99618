"""FID and KID of a run's image samples against a split of the data it was trained on.

The protocol papers follow (CIFAR-10: Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Sec. 4.1;
Heusel et al. 2017): 50,000 samples against the statistics of the 50,000 training images, Inception pool
features. md4 therefore defaults to the run's ``train`` split, all of it; ``test`` is the other common choice
(10,000 images for CIFAR-10), and FIDs against different splits or sample counts do not compare (FID is biased
upwards for fewer samples: Bińkowski et al. 2018). A class-conditional run's samples have balanced
labels (the classes in turn), as the split's are about balanced.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from md4.data import DataError, ImageCodec
from md4.device import autocast, resolve_precision
from md4.quality.features import FeatureExtractor, rgb_batch
from md4.quality.fid import KID, fid, kid
from md4.runs.directory import LoadedRun, RunError, cached_run_data
from md4.sampling import default_sampler, sample
from md4.sampling.labels import class_labels

DEFAULT_FID_SPLIT = "train"  # as papers: CIFAR-10's FID is against its training images
SAMPLE_BATCH = 100  # images drawn in one reverse process


@dataclass
class ImageQuality:
    """FID and KID of ``samples`` images against ``references`` images of a split, and how they were made."""

    fid: float
    kid: KID
    samples: int
    references: int
    split: str
    features: str
    published: bool  # whether the features are the published protocol's, so the numbers compare with papers'
    sampler: str
    nfe: int  # network calls of one reverse process
    sampling_seconds: float
    features_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_image_run(loaded: LoadedRun, option: str = "--fid") -> ImageCodec:
    """The run's image codec; a text run refused in one sentence."""
    if not isinstance(loaded.codec, ImageCodec):
        raise RunError(
            f"{option} measures image samples and {loaded.run_dir} is a text run; measure its samples with "
            "md4 eval --gen-ppl instead."
        )
    return loaded.codec


def reference_images(loaded: LoadedRun, split: str = DEFAULT_FID_SPLIT, limit: int | None = None) -> np.ndarray:
    """The first ``limit`` (default: all) images of ``split`` of the data the run was trained on, found in md4's
    cache, as 8-bit pixels [N, H, W, C] (at the run's quantisation, as its samples are)."""
    codec = check_image_run(loaded)
    prepared = cached_run_data(loaded.source, loaded.run_dir)
    if prepared.codec.to_dict() != codec.to_dict():
        raise DataError(f"The cached {prepared.name} no longer matches {loaded.run_dir}'s codec; prepare it again.")
    if split not in prepared.splits:
        raise DataError(f"Unknown split {split!r}; {prepared.name} has {', '.join(prepared.splits)}.")
    prepared.verify(split)
    images = prepared.splits[split][:limit]
    if len(images) < 2:
        raise DataError(f"The {split} split of {prepared.name} has {len(images)} images; FID needs at least 2.")
    return codec.to_pixels(np.asarray(images))


def sample_images(
    loaded: LoadedRun,
    num: int,
    *,
    batch_size: int = SAMPLE_BATCH,
    seed: int = 0,
    precision: str = "auto",
    **sampling: Any,
) -> tuple[np.ndarray, int]:
    """``num`` samples of an image run as 8-bit pixels [N, H, W, C], ``batch_size`` per reverse process from one
    seeded generator, a class-conditional run's classes in turn; and the network calls of one reverse process.

    ``sampling``: options of :func:`md4.sample` (``steps``, ``sampler``, ``grid``, ``guidance``, ...)."""
    codec = check_image_run(loaded)
    model = loaded.model
    device = next(model.parameters()).device
    labels = class_labels(model.num_classes, num, device=device)
    generator = torch.Generator(device).manual_seed(seed)
    parts, nfe = [], 0
    with autocast(device, resolve_precision(device, precision)):
        for start in range(0, num, batch_size):
            count = min(batch_size, num - start)
            part = None if labels is None else labels[start : start + count]
            out = sample(model, count, labels=part, generator=generator, **sampling)
            parts.append(codec.to_pixels(out.tokens.cpu().numpy()))
            nfe = out.nfe
    return np.concatenate(parts), nfe


def image_quality(
    loaded: LoadedRun,
    num: int,
    extractor: FeatureExtractor,
    *,
    split: str = DEFAULT_FID_SPLIT,
    references: int | None = None,
    batch_size: int = SAMPLE_BATCH,
    seed: int = 0,
    precision: str = "auto",
    **sampling: Any,
) -> ImageQuality:
    """FID and KID of ``num`` samples of an image run against ``references`` (default: all) images of ``split``,
    in the features of ``extractor`` (:func:`md4.quality.features.feature_extractor`).

    ``sampling``: options of :func:`md4.sample`; the sampler defaults to the model's (:func:`default_sampler`)."""
    check_image_run(loaded)
    if num < 2:
        raise ValueError(f"FID needs at least 2 samples to fit a covariance, got {num}; papers use 50000.")
    if references is not None and references < 2:
        raise ValueError(f"FID needs at least 2 reference images, got {references}.")
    real = reference_images(loaded, split, references)
    sampler = sampling.pop("sampler", None) or default_sampler(loaded.model)
    start = time.time()
    fake, nfe = sample_images(
        loaded, num, batch_size=batch_size, seed=seed, precision=precision, sampler=sampler, **sampling
    )
    sampled = time.time()
    device = next(loaded.model.parameters()).device
    fake_features = extractor.features(rgb_batch(fake), device=device)
    real_features = extractor.features(rgb_batch(real), device=device)
    return ImageQuality(
        fid=fid(fake_features, real_features),
        kid=kid(fake_features, real_features, seed=seed),
        samples=num,
        references=len(real),
        split=split,
        features=extractor.name,
        published=extractor.published,
        sampler=sampler,
        nfe=nfe,
        sampling_seconds=sampled - start,
        features_seconds=time.time() - sampled,
    )
