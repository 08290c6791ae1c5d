"""service/scoring.py: tiny synthetic models whose answers are known in closed form."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import ValidationError

from service.scoring import (
    DEFAULT_SCORE,
    REFERENCE_KEYS,
    SCORES,
    UNCALIBRATED_SCORE,
    DecoderLikelihood,
    ScoreCalibration,
    ScoreParts,
    build_calibration,
    complexity_nats,
    default_score,
    default_score_name,
    iwae_nll,
    percentile,
    reference_statistics,
    score_parts,
    score_parts_async,
    threshold_for,
)

Array = np.ndarray


def constant_decoder(mean: Array) -> Callable[[Array], Array]:
    """A decoder that ignores z and returns `mean` (H, W, C) for every row."""

    def decode(z: Array) -> Array:
        return np.broadcast_to(mean, (len(z), *mean.shape)).astype(np.float32)

    return decode


def test_a_decoder_that_ignores_z_with_q_equal_to_the_prior_gives_the_exact_likelihood() -> None:
    # p(x) = p(x | z) for every z, and with q = p every importance weight is exactly p(x | z).
    rng = np.random.default_rng(0)
    images = rng.random((3, 4, 5, 1), dtype=np.float32)
    mean = np.full((4, 5, 1), 0.3, np.float32)
    mu = np.zeros((3, 2), np.float32)
    parts = score_parts(images, mu, np.zeros_like(mu), constant_decoder(mean), k=7, seed=1)
    x = images.reshape(3, -1).astype(np.float64)
    expected = -(x * math.log(0.3) + (1 - x) * math.log(0.7)).sum(axis=1)
    assert parts.nll is not None and parts.elbo is not None and parts.kl is not None
    np.testing.assert_allclose(parts.nll, expected, rtol=1e-6)
    np.testing.assert_allclose(parts.reconstruction_nll_at_mu, expected, rtol=1e-6)
    np.testing.assert_allclose(parts.kl, 0.0, atol=1e-12)
    np.testing.assert_allclose(parts.elbo, -expected, rtol=1e-6)
    np.testing.assert_allclose(parts.reconstruction_error, ((x - 0.3) ** 2).mean(axis=1), rtol=1e-5)
    assert parts.k == 7 and parts.seed == 1 and parts.reconstruction_map is None


def test_the_per_pixel_map_is_the_squared_error_of_decode_mu() -> None:
    images = np.zeros((2, 3, 3, 1), np.float32)
    images[0, 1, 1, 0] = 1.0
    mean = np.full((3, 3, 1), 0.5, np.float32)
    mu = np.zeros((2, 1), np.float32)
    parts = score_parts(images, mu, None, constant_decoder(mean), per_pixel=True)
    assert parts.reconstruction_map is not None
    np.testing.assert_allclose(parts.reconstruction_map, 0.25)
    assert parts.reconstruction_map.shape == images.shape


class LinearGaussian:
    """z ~ N(0, 1), x | z ~ N(w z + b, sigma^2 I): p(x) = N(b, sigma^2 I + w w^T) in closed form,
    and the exact posterior q(z | x) = N(m, s^2) with s^2 = 1 / (1 + |w|^2 / sigma^2)."""

    def __init__(self, pixels: int = 4, sigma: float = 0.5) -> None:
        rng = np.random.default_rng(3)
        self.w = rng.normal(size=pixels)
        self.b = rng.normal(size=pixels)
        self.sigma = sigma
        self.shape = (2, pixels // 2, 1)

    def decode(self, z: Array) -> Array:
        return (z[:, :1] * self.w + self.b).reshape(len(z), *self.shape).astype(np.float32)

    def sample(self, n: int) -> Array:
        rng = np.random.default_rng(4)
        z = rng.normal(size=(n, 1))
        x = z * self.w + self.b + self.sigma * rng.normal(size=(n, len(self.w)))
        return x.reshape(n, *self.shape).astype(np.float32)

    def log_marginal(self, images: Array) -> Array:
        x = images.reshape(len(images), -1).astype(np.float64) - self.b
        cov = self.sigma**2 * np.eye(len(self.w)) + np.outer(self.w, self.w)
        _, logdet = np.linalg.slogdet(cov)
        quad = np.einsum("ni,ij,nj->n", x, np.linalg.inv(cov), x)
        return -0.5 * (quad + logdet + len(self.w) * math.log(2 * math.pi))

    def posterior(self, images: Array) -> tuple[Array, Array]:
        x = images.reshape(len(images), -1).astype(np.float64) - self.b
        s2 = 1.0 / (1.0 + self.w @ self.w / self.sigma**2)
        m = s2 * (x @ self.w) / self.sigma**2
        return m[:, None].astype(np.float32), np.full((len(x), 1), math.log(s2), np.float32)


def test_with_the_exact_posterior_one_sample_gives_the_exact_marginal_likelihood() -> None:
    model = LinearGaussian()
    images = model.sample(5)
    mu, logvar = model.posterior(images)
    likelihood = DecoderLikelihood("gaussian", model.sigma)
    parts = score_parts(images, mu, logvar, model.decode, k=1, seed=0, likelihood=likelihood)
    assert parts.nll is not None
    np.testing.assert_allclose(parts.nll, -model.log_marginal(images), rtol=1e-4)


def test_with_a_poor_proposal_the_estimate_tightens_towards_the_exact_value_as_k_grows() -> None:
    model = LinearGaussian()
    images = model.sample(4)
    mu, logvar = model.posterior(images)
    # A proposal off centre and twice as wide: a loose bound with k = 1, a tight one with many.
    mu, logvar = mu + 0.5 * np.exp(0.5 * logvar), logvar + math.log(4.0)
    likelihood = DecoderLikelihood("gaussian", model.sigma)
    exact = -model.log_marginal(images)
    gaps = []
    for k in (1, 4000):
        parts = score_parts(images, mu, logvar, model.decode, k=k, seed=2, likelihood=likelihood)
        assert parts.nll is not None
        gaps.append(float(np.mean(parts.nll - exact)))
    assert gaps[0] > 0.2  # the bound is loose with one sample
    assert abs(gaps[1]) < 0.02  # and within a few hundredths of a nat with 4000


def test_the_same_seed_gives_the_same_parts_and_another_seed_others() -> None:
    model = LinearGaussian()
    images = model.sample(3)
    mu, logvar = model.posterior(images)
    logvar = logvar + 1.0  # not the exact posterior, so the noise matters

    def nll(seed: int) -> Array:
        parts = score_parts(images, mu, logvar, model.decode, k=16, seed=seed)
        assert parts.nll is not None
        return parts.nll

    np.testing.assert_array_equal(nll(5), nll(5))
    assert not np.array_equal(nll(5), nll(6))


@pytest.mark.parametrize("chunk_values", [4, 12, 4 * 5, 10**9])
def test_chunking_does_not_change_the_result(chunk_values: int) -> None:
    # 4 pixels per image: 4 -> one sample per decode call, 12 -> three of one image's samples,
    # 20 -> one image's 5 samples, 10**9 -> everything in one call.
    model = LinearGaussian()
    images = model.sample(3)
    mu, logvar = model.posterior(images)
    logvar = logvar + 1.0
    calls: list[int] = []

    def decode(z: Array) -> Array:
        calls.append(len(z))
        return model.decode(z)

    whole = score_parts(images, mu, logvar, model.decode, k=5, seed=9, keep_log_weights=True)
    chunked = score_parts(
        images, mu, logvar, decode, k=5, seed=9, chunk_values=chunk_values, keep_log_weights=True
    )
    assert chunked.log_weights is not None and whole.log_weights is not None
    np.testing.assert_array_equal(chunked.log_weights, whole.log_weights)
    np.testing.assert_array_equal(chunked.nll, whole.nll)
    np.testing.assert_array_equal(chunked.elbo, whole.elbo)
    assert max(calls[1:]) * 4 <= max(chunk_values, 4)  # calls[0] decodes mu
    assert sum(calls[1:]) == 3 * 5


def test_the_awaitable_decoder_gives_the_same_parts() -> None:
    model = LinearGaussian()
    images = model.sample(3)
    mu, logvar = model.posterior(images)

    async def decode(z: Array) -> Array:
        return model.decode(z)

    sync = score_parts(images, mu, logvar, model.decode, k=8, seed=1, chunk_values=8)
    awaited = asyncio.run(
        score_parts_async(images, mu, logvar, decode, k=8, seed=1, chunk_values=8)
    )
    np.testing.assert_array_equal(sync.nll, awaited.nll)
    np.testing.assert_array_equal(sync.reconstruction_error, awaited.reconstruction_error)


def test_iwae_nll_is_the_log_mean_of_the_weights_without_overflow() -> None:
    log_w = np.array([[0.0, math.log(3.0)], [-1000.0, -1000.0]])
    np.testing.assert_allclose(iwae_nll(log_w), [-math.log(2.0), 1000.0])


def test_an_autoencoder_gets_the_reconstruction_parts_only() -> None:
    images = np.random.default_rng(0).random((2, 4, 4, 1), dtype=np.float32)
    parts = score_parts(images, np.zeros((2, 3), np.float32), None, constant_decoder(images[0]))
    assert parts.nll is None and parts.elbo is None and parts.kl is None and parts.k == 0
    assert parts.reconstruction_error[0] == 0.0 and parts.reconstruction_error[1] > 0


def test_saturated_bernoulli_pixels_give_a_large_finite_nll() -> None:
    images = np.zeros((1, 2, 2, 1), np.float32)
    mean = np.ones((2, 2, 1), np.float32)  # certain of white where the image is black
    parts = score_parts(images, np.zeros((1, 1), np.float32), None, constant_decoder(mean))
    assert np.isfinite(parts.reconstruction_nll_at_mu).all()
    assert parts.reconstruction_nll_at_mu[0] > 4 * 15


def test_the_gaussian_likelihood_includes_its_constant() -> None:
    likelihood = DecoderLikelihood("gaussian", 0.1)
    x = np.full((1, 4), 0.5, np.float32)
    expected = 4 * (math.log(0.1) + 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(likelihood.nll(x, x), [expected])


def test_the_likelihood_comes_from_the_training_entry_and_defaults_to_bernoulli() -> None:
    assert DecoderLikelihood.from_training(None) == DecoderLikelihood("bernoulli")
    assert DecoderLikelihood.from_training({"likelihood": "bernoulli"}).kind == "bernoulli"
    gaussian = DecoderLikelihood.from_training({"likelihood": "gaussian", "gaussian_sigma": 0.2})
    assert gaussian == DecoderLikelihood("gaussian", 0.2)
    with pytest.raises(ValueError, match="likelihood 'laplace'"):
        DecoderLikelihood.from_training({"likelihood": "laplace"})
    with pytest.raises(ValueError, match="gaussian_sigma"):
        DecoderLikelihood.from_training({"likelihood": "gaussian", "gaussian_sigma": -1})


@pytest.mark.parametrize("compressor", ["png", "zlib"])
def test_complexity_is_larger_for_noise_than_for_a_plain_image(compressor: str) -> None:
    plain = np.zeros((1, 28, 28, 1), np.float32)
    noise = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    colour = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
    sizes = complexity_nats(np.concatenate([plain, noise]), compressor)  # type: ignore[arg-type]
    assert 0 < sizes[0] < sizes[1]
    # Noise does not compress: at least its 784 bytes, in nats.
    assert sizes[1] >= 784 * 8 * math.log(2)
    assert complexity_nats(colour, compressor)[0] > 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("images", "mu", "logvar", "k", "problem"),
    [
        ((2, 4, 4), (2, 1), (2, 1), 1, "expected \\(N, H, W, C\\)"),
        ((2, 4, 4, 1), (3, 1), (3, 1), 1, "mu of shape"),
        ((2, 4, 4, 1), (2, 1), (2, 2), 1, "logvar of shape"),
        ((2, 4, 4, 1), (2, 1), (2, 1), 0, "k = 0"),
    ],
)
def test_inconsistent_inputs_are_refused(
    images: tuple[int, ...], mu: tuple[int, ...], logvar: tuple[int, ...], k: int, problem: str
) -> None:
    decode = constant_decoder(np.zeros((4, 4, 1), np.float32))
    with pytest.raises(ValueError, match=problem):
        score_parts(
            np.zeros(images, np.float32),
            np.zeros(mu, np.float32),
            np.zeros(logvar, np.float32),
            decode,
            k=k,
        )


def parts_with(
    error: Array, nll: Array | None = None, complexity: Array | None = None
) -> ScoreParts:
    n = len(error)
    return ScoreParts(
        reconstruction_error=error.astype(np.float64),
        reconstruction_nll_at_mu=np.zeros(n),
        complexity=np.zeros(n) if complexity is None else complexity,
        nll=nll,
        k=4 if nll is not None else 0,
        seed=3 if nll is not None else None,
    )


def test_a_calibration_reads_percentiles_and_thresholds_from_its_quantiles() -> None:
    held_out = parts_with(np.arange(1001.0))  # scores 0, 1, ..., 1000
    calibration = build_calibration(
        held_out, score="reconstruction_error", split="test", likelihood=DecoderLikelihood()
    )
    assert calibration.images == 1001 and len(calibration.quantiles) == 1001
    np.testing.assert_allclose(calibration.quantiles, np.arange(1001.0))
    assert calibration.threshold == pytest.approx(990.0)
    assert calibration.target_fpr == 0.01
    np.testing.assert_allclose(
        percentile(np.array([-5.0, 0.0, 250.0, 500.5, 1000.0, 2000.0]), calibration),
        [0.0, 0.0, 25.0, 50.05, 100.0, 100.0],
    )
    assert threshold_for(0.01, calibration) == calibration.threshold
    assert threshold_for(0.1, calibration) == pytest.approx(900.0)
    assert threshold_for(0.0005, calibration) == pytest.approx(999.5)
    with pytest.raises(ValueError, match="fpr 0"):
        threshold_for(0.0, calibration)


def test_a_score_equal_to_a_run_of_equal_quantiles_gets_their_middle_percentile() -> None:
    held_out = parts_with(np.r_[np.zeros(500), np.arange(1.0, 502.0)])  # half of them zero
    calibration = build_calibration(
        held_out, score="reconstruction_error", split="s", likelihood=DecoderLikelihood()
    )
    assert percentile(np.array([0.0]), calibration)[0] == pytest.approx(25.0, abs=0.1)


def test_the_calibration_survives_a_round_trip_through_json_and_refuses_unsorted_quantiles() -> (
    None
):
    calibration = build_calibration(
        parts_with(np.arange(11.0)),
        score="reconstruction_error",
        split="s",
        likelihood=DecoderLikelihood(),
        quantiles=11,
    )
    again = ScoreCalibration.model_validate_json(calibration.model_dump_json())
    assert again == calibration
    with pytest.raises(ValidationError, match="non-decreasing"):
        ScoreCalibration.model_validate({**calibration.model_dump(), "quantiles": [2.0, 1.0]})
    with pytest.raises(ValidationError, match="score 'magic'"):
        ScoreCalibration.model_validate({**calibration.model_dump(), "score": "magic"})
    with pytest.raises(ValidationError, match="needs reference statistics"):
        ScoreCalibration.model_validate(
            {**calibration.model_dump(), "score": DEFAULT_SCORE, "reference": {}}
        )


def test_the_default_score_needs_held_out_statistics_and_falls_back_without_them() -> None:
    rng = np.random.default_rng(0)
    complexity = rng.normal(1000, 50, 400)
    nll = 0.1 * complexity + rng.normal(0, 5, 400)
    held_out = parts_with(rng.random(400), nll=nll, complexity=complexity)
    assert default_score_name(True) == DEFAULT_SCORE and SCORES[DEFAULT_SCORE].needs_reference
    calibration = build_calibration(
        held_out, score=DEFAULT_SCORE, split="s", likelihood=DecoderLikelihood()
    )
    assert calibration.k == 4 and calibration.seed == 3
    assert set(calibration.reference) == set(reference_statistics(held_out)) == REFERENCE_KEYS
    name, values = default_score(held_out, calibration)
    assert name == DEFAULT_SCORE
    # The residual of the held-out line: centred, as wide as the noise around the line (5 nats).
    assert abs(np.median(values)) < 1.0 and 4.0 < np.std(values) < 6.0
    # An image as likely as typical but much simpler than typical is flagged.
    simple = parts_with(np.zeros(1), nll=np.array([100.0]), complexity=np.array([600.0]))
    assert default_score(simple, calibration)[1][0] > calibration.threshold
    name, values = default_score(held_out, None)
    assert name == UNCALIBRATED_SCORE
    np.testing.assert_array_equal(values, held_out.reconstruction_error)
    assert default_score_name(False) == "reconstruction_error"


def test_every_score_is_finite_on_every_kind_of_parts() -> None:
    rng = np.random.default_rng(1)
    vae = parts_with(rng.random(50), nll=rng.normal(100, 5, 50), complexity=rng.normal(900, 9, 50))
    ae = parts_with(rng.random(50), complexity=rng.normal(900, 9, 50))
    for parts in (vae, ae):
        reference = reference_statistics(parts)
        for name, score in SCORES.items():
            values = score.function(parts, reference)
            assert values.shape == (50,) and np.isfinite(values).all(), name


def test_the_manifest_names_the_scores_of_scoring_without_importing_it() -> None:
    # service/manifest.py keeps the score names as a Literal so that it needs no Pillow or numpy.
    from service import manifest

    assert tuple(SCORES) == manifest.SCORE_NAMES
    assert {
        name for name, score in SCORES.items() if score.needs_reference
    } == manifest.SCORES_NEEDING_REFERENCE
    assert ScoreCalibration is manifest.ScoreCalibration
    assert manifest.Manifest.model_fields["score_calibration"].default is None
