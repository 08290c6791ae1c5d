"""The gRPC server: `grpc.aio` on VAE_GRPC_PORT, in the event loop of the HTTP server, serving
`GRPCInferenceService` and the standard health service (`grpc.health.v1.Health`).

Started and stopped by the app's lifespan (`service.app`), when the app is made to serve gRPC
(`python -m service` is): NOT_SERVING until the models are loaded, then SERVING. When shutdown
begins (SIGTERM) its health turns NOT_SERVING and new calls get UNAVAILABLE (`service.grpc.calls`);
after VAE_SHUTDOWN_DRAIN_S it stops taking calls, as the HTTP server stops taking connections,
and the calls in flight have VAE_SHUTDOWN_GRACE_S to finish. The largest message it receives is
VAE_MAX_BODY_BYTES: a bigger one is refused by gRPC itself, from its declared length before it is
received, with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from service.grpc.calls import Calls
from service.grpc.oip_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from service.grpc.servicer import Servicer
from service.http.state import AppState

logger = logging.getLogger("service")

SERVICE_NAME = "inference.GRPCInferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    """One gRPC server for an app's state; `calls` is where every call is guarded and counted."""

    def __init__(self, state: AppState, shared_port: bool = False) -> None:
        self.state = state
        self.shared_port = shared_port
        self.settings = state.settings
        self.calls = Calls(state)
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._stopping: asyncio.Task[None] | None = None
        self._stop_now = asyncio.Event()  # the HTTP server is stopping: the drain is over

    async def start(self) -> int:
        """Bind VAE_HOST:VAE_GRPC_PORT and start serving, NOT_SERVING; returns the port."""
        settings = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                # gRPC lets a second process bind a port in use (SO_REUSEPORT) and share it:
                # a start on a busy port must fail instead, as the HTTP port's does. Worker
                # processes do share it: the supervisor checked that the port was free.
                ("grpc.so_reuseport", int(self.shared_port)),
            ]
        )
        add_GRPCInferenceServiceServicer_to_server(Servicer(self.state, self.calls), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        try:
            self.port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
        except RuntimeError as exc:
            raise RuntimeError(
                f"cannot serve gRPC on {host}:{settings.grpc_port} (VAE_GRPC_PORT): {exc}; is the "
                "port in use? Set another VAE_GRPC_PORT, or 0 to turn gRPC off"
            ) from None
        await server.start()
        self.server = server
        await self._set_health(NOT_SERVING)
        loop = asyncio.get_running_loop()
        # From SIGTERM's handler: on the loop, where the server's work runs.
        self.state.on_drain.append(lambda: loop.call_soon_threadsafe(self._drain))
        logger.info("serving gRPC on %s:%d", host, self.port)
        return self.port

    async def serving(self) -> None:
        """The models are loaded: SERVING."""
        await self._set_health(SERVING)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    def _drain(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(
                self._stop(self.settings.shutdown_drain_s)
            )

    async def _stop(self, after_s: float) -> None:
        await self.health.enter_graceful_shutdown()  # NOT_SERVING, for good
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_now.wait(), after_s)
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s)

    async def stop(self) -> None:
        """Stop taking calls and give those in flight VAE_SHUTDOWN_GRACE_S (already begun
        when shutdown began with SIGTERM: its drain ends now)."""
        self._stop_now.set()
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(0))
        await self._stopping
