"""The inference endpoints' work, and the fast lane that serves them.

Each endpoint is a core (parameters, model and input array in, response out) reached two ways:
- the FastAPI routes in `service.app`, which also give the OpenAPI docs and parse multipart
  uploads;
- `FastLane`, an ASGI middleware that answers JSON and .npy requests to the same paths directly,
  skipping FastAPI's per-request routing and dependency machinery. For one-image requests that
  machinery costs several times the model itself (measured: about 300 us per request against
  85 us for a bare ASGI app on this machine), so this is where the service's throughput comes from.
Both call the same functions below, so they answer alike, errors included.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from service.imaging import InputError
from service.payloads import (
    IMAGES,
    LATENTS,
    Array,
    Call,
    JSONBody,
    Params,
    ResponseFormat,
    TensorField,
    error_response,
    images_response,
    negotiate,
    npz_response,
    parse_params,
    parse_tensor_request,
    pick_model,
    query_model_name,
    ready_registry,
)
from service.runtime import ModelRegistry, ModelRuntime
from service.schemas import (
    DecodeParams,
    DecodeRequest,
    EncodeParams,
    EncodeRequest,
    GenerateRequest,
    ReconstructParams,
    ReconstructRequest,
)
from service.settings import Settings


def _draw_seed(seed: int | None) -> int:
    return secrets.randbelow(2**31) if seed is None else seed


async def encode_core(
    params: EncodeParams, runtime: ModelRuntime, x: Array, fmt: ResponseFormat, settings: Settings
) -> Response:
    mu, logvar = await runtime.encode_batched(x)
    if fmt == "npy":
        arrays = {"mu": mu} if logvar is None else {"mu": mu, "logvar": logvar}
        return npz_response(arrays, {"X-Model": runtime.name})
    return JSONBody(
        {"model": runtime.name, "latent_dim": runtime.latent_dim, "mu": mu, "logvar": logvar}
    )


async def reconstruct_core(
    params: ReconstructParams,
    runtime: ModelRuntime,
    x: Array,
    fmt: ResponseFormat,
    settings: Settings,
) -> Response:
    if params.mode == "deterministic" and (params.samples is not None or params.seed is not None):
        raise InputError(
            "mode", "seed and samples apply only to mode='sampled'; deterministic is decode(mu)"
        )
    if params.mode == "sampled" and not runtime.is_vae:
        raise InputError(
            "mode",
            f"model {runtime.name!r} is an autoencoder: its encoder gives one code per image "
            "and no variance to sample from; use mode='deterministic' or a VAE",
        )
    if params.samples is not None and params.samples > settings.max_samples:
        raise InputError("samples", f"{params.samples}; at most {settings.max_samples}")
    k = params.samples or 1
    if len(x) * k > settings.max_images:
        raise InputError(
            "samples", f"{len(x)} images x {k} samples; at most {settings.max_images} outputs"
        )
    mu, logvar = await runtime.encode_batched(x)
    seed = None
    if params.mode == "deterministic" or logvar is None:
        images = await runtime.decode_batched(mu)
    else:
        seed = _draw_seed(params.seed)
        eps = np.random.default_rng(seed).standard_normal((len(x), k, mu.shape[1]), np.float32)
        z = mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps  # inputs x samples x latent
        decoded = await runtime.decode_batched(z.reshape(-1, mu.shape[1]))
        images = decoded.reshape(len(x), k, *decoded.shape[1:])
        if params.samples is None:
            images = images[:, 0]
    fields = {"model": runtime.name, "mode": params.mode, "seed": seed}
    return images_response(fmt, images, fields, seed)


async def decode_core(
    params: DecodeParams, runtime: ModelRuntime, z: Array, fmt: ResponseFormat, settings: Settings
) -> Response:
    images = await runtime.decode_batched(z)
    return images_response(fmt, images, {"model": runtime.name})


# Bodies larger than this are parsed in a worker thread: parsing the largest JSON body allowed
# (16 MiB) takes about half a second, which on the event loop would stall every other request
# and the health probes with it. Small bodies parse in microseconds, less than a thread hop.
OFF_LOOP_BODY_BYTES = 256 * 1024


async def _parse(
    call: Call,
    field: TensorField,
    params_type: type[Params],
    full_type: type[BaseModel],
    registry: ModelRegistry,
    settings: Settings,
) -> tuple[Params, ModelRuntime, Array]:
    args = (call, field, params_type, full_type, registry, settings)
    if len(call.body) <= OFF_LOOP_BODY_BYTES:
        return parse_tensor_request(*args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(registry.executor, parse_tensor_request, *args)


# Each handler settles the answer's format first: a request for a type the endpoint cannot
# produce gets its 406 before the body is read.


async def handle_encode(call: Call, registry: ModelRegistry, settings: Settings) -> Response:
    fmt = negotiate(call.accept, "/encode")
    params, runtime, x = await _parse(call, IMAGES, EncodeParams, EncodeRequest, registry, settings)
    return await encode_core(params, runtime, x, fmt, settings)


async def handle_reconstruct(call: Call, registry: ModelRegistry, settings: Settings) -> Response:
    fmt = negotiate(call.accept, "/reconstruct")
    params, runtime, x = await _parse(
        call, IMAGES, ReconstructParams, ReconstructRequest, registry, settings
    )
    return await reconstruct_core(params, runtime, x, fmt, settings)


async def handle_decode(call: Call, registry: ModelRegistry, settings: Settings) -> Response:
    fmt = negotiate(call.accept, "/decode")
    params, runtime, z = await _parse(
        call, LATENTS, DecodeParams, DecodeRequest, registry, settings
    )
    return await decode_core(params, runtime, z, fmt, settings)


async def handle_generate(call: Call, registry: ModelRegistry, settings: Settings) -> Response:
    fmt = negotiate(call.accept, "/generate")
    params = parse_params(call, GenerateRequest)
    runtime = pick_model(registry, params.model, query_model_name(call))
    if not runtime.is_vae:
        raise InputError(
            "model",
            f"model {runtime.name!r} is an autoencoder: nothing made its codes follow N(0, I), "
            "so decoding prior samples gives garbage; use a VAE such as mnist-vae",
        )
    if params.n > settings.max_generate:
        raise InputError("n", f"{params.n}; at most {settings.max_generate} per request")
    seed = _draw_seed(params.seed)
    eps = np.random.default_rng(seed).standard_normal((params.n, runtime.latent_dim), np.float32)
    z = (params.temperature * eps).astype(np.float32)
    images = await runtime.decode_batched(z)
    fields = {"model": runtime.name, "seed": seed, "z": z}
    return images_response(fmt, images, fields, seed)


Handler = Callable[[Call, ModelRegistry, Settings], Awaitable[Response]]
HANDLERS: dict[str, Handler] = {
    "/encode": handle_encode,
    "/reconstruct": handle_reconstruct,
    "/generate": handle_generate,
    "/decode": handle_decode,
}


class FastLane:
    """ASGI middleware: POST to an inference path with a JSON or .npy body is answered here;
    everything else (multipart uploads, docs, metadata, health) goes on to FastAPI."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = HANDLERS.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type == b"multipart/form-data":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client hung up: nobody to answer
        state: Any = self.owner.state
        call = Call(
            body,
            media_type.decode("latin-1"),
            headers.get(b"accept", b"").decode("latin-1"),
            dict(parse_qsl(scope["query_string"].decode("latin-1"))),
        )
        try:
            response = await handler(call, ready_registry(state.registry), state.settings)
        except InputError as exc:
            response = error_response(exc)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
