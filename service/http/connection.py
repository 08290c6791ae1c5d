"""What one connection may hold on the receiving side, bounded before any of it reaches the app.

`GuardedHttpToolsProtocol` is the server's protocol (`python -m service`): uvicorn's httptools
protocol with the coalescing writes of `service.http.transport`, plus

- a cap on open connections (`VAE_MAX_CONNECTIONS`): at the cap a new connection takes the place
  of the connection idle the longest (one that never spoke, or one between requests), and only
  when none is idle does it get a canned 503 and is closed at once, before a byte of it is parsed:
  connections opened and left silent cannot keep the service from new clients;
- a bounded request head: its bytes (request line and headers, `VAE_MAX_HEADER_BYTES`) are
  counted as they arrive and the parser is fed no further than the limit, its headers counted
  (`VAE_MAX_HEADERS`) once parsed; past either, 431 and the connection is closed, before the app
  (and so the API key check) ever sees the request;
- time limits: the head must arrive within `VAE_HEAD_TIMEOUT_S` of its first byte (else 408 and
  close); a connection that never sends a byte, or sends nothing after its last answer, is closed
  silently after `VAE_IDLE_TIMEOUT_S`; the rest of the body of a request already answered (a
  401, a probe) is read and thrown away for at most `VAE_BODY_TIMEOUT_S` after the answer. The guard
  (`service.http.guard`) times the body of the requests it reads itself.

The sending side (answers a client does not read: the write timeout, the bounds on unsent bytes)
is `service.http.sending`'s; the protocol reports its writes there, aborts the connections it
picks, and starts no pipelined request while the answer before it is still unsent past the
transport's high-water mark (until the client reads, it holds no request slot).

Refusals and closes are logged at most once per `LOG_EVERY_S`, with how many of each kind there
were: a flood of them can neither fill the log nor go unnoticed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle
from uvicorn.server import ServerState

from service.http.sending import SendLimits, UnsentAnswers
from service.http.transport import CoalescingHttpToolsProtocol
from service.settings import Settings

logger = logging.getLogger("service")

LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The protocol's limits, from the settings of the same names."""

    max_connections: int = 896
    max_header_bytes: int = 16384
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 5.0
    retry_after_s: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        # every field is the setting of the same name
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


# Why a connection was refused: the log's wording, and the answer's status.
OVER_CAP = "over VAE_MAX_CONNECTIONS (503)"
EVICTED = "idle, closed for a new one at VAE_MAX_CONNECTIONS"
HEAD_TOO_LARGE = "request head over VAE_MAX_HEADER_BYTES (431)"
TOO_MANY_HEADERS = "more headers than VAE_MAX_HEADERS (431)"
HEAD_TOO_SLOW = "request head not received within VAE_HEAD_TIMEOUT_S (408)"


class RefusalLog:
    """Counts refused connections by reason; the first refusal is logged at once, later ones
    once per `every_s` as counts."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self.pending: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def note(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        self.pending[reason] += 1
        self.total[reason] += 1
        if self._timer is None:  # a quiet period ends: say so now, then at most every every_s
            self._flush(loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.pending:
            self._timer = None
            return
        count = sum(self.pending.values())
        kinds = ", ".join(f"{n} {reason}" for reason, n in self.pending.most_common())
        logger.warning(
            "refused or closed %d connection%s in the last %g s: %s",
            count,
            "" if count == 1 else "s",
            self.every_s,
            kinds,
        )
        self.pending.clear()
        self._timer = loop.call_later(self.every_s, self._flush, loop)


def canned_response(
    status: int,
    detail: str,
    default_headers: list[tuple[bytes, bytes]],
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A whole JSON error answer that closes the connection, written without the app."""
    body = orjson.dumps({"detail": detail})
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    lines = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in headers)]
    return b"".join([*lines, b"\r\n", body])


class IdleConnections:
    """The connections with nothing under way (never spoke, or between requests), the one idle
    the longest first: at the cap, a new connection takes its place."""

    def __init__(self) -> None:
        self._idle: dict[GuardedHttpToolsProtocol, None] = {}  # in the order they fell idle

    def add(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._idle.pop(protocol, None)
        self._idle[protocol] = None

    def discard(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._idle.pop(protocol, None)

    def pop_oldest(self) -> GuardedHttpToolsProtocol | None:
        for protocol in self._idle:
            del self._idle[protocol]
            return protocol
        return None


class HeadRefused(Exception):
    """Raised inside a parser callback to stop parsing a head the limits refuse."""


class GuardedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """See the module docstring. Built by `protocol_factory`, one per connection."""

    watch_writes = True

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
        refusals: RefusalLog,
        idle: IdleConnections,
        unsent: UnsentAnswers,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.refusals = refusals
        self.idle = idle
        self.unsent = unsent
        self._deferred: tuple[RequestResponseCycle, ASGI3Application] | None = None
        # uvicorn's idle timer (typed int, used as a float), here for new connections too
        self.timeout_keep_alive = limits.idle_timeout_s  # type: ignore[assignment]
        self._over_cap = False
        self._in_head = False  # from a request's first byte to the end of its headers
        self._in_message = False  # from a request's first byte to the end of its body
        self._head_bytes = 0  # bytes fed to the parser since the head began
        self._head_inside = False  # the head began inside a chunk: not all its bytes counted
        self._deadline: asyncio.TimerHandle | None = None
        self._refused: tuple[bytes, str] | None = None  # set by a callback that refuses the head
        self._refusing = False  # an answer that closes the connection is written or waiting
        self._pending: bytes | None = None  # that answer, waiting for the response before it

    # --- the connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            idlest = self.idle.pop_oldest()
            if idlest is None:
                # Refused before the protocol takes the connection on: nothing parsed or kept.
                self._over_cap = True
                transport.write(self._canned_503())
                transport.close()
                self.refusals.note(OVER_CAP, self.loop)
                return
            idlest.transport.close()  # no answer is owed on it
            self.refusals.note(EVICTED, self.loop)
        super().connection_made(transport)
        self._fall_idle()  # uvicorn times idle connections only between requests: here, all

    def _fall_idle(self) -> None:
        self.idle.add(self)
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _canned_503(self) -> bytes:
        limits = self.limits
        return canned_response(
            503,
            f"the service has too many open connections ({limits.max_connections}, "
            f"VAE_MAX_CONNECTIONS); retry after {limits.retry_after_s} s",
            self.server_state.default_headers,
            ((b"retry-after", str(limits.retry_after_s).encode()),),
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.idle.discard(self)
        if self._over_cap:
            return  # uvicorn never knew this connection
        self.unsent.forget(self)
        self.pipeline.clear()  # requests never started: their bodies go now
        self._deferred = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._over_cap or self._refusing:
            return  # the connection is being closed: what else comes is not read
        self._unset_keepalive_if_required()
        self.idle.discard(self)
        while data:
            if self._in_message and not self._in_head:  # a body: the guard bounds it
                piece, data = data, b""
            else:
                if not self._in_head:
                    self._in_head, self._head_bytes, self._head_inside = True, 0, False
                # Feed the parser no further than the limit: it would buffer a long header.
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse_head(*self._head_too_large())
                    return
                piece, data = data[:room], data[room:]
                self._head_bytes += len(piece)
            if not self._feed(piece):
                return
        if self._in_head and self._deadline is None:
            # A head not whole in the chunk it began in is timed from now (from about its first
            # byte); one that arrives whole, as nearly all do, costs no timer.
            self._arm(self.limits.head_timeout_s, self._head_timed_out)

    def _feed(self, piece: bytes) -> bool:
        """Parse `piece`, as uvicorn's data_received does; False once the connection is done."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserError:
            if self._refused is not None:
                self._refuse_head(*self._refused)
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self._refusing and not self.transport.is_closing()

    # --- the head -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._in_head:  # a pipelined request that began inside the previous one's bytes
            self._in_head, self._head_bytes, self._head_inside = True, 0, True
        self._in_message = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_deadline()
        # Checked here rather than per header, which would cost every request a call per
        # header: the byte limit already bounds what a head can hold until now.
        if len(self.headers) > self.limits.max_headers:
            self._refused = self._too_many_headers()
            raise HeadRefused
        if self._head_inside and self._head_size() > self.limits.max_header_bytes:
            self._refused = self._head_too_large()
            raise HeadRefused
        super().on_headers_complete()

    def _head_size(self) -> int:
        """The head's size as parsed (request line and headers, without the method): for a head
        whose bytes were not all counted as they arrived."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _head_too_large(self) -> tuple[bytes, str]:
        limit = self.limits.max_header_bytes
        detail = (
            f"request head larger than {limit} bytes (request line and headers, "
            "VAE_MAX_HEADER_BYTES): send fewer or shorter headers and a shorter URL"
        )
        return self._answer(431, detail), HEAD_TOO_LARGE

    def _too_many_headers(self) -> tuple[bytes, str]:
        detail = (
            f"more than {self.limits.max_headers} request headers (VAE_MAX_HEADERS): "
            "send fewer headers"
        )
        return self._answer(431, detail), TOO_MANY_HEADERS

    def _head_timed_out(self) -> None:
        self._deadline = None
        detail = (
            f"request head not received within {self.limits.head_timeout_s:g} s "
            "(VAE_HEAD_TIMEOUT_S): send the request line and headers at once"
        )
        self._refuse_head(self._answer(408, detail), HEAD_TOO_SLOW)

    def _answer(self, status: int, detail: str) -> bytes:
        return canned_response(status, detail, self.server_state.default_headers)

    def _refuse_head(self, response: bytes, reason: str) -> None:
        """Answer `response` and close; after the response under way, if one is."""
        self._refusing = True
        self._cancel_deadline()
        self.refusals.note(reason, self.loop)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.disconnected:
            self._pending = response  # a pipelined head: its answer follows the one before
            self.flow.pause_reading()
            return
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    # --- the body and after ---------------------------------------------------------------------

    def on_message_complete(self) -> None:
        self._in_message = False
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # The rest of a body answered early (a 401, a probe) is read: idle from here on.
            self._cancel_deadline()
            if not self.pipeline:
                self._fall_idle()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self.transport.is_closing():
            self.transport.write(pending)
            self.transport.close()
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn found nothing more to do
            self.idle.add(self)
        cycle = self.cycle
        if self.transport.is_closing() or not (self._in_message and not self._in_head):
            return
        if cycle is not None and cycle.response_complete:
            # Answered before its body was whole: the rest is read and thrown away, for no
            # longer than a body may take.
            self._arm(self.limits.body_timeout_s, self._close_quietly)

    # --- the sending side -------------------------------------------------------------------------

    def written(self) -> None:
        self.unsent.written(self, self.loop)

    def unsent_bytes(self) -> int:
        return self.out.unsent

    def sent_bytes(self) -> int:
        return self.out.written - self.out.unsent

    def abort_sending(self, reason: str) -> None:
        self.refusals.note(reason, self.loop)
        self.pipeline.clear()
        self._deferred = None
        self.transport.abort()  # connection_lost frees the request under way, if any

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if self.flow.write_paused and not self.transport.is_closing():
            # The answer before is still unsent past the high-water mark: this request waits
            # for the client to read (resume_writing), holding no slot, and its answer will not
            # wait on that drain.
            self._deferred = (cycle, app)
            return
        super()._start_asgi_task(cycle, app)

    def resume_writing(self) -> None:
        super().resume_writing()
        deferred, self._deferred = self._deferred, None
        if deferred is not None and not self.transport.is_closing():
            super()._start_asgi_task(*deferred)

    def _close_quietly(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    # --- the one timer ---------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(delay, callback)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def protocol_factory(
    limits: ConnectionLimits, send_limits: SendLimits
) -> Callable[..., GuardedHttpToolsProtocol]:
    """What uvicorn's `http` setting takes: builds one protocol per connection, all sharing
    one refusal log, one list of idle connections and one account of unsent answers."""
    refusals = RefusalLog()
    idle = IdleConnections()
    unsent = UnsentAnswers(send_limits)

    def build(
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> GuardedHttpToolsProtocol:
        return GuardedHttpToolsProtocol(
            config,
            server_state,
            app_state,
            _loop,
            limits=limits,
            refusals=refusals,
            idle=idle,
            unsent=unsent,
        )

    return build
