"""The app's state, typed: what the guard, the fast path and the routes read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from service.codecs.decoding import DecodePool
from service.errors import Unavailable
from service.http.reload_gate import ReloadGate
from service.models.registry import ModelRegistry
from service.observability.access_log import AccessLog
from service.observability.metrics import Metrics
from service.settings import Settings
from service.workers.cores import ThreadBudget

if TYPE_CHECKING:  # imported only where tracing is on (VAE_TRACING)
    from service.observability.tracing import Tracing


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    access_log: AccessLog | None
    registry: ModelRegistry | None = None  # set by the lifespan once every model is loaded
    draining: bool = False  # set on SIGTERM: readiness and new requests answer 503
    # Requests being served or queued, REST's and gRPC's together (VAE_MAX_CONCURRENT_REQUESTS)
    in_flight: int = 0
    # Called once when shutdown begins (SIGTERM), after `draining` is set: the gRPC server's
    # health turns NOT_SERVING there.
    on_drain: list[Callable[[], object]] = field(default_factory=list)
    reload_gate: ReloadGate = field(default_factory=ReloadGate)  # the reload endpoints' rules
    decode_pool: DecodePool = field(init=False)  # uploads' image decoding; the lifespan closes it
    tracing: Tracing | None = None  # VAE_TRACING=otlp: set and shut down by the lifespan
    # Whether every other worker process is ready too (set in a worker: the supervisor's view)
    peers_ready: Callable[[], bool] = field(default=lambda: True)

    def __post_init__(self) -> None:
        # VAE_DECODE_THREADS, or this process's share of the cores when 0
        self.decode_pool = DecodePool(ThreadBudget.of(self.settings).decode_threads)

    @property
    def ready(self) -> bool:
        registry = self.registry
        return not self.draining and registry is not None and registry.ready and self.peers_ready()

    def ready_registry(self) -> ModelRegistry:
        """The registry, once every model is loaded and warmed up; 503 before that."""
        registry = self.registry
        if registry is None or not registry.ready:
            raise Unavailable(
                "service", "models are still loading; retry shortly", self.settings.retry_after_s
            )
        return registry


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.service
    return state


def get_registry(request: Request) -> ModelRegistry:
    return get_state(request).ready_registry()


def get_settings(request: Request) -> Settings:
    return get_state(request).settings


# FastAPI dependencies (tests may override them)
State = Annotated[AppState, Depends(get_state)]
Registry = Annotated[ModelRegistry, Depends(get_registry)]
AppSettings = Annotated[Settings, Depends(get_settings)]
