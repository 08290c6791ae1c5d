"""What the supervisor and a worker say to each other: JSON messages and accepted connections
over one Unix SOCK_SEQPACKET socket pair (each message arrives whole, a connection as a file
descriptor attached to a one-byte message), read on the event loop."""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson

logger = logging.getLogger("service")

Message = dict[str, Any]
CONNECTION = b"c"  # the body of a message that carries a connection
MAX_MESSAGE = 1 << 20  # far above any message sent (a reload's report is a few KiB)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, the worker's end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class Channel:
    """One end of a channel on the running event loop: `on_message(message)` for each JSON
    message, `on_connection(sock)` for each connection handed over, `on_closed()` once the other
    end is gone."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message], object],
        on_connection: Callable[[socket.socket], object] | None = None,
        on_closed: Callable[[], object] | None = None,
    ) -> None:
        self.sock = sock
        self.on_message = on_message
        self.on_connection = on_connection
        self.on_closed = on_closed
        self.closed = False
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        fd_size = array.array("i").itemsize
        while not self.closed:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(fd_size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, ancillary = b"", []
            if not data:
                self.close()
                if self.on_closed is not None:
                    self.on_closed()
                return
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fd_size])
            if data == CONNECTION:
                for fd in fds:
                    connection = socket.socket(fileno=fd)
                    if self.on_connection is None:
                        connection.close()
                    else:
                        self.on_connection(connection)
                continue
            for fd in fds:  # none expected: never leak one
                socket.close(fd)
            self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.error("ignored a message that is not JSON on the worker channel: %r", data[:80])
            return
        self.on_message(message)

    async def send(self, message: Message) -> None:
        """Send one message (waits while the other end's buffer is full)."""
        if not self.closed:
            with contextlib.suppress(OSError):  # the other end is gone: its reader says so
                await self._loop.sock_sendall(self.sock, orjson.dumps(message))

    def hand_over(self, connection: socket.socket) -> bool:
        """Pass an accepted connection to the other end and close it here; False (the
        connection kept) when it cannot go: the other end is gone, or its buffer is full."""
        try:
            socket.send_fds(self.sock, [CONNECTION], [connection.fileno()])
        except OSError:
            return False
        connection.close()
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
