"""FID and KID from feature matrices, computed by md4 in float64 (numpy only).

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"):
the Fréchet distance between the Gaussians fitted to two sets of features,
``|mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))``, with the unbiased covariances of TF-FID. The
trace of the matrix square root is the sum of the square roots of the eigenvalues of ``S_1^(1/2) S_2 S_1^(1/2)``
(symmetric, positive semi-definite, with the same eigenvalues as ``S_1 S_2``), so symmetric eigen-decompositions
suffice and no complex parts from ``scipy.linalg.sqrtm`` need discarding.

KID (Bińkowski et al. 2018, "Demystifying MMD GANs", the Kernel Inception Distance): the unbiased estimate of
the squared maximum mean discrepancy with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged
over random subsets of equal size drawn from both sets, with its standard deviation over the subsets (the
subsets' defaults are torch-fidelity's: 100 of 1,000).

md4 computes both itself from the features rather than through a library's metric function: the same code then
serves the Inception features of the published protocol and the offline features of the tests, and the numbers
are checked here against closed forms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000


def _as_features(features, name: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or len(array) < 2:
        raise ValueError(f"The {name} features must be a matrix [N, D] with N >= 2 rows, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"The {name} features hold NaN or infinite values; check the images and the extractor.")
    return array


@dataclass(frozen=True)
class Gaussian:
    """The mean [D] and unbiased covariance [D, D] of a set of features (float64)."""

    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def fit(cls, features, name: str = "") -> Gaussian:
        array = _as_features(features, name or "given")
        return cls(array.mean(axis=0), np.cov(array, rowvar=False, ddof=1).reshape(array.shape[1], array.shape[1]))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (rounding's negative eigenvalues
    taken as 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """The Fréchet (2-Wasserstein) distance squared between two Gaussians: FID when they are fitted to features."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"The features have {a.mean.shape[0]} and {b.mean.shape[0]} dimensions; use one extractor.")
    root = _psd_sqrt(a.cov)
    cross = np.linalg.eigvalsh(root @ b.cov @ root)
    trace_sqrt = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    distance = float(((a.mean - b.mean) ** 2).sum() + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt)
    return max(distance, 0.0)  # rounding can take identical Gaussians a hair below 0


def fid(features_a, features_b) -> float:
    """FID between two feature matrices [N, D] and [M, D] (N, M >= 2)."""
    return frechet_distance(Gaussian.fit(features_a, "first"), Gaussian.fit(features_b, "second"))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``(x.y / d + 1)^3`` between the rows of ``x`` and of ``y``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate of MMD^2 between two samples of equal size m (Bińkowski et al. 2018): the
    within-sample kernel means leave out the diagonal, the cross term keeps every pair."""
    m = len(x)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


@dataclass(frozen=True)
class KID:
    """KID's mean over the subsets, its standard deviation over them, and the subsets' count and size."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def kid(features_a, features_b, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> KID:
    """KID between two feature matrices: the unbiased MMD^2 of ``subsets`` pairs of subsets, each drawn without
    replacement from each set, of ``subset_size`` rows (at most the smaller set's size)."""
    a, b = _as_features(features_a, "first"), _as_features(features_b, "second")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"The features have {a.shape[1]} and {b.shape[1]} dimensions; use one extractor.")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs at least 1 subset of at least 2 rows, got {subsets} of {subset_size}.")
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            unbiased_mmd2(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
            for _ in range(subsets)
        ]
    )
    return KID(float(values.mean()), float(values.std()), subsets, size)
