"""`python -m service`: check and load every model, then serve them with uvicorn.

Flags override the matching VAE_ environment variables (see docs/settings.md).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from pydantic import ValidationError

from service.manifest import ModelLoadError
from service.models.registry import ModelRegistry
from service.models.runtime import limit_malloc_arenas, memory_trimmer
from service.observability.logs import configure_logging
from service.settings import Settings

logger = logging.getLogger("service")

# Files the service keeps open besides its connections (about 20: the event loop's, onnxruntime's,
# the logs), with room for the model files a reload opens.
FD_RESERVE = 128


def parse_args(argv: Sequence[str] | None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="VAE_HOST (default 127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, help="VAE_PORT (default 8000)")
    parser.add_argument("--model-dir", help="VAE_MODEL_DIR (default ./models)")
    parser.add_argument("--default-model", help="VAE_DEFAULT_MODEL")
    parser.add_argument("--providers", help="VAE_PROVIDERS: auto, or e.g. CPUExecutionProvider")
    parser.add_argument("--log-level", help="VAE_LOG_LEVEL (default info)")
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def ensure_fd_limit(max_connections: int) -> tuple[str | None, str | None]:
    """Raise the soft RLIMIT_NOFILE to what VAE_MAX_CONNECTIONS needs, towards the hard limit:
    (what was done, to log; why it cannot be, to stop the start)."""
    try:
        import resource
    except ImportError:  # not on this platform: nothing to raise
        return None, None
    needed = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None, None
    fix = (
        "or raise the limit (`ulimit -n`, `docker run --ulimit nofile=N:N`, LimitNOFILE= "
        "in a systemd unit)"
    )
    if hard != resource.RLIM_INFINITY and hard < needed:
        return None, (
            f"VAE_MAX_CONNECTIONS ({max_connections}) needs {needed} open files (the "
            f"connections and {FD_RESERVE} for the service's own), but this process may open "
            f"at most {hard} (the hard RLIMIT_NOFILE): lower VAE_MAX_CONNECTIONS to "
            f"{max(hard - FD_RESERVE, 1)} {fix}"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (OSError, ValueError) as exc:
        return None, (
            f"VAE_MAX_CONNECTIONS ({max_connections}) needs {needed} open files, and the open-"
            f"file limit ({soft}) could not be raised ({exc}): lower VAE_MAX_CONNECTIONS {fix}"
        )
    return f"raised the open-file limit from {soft} to {needed} for VAE_MAX_CONNECTIONS", None


def main(argv: Sequence[str] | None = None) -> int:
    overrides = parse_args(argv)
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            if not error["loc"]:  # a rule across settings: its message names them
                print(f"error: {error['msg']}", file=sys.stderr)
                continue
            field = str(error["loc"][0])
            got = "<hidden>" if field == "api_keys" else repr(error["input"])
            print(f"error: VAE_{field.upper()}: {error['msg']} (got {got})", file=sys.stderr)
        return 2
    raised, problem = ensure_fd_limit(settings.max_connections)
    if problem is not None:
        print(f"error: cannot start: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if raised is not None:
        logger.info(raised)
    limit_malloc_arenas()  # before any worker thread starts
    # Load (check, open, warm up) before binding the port: a broken model stops the start with
    # one clear message instead of a server that never becomes ready. Hashing and opening the
    # ONNX files release the GIL, so they run in a thread while the web stack (FastAPI, uvicorn:
    # a large part of the start-up time) is imported here.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load") as loader:
        loading = loader.submit(ModelRegistry.load, settings)
        import uvicorn

        from service.app import begin_shutdown, create_app
        from service.http.connection import ConnectionLimits, protocol_factory
        from service.http.sending import SendLimits

        try:
            registry = loading.result()
        except ModelLoadError as exc:
            print(f"error: cannot start: {exc}", file=sys.stderr)
            return 1
    app = create_app(settings, registry=registry, serve_grpc=True)
    config = uvicorn.Config(
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

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if app.service.draining or settings.shutdown_drain_s == 0:
                super().handle_exit(sig, frame)  # a second signal: stop draining now
                return
            # Readiness 503 and new requests refused (503, Connection: close) at once, once
            # their body is read (the guard): a socket closed on unread bytes sends a reset,
            # which loses the answer. Only after the drain window does uvicorn close idle
            # keep-alive connections, which would otherwise reset a request a client is
            # sending on one at that moment.
            begin_shutdown(app)
            loop = asyncio.get_event_loop()
            stop = functools.partial(super().handle_exit, sig, frame)
            loop.call_soon_threadsafe(loop.call_later, settings.shutdown_drain_s, stop)

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
    Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
