"""uvicorn as the service runs it, in the only process or in each worker: its own protocol, the
drain on SIGTERM, a clean exit 0, and the process made ready for a long life before it serves."""

from __future__ import annotations

import asyncio
import functools
import gc
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from service.app import ServiceApp, begin_shutdown
from service.http.connection import ConnectionLimits, protocol_factory
from service.http.sending import SendLimits
from service.models.runtime import memory_trimmer
from service.settings import Settings


def server_config(app: ServiceApp, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # the guard writes one line per request (VAE_ACCESS_LOG) instead
        log_config=None,  # keep the handlers configure_logging set up
        loop="uvloop",  # the fastest event loop uvicorn offers
        # httptools, a response's head and body in one send(), every connection bounded in what
        # it sends us and what it leaves unread; uvicorn takes any callable that builds a
        # protocol, though typed for a class
        http=protocol_factory(  # type: ignore[arg-type]
            ConnectionLimits.from_settings(settings), SendLimits.from_settings(settings)
        ),
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


class ServiceServer(uvicorn.Server):
    """uvicorn's server with the service's drain: on the first SIGTERM, readiness turns 503 and
    new requests are refused (503, Connection: close) at once, once their body is read (the
    guard): a socket closed on unread bytes sends a reset, which loses the answer. Only after
    VAE_SHUTDOWN_DRAIN_S does uvicorn close idle keep-alive connections, which would otherwise
    reset a request a client is sending on one at that moment. `on_started` is called once the
    app is ready to take connections (a worker starts receiving them then)."""

    def __init__(
        self,
        app: ServiceApp,
        settings: Settings,
        on_started: Callable[[ServiceServer], object] | None = None,
    ) -> None:
        super().__init__(server_config(app, settings))
        self.service_app = app
        self.settings = settings
        self.on_started = on_started

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.service_app.service.draining or self.settings.shutdown_drain_s == 0:
            super().handle_exit(sig, frame)  # a second signal: stop draining now
            return
        begin_shutdown(self.service_app)
        loop = asyncio.get_event_loop()
        stop = functools.partial(super().handle_exit, sig, frame)
        loop.call_soon_threadsafe(loop.call_later, self.settings.shutdown_drain_s, stop)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started(self)

    def protocol(self) -> asyncio.Protocol:
        """A protocol for one more connection, as uvicorn builds it for a listening socket's
        (for a connection accepted elsewhere: a worker's, handed over by the supervisor)."""
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol


def settle_process() -> None:
    """What a serving process does once, after start-up and before it serves."""
    # uvicorn re-raises the signal that stopped it once it has shut down; with the default
    # handler that would end the process as "killed by SIGTERM" after a clean drain. A no-op
    # handler underneath lets a graceful shutdown exit 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
    # What start-up made (modules, routes, schemas, sessions) lives as long as the process.
    # Frozen, it is not scanned by the garbage collector's full passes, which would otherwise
    # set the p99 latency under load. No gc.collect() first: it finds nothing to free here and
    # only lengthens the start.
    gc.freeze()
    # Opening the ONNX files and importing leave freed heap behind: hand it back before serving.
    trim = memory_trimmer()
    if trim is not None:
        trim()
