"""`python -m service`: check and load every model, then serve them with uvicorn.

Flags override the matching VAE_ environment variables (see docs/settings.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError

from service.manifest import ModelLoadError
from service.models.registry import ModelRegistry
from service.models.runtime import limit_malloc_arenas
from service.observability.logs import configure_logging
from service.settings import Settings
from service.workers.cores import ThreadBudget

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
    parser.add_argument("--workers", help="VAE_WORKERS: worker processes, or auto (default 1)")
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
    budget = ThreadBudget.of(settings)
    for warning in budget.oversubscribed(settings):
        logger.warning("%s", warning)
    limit_malloc_arenas()  # before any worker thread starts
    # Load (check, open, warm up) before binding the port: a broken model stops the start with
    # one clear message instead of a server that never becomes ready. Hashing and opening the
    # ONNX files release the GIL, so they run in a thread while the web stack (FastAPI, uvicorn:
    # a large part of the start-up time) is imported here.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load") as loader:
        loading = loader.submit(ModelRegistry.load, settings)
        if budget.workers == 1:  # a supervisor serves nothing itself: the workers import it
            from service.app import create_app
            from service.serving import ServiceServer, settle_process

        try:
            registry = loading.result()
        except ModelLoadError as exc:
            print(f"error: cannot start: {exc}", file=sys.stderr)
            return 1
    if budget.workers > 1:
        from service.workers.supervisor import supervise

        return supervise(settings, budget, registry)
    app = create_app(settings, registry=registry, serve_grpc=True)
    settle_process()
    ServiceServer(app, settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
