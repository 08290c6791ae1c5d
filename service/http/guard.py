"""The service's outer guard: API keys, body size and time, shutdown, backpressure, timeouts,
crashes.

One ASGI middleware in front of everything else (the fast lane and FastAPI alike), so every
request meets the same rules before the app sees it. (Starlette's own body limit answers a bare
"Content Too Large" in plain text; clients here get JSON naming the limit and the setting, like
every other error of this service.) The request head is bounded before this, by the protocol
(`service.http.connection`).

1. Probes (`/healthz`, `/readyz`, `/metrics`) and the docs pass untouched: an orchestrator must
   always be able to ask, even when the service is full or shutting down.
2. With API keys configured, a request without a valid key gets 401, before its body is read.
3. A body over `VAE_MAX_BODY_BYTES` gets 413: at once when Content-Length says so, or as soon as
   the bytes read pass the limit (the rest is never read).
4. The whole body is read before the request takes a slot, so a slow client holds none: it has
   `VAE_BODY_TIMEOUT_S` to send it (else 408), and the bodies held in memory at once are bounded
   by `VAE_MAX_BUFFERED_BODY_BYTES` (beyond that, 503 with `Retry-After`).
5. While the service shuts down (SIGTERM), new requests get 503 with `Connection: close`; their
   body has been read, so the client gets that answer rather than a reset.
6. At most `VAE_MAX_CONCURRENT_REQUESTS` requests are in flight or queued; the next one gets 503
   with `Retry-After` at once instead of waiting in a queue without end.
7. A request still unanswered `VAE_REQUEST_TIMEOUT_S` after it took its slot gets 504 and frees
   the slot: the time is the service's own work, never the client's sending.
8. An unexpected exception fails that request alone, as a JSON 500, and is logged.

Every request it sees gets an `X-Request-ID` (the client's, or a new one), is counted in the
metrics, and (VAE_ACCESS_LOG) gets one log line with its id, endpoint, model, status, latency
and batch size; with VAE_TRACING on, a span too (the caller's `traceparent` its parent), whose
trace id the log line and the `traceresponse` answer header carry. A client that hangs up
before it is answered (nothing sent yet) is recorded as 499, whichever path read its body.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    InternalError,
    RequestTimeout,
    ServiceError,
    TimedOut,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from service.http.endpoints import ENDPOINTS
from service.http.errors import INTERNAL_ERROR, OIP_PREFIX, error_response
from service.http.state import AppState
from service.observability.context import RequestInfo, current_request
from service.observability.logs import escape

logger = logging.getLogger("service")

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN = frozenset({"/", "/docs", "/redoc", "/openapi.json", "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/v2/health/")

# Paths become bounded labels: a model name or a typo in the URL must not create a time series.
FIXED_ENDPOINTS = frozenset(
    {
        *(e.path for e in ENDPOINTS),
        "/models",
        "/models/reload",
        "/v2",
        "/v2/models",
        "/v2/repository/index",
        "/metrics",
    }
)
ENDPOINT_PATTERNS = [
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "/v2/models/{model}/infer"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$"), "/v2/models/{model}/ready"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?$"), "/v2/models/{model}"),
    (re.compile(r"^/v2/repository/models/[^/]+/load$"), "/v2/repository/models/{model}/load"),
    (re.compile(r"^/v2/repository/models/[^/]+/unload$"), "/v2/repository/models/{model}/unload"),
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
    with every one of them, so neither timing nor early exit tells how much of a key matched.
    Keys are compared as UTF-8 bytes: a key with non-ASCII characters is sent as its UTF-8
    bytes, and any other bytes (its Latin-1 spelling, say) are a different key."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def matches(self, candidate: bytes) -> bool:
        digest = hashlib.sha256(candidate).digest()
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


def presented_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`, if any, as the bytes
    sent."""
    scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
    if scheme.lower() == b"bearer" and credentials.strip():
        return credentials.strip()
    api_key = headers.get(b"x-api-key", b"").strip()
    return api_key or None


async def send_error(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
    """`error` as the answer: `{"error": ...}` on the Open Inference Protocol's paths."""
    await error_response(error, scope["path"].startswith(OIP_PREFIX))(scope, receive, send)


CLIENT_GONE = 499  # what nginx logs for a client that hung up: not the service's error
# The first bytes of every body are not counted against VAE_MAX_BUFFERED_BODY_BYTES: bodies of a
# few images always get through, however many large ones are being received meanwhile.
UNCOUNTED_BODY_BYTES = 64 * 1024


class Expiry:
    """Cancels the current task after `seconds` (a bare timer rather than asyncio.timeout(): the
    same cancellation for less work, and this runs for every request); `expired` tells its
    cancellation from any other."""

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.expired = False
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self.task.cancel()

    def cancel(self) -> None:
        self._timer.cancel()

    def absorb(self) -> None:
        """After catching the CancelledError this timer caused: the task goes on."""
        self.task.uncancel()


@dataclass(slots=True)
class Body:
    """A request body as it is received, and what it counts against the budget.

    A body of one chunk is kept as it came; a longer one grows in one buffer. Kept as a list of
    64 KiB pieces until joined, 8 bodies of 15 MB left 120 MB of freed pieces in the heap after
    the join (RSS 470 MiB at peak); one buffer is mapped on its own, and unmapped once copied out.
    """

    first: bytes = b""
    buffer: bytearray | None = None
    size: int = 0
    counted: int = 0

    def add(self, chunk: bytes) -> None:
        if self.size == 0:
            self.first = chunk
        else:
            if self.buffer is None:
                self.buffer, self.first = bytearray(self.first), b""
            self.buffer += chunk
        self.size += len(chunk)

    def whole(self) -> bytes:
        if self.buffer is not None:  # copied out once, and the buffer let go
            self.first, self.buffer = bytes(self.buffer), None
        return self.first


def replay(body: bytes, receive: Receive) -> Receive:
    """The app's receive(): the whole body as one message, then the connection's own (which
    says http.disconnect when the client goes away)."""
    replayed = False

    async def receive_body() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_body


class Guard:
    """See the module docstring. `state.draining` turns true when shutdown begins."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.settings = state.settings
        self.keys = KeyCheck(state.settings.api_key_list())
        self.buffered = 0  # body bytes counted against VAE_MAX_BUFFERED_BODY_BYTES

    @property
    def in_flight(self) -> int:
        """Requests in flight, gRPC calls included: they share VAE_MAX_CONCURRENT_REQUESTS."""
        return self.state.in_flight

    @in_flight.setter
    def in_flight(self, count: int) -> None:
        self.state.in_flight = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        info = RequestInfo(request_id(headers))
        tracing = self.state.tracing
        if tracing is not None:
            label = endpoint_label(scope["path"])
            route = None if label == "other" else label
            info.trace = tracing.http_request(scope, headers, route, info.request_id)
        token = current_request.set(info)
        status: int | None = None  # until a response starts
        gone = False  # whether the connection said the client hung up
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                added = [(b"x-request-id", info.request_id.encode())]
                if info.trace is not None:
                    added.append((b"traceresponse", info.trace.traceresponse()))
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        async def watched_receive() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        try:
            await self._check(scope, watched_receive, send_with_id, headers)
        finally:
            info.end()  # lets go of the model version it used (a retired one is closed)
            current_request.reset(token)
            # Nothing sent: the client hung up (on any body-reading path, the app's included),
            # which is not the service's error; otherwise something failed to answer at all.
            if status is None:
                status = CLIENT_GONE if gone else 500
            self._record(scope, info, status, time.perf_counter() - start)
            if info.trace is not None:
                info.trace.end_http(status, info.model, info.batch_size)

    def _record(self, scope: Scope, info: RequestInfo, status: int, seconds: float) -> None:
        self.state.metrics.count_request(endpoint_label(scope["path"]), info.model, status, seconds)
        access_log = self.state.access_log
        if access_log is not None:
            fields: dict[str, object] = {"request_id": info.request_id}
            if info.trace is not None:  # tracing on: the request's trace, beside its id
                fields["trace_id"] = info.trace.trace_id
            fields.update(
                method=scope["method"],
                endpoint=scope["path"],
                model=info.model or None,
                status=status,
                latency_ms=round(seconds * 1000, 3),
                batch_size=info.batch_size or None,
            )
            message = f"{scope['method']} {scope['path']} {status} {seconds * 1000:.1f} ms"
            access_log.write(message, fields)

    async def _check(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        """Answers the request, or refuses it (or finds the client gone, and sends nothing)."""
        refusal = self._unauthorized(headers) or self._declared_too_large(headers)
        if refusal is not None:  # before any of the body is read (or 100 Continue sent)
            await send_error(scope, receive, send, refusal)
            return
        body = Body()
        try:
            outcome = await self._receive(receive, body)
            if outcome is None:
                return
            refusal = outcome if isinstance(outcome, ServiceError) else self._refusal()
            if refusal is not None:
                await send_error(scope, receive, send, refusal)
                return
            self.in_flight += 1
            metrics = self.state.metrics
            metrics.in_flight = self.in_flight
            try:
                await self._serve(scope, replay(body.whole(), receive), send)
            finally:
                self.in_flight -= 1
                metrics.in_flight = self.in_flight
        finally:
            self.buffered -= body.counted

    def _unauthorized(self, headers: dict[bytes, bytes]) -> ServiceError | None:
        if not self.keys.enabled:
            return None
        key = presented_key(headers)
        if key is not None and self.keys.matches(key):
            return None
        problem = "missing" if key is None else "invalid"
        return Unauthorized(
            "",
            f"{problem} API key: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            {"WWW-Authenticate": "Bearer"},
        )

    def _declared_too_large(self, headers: dict[bytes, bytes]) -> ServiceError | None:
        # The parser has checked the value is a number; whitespace around it is allowed (OWS).
        declared = headers.get(b"content-length", b"").strip(b" \t")
        if declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            return self._too_large()
        return None

    async def _receive(self, receive: Receive, body: Body) -> Message | ServiceError | None:
        """Reads the whole body into `body`: its last message, an error to answer with, or None
        when the client hung up."""
        settings = self.settings
        expiry = Expiry(settings.body_timeout_s)
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                if chunk:
                    body.add(chunk)
                    if body.size > settings.max_body_bytes:
                        return self._too_large()
                    counted = max(body.size - UNCOUNTED_BODY_BYTES, 0)
                    self.buffered += counted - body.counted
                    body.counted = counted
                    if counted and self.buffered > settings.max_buffered_body_bytes:
                        return self._no_room()
                if not message.get("more_body", False):
                    return message
        except asyncio.CancelledError:
            if not expiry.expired:
                raise  # shutdown's grace ran out: this request was never accepted
            expiry.absorb()
            return RequestTimeout(
                "",
                f"request body not received within {settings.body_timeout_s:g} s "
                "(VAE_BODY_TIMEOUT_S): send it faster, or a smaller one",
                {"Connection": "close"},
            )
        finally:
            expiry.cancel()

    def _refusal(self) -> ServiceError | None:
        """Why a request whose body has arrived is turned away before it takes a slot, if it
        is."""
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
        return None

    def _too_large(self) -> TooLarge:
        limit = self.settings.max_body_bytes
        return TooLarge(
            "",
            f"request body larger than {limit} bytes ({size_text(limit)}, VAE_MAX_BODY_BYTES): "
            "send fewer images per request, or application/x-npy uint8",
            {"Connection": "close"},
        )

    def _no_room(self) -> Unavailable:
        settings = self.settings
        limit = settings.max_buffered_body_bytes
        return Unavailable(
            "",
            f"the request bodies being received fill the memory set aside for them ({limit} "
            f"bytes, {size_text(limit)}, VAE_MAX_BUFFERED_BODY_BYTES); retry after "
            f"{settings.retry_after_s} s",
            settings.retry_after_s,
            {"Connection": "close"},
        )

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        expiry = Expiry(self.settings.request_timeout_s)

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                expiry.cancel()  # answered in time; a slow reader is not a timeout
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if not expiry.expired:
                # Only uvicorn cancels a request otherwise: when the shutdown grace ran out.
                logger.error(
                    "%s %s cut off by shutdown: not finished within VAE_SHUTDOWN_GRACE_S",
                    scope["method"],
                    escape(scope["path"]),
                )
                raise
            expiry.absorb()
            logger.warning(
                "%s %s timed out after %s s",
                scope["method"],
                escape(scope["path"]),
                self.settings.request_timeout_s,
            )
            if not started:
                timed_out = TimedOut(
                    "",
                    f"the service did not finish this request within "
                    f"{self.settings.request_timeout_s:g} s of receiving it "
                    "(VAE_REQUEST_TIMEOUT_S): it is busy; retry later, or split the request",
                )
                await send_error(scope, receive, send, timed_out)
        except Exception:
            logger.exception("%s %s failed", scope["method"], escape(scope["path"]))
            if not started:
                await send_error(scope, receive, send, InternalError("", INTERNAL_ERROR))
        finally:
            expiry.cancel()


def size_text(limit: int) -> str:
    return f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit / 2**10:g} KiB"
