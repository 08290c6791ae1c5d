"""uvicorn's httptools protocol, writing each response's head and body to the socket as one.

uvicorn writes a response in two calls: the status line and headers when the app sends
`http.response.start`, then the body. Each call is a send() at once: two system calls and two
TCP segments per response, and the client wakes up for each: for a one-image answer of a few
hundred bytes, a noticeable share of the event loop's time. Here a write is held until the next
write (the body, in the same event-loop step) and a small body goes out with it in one send().
A write that no second write follows in the same step (a bodyless 204 or HEAD answer) goes out
at the end of that step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Data = bytes | bytearray | memoryview
# Bodies up to this size are joined to the head before them and sent in one piece: the copy is
# cheap next to a system call, and a one-image answer is well under 10 kB.
JOIN_MAX_BYTES = 64 * 1024


class CoalescingTransport(asyncio.Transport):
    """Wraps a socket transport: a write waits for the next one, or for the end of the loop
    step, and the two leave together. Everything else is the socket transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: Data | None = None

    def write(self, data: Data) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._held = None
        if len(data) <= JOIN_MAX_BYTES:
            self._transport.write(b"".join((held, data)))
        else:  # a large body: the copy would cost more than the second call saves
            self._transport.write(held)
            self._transport.write(data)

    def writelines(self, list_of_data: Iterable[Data]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held, if anything (the loop calls this at the end of the step)."""
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()  # what was written leaves before the connection closes
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
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
    """uvicorn's httptools protocol, writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))
