"""Anomaly scores for an input under an AE or VAE, and their calibration: numpy only, no HTTP.

What a VAE says about an image x (all in nats, per image):

- `nll`: the importance-weighted estimate of -log p(x) with k samples z_i ~ q(z|x)
  (IWAE bound, Burda et al. 2016, "Importance Weighted Autoencoders", eq. 8):
  -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x). An upper bound on -log p(x) that tightens as k grows;
  k = 1 is the one-sample negative ELBO.
- `elbo` = -(`reconstruction` + `kl`): the evidence lower bound (Kingma & Welling 2014), with
  `reconstruction` = E_q[-log p(x|z)] averaged over the same k samples and `kl` =
  KL(q(z|x) || N(0, I)) in closed form.
- `reconstruction_error`: mean squared error per pixel of the deterministic reconstruction
  decode(mu) (an AE's only score; what alibi-detect and PyOD offer), and per pixel on request.
- `complexity`: L(x), the length in nats of the 8-bit image compressed by a general-purpose
  lossless compressor (PNG by default), the input-complexity estimate of Serrà et al. 2020,
  "Input complexity and out-of-distribution detection with likelihood-based generative models".

Why likelihood alone is not a score: a model trained on Fashion-MNIST gives MNIST digits a
higher likelihood than its own test images (Nalisnick et al. 2019, "Do Deep Generative Models
Know What They Don't Know?"): -log p(x) is dominated by how simple an image is (how many pixels
are plain background), not by whether it looks like the training data. `SCORES` holds the
corrections the literature proposes that need no second model, and the one chosen:

- `complexity_corrected` = nll - L(x) (Serrà et al. 2020, S(x)): the likelihood ratio of the
  model against a universal "background" model, the compressor. It assumes both are code lengths
  of the same 8-bit image. A Bernoulli likelihood on grey pixels is not (it is not a density over
  8-bit images: uniform noise costs it a few hundred nats where PNG needs over 4,000), so L(x)
  swamps the NLL and S(x) ranks uniform noise as the most normal input of all (measured AUROC 0).
- `typicality` = |nll - typical nll| (two-sided: Nalisnick et al. 2019b, "Detecting
  Out-of-Distribution Inputs to Deep Generative Models Using Typicality", one input at a time):
  fails like the NLL (MNIST under the Fashion model is not far enough from typical).
- `complexity_adjusted`: the NLL's and L(x)'s robust z-scores on held-out data, subtracted.
- `complexity_residual` (the default, `DEFAULT_SCORE`): nll - (a + b L(x)), the line fitted by
  least squares to the held-out images: how much less likely an image is than normal images of
  the same complexity. Serrà's correction with the weight b of L(x) learnt from normal data
  alone, so that the units no longer need to match.
- The likelihood ratio of Ren et al. 2019 ("Likelihood Ratios for Out-of-Distribution
  Detection") needs a second generative model trained on perturbed inputs: an importer has none
  and export would have to train one per model, so the compressor stands in for it.

Measured with benchmarks/score_ood.py (table in the docs); the chosen score ranks as well with
k = 1 as with k = 128.

The bundled models' decoders are trained with a Bernoulli likelihood on grey pixels
(training/model.py `reconstruction_nll`); a model may instead declare a Gaussian one with a fixed
sigma. Scores use the model's own likelihood: `DecoderLikelihood.from_training(manifest.training)`.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.manifest import REFERENCE_KEYS as REFERENCE_KEYS
from service.manifest import Compressor, LikelihoodKind, ScoreCalibration

Array = NDArray[np.float32]
Float64 = NDArray[np.float64]
Decode = Callable[[Array], Array]
AsyncDecode = Callable[[Array], Awaitable[Array]]

LOG_2PI = math.log(2 * math.pi)
LN2 = math.log(2)
# Decoded pixels per decode call (images x samples x pixels): 4M float32 values, 16 MiB, so memory
# stays bounded for any k and batch; the float64 arithmetic on one chunk is a few times that.
CHUNK_VALUES = 1 << 22
# A float32 probability of exactly 0 or 1 is a rounded one (float32 1.0 - 2**-24 is the last value
# below 1): clipping there keeps a pixel's Bernoulli NLL finite (at most about 17 nats for a
# saturated white pixel, 69 for a black one) instead of infinite, without changing any other value.
PROB_FLOOR = 1e-30
PROB_CEILING = 1.0 - 2.0**-25
# The default score ranks as well with k = 1 as with 128 (benchmarks/score_ood.py); 8 keeps the
# reported `nll` within about a nat of k = 128 at a quarter of k = 32's cost.
DEFAULT_K = 8
DEFAULT_SEED = 0
DEFAULT_TARGET_FPR = 0.01
CALIBRATION_QUANTILES = 1001  # percentiles to a tenth of a per cent


@dataclass(frozen=True)
class DecoderLikelihood:
    """p(x | z) of the decoder: Bernoulli on pixel intensities, or Gaussian N(mean, sigma^2)."""

    kind: LikelihoodKind = "bernoulli"
    sigma: float = 0.1  # gaussian only

    @classmethod
    def from_training(cls, training: Mapping[str, Any] | None) -> DecoderLikelihood:
        """The likelihood a model was trained with (its manifest's `training` entry, written by
        training/export.py: `likelihood`, `gaussian_sigma`).

        A model that declares none (an imported one) gets Bernoulli: a decoder whose output is a
        pixel mean in [0, 1] is most often trained with binary cross-entropy (Keras' and PyTorch's
        VAE examples), and the Bernoulli needs no scale, where a Gaussian's NLL depends on a sigma
        nobody declared. Only the rankings of the NLL-based scores matter for detection, and a
        calibration from the user's own data then sets the threshold in the same units."""
        training = training or {}
        kind = training.get("likelihood") or "bernoulli"
        sigma = float(training.get("gaussian_sigma") or 0.1)
        if not sigma > 0:
            raise ValueError(f"gaussian_sigma {sigma}: must be > 0")
        if kind == "gaussian":
            return cls("gaussian", sigma)
        if kind != "bernoulli":
            raise ValueError(f"likelihood {kind!r}: expected 'bernoulli' or 'gaussian'")
        return cls("bernoulli", sigma)

    def nll(self, x: Array, mean: Array) -> Float64:
        """-log p(x | z) per row in nats, summed over every axis but the first; float64."""
        x64 = x.reshape(len(x), -1).astype(np.float64)
        m64 = mean.reshape(len(mean), -1).astype(np.float64)
        if self.kind == "bernoulli":
            p = np.clip(m64, PROB_FLOOR, PROB_CEILING)
            return -(x64 * np.log(p) + (1.0 - x64) * np.log1p(-p)).sum(axis=1)
        per_pixel = 0.5 * ((x64 - m64) / self.sigma) ** 2 + math.log(self.sigma) + 0.5 * LOG_2PI
        return per_pixel.sum(axis=1)


@dataclass(frozen=True)
class ScoreParts:
    """Everything the scores are made of, per image (arrays of length N, float64, nats).

    The VAE-only parts (`nll`, `elbo`, `reconstruction`, `kl`) are None for an AE;
    `reconstruction_map` is None unless asked for."""

    reconstruction_error: Float64  # mean squared error per pixel of decode(mu)
    reconstruction_nll_at_mu: Float64  # -log p(x | z = mu) under the model's likelihood
    complexity: Float64  # L(x): compressed length of the 8-bit image, nats
    nll: Float64 | None = None  # IWAE estimate of -log p(x), k samples
    elbo: Float64 | None = None  # -(reconstruction + kl)
    reconstruction: Float64 | None = None  # E_q[-log p(x|z)], Monte Carlo over the k samples
    kl: Float64 | None = None  # KL(q(z|x) || N(0, I)), closed form
    reconstruction_map: Array | None = None  # (N, H, W, C) squared error per pixel
    log_weights: Float64 | None = None  # (N, k) log p(x, z_i) - log q(z_i | x), when kept
    k: int = 0
    seed: int | None = None


def kl_to_standard_normal(mu: Array, logvar: Array) -> Float64:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row (Kingma & Welling 2014, appendix B)."""
    mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    return -0.5 * np.sum(1.0 + lv64 - mu64**2 - np.exp(lv64), axis=1)


def complexity_nats(images: Array, compressor: Compressor = "png") -> Float64:
    """L(x) of Serrà et al. 2020: the size of each image, quantised to 8 bits, once compressed
    losslessly, in nats (bits x ln 2). `png`: Pillow's PNG at level 9 (adaptive row filters, then
    deflate); `zlib`: deflate of the raw bytes at level 9."""
    from PIL import Image  # here: the service imports Pillow only where images are coded

    pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    sizes = np.empty(len(pixels), dtype=np.float64)
    for i, image in enumerate(pixels):
        if compressor == "zlib":
            sizes[i] = len(zlib.compress(image.tobytes(), 9))
            continue
        buffer = BytesIO()
        plane = image[..., 0] if image.shape[-1] == 1 else image
        Image.fromarray(plane, "L" if plane.ndim == 2 else "RGB").save(
            buffer, format="PNG", compress_level=9
        )
        sizes[i] = buffer.tell()
    return sizes * 8.0 * LN2


def draw_noise(n: int, k: int, latent_dim: int, seed: int) -> Array:
    """eps (N, k, latent) ~ N(0, I): image i's samples depend on the seed and on i alone (the
    same layout as the service's sampled reconstructions)."""
    return np.random.default_rng(seed).standard_normal((n, k, latent_dim), np.float32)


@dataclass(frozen=True)
class _Chunk:
    images: slice  # which images
    samples: slice  # which of their samples


def _chunks(n: int, k: int, pixels: int, chunk_values: int) -> Iterator[_Chunk]:
    """Blocks of (images x samples) whose decoded pixels stay under `chunk_values`: whole images
    with all their samples when they fit, else a block of one image's samples."""
    per_image = k * pixels
    if per_image <= chunk_values:
        step = max(1, chunk_values // per_image)
        for start in range(0, n, step):
            yield _Chunk(slice(start, min(n, start + step)), slice(0, k))
        return
    step = max(1, chunk_values // pixels)
    for i in range(n):
        for start in range(0, k, step):
            yield _Chunk(slice(i, i + 1), slice(start, min(k, start + step)))


def _latents(mu: Array, logvar: Array, eps: Array) -> Array:
    """z = mu + exp(logvar / 2) * eps, eps (n, s, d) -> (n * s, d) float32."""
    z = mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps
    return z.reshape(-1, mu.shape[1]).astype(np.float32)


def _log_weights(
    images: Array,
    logvar: Array,
    eps: Array,
    z: Array,
    decoded: Array,
    likelihood: DecoderLikelihood,
) -> tuple[Float64, Float64]:
    """(log w, -log p(x|z)) per (image, sample), each (n, s): log w = log p(x|z) + log p(z) -
    log q(z|x), with log q from eps (z = mu + sigma * eps, so (z - mu) / sigma = eps)."""
    n, s, d = eps.shape
    repeated = np.repeat(images, s, axis=0)
    recon = likelihood.nll(repeated, decoded).reshape(n, s)
    z64 = z.astype(np.float64).reshape(n, s, d)
    log_pz = -0.5 * (z64**2 + LOG_2PI).sum(axis=2)
    eps64 = eps.astype(np.float64)
    log_qz = -0.5 * (eps64**2 + logvar.astype(np.float64)[:, None] + LOG_2PI).sum(axis=2)
    return -recon + log_pz - log_qz, recon


def iwae_nll(log_weights: Float64) -> Float64:
    """The IWAE estimate of -log p(x) per row of (N, k) log weights: -log (1/k) sum_i w_i,
    computed stably (the largest weight factored out)."""
    top = log_weights.max(axis=1, keepdims=True)
    mean = np.exp(log_weights - top).mean(axis=1)
    return -(top[:, 0] + np.log(mean)).astype(np.float64)


def _check(images: Array, mu: Array, logvar: Array | None, k: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"images of shape {images.shape}: expected (N, H, W, C)")
    if mu.ndim != 2 or len(mu) != len(images):
        raise ValueError(f"mu of shape {mu.shape} for {len(images)} images: expected (N, latent)")
    if logvar is not None and logvar.shape != mu.shape:
        raise ValueError(f"logvar of shape {logvar.shape}: expected mu's {mu.shape}")
    if k < 1:
        raise ValueError(f"k = {k}: at least 1 sample per image")


@dataclass
class _Iwae:
    """The importance-sampling state of one batch: the noise, and the log weights and
    reconstruction NLLs filled in chunk by chunk."""

    images: Array
    mu: Array
    logvar: Array
    eps: Array
    likelihood: DecoderLikelihood
    chunk_values: int

    def __post_init__(self) -> None:
        n, k = self.eps.shape[:2]
        self.log_w = np.empty((n, k), dtype=np.float64)
        self.recon = np.empty((n, k), dtype=np.float64)

    def chunks(self) -> Iterator[tuple[_Chunk, Array]]:
        """Each chunk and the latents to decode for it."""
        n, k = self.eps.shape[:2]
        pixels = int(np.prod(self.images.shape[1:]))
        for chunk in _chunks(n, k, pixels, self.chunk_values):
            eps = self.eps[chunk.images, chunk.samples]
            yield chunk, _latents(self.mu[chunk.images], self.logvar[chunk.images], eps)

    def add(self, chunk: _Chunk, z: Array, decoded: Array) -> None:
        eps = self.eps[chunk.images, chunk.samples]
        log_w, recon = _log_weights(
            self.images[chunk.images], self.logvar[chunk.images], eps, z, decoded, self.likelihood
        )
        self.log_w[chunk.images, chunk.samples] = log_w
        self.recon[chunk.images, chunk.samples] = recon


def _assemble(
    images: Array,
    mu: Array,
    logvar: Array | None,
    at_mu: Array,
    iwae: _Iwae | None,
    likelihood: DecoderLikelihood,
    per_pixel: bool,
    compressor: Compressor,
    seed: int | None,
    keep_log_weights: bool = False,
) -> ScoreParts:
    squared = (images.astype(np.float32) - at_mu.reshape(images.shape)) ** 2
    common: dict[str, Any] = {
        "reconstruction_error": squared.reshape(len(images), -1).mean(axis=1).astype(np.float64),
        "reconstruction_nll_at_mu": likelihood.nll(images, at_mu),
        "complexity": complexity_nats(images, compressor),
        "reconstruction_map": squared if per_pixel else None,
    }
    if iwae is None or logvar is None:
        return ScoreParts(**common)
    kl = kl_to_standard_normal(mu, logvar)
    reconstruction = iwae.recon.mean(axis=1)
    return ScoreParts(
        **common,
        nll=iwae_nll(iwae.log_w),
        log_weights=iwae.log_w if keep_log_weights else None,
        elbo=-(reconstruction + kl),
        reconstruction=reconstruction,
        kl=kl,
        k=iwae.eps.shape[1],
        seed=seed,
    )


def score_parts(
    images: Array,
    mu: Array,
    logvar: Array | None,
    decode: Decode,
    *,
    k: int = DEFAULT_K,
    seed: int = DEFAULT_SEED,
    likelihood: DecoderLikelihood | None = None,
    per_pixel: bool = False,
    compressor: Compressor = "png",
    chunk_values: int = CHUNK_VALUES,
    keep_log_weights: bool = False,
) -> ScoreParts:
    """Every part of every score for `images` (N, H, W, C) float32 in [0, 1].

    `mu`, `logvar` (N, latent): the encoder's outputs (an AE: its code as `mu`, `logvar` None,
    and only the reconstruction parts and the complexity come back). `decode(z (M, latent)) ->
    (M, H, W, C)` pixel means in [0, 1]; it is called with at most about `chunk_values` decoded
    values at a time, whole images' samples together where they fit. Seeded: the same images,
    k and seed give the same parts, whatever the chunking."""
    _check(images, mu, logvar, k)
    likelihood = likelihood or DecoderLikelihood()
    at_mu = decode(mu.astype(np.float32))
    iwae = None
    if logvar is not None:
        eps = draw_noise(len(images), k, mu.shape[1], seed)
        iwae = _Iwae(images, mu, logvar, eps, likelihood, chunk_values)
        for chunk, z in iwae.chunks():
            iwae.add(chunk, z, decode(z))
    return _assemble(
        images,
        mu,
        logvar,
        at_mu,
        iwae,
        likelihood,
        per_pixel,
        compressor,
        seed if iwae else None,
        keep_log_weights,
    )


async def score_parts_async(
    images: Array,
    mu: Array,
    logvar: Array | None,
    decode: AsyncDecode,
    *,
    k: int = DEFAULT_K,
    seed: int = DEFAULT_SEED,
    likelihood: DecoderLikelihood | None = None,
    per_pixel: bool = False,
    compressor: Compressor = "png",
    chunk_values: int = CHUNK_VALUES,
    keep_log_weights: bool = False,
) -> ScoreParts:
    """`score_parts` with an awaitable decoder (the runtime's `decode_batched`); the arithmetic
    and the PNG compression (about 0.1 ms per 28 x 28 image) run in a worker thread, off the
    event loop."""
    _check(images, mu, logvar, k)
    likelihood = likelihood or DecoderLikelihood()
    at_mu = await decode(mu.astype(np.float32))
    iwae = None
    if logvar is not None:
        eps = draw_noise(len(images), k, mu.shape[1], seed)
        iwae = _Iwae(images, mu, logvar, eps, likelihood, chunk_values)
        for chunk, z in iwae.chunks():
            await asyncio.to_thread(iwae.add, chunk, z, await decode(z))
    return await asyncio.to_thread(
        _assemble,
        images,
        mu,
        logvar,
        at_mu,
        iwae,
        likelihood,
        per_pixel,
        compressor,
        seed if iwae else None,
        keep_log_weights,
    )


# ---------------------------------------------------------------------------------------------
# The scores: higher = less like the training data


def likelihood_term(parts: ScoreParts) -> Float64:
    """-log p(x) as well as the model can tell: the IWAE estimate for a VAE; for an AE, which has
    no density, the reconstruction NLL at its code under the decoder's likelihood."""
    return parts.nll if parts.nll is not None else parts.reconstruction_nll_at_mu


def robust_scale(values: Float64) -> float:
    """The spread of `values` as a standard deviation would be for a normal distribution, from the
    interquartile range (so that a few extreme held-out images do not set it); at least 1e-12."""
    q25, q75 = np.quantile(values, [0.25, 0.75])
    return max(float(q75 - q25) / 1.349, 1e-12)


def reference_statistics(parts: ScoreParts) -> dict[str, float]:
    """What the scores that compare with normal data need, from the parts of held-out images:
    the median (typical value) and robust scale of -log p(x) and of L(x), and the least-squares
    line -log p(x) ~ intercept + slope * L(x)."""
    nll = likelihood_term(parts)
    # Least squares by hand: polyfit fails on a constant L(x) (e.g. images all alike).
    spread = float(np.var(parts.complexity))
    covariance = float(np.mean((parts.complexity - parts.complexity.mean()) * (nll - nll.mean())))
    slope = covariance / spread if spread > 0 else 0.0
    intercept = float(nll.mean() - slope * parts.complexity.mean())
    return {
        "nll_median": float(np.median(nll)),
        "nll_scale": robust_scale(nll),
        "complexity_median": float(np.median(parts.complexity)),
        "complexity_scale": robust_scale(parts.complexity),
        "slope": float(slope),
        "intercept": float(intercept),
    }


def _nll(parts: ScoreParts, ref: Mapping[str, float]) -> Float64:
    return likelihood_term(parts)


def _reconstruction_error(parts: ScoreParts, ref: Mapping[str, float]) -> Float64:
    return parts.reconstruction_error


def _complexity_corrected(parts: ScoreParts, ref: Mapping[str, float]) -> Float64:
    return likelihood_term(parts) - parts.complexity


def _typicality(parts: ScoreParts, ref: Mapping[str, float]) -> Float64:
    return np.abs(likelihood_term(parts) - ref["nll_median"])


def _complexity_adjusted(parts: ScoreParts, ref: Mapping[str, float]) -> Float64:
    surprise = (likelihood_term(parts) - ref["nll_median"]) / ref["nll_scale"]
    simplicity = (parts.complexity - ref["complexity_median"]) / ref["complexity_scale"]
    return surprise - simplicity


def _complexity_residual(parts: ScoreParts, ref: Mapping[str, float]) -> Float64:
    return likelihood_term(parts) - (ref["intercept"] + ref["slope"] * parts.complexity)


ScoreFunction = Callable[[ScoreParts, Mapping[str, float]], Float64]


@dataclass(frozen=True)
class ScoreDefinition:
    function: ScoreFunction
    definition: str
    needs_reference: bool  # computable only with a calibration's reference statistics


SCORES: dict[str, ScoreDefinition] = {
    "complexity_residual": ScoreDefinition(
        _complexity_residual,
        "nll - (intercept + slope * L(x)): how much less likely the image is than held-out images "
        "of the same PNG size L(x) are, by the least-squares line fitted on them",
        True,
    ),
    "nll": ScoreDefinition(
        _nll, "-log p(x), IWAE estimate in nats (an AE: reconstruction NLL at its code)", False
    ),
    "reconstruction_error": ScoreDefinition(
        _reconstruction_error, "mean squared error per pixel of decode(mu)", False
    ),
    "complexity_corrected": ScoreDefinition(
        _complexity_corrected, "nll - L(x), L the PNG size in nats (Serrà et al. 2020)", False
    ),
    "typicality": ScoreDefinition(
        _typicality, "|nll - median held-out nll| (two-sided typicality)", True
    ),
    "complexity_adjusted": ScoreDefinition(
        _complexity_adjusted,
        "(nll - median) / scale - (L - median) / scale: -log p(x) and the PNG size L(x), each "
        "in units of its spread on held-out data (robust z-scores)",
        True,
    ),
}
# Chosen by measurement (benchmarks/score_ood.py; docs): meets the targets in both directions
# with the bundled models, catches all uniform noise (complexity_adjusted, as good between the
# datasets, lets 8 % of it through fashion-vae) and keeps the false-positive rate near nominal.
# An AE scores by reconstruction error (issue 18; within 0.002 AUROC of the residual for
# mnist-ae). A model without calibration has no held-out line, and reconstruction error ranked
# well in both directions without one.
DEFAULT_SCORE = "complexity_residual"
AE_DEFAULT_SCORE = "reconstruction_error"
UNCALIBRATED_SCORE = "reconstruction_error"


def default_score_name(is_vae: bool) -> str:
    """The score a model's calibration is built for at export or import."""
    return DEFAULT_SCORE if is_vae else AE_DEFAULT_SCORE


# ---------------------------------------------------------------------------------------------
# Calibration: the held-out score distribution a manifest keeps (its schema, ScoreCalibration, is
# in service/manifest.py, the contract with training/)


def build_calibration(
    parts: ScoreParts,
    *,
    score: str,
    split: str,
    likelihood: DecoderLikelihood,
    target_fpr: float = DEFAULT_TARGET_FPR,
    quantiles: int = CALIBRATION_QUANTILES,
    compressor: Compressor = "png",
) -> ScoreCalibration:
    """The calibration of score `score` from the parts of held-out images (export and the importer
    call this): the reference statistics first, then the scores they define, their quantiles and
    the threshold at `target_fpr`."""
    if score not in SCORES:
        raise ValueError(f"score {score!r}: expected one of {sorted(SCORES)}")
    reference = reference_statistics(parts)
    values = SCORES[score].function(parts, reference)
    if not np.all(np.isfinite(values)):
        raise ValueError("held-out scores are not all finite")
    table = np.quantile(values, np.linspace(0.0, 1.0, quantiles))
    return ScoreCalibration(
        score=score,
        definition=SCORES[score].definition,
        k=max(parts.k, 1),
        seed=parts.seed if parts.seed is not None else DEFAULT_SEED,
        likelihood=likelihood.kind,
        gaussian_sigma=likelihood.sigma if likelihood.kind == "gaussian" else None,
        compressor=compressor,
        split=split,
        images=len(values),
        target_fpr=target_fpr,
        threshold=float(np.quantile(values, 1.0 - target_fpr)),
        reference=reference,
        quantiles=[float(q) for q in table],
    )


def default_score(parts: ScoreParts, calibration: ScoreCalibration | None) -> tuple[str, Float64]:
    """(name, values) of the score the service answers with: the one the model's calibration was
    built for, or without a calibration `UNCALIBRATED_SCORE`, which needs none."""
    if calibration is None:
        return UNCALIBRATED_SCORE, SCORES[UNCALIBRATED_SCORE].function(parts, {})
    return calibration.score, SCORES[calibration.score].function(parts, calibration.reference)


def percentile(scores: Float64, calibration: ScoreCalibration) -> Float64:
    """Per score, the percentage of held-out scores at or below it (0-100), read from the
    quantile table by linear interpolation; a score equal to a run of equal quantiles gets the
    middle of their probabilities, below the smallest 0 and above the largest 100."""
    table = np.asarray(calibration.quantiles, dtype=np.float64)
    probs = np.linspace(0.0, 100.0, len(table))
    values = np.asarray(scores, dtype=np.float64)
    lo = np.searchsorted(table, values, side="left")
    hi = np.searchsorted(table, values, side="right")
    # Between table[lo - 1] and table[lo] when no quantile equals the score.
    left = np.clip(lo - 1, 0, len(table) - 1)
    right = np.clip(lo, 0, len(table) - 1)
    span = table[right] - table[left]
    frac = np.where(span > 0, (values - table[left]) / np.where(span > 0, span, 1.0), 0.0)
    between = probs[left] + frac * (probs[right] - probs[left])
    ties = (probs[np.clip(lo, 0, len(table) - 1)] + probs[np.clip(hi - 1, 0, len(table) - 1)]) / 2
    result = np.where(hi > lo, ties, between)
    result = np.where(values < table[0], 0.0, result)
    return np.where(values > table[-1], 100.0, result)


def threshold_for(fpr: float, calibration: ScoreCalibration) -> float:
    """The score above which a fraction `fpr` of held-out data lies: the (1 - fpr) quantile,
    interpolated in the table (resolution 1 / (quantiles - 1): 0.1 % with 1001)."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr {fpr}: must be between 0 and 1, exclusive")
    if fpr == calibration.target_fpr:
        return calibration.threshold
    table = np.asarray(calibration.quantiles, dtype=np.float64)
    return float(np.interp(1.0 - fpr, np.linspace(0.0, 1.0, len(table)), table))
