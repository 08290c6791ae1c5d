"""The service's outer guard: API keys, shutdown, backpressure, body size, timeouts, crashes.

One ASGI middleware in front of everything else (the fast lane and FastAPI alike), so every
request meets the same rules before any of its body is read. (Starlette's own body limit
answers a bare "Content Too Large" in plain text; clients here get JSON naming the limit and
the setting, like every other error of this service.)

1. Probes (`/healthz`, `/readyz`, `/metrics`) and the docs pass untouched: an orchestrator must
   always be able to ask, even when the service is full or shutting down.
2. With API keys configured, a request without a valid key gets 401.
3. While the service shuts down (SIGTERM), new requests get 503.
4. At most `VAE_MAX_CONCURRENT_REQUESTS` requests are in flight or queued; the next one gets 503
   with `Retry-After` at once instead of waiting in a queue without end.
5. A body over `VAE_MAX_BODY_BYTES` gets 413: at once when Content-Length says so, or as soon as
   the bytes read pass the limit (the rest is never read).
6. A request still unanswered after `VAE_REQUEST_TIMEOUT_S` gets 504 and frees its slot.
7. An unexpected exception fails that request alone, as a JSON 500, and is logged.

Every request it sees gets an `X-Request-ID` (the client's, or a new one), is counted in the
metrics, and (VAE_ACCESS_LOG) gets one log line with its id, endpoint, model, status, latency
and batch size.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    InternalError,
    ServiceError,
    TimedOut,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from service.http.endpoints import ENDPOINTS
from service.http.errors import INTERNAL_ERROR, error_response
from service.http.state import AppState
from service.observability.context import RequestInfo, current_request

logger = logging.getLogger("service")

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN = frozenset({"/", "/docs", "/redoc", "/openapi.json", "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/v2/health/")

# Paths become bounded labels: a model name or a typo in the URL must not create a time series.
FIXED_ENDPOINTS = frozenset(
    {*(e.path for e in ENDPOINTS), "/models", "/models/reload", "/v2", "/metrics"}
)
ENDPOINT_PATTERNS = [
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "/v2/models/{model}/infer"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$"), "/v2/models/{model}/ready"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?$"), "/v2/models/{model}"),
    (re.compile(r"^/models/[^/]+/reload$"), "/models/{name}/reload"),
    (re.compile(r"^/models/[^/]+/latent-map$"), "/models/{name}/latent-map"),
    (re.compile(r"^/models/[^/]+$"), "/models/{name}"),
]


def endpoint_label(path: str) -> str:
    """The metrics' `endpoint` label of a request path."""
    if path in FIXED_ENDPOINTS:
        return path
    for pattern, label in ENDPOINT_PATTERNS:
        if pattern.match(path):
            return label
    return "other"


def is_open(path: str) -> bool:
    """Paths every client may reach at any time: probes, docs and their static files."""
    return path in PROBES or path in OPEN or path.startswith(OPEN_PREFIXES)


class KeyCheck:
    """Constant-time API key check: keys are kept as SHA-256 digests and a candidate is compared
    with every one of them, so neither timing nor early exit tells how much of a key matched."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def matches(self, candidate: str) -> bool:
        digest = hashlib.sha256(candidate.encode()).digest()
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(digest, known)
        return found


REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(headers: dict[bytes, bytes]) -> str:
    """The client's X-Request-ID when it is a sane token (so it can be logged and echoed as
    is), else a new one."""
    given = headers.get(b"x-request-id", b"").decode("latin-1")
    return given if REQUEST_ID.match(given) else os.urandom(16).hex()


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`, if any."""
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    api_key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
    return api_key or None


async def send_error(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    await error_response(error)(scope, receive, send)


class Guard:
    """See the module docstring. `state.draining` turns true when shutdown begins."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.settings = state.settings
        self.keys = KeyCheck(state.settings.api_key_list())
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        info = RequestInfo(request_id(headers))
        token = current_request.set(info)
        status = 500  # if nothing is sent at all
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", info.request_id.encode()),
                ]
            await send(message)

        try:
            await self._check(scope, receive, send_with_id, headers)
        finally:
            current_request.reset(token)
            self._record(scope, info, status, time.perf_counter() - start)

    def _record(self, scope: Scope, info: RequestInfo, status: int, seconds: float) -> None:
        self.state.metrics.count_request(endpoint_label(scope["path"]), info.model, status, seconds)
        access_log = self.state.access_log
        if access_log is not None:
            fields = {
                "request_id": info.request_id,
                "method": scope["method"],
                "endpoint": scope["path"],
                "model": info.model or None,
                "status": status,
                "latency_ms": round(seconds * 1000, 3),
                "batch_size": info.batch_size or None,
            }
            message = f"{scope['method']} {scope['path']} {status} {seconds * 1000:.1f} ms"
            access_log.write(message, fields)

    async def _check(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        if self.keys.enabled:
            key = presented_key(headers)
            if key is None or not self.keys.matches(key):
                problem = "missing" if key is None else "invalid"
                unauthorized = Unauthorized(
                    "",
                    f"{problem} API key: send it as `Authorization: Bearer <key>` or "
                    "`X-API-Key: <key>`",
                    {"WWW-Authenticate": "Bearer"},
                )
                await send_error(scope, receive, send, unauthorized)
                return
        refusal = self._refusal(headers)
        if refusal is not None:
            await send_error(scope, receive, send, refusal)
            return
        self.in_flight += 1
        metrics = self.state.metrics
        metrics.in_flight = self.in_flight
        try:
            await self._serve(scope, receive, send)
        finally:
            self.in_flight -= 1
            metrics.in_flight = self.in_flight

    def _refusal(self, headers: dict[bytes, bytes]) -> ServiceError | None:
        """Why a request is turned away before any of its body is read, if it is."""
        settings = self.settings
        if self.state.draining:
            return Unavailable(
                "",
                "the service is shutting down; retry on another replica",
                settings.retry_after_s,
                {"Connection": "close"},
            )
        if self.in_flight >= settings.max_concurrent_requests:
            return Unavailable(
                "",
                f"the service is at capacity ({settings.max_concurrent_requests} requests in "
                f"flight, VAE_MAX_CONCURRENT_REQUESTS); retry after {settings.retry_after_s} s",
                settings.retry_after_s,
            )
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> TooLarge:
        limit = self.settings.max_body_bytes
        size = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit / 2**10:g} KiB"
        return TooLarge(
            "",
            f"request body larger than {limit} bytes ({size}, VAE_MAX_BODY_BYTES): send fewer "
            "images per request, or application/x-npy uint8",
            {"Connection": "close"},
        )

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.settings.max_body_bytes
        received = 0
        started = expired = False
        task = asyncio.current_task()
        assert task is not None

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        # A bare timer rather than asyncio.timeout(): the same cancellation for less work, and
        # this runs for every request.
        deadline = asyncio.get_running_loop().call_later(self.settings.request_timeout_s, expire)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                deadline.cancel()  # answered in time; a slow reader is not a timeout
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except asyncio.CancelledError:
            if not expired:
                # Only uvicorn cancels a request otherwise: when the shutdown grace ran out.
                logger.error(
                    "%s %s cut off by shutdown: not finished within VAE_SHUTDOWN_GRACE_S",
                    scope["method"],
                    scope["path"],
                )
                raise
            task.uncancel()
            logger.warning(
                "%s %s timed out after %s s",
                scope["method"],
                scope["path"],
                self.settings.request_timeout_s,
            )
            if not started:
                timed_out = TimedOut(
                    "",
                    f"no answer within {self.settings.request_timeout_s} s "
                    "(VAE_REQUEST_TIMEOUT_S); send fewer images per request or retry",
                )
                await send_error(scope, receive, send, timed_out)
        except TooLarge as exc:  # from limited_receive
            if not started:
                await send_error(scope, receive, send, exc)
        except Exception:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            if not started:
                await send_error(scope, receive, send, InternalError("", INTERNAL_ERROR))
        finally:
            deadline.cancel()
