"""uvicorn's httptools protocol, writing each response's head and body to the socket as one.

uvicorn writes a response in two calls: the status line and headers when the app sends
`http.response.start`, then the body. Each call is a send() at once: two system calls and two
TCP segments per response, and the client wakes up for each: for a one-image answer of a few
hundred bytes, a noticeable share of the event loop's time. Here a write is held until the next
write (the body, in the same event-loop step) and a small body goes out with it in one send().
A write that no second write follows in the same step (a bodyless 204 or HEAD answer) goes out
at the end of that step.

Nothing is written to a socket transport that is closing (a reset, an abort, a close): uvloop
raises "the handler is closed" there, which would reach the app as an exception. The bytes are
dropped instead, as asyncio's own transports do once a connection is lost. Every write is
counted (`written`) and reported to `on_write`, which the protocol uses to bound what a client
leaves unread (`service.http.sending`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Data = bytes | bytearray | memoryview
# Bodies up to this size are joined to the head before them and sent in one piece: the copy is
# cheap next to a system call, and a one-image answer is well under 10 kB.
JOIN_MAX_BYTES = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """Wraps a socket transport: a write waits for the next one, or for the end of the loop
    step, and the two leave together. Everything else is the socket transport's own."""

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: Data | None = None
        self._on_write = on_write
        self.written = 0  # bytes handed to the socket transport so far

    def _send(self, data: Data) -> None:
        if self._transport.is_closing():
            return  # reset or closed: the client will not read it
        self._transport.write(data)
        self.written += len(data)
        if self._on_write is not None:
            self._on_write()

    @property
    def unsent(self) -> int:
        """Bytes written to the socket transport that the kernel has not taken yet."""
        return self._transport.get_write_buffer_size()

    def write(self, data: Data) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._held = None
        if len(data) <= JOIN_MAX_BYTES:
            self._send(b"".join((held, data)))
        else:  # a large body: the copy would cost more than the second call saves
            self._send(held)
            self._send(data)

    def writelines(self, list_of_data: Iterable[Data]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held, if anything (the loop calls this at the end of the step)."""
        if self._held is not None:
            held, self._held = self._held, None
            self._send(held)

    def close(self) -> None:
        self.flush()  # what was written leaves before the connection closes
        if not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        if not self._transport.is_closing():
            self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_write_buffer_size(self) -> int:
        held = 0 if self._held is None else len(self._held)
        return self._transport.get_write_buffer_size() + held

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport`; a subclass that
    sets `watch_writes` has `written()` called after each write reaches the socket transport."""

    watch_writes = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        on_write = self.written if self.watch_writes else None
        self.out = CoalescingTransport(transport, self.loop, on_write)
        super().connection_made(self.out)

    def written(self) -> None:
        """Bytes just went to the socket transport (only with `watch_writes`)."""
