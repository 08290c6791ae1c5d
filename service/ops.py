"""What the inference endpoints do, with no HTTP in it: parsed parameters, a model and arrays in,
a result (arrays, seed, model name) out.

The codecs turn requests into the arguments and results into JSON, .npy/.npz or PNG; the endpoint
table (`service.http.endpoints`) says which operation serves which path.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from service import scoring
from service.errors import InvalidInput
from service.manifest import Manifest, ScoreCalibration
from service.models.runtime import ModelRuntime
from service.schemas import (
    DecodeParams,
    EncodeParams,
    GenerateRequest,
    ReconstructParams,
    ScoreParams,
)
from service.settings import Settings

Array = NDArray[np.float32]
Float64 = NDArray[np.float64]
# Decoded values per decode call while scoring (images x samples x pixels): 4 MiB of float32,
# and the float64 arithmetic on them a few times that, whatever k and the batch.
SCORE_CHUNK_VALUES = 1 << 20


@dataclass(slots=True)
class Latents:
    """/encode: posterior means and (a VAE) log-variances, N x latent."""

    model: str
    latent_dim: int
    mu: Array
    logvar: Array | None


@dataclass(slots=True)
class Reconstructions:
    """/reconstruct: images (N, H, W, C), or (N, samples, H, W, C) when samples were asked for."""

    model: str
    mode: Literal["deterministic", "sampled"]
    seed: int | None
    images: Array


@dataclass(slots=True)
class Generated:
    """/generate: the latent vectors drawn and the images decoded from them."""

    model: str
    seed: int
    z: Array
    images: Array


@dataclass(slots=True)
class Decoded:
    """/decode: the images (N, H, W, C) of the given latent vectors."""

    model: str
    images: Array


@dataclass(slots=True)
class Scores:
    """/score: per image (arrays of N), the anomaly score, its verdict and its parts; the VAE
    parts are None for an AE, `percentile` without calibration, `is_outlier` without a
    threshold, `per_pixel_error` (N, H, W, C) unless asked for."""

    model: str
    score_name: str
    calibrated: bool
    note: str | None
    threshold: float | None
    fpr: float | None
    k: int | None
    seed: int | None
    score: Float64
    is_outlier: NDArray[np.bool_] | None
    percentile: Float64 | None
    nll: Float64 | None
    elbo: Float64 | None
    reconstruction: Float64 | None
    kl: Float64 | None
    reconstruction_error: Float64
    per_pixel_error: Array | None


Result = Latents | Reconstructions | Generated | Decoded | Scores


def check_image_values(rows: int, model: ModelRuntime, settings: Settings, field: str) -> None:
    """`rows` images of `model`, as a request carries or asks for them, within
    VAE_MAX_REQUEST_VALUES: with VAE_MAX_IMAGES (a count), it bounds a request's memory for
    models of any size (1,024 images of 256 x 256 x 3 would be 805 MB of float32)."""
    values = rows * model.image_values
    if values > settings.max_request_values:
        height, width, channels = model.image_hwc
        most = settings.max_request_values // model.image_values
        raise InvalidInput(
            field,
            f"{rows} images of {height} x {width} x {channels} are {values} values; at most "
            f"{settings.max_request_values} (VAE_MAX_REQUEST_VALUES) per request: send at most "
            f"{most} images of this model per request",
        )


def draw_seed(seed: int | None) -> int:
    return secrets.randbelow(2**31) if seed is None else seed


async def encode(
    params: EncodeParams, model: ModelRuntime, images: Array | None, settings: Settings
) -> Latents:
    assert images is not None
    mu, logvar = await model.encode_batched(images)
    return Latents(model.name, model.latent_dim, mu, logvar)


async def reconstruct(
    params: ReconstructParams, model: ModelRuntime, images: Array | None, settings: Settings
) -> Reconstructions:
    assert images is not None
    if params.mode == "deterministic" and (params.samples is not None or params.seed is not None):
        raise InvalidInput(
            "mode", "seed and samples apply only to mode='sampled'; deterministic is decode(mu)"
        )
    if params.mode == "sampled" and not model.is_vae:
        raise InvalidInput(
            "mode",
            f"model {model.name!r} is an autoencoder: its encoder gives one code per image "
            "and no variance to sample from; use mode='deterministic' or a VAE",
        )
    if params.samples is not None and params.samples > settings.max_samples:
        raise InvalidInput("samples", f"{params.samples}; at most {settings.max_samples}")
    k = params.samples or 1
    if len(images) * k > settings.max_images:
        raise InvalidInput(
            "samples",
            f"{len(images)} images x {k} samples; at most {settings.max_images} outputs",
        )
    check_image_values(len(images) * k, model, settings, "samples" if k > 1 else "images")
    mu, logvar = await model.encode_batched(images)
    if params.mode == "deterministic" or logvar is None:
        return Reconstructions(model.name, params.mode, None, await model.decode_batched(mu))
    seed = draw_seed(params.seed)
    eps = np.random.default_rng(seed).standard_normal((len(images), k, mu.shape[1]), np.float32)
    z = mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps  # inputs x samples x latent
    decoded = await model.decode_batched(z.reshape(-1, mu.shape[1]))
    grouped = decoded.reshape(len(images), k, *decoded.shape[1:])
    return Reconstructions(
        model.name, params.mode, seed, grouped if params.samples is not None else grouped[:, 0]
    )


async def generate(
    params: GenerateRequest, model: ModelRuntime, inputs: Array | None, settings: Settings
) -> Generated:
    if not model.is_vae:
        raise InvalidInput(
            "model",
            f"model {model.name!r} is an autoencoder: nothing made its codes follow N(0, I), "
            "so decoding prior samples gives garbage; use a VAE such as mnist-vae",
        )
    if params.n > settings.max_generate:
        raise InvalidInput("n", f"{params.n}; at most {settings.max_generate} per request")
    check_image_values(params.n, model, settings, "n")
    seed = draw_seed(params.seed)
    eps = np.random.default_rng(seed).standard_normal((params.n, model.latent_dim), np.float32)
    z = (params.temperature * eps).astype(np.float32)
    return Generated(model.name, seed, z, await model.decode_batched(z))


async def decode(
    params: DecodeParams, model: ModelRuntime, z: Array | None, settings: Settings
) -> Decoded:
    assert z is not None
    check_image_values(len(z), model, settings, "z")
    return Decoded(model.name, await model.decode_batched(z))


def score_k(params: ScoreParams, model: ModelRuntime) -> int | None:
    """The importance samples a request gets: its `k`, else the calibration's, else the
    default; None for an AE (no sampling)."""
    if not model.is_vae:
        return None
    calibration = model.manifest.score_calibration
    return params.k or (calibration.k if calibration else scoring.DEFAULT_K)


def likelihood_of(manifest: Manifest) -> scoring.DecoderLikelihood:
    """The decoder likelihood the scores use: the calibration's (its quantiles are in those
    units), else the one the model was trained with; a training record naming none the scorer
    knows (an imported model's) gets Bernoulli, as a model that declares none."""
    calibration = manifest.score_calibration
    if calibration is not None:
        return scoring.DecoderLikelihood(calibration.likelihood, calibration.gaussian_sigma or 0.1)
    try:
        return scoring.DecoderLikelihood.from_training(manifest.training)
    except (TypeError, ValueError):
        return scoring.DecoderLikelihood()


def _check_score_params(
    params: ScoreParams, model: ModelRuntime, rows: int, settings: Settings
) -> tuple[int | None, ScoreCalibration | None]:
    calibration = model.manifest.score_calibration
    if params.fpr is not None and params.threshold is not None:
        raise InvalidInput(
            "fpr",
            "and threshold both given; send one: fpr sets the threshold from the model's "
            "calibration, threshold sets it directly",
        )
    if params.fpr is not None and calibration is None:
        raise InvalidInput(
            "fpr",
            f"model {model.name!r} has no score calibration, so no threshold follows from a "
            "false-positive rate; give `threshold` instead (in the units of score_name), or "
            "calibrate the model on normal data",
        )
    if not model.is_vae:
        for name in ("k", "seed"):
            if getattr(params, name) is not None:
                raise InvalidInput(
                    name,
                    f"model {model.name!r} is an autoencoder, scored by reconstruction error: "
                    "k and seed are a VAE's importance samples; leave them out",
                )
    k = score_k(params, model)
    values = rows * (k or 1) * model.image_values
    if values > settings.max_score_values:
        height, width, channels = model.image_hwc
        most_k = settings.max_score_values // (rows * model.image_values)
        fix = (
            f"use k <= {most_k} for {rows} images, or send fewer images"
            if most_k >= 1
            else f"send at most {settings.max_score_values // model.image_values} images"
        )
        raise InvalidInput(
            "k" if most_k >= 1 else "images",
            f"{rows} images x k {k or 1} x {height} x {width} x {channels} are {values} decoded "
            f"values; at most {settings.max_score_values} (VAE_MAX_SCORE_VALUES): {fix}",
        )
    return k, calibration


def _threshold(
    params: ScoreParams, calibration: ScoreCalibration | None
) -> tuple[float | None, float | None]:
    """(threshold, the false-positive rate it has on held-out data) of a request."""
    if calibration is None:
        return params.threshold, None
    if params.fpr is not None:
        return scoring.threshold_for(params.fpr, calibration), params.fpr
    if params.threshold is not None:
        above = 1.0 - scoring.percentile(np.array([params.threshold]), calibration)[0] / 100.0
        return params.threshold, float(above)
    return calibration.threshold, calibration.target_fpr


def _note(model: ModelRuntime, k: int | None, calibration: ScoreCalibration | None) -> str | None:
    if calibration is None:
        return (
            f"model {model.name!r} has no score calibration: `score` is "
            f"{scoring.UNCALIBRATED_SCORE}, not compared with held-out data, so no "
            "percentiles and no default threshold (give `threshold` for is_outlier); "
            "calibrate the model on normal data for both"
        )
    if k is not None and k != calibration.k and calibration.score != "reconstruction_error":
        return (
            f"k = {k}, the calibration used k = {calibration.k}: the nll-based score shifts a "
            "little with k, so percentiles and the threshold are approximate"
        )
    return None


async def score(
    params: ScoreParams, model: ModelRuntime, images: Array | None, settings: Settings
) -> Scores:
    assert images is not None
    k, calibration = _check_score_params(params, model, len(images), settings)
    threshold, fpr = _threshold(params, calibration)
    seed = draw_seed(params.seed) if k is not None else None
    mu, logvar = await model.encode_batched(images)
    parts = await scoring.score_parts_async(
        images,
        mu,
        logvar,
        model.decode_batched,
        k=k or 1,
        seed=seed or 0,
        likelihood=likelihood_of(model.manifest),
        per_pixel=params.per_pixel,
        compressor=calibration.compressor if calibration else "png",
        chunk_values=SCORE_CHUNK_VALUES,
    )
    name, values = scoring.default_score(parts, calibration)
    return Scores(
        model=model.name,
        score_name=name,
        calibrated=calibration is not None,
        note=_note(model, k, calibration),
        threshold=threshold,
        fpr=fpr,
        k=k,
        seed=seed,
        score=values,
        is_outlier=None if threshold is None else values > threshold,
        percentile=None if calibration is None else scoring.percentile(values, calibration),
        nll=parts.nll,
        elbo=parts.elbo,
        reconstruction=parts.reconstruction,
        kl=parts.kl,
        reconstruction_error=parts.reconstruction_error,
        per_pixel_error=parts.reconstruction_map,
    )


# --- answer sizes, known before the operation runs (what the answer budget reserves) -------------


def encode_values(
    params: EncodeParams, model: ModelRuntime, images: Array | None, settings: Settings
) -> int:
    return 0 if images is None else len(images) * model.latent_dim * 2


def reconstruct_values(
    params: ReconstructParams, model: ModelRuntime, images: Array | None, settings: Settings
) -> int:
    k = min(params.samples or 1, settings.max_samples) if params.mode == "sampled" else 1
    rows = 0 if images is None else len(images)
    return min(rows * k, settings.max_images) * model.image_values


def generate_values(
    params: GenerateRequest, model: ModelRuntime, inputs: Array | None, settings: Settings
) -> int:
    return min(params.n, settings.max_generate) * (model.image_values + model.latent_dim)


def decode_values(
    params: DecodeParams, model: ModelRuntime, z: Array | None, settings: Settings
) -> int:
    return 0 if z is None else len(z) * model.image_values


# Per image, the numbers a /score answer holds (score, is_outlier, percentile, the parts).
SCORE_FIELDS = 10


def score_values(
    params: ScoreParams, model: ModelRuntime, images: Array | None, settings: Settings
) -> int:
    """A /score answer's values and the scoring's working memory, which outweighs them: the
    deterministic reconstruction and its squared error (N x pixels) and one block of decoded
    samples with its float64 arithmetic (counted twice)."""
    if images is None:
        return 0
    rows, pixels = len(images), model.image_values
    k = min(score_k(params, model) or 1, max(settings.max_score_values // max(rows * pixels, 1), 1))
    working = 2 * rows * pixels + 2 * min(rows * k * pixels, SCORE_CHUNK_VALUES)
    return rows * SCORE_FIELDS + (rows * pixels if params.per_pixel else 0) + working
