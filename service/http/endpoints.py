"""THE endpoint table: one row per inference endpoint.

From these rows come the fast path's dispatch (`fastpath`), the FastAPI routes that read
multipart uploads and document the endpoints (`routes`), their OpenAPI request bodies and answers
(`openapi`) and the endpoints' metric labels (`guard`). Adding an endpoint is one row here plus
its operation in `service.ops`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from service import ops
from service.codecs.accept import JSON, Offer, Offers, ResponseFormat, negotiate
from service.codecs.decoding import DecodePool
from service.codecs.multipart import read_multipart_images
from service.codecs.npy import NPY, NPZ
from service.codecs.requests import IMAGES, LATENTS, Call, TensorField, parse_request
from service.codecs.responses import render_answer
from service.errors import InvalidInput
from service.models.budget import answer_bytes
from service.models.registry import ModelRegistry
from service.models.runtime import ModelRuntime
from service.schemas import (
    EXAMPLE_IMAGE,
    DecodeParams,
    DecodeRequest,
    DecodeResponse,
    EncodeParams,
    EncodeRequest,
    EncodeResponse,
    GenerateRequest,
    GenerateResponse,
    ReconstructParams,
    ReconstructRequest,
    ReconstructResponse,
    ScoreParams,
    ScoreRequest,
    ScoreResponse,
)
from service.settings import Settings

P = TypeVar("P", bound=BaseModel)
Array = NDArray[np.float32]
Operation = Callable[[P, ModelRuntime, Array | None, Settings], Awaitable[ops.Result]]
AnswerValues = Callable[[P, ModelRuntime, Array | None, Settings], int]


@dataclass(frozen=True)
class Endpoint(Generic[P]):
    """One inference endpoint: POST `path`."""

    path: str
    summary: str
    description: str
    params: type[P]  # every field but the tensor; a .npy request's query, a multipart's form
    body: type[BaseModel]  # the JSON body
    tensor: TensorField | None  # the field that becomes the model's input; None: parameters only
    operation: Operation[P]
    answer_values: AnswerValues[P]  # array values of the answer, known before the operation runs
    response_model: type[BaseModel]  # the JSON answer
    produces: Offers  # what it answers in, in its order of preference (the first by default)
    answers: dict[int, str]  # the errors it can give besides the guard's, and when
    example_request: dict[str, Any]
    example_response: dict[str, Any]
    # A refusal that depends on the parameters and the answer's format together, before any
    # work (/score's PNG heat map needs per_pixel); None: every format takes every request.
    check_format: Callable[[P, ResponseFormat], None] | None = None


IMAGE_ANSWERS = (
    Offer(JSON, "json"),
    Offer(
        NPY,
        "npy",
        "With Accept: application/x-npy: one float32 .npy array of the images: N x H x W for a "
        "grayscale model, N x H x W x C for a colour one (N x samples x ... with `samples`).",
    ),
    Offer("image/png", "png", "With Accept: image/png: one PNG grid of all images."),
)
TENSOR_ANSWERS = {
    400: "Unreadable .npy or multipart body",
    404: "Unknown model",
    415: "Unsupported content type or image format",
    422: "Invalid input; the message names the field",
    413: "Body or uploaded file too large",
}
PARAMS_ANSWERS = {
    404: "Unknown model",
    415: "Unsupported content type",
    422: "Invalid input; the message names the field",
}
_IMG = [[0.0] * 28] * 28


def _heat_map_needs_per_pixel(params: ScoreParams, fmt: ResponseFormat) -> None:
    if fmt == "png" and not params.per_pixel:
        raise InvalidInput(
            "per_pixel",
            "Accept: image/png answers the per-pixel error as a heat map: set per_pixel=true, "
            "or accept application/json or application/x-npz",
        )


ENDPOINTS: tuple[Endpoint[Any], ...] = (
    Endpoint(
        path="/encode",
        summary="Images -> latent mu and logvar",
        description="Posterior mean and log-variance of each image. For an AE, `mu` holds the "
        "code and `logvar` is null. With `Accept: application/x-npy` the answer is an .npz "
        "archive holding `mu` and (VAE) `logvar`.",
        params=EncodeParams,
        body=EncodeRequest,
        tensor=IMAGES,
        operation=ops.encode,
        answer_values=ops.encode_values,
        response_model=EncodeResponse,
        produces=(
            Offer(JSON, "json"),
            Offer(
                NPZ,
                "npy",
                "With Accept: application/x-npz (or application/x-npy): an .npz archive of "
                "float32 `mu` and (VAE) `logvar`, each N x latent.",
            ),
            Offer(NPY, "npy", alias_of=NPZ),  # as /encode always answered .npy requests
        ),
        answers=TENSOR_ANSWERS,
        example_request={"model": "mnist-vae-2d", "images": [EXAMPLE_IMAGE]},
        example_response={
            "model": "mnist-vae-2d",
            "latent_dim": 2,
            "mu": [[0.41, -1.2]],
            "logvar": [[-3.1, -2.8]],
        },
    ),
    Endpoint(
        path="/reconstruct",
        summary="Images -> decode(encode(images)), deterministic or sampled",
        description="`deterministic` decodes mu: the same output on every call. `sampled` "
        "decodes z = mu + exp(logvar / 2) * eps with eps drawn from `seed` (returned, so any "
        "result can be reproduced); a VAE's reconstructions differ from draw to draw by design.",
        params=ReconstructParams,
        body=ReconstructRequest,
        tensor=IMAGES,
        operation=ops.reconstruct,
        answer_values=ops.reconstruct_values,
        response_model=ReconstructResponse,
        produces=IMAGE_ANSWERS,
        answers=TENSOR_ANSWERS,
        example_request={
            "model": "mnist-vae",
            "images": [EXAMPLE_IMAGE],
            "mode": "sampled",
            "seed": 7,
            "samples": 2,
        },
        example_response={
            "model": "mnist-vae",
            "mode": "sampled",
            "seed": 7,
            "images": [[_IMG, _IMG]],
        },
    ),
    Endpoint(
        path="/generate",
        summary="Decode samples of the prior z ~ N(0, I)",
        description="New images from z = temperature * eps, eps ~ N(0, I) drawn from `seed`. "
        "The seed also comes back in the `X-Seed` header (the only place for it with PNG or .npy "
        "output).",
        params=GenerateRequest,
        body=GenerateRequest,
        tensor=None,
        operation=ops.generate,
        answer_values=ops.generate_values,
        response_model=GenerateResponse,
        produces=IMAGE_ANSWERS,
        answers=PARAMS_ANSWERS,
        example_request={"model": "mnist-vae-2d", "n": 2, "seed": 42, "temperature": 1.0},
        example_response={
            "model": "mnist-vae-2d",
            "seed": 42,
            "z": [[0.3, -0.5], [1.1, 0.2]],
            "images": [_IMG, _IMG],
        },
    ),
    Endpoint(
        path="/decode",
        summary="Latent vectors -> images",
        description="Decode the given latent vectors (for a VAE, points of its latent space; for "
        "an AE, codes from /encode).",
        params=DecodeParams,
        body=DecodeRequest,
        tensor=LATENTS,
        operation=ops.decode,
        answer_values=ops.decode_values,
        response_model=DecodeResponse,
        produces=IMAGE_ANSWERS,
        answers=TENSOR_ANSWERS,
        example_request={"model": "mnist-vae-2d", "z": [[0.0, 0.0], [1.5, -0.5]]},
        example_response={"model": "mnist-vae-2d", "images": [_IMG, _IMG]},
    ),
    Endpoint(
        path="/score",
        summary="Images -> anomaly scores, calibrated, with their parts",
        description="How unlike the model's training data each image is (higher: less "
        "like it): `score` (the model's calibrated score, `score_name`), `is_outlier` (score > "
        "`threshold`, set by default for a 1 % false-positive rate on held-out data, or by the "
        "request's `fpr` or `threshold`), `percentile` among the model's held-out images; and "
        "the parts: a VAE's `nll` (importance-weighted, `k` samples from `seed`, returned), "
        "`elbo`, `reconstruction`, `kl`; every model's `reconstruction_error` and, with "
        "`per_pixel`, `per_pixel_error`. A model without calibration is scored by "
        "reconstruction error with no percentile (`calibrated: false`, a `note`). With "
        "`Accept: application/x-npz` (or x-npy): an .npz of the arrays; with `Accept: "
        "image/png` and `per_pixel`: the per-pixel error as a heat map grid (|error| 0 black, "
        "1/3 red, 2/3 yellow, 1 white).",
        params=ScoreParams,
        body=ScoreRequest,
        tensor=IMAGES,
        operation=ops.score,
        answer_values=ops.score_values,
        response_model=ScoreResponse,
        produces=(
            Offer(JSON, "json"),
            Offer(
                NPZ,
                "npy",
                "With Accept: application/x-npz (or application/x-npy): an .npz archive of the "
                "per-image arrays (float64 `score`, `reconstruction_error`, and those that "
                "apply: bool `is_outlier`, `percentile`, `nll`, `elbo`, `reconstruction`, `kl`; "
                "float32 `per_pixel_error`); the model and seed in X-Model and X-Seed.",
            ),
            Offer(NPY, "npy", alias_of=NPZ),
            Offer(
                "image/png",
                "png",
                "With Accept: image/png and per_pixel=true: the per-pixel error of each image "
                "as one PNG grid, a heat map of |x - decode(mu)| on a fixed scale: 0 black, "
                "1/3 red, 2/3 yellow, 1 white.",
            ),
        ),
        answers=TENSOR_ANSWERS,
        example_request={
            "model": "mnist-vae",
            "images": [EXAMPLE_IMAGE],
            "k": 8,
            "seed": 1,
            "per_pixel": True,
        },
        example_response={
            "model": "mnist-vae",
            "score_name": "complexity_residual",
            "calibrated": True,
            "note": None,
            "threshold": 38.2,
            "fpr": 0.01,
            "k": 8,
            "seed": 1,
            "score": [112.4],
            "is_outlier": [True],
            "percentile": [100.0],
            "nll": [151.9],
            "elbo": [-155.0],
            "reconstruction": [139.6],
            "kl": [15.4],
            "reconstruction_error": [0.021],
            "per_pixel_error": [_IMG],
        },
        check_format=_heat_map_needs_per_pixel,
    ),
)
BY_PATH: dict[str, Endpoint[Any]] = {endpoint.path: endpoint for endpoint in ENDPOINTS}

# Bodies larger than this are parsed in a worker thread: the largest bodies allowed take long
# enough to parse that, on the event loop, they would stall every other request and the health
# probes with them. Small bodies parse faster than a thread hop.
OFF_LOOP_BODY_BYTES = 256 * 1024
T = TypeVar("T")
_parse_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


async def parse_off_loop(executor: Executor, parse: Callable[[], T]) -> T:
    """`parse()` in `executor`, one at a time. simdjson holds the GIL while it parses (tens of
    ms for 16 MB): two parses at once, in two threads, would keep the event loop from running
    for both in turn, and eight for eight. Waiting here costs no thread."""
    loop = asyncio.get_running_loop()
    gate = _parse_gates.get(loop)
    if gate is None:  # a semaphore belongs to one loop; tests run several
        gate = _parse_gates[loop] = asyncio.Semaphore(1)
    async with gate:
        return await loop.run_in_executor(executor, parse)


async def respond(
    endpoint: Endpoint[Any], call: Call, registry: ModelRegistry, settings: Settings
) -> Response:
    """A JSON or .npy request to `endpoint`, answered: parse, run the operation, render. The
    answer's format is settled first: one the endpoint cannot produce is refused (406) before
    the body is read."""
    fmt = negotiate(call.accept, endpoint.produces, endpoint.path)
    if len(call.body) <= OFF_LOOP_BODY_BYTES:
        params, model, x = parse_request(call, endpoint, registry, settings)
    else:  # in the request's context, so that the model it picks is noted in its log line
        context = contextvars.copy_context()
        parse = functools.partial(context.run, parse_request, call, endpoint, registry, settings)
        params, model, x = await parse_off_loop(registry.executor, parse)
    return await answer(endpoint, params, model, x, registry, settings, fmt)


async def answer(
    endpoint: Endpoint[Any],
    params: BaseModel,
    model: ModelRuntime,
    x: Array | None,
    registry: ModelRegistry,
    settings: Settings,
    fmt: ResponseFormat,
) -> Response:
    """The operation's result, rendered, within the answer budget: room for the answer is
    reserved before inference and given back once it is rendered (the connection's sending
    bounds hold it from there)."""
    if endpoint.check_format is not None:
        endpoint.check_format(params, fmt)
    size = answer_bytes(endpoint.answer_values(params, model, x, settings), fmt)
    held = await registry.answers.acquire(size)  # no context manager: this is every request
    try:
        return await render_answer(await endpoint.operation(params, model, x, settings), fmt)
    finally:
        registry.answers.release(held)


async def respond_to_upload(
    endpoint: Endpoint[Any],
    request: Request,
    registry: ModelRegistry,
    settings: Settings,
    query_model: str | None,
    decoder: DecodePool,
) -> Response:
    """A multipart/form-data request of image files to `endpoint`, answered; `decoder` decodes
    the files."""
    fmt = negotiate(request.headers.get("accept", ""), endpoint.produces, endpoint.path)
    params, model, x = await read_multipart_images(
        request, endpoint.params, registry, settings, query_model, decoder
    )
    return await answer(endpoint, params, model, x, registry, settings, fmt)
