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

from service.errors import InvalidInput
from service.models.runtime import ModelRuntime
from service.schemas import DecodeParams, EncodeParams, GenerateRequest, ReconstructParams
from service.settings import Settings

Array = NDArray[np.float32]


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


Result = Latents | Reconstructions | Generated | Decoded


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
