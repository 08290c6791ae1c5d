"""The numbers that judge a set of generated images through a classifier: the Frechet distance
between two sets of features, and the confidence and class balance of the predictions.

The Frechet distance is the one FID uses (Heusel et al. 2017, "GANs Trained by a Two Time-Scale
Update Rule Converge to a Local Nash Equilibrium"), measured here in the penultimate features of
our own small classifier, not of Inception-v3: its values are comparable only with each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def gaussian_fit(features: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and (unbiased) covariance of (N, D) features, N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_of_gaussians(
    mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike
) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2): the squared 2-Wasserstein
    distance between N(mu1, C1) and N(mu2, C2) (Dowson & Landau 1982).

    The trace of the cross term is taken from the eigenvalues of the symmetric matrix
    C1^1/2 C2 C1^1/2, which has the same ones as C1 C2 but is PSD, so `eigh` is stable where a
    general matrix square root (scipy's sqrtm) can return complex noise for singular covariances,
    such as ReLU features that are often 0."""
    m1, m2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1 = np.atleast_2d(np.asarray(cov1, np.float64))
    c2 = np.atleast_2d(np.asarray(cov2, np.float64))
    root1 = _psd_sqrt(c1)
    cross = np.linalg.eigvalsh(root1 @ c2 @ root1)
    trace_sqrt = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2.0 * trace_sqrt)


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """The Frechet distance between Gaussians fitted to two sets of (N, D) features."""
    return frechet_distance_of_gaussians(*gaussian_fit(features_a), *gaussian_fit(features_b))


def prediction_summary(probabilities: ArrayLike) -> dict[str, Any]:
    """How sure and how balanced a classifier's predictions on (N, classes) probabilities are.

    confidence: the mean over images of the largest class probability; class_balance: the share
    of images predicted as each class (argmax), which sums to 1; min/max_class_share: its range.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"probabilities must be (N >= 1, classes), got shape {p.shape}")
    shares = np.bincount(p.argmax(axis=1), minlength=p.shape[1]) / len(p)
    return {
        "confidence": float(p.max(axis=1).mean()),
        "class_balance": [round(float(s), 4) for s in shares],
        "min_class_share": float(shares.min()),
        "max_class_share": float(shares.max()),
    }
