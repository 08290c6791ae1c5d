"""The Frechet distance against its closed forms, and the confidence and class balance."""

from __future__ import annotations

import numpy as np
import pytest

from training.sample_metrics import (
    frechet_distance,
    frechet_distance_of_gaussians,
    gaussian_fit,
    prediction_summary,
)


def random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_one_dimension_is_the_squared_difference_of_means_and_sigmas() -> None:
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    d = frechet_distance_of_gaussians([1.0], [[4.0]], [-2.0], [[0.25]])
    assert d == pytest.approx((1 + 2) ** 2 + (2 - 0.5) ** 2)


def test_diagonal_covariances_add_up_per_dimension() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    d = frechet_distance_of_gaussians(mu1, np.diag(var1), mu2, np.diag(var2))
    assert d == pytest.approx(expected)


def test_general_covariances_match_the_eigenvalues_of_their_product() -> None:
    # tr((C1 C2)^1/2) is the sum of the square roots of C1 C2's eigenvalues (real, >= 0).
    rng = np.random.default_rng(0)
    c1, c2 = random_covariance(rng, 6), random_covariance(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    cross = np.sqrt(np.linalg.eigvals(c1 @ c2).real).sum()
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * cross
    d = frechet_distance_of_gaussians(mu1, c1, mu2, c2)
    assert d == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_of_gaussians(mu2, c2, mu1, c1) == pytest.approx(d, rel=1e-9)
    assert frechet_distance_of_gaussians(mu1, c1, mu1, c1) == pytest.approx(0, abs=1e-9)


def test_samples_of_known_gaussians_land_near_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    c1, c2 = random_covariance(rng, 4), random_covariance(rng, 4)
    mu1, mu2 = np.zeros(4), np.full(4, 0.5)
    a = rng.multivariate_normal(mu1, c1, size=200_000)
    b = rng.multivariate_normal(mu2, c2, size=200_000)
    assert frechet_distance(a, b) == pytest.approx(
        frechet_distance_of_gaussians(mu1, c1, mu2, c2), rel=0.02
    )


def test_singular_covariances_such_as_dead_relu_features_stay_finite() -> None:
    rng = np.random.default_rng(2)
    a = np.maximum(rng.normal(size=(500, 8)), 0)
    a[:, :3] = 0.0  # three features never fire
    b = a + 0.0
    assert frechet_distance(a, b) == pytest.approx(0, abs=1e-9)
    d = frechet_distance(a, a * 2)
    assert np.isfinite(d) and d > 0


def test_gaussian_fit_needs_two_rows_of_features() -> None:
    mean, cov = gaussian_fit([[1.0, 2.0], [3.0, 6.0]])
    assert mean.tolist() == [2.0, 4.0] and cov.tolist() == [[2.0, 4.0], [4.0, 8.0]]
    with pytest.raises(ValueError, match=r"features must be \(N >= 2, D\)"):
        gaussian_fit([[1.0, 2.0]])


def test_confidence_and_class_balance() -> None:
    probabilities = [
        [0.9, 0.1, 0.0],
        [0.6, 0.4, 0.0],
        [0.2, 0.7, 0.1],
        [0.0, 0.5, 0.5],  # a tie goes to the first class, as argmax does
    ]
    summary = prediction_summary(probabilities)
    assert summary["confidence"] == pytest.approx((0.9 + 0.6 + 0.7 + 0.5) / 4)
    assert summary["class_balance"] == [0.5, 0.5, 0.0]
    assert (summary["min_class_share"], summary["max_class_share"]) == (0.0, 0.5)
    with pytest.raises(ValueError, match="probabilities must be"):
        prediction_summary(np.zeros((0, 10)))
