"""What a reload through the API must pass (`ReloadGate`): in the one process, or in the
supervisor of worker processes for every worker at once."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from service.errors import Forbidden, TooManyRequests
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
