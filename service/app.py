"""The FastAPI application: `create_app(settings)`; the lifespan owns the onnxruntime sessions.

A request meets, in order: CORS (when configured), the guard (keys, limits, timeouts), the fast
path (JSON and .npy inference requests), then FastAPI (multipart uploads, metadata, health, docs,
the Open Inference Protocol). `service.http` holds each of them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.http.docs import add_docs
from service.http.errors import install_error_handlers
from service.http.fastpath import FastLane
from service.http.guard import Guard
from service.http.meta import health_router, models_router, reload_router
from service.http.oip import oip_router
from service.http.openapi import documented_models, install_openapi
from service.http.repository import repository_router
from service.http.routes import inference_router
from service.http.state import AppState
from service.models.registry import ModelRegistry
from service.models.runtime import memory_trimmer
from service.observability.access_log import AccessLog
from service.observability.metrics import Metrics
from service.oip.schemas import (
    ErrorBody,
    InferenceRequest,
    RepositoryIndexRequest,
    RepositoryModelRequest,
)
from service.schemas import ErrorResponse, RepositoryReloadRefused
from service.settings import Settings

if TYPE_CHECKING:
    from service.grpc.server import GrpcServer

logger = logging.getLogger("service")
DESCRIPTION = (
    "Images are pixel values in [0, 1], as the model's `image_shape` in GET /models says: "
    "H x W (grayscale, 28 x 28 for the bundled models) or H x W x C (colour, channels last), "
    "nested or flat in that order; or PNG/JPEG uploads as multipart/form-data (inverted where "
    "its background is not the model's: see `invert`). "
    "`logvar` is the log-variance of q(z|x): sigma = exp(logvar / 2). "
    "Sampled results are reproducible with `seed`. Send `Accept: image/png` to get one "
    "PNG grid instead of JSON images."
)


class ServiceApp(FastAPI):
    """FastAPI with the service's own layers (CORS, the guard, the fast path) in front of the
    middleware FastAPI wraps around every request (error page, telemetry, body limit) instead
    of inside it, so that the requests the fast path answers skip those layers. An exception
    there reaches the guard, which answers with its JSON 500; FastAPI's own routes get the same
    answer from a handler. `service` is the app's typed state."""

    front: ASGIApp
    service: AppState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    registry: ModelRegistry | None = None,
    worker: int | None = None,
    serve_grpc: bool = False,
) -> ServiceApp:
    """The service. With `registry` given (already loaded), the app takes it over; otherwise the
    lifespan loads every model from `settings.model_dir` before the app accepts requests.
    `worker`: this process's number among the worker processes (its access log says it). With
    `serve_grpc` (and VAE_GRPC_PORT not 0), the lifespan also serves the protocol over gRPC
    (`service.grpc.server`); `python -m service` asks for it, tests only when they want it."""
    settings = settings or Settings()
    access_log = AccessLog(settings.log_format, worker=worker) if settings.access_log else None
    state = AppState(settings, Metrics(), access_log)
    app = ServiceApp(
        title="VAE serving",
        version=__version__,
        summary="Encode, reconstruct, generate and decode with exported AEs and VAEs.",
        description=DESCRIPTION,
        lifespan=_lifespan(state, registry, serve_grpc, shared_grpc_port=worker is not None),
        # FastAPI's built-in OpenTelemetry hooks check their providers on every request, and
        # would miss the requests the fast path answers: the guard opens every request's span
        # instead (VAE_TRACING, service.observability.tracing), so they stay off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
    )
    app.service = app.state.service = state
    app.front = Guard(FastLane(app.fastapi, state), state)
    if settings.cors_origins:  # first: it answers browser preflights
        app.front = CORSMiddleware(
            app.front,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            # Every request header the service reads.
            allow_headers=[
                *("Authorization", "X-API-Key", "Content-Type", "Accept", "X-Request-ID"),
                *("traceparent", "tracestate"),
            ],
            expose_headers=["X-Seed", "X-Model", "X-Request-ID", "Retry-After", "traceresponse"],
        )
    install_error_handlers(app)
    routers = (
        inference_router(),
        reload_router(),
        models_router(),
        health_router(),
        oip_router(),
        repository_router(),
    )
    for router in routers:
        app.include_router(router)
    add_docs(app)
    documented: list[type[BaseModel]] = [
        ErrorResponse,
        ErrorBody,
        RepositoryReloadRefused,
        InferenceRequest,
        RepositoryIndexRequest,
        RepositoryModelRequest,
    ]
    install_openapi(app, documented_models(documented))
    return app


def begin_shutdown(app: ServiceApp) -> None:
    """From now on readiness answers 503 and new requests are refused (503); requests already
    accepted run to the end. Called on SIGTERM, before uvicorn starts its graceful shutdown."""
    app.service.draining = True
    for hook in app.service.on_drain:
        hook()


def _lifespan(
    state: AppState, registry: ModelRegistry | None, serve_grpc: bool, shared_grpc_port: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grpc_server = await _start_grpc(state, shared_grpc_port) if serve_grpc else None
        app.state.grpc_server = grpc_server
        try:
            loaded: ModelRegistry = (
                registry
                if registry is not None
                else await run_in_threadpool(ModelRegistry.load, state.settings)
            )
        except BaseException:
            if grpc_server is not None:
                await grpc_server.stop()
            raise
        loaded.attach(state.metrics)
        state.registry = loaded
        if state.settings.tracing == "otlp":
            # Only here: with tracing off, no OpenTelemetry SDK is imported at all.
            from service.observability.tracing import Tracing

            state.tracing = Tracing.from_environment()
        if grpc_server is not None:
            await grpc_server.serving()
        logger.info("ready: %s (default %s)", ", ".join(loaded.models), loaded.default_name)
        background = [
            asyncio.create_task(_trim_memory(state.settings.memory_trim_interval_s)),
            asyncio.create_task(_flush_access_log(state.access_log)),
        ]
        # `kill -HUP`: read the model folder again, as POST /models/reload does. Also kept as
        # app.state.on_sighup, for tests where no signal can go.
        app.state.on_sighup = loaded.start_rescan
        hangup = _on_signal(signal.SIGHUP, loaded.start_rescan)
        try:
            yield
        finally:
            if hangup is not None:
                hangup()
            for task in background:
                task.cancel()
            if grpc_server is not None:  # its calls in flight finish before the models close
                await grpc_server.stop()
            if state.access_log is not None:
                state.access_log.flush()
            state.registry = None
            await loaded.close()
            state.decode_pool.close()
            if state.tracing is not None:  # sends the spans still queued
                await run_in_threadpool(state.tracing.shutdown)
                state.tracing = None

    return lifespan


async def _start_grpc(state: AppState, shared_port: bool) -> GrpcServer | None:
    """The gRPC server, started (None when VAE_GRPC_PORT is 0). Imported here: an app that
    serves no gRPC (most tests) loads none of it. `shared_port`: a worker's, which binds the
    port beside the other workers (the kernel spreads the connections)."""
    if state.settings.grpc_port == 0:
        return None
    from service.grpc.server import GrpcServer

    server = GrpcServer(state, shared_port)
    await server.start()
    return server


def _on_signal(sig: signal.Signals, handler: Callable[[], object]) -> Callable[[], object] | None:
    """Call `handler` on each `sig`; returns what removes the handler, or None where signals
    cannot be handled here (not the main thread, or Windows)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(sig, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return None
    return lambda: loop.remove_signal_handler(sig)


async def _trim_memory(interval_s: float) -> None:
    trim = memory_trimmer()
    if trim is None or interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        await run_in_threadpool(trim)


async def _flush_access_log(access_log: AccessLog | None) -> None:
    while access_log is not None:
        await asyncio.sleep(0.25)
        access_log.flush()
