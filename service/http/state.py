"""The app's state, typed: what the guard, the fast path and the routes read."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.codecs.decoding import DecodePool
from service.errors import Forbidden, TooManyRequests, Unavailable
from service.models.registry import ModelRegistry
from service.observability.access_log import AccessLog
from service.observability.metrics import Metrics
from service.settings import Settings

FOLDER = ""  # the gate's key for POST /models/reload (no model is named "")


@dataclass
class ReloadGate:
    """What a reload through the API must pass (SIGHUP passes none of it: only the operator can
    send it): VAE_ALLOW_RELOAD; one at a time per model (the folder counting as one more); and
    VAE_RELOAD_MIN_INTERVAL_S between the starts of two. A reload while one of the same model is
    under way is refused (429), not queued: waiting, it would hold a request slot and then load
    again files just loaded. The key check is the guard's, as on every model endpoint."""

    _last_start: dict[str, float] = field(default_factory=dict)  # by model; FOLDER
    _running: set[str] = field(default_factory=set)

    @property
    def running(self) -> frozenset[str]:
        """The keys (model names; FOLDER) of the reloads under way."""
        return frozenset(self._running)

    @contextmanager
    def admit(self, key: str, settings: Settings) -> Iterator[None]:
        what = "the model folder" if key == FOLDER else f"model {key!r}"
        if not settings.allow_reload:
            raise Forbidden(
                "",
                "reloads through the API are turned off (VAE_ALLOW_RELOAD=false): the operator "
                "reloads with SIGHUP, or sets VAE_ALLOW_RELOAD=true",
            )
        interval = settings.reload_min_interval_s
        now = time.monotonic()
        since = now - self._last_start[key] if key in self._last_start else math.inf
        retry_after = max(1, math.ceil(interval - since)) if since < interval else 1
        if key in self._running:
            raise TooManyRequests(
                "", f"a reload of {what} is under way; retry after {retry_after} s", retry_after
            )
        if since < interval:
            raise TooManyRequests(
                "",
                f"{what} was reloaded {since:.1f} s ago; reloads are at least {interval:g} s "
                f"apart (VAE_RELOAD_MIN_INTERVAL_S): retry after {retry_after} s",
                retry_after,
            )
        self._last_start[key] = now
        self._running.add(key)
        try:
            yield
        finally:
            self._running.discard(key)


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

    def __post_init__(self) -> None:
        self.decode_pool = DecodePool(self.settings.decode_threads)

    @property
    def ready(self) -> bool:
        return not self.draining and self.registry is not None and self.registry.ready

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
