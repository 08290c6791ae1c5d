"""One worker process (started by the supervisor with multiprocessing's spawn): it loads the
models as the one process does, and serves the connections the supervisor hands it with the
same app, protocol and drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from dataclasses import dataclass

from service.manifest import ModelLoadError
from service.models.registry import ModelRegistry
from service.models.runtime import limit_malloc_arenas
from service.observability.logs import configure_logging
from service.settings import Settings
from service.workers.link import WorkerLink

logger = logging.getLogger("service")

LOAD_FAILED = 3  # the exit code of a worker whose models would not load


@dataclass
class WorkerSpec:
    """What a worker is started with (pickled by multiprocessing: the socket goes as a file
    descriptor)."""

    index: int  # 1, 2, ...: named in its log lines
    settings: Settings
    channel: socket.socket  # its end of the channel to the supervisor


def run_worker(spec: WorkerSpec) -> None:
    settings = spec.settings
    configure_logging(settings.log_level, settings.log_format, worker=spec.index)
    limit_malloc_arenas()  # before any thread starts
    try:
        registry = ModelRegistry.load(settings)
    except ModelLoadError as exc:
        logger.error("cannot start: %s", exc)
        sys.exit(LOAD_FAILED)
    from service.app import create_app
    from service.serving import ServiceServer, settle_process

    app = create_app(settings, registry=registry, worker=spec.index, serve_grpc=True)
    link = WorkerLink(spec.channel, registry, spec.index)
    registry.coordinator = link
    app.service.peers_ready = lambda: link.peers_ready
    connecting: set[asyncio.Task[object]] = set()

    def serve_connection(server: ServiceServer, connection: socket.socket) -> None:
        if server.should_exit:  # handed over just as the drain ended: not served (no answer)
            connection.close()
            return
        # uvloop makes it non-blocking and sets TCP_NODELAY, as for a listening socket's own.
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(server.protocol, connection))
        connecting.add(task)
        task.add_done_callback(connecting.discard)

    def stop(server: ServiceServer, now: bool) -> None:
        """As SIGTERM (a second one when `now`), but once however many ways it is asked: the
        supervisor's word (or its loss: an orphan drains too) and a SIGTERM sent straight."""
        if not app.service.draining:
            server.handle_exit(signal.SIGTERM, None)
        if now:
            server.handle_exit(signal.SIGTERM, None)

    def started(server: ServiceServer) -> None:
        link.start(
            lambda connection: serve_connection(server, connection),
            lambda now: stop(server, now),
        )

    server = ServiceServer(app, settings, on_started=started)
    settle_process()
    server.run(sockets=[])  # no listening socket: connections come from the supervisor
