"""What one connection may hold on the sending side: answers its client does not read.

An answer is handed to the socket transport whole; what the kernel does not take at once waits in
the transport's buffer, in this process's memory, until the client reads. A client that asks
for large answers and never reads would hold them for as long as it keeps the connection open.
`UnsentAnswers`, shared by every connection of the server, bounds that:

- a write timeout (`VAE_WRITE_TIMEOUT_S`): a connection whose unsent bytes make no progress (the
  kernel takes none of them) for that long is aborted. Progress is bytes the kernel accepted, so
  a client that reads slowly but steadily is never cut off;
- unsent bytes per connection (`VAE_MAX_UNSENT_BYTES`): past it the connection is aborted at
  once, whatever its pipeline holds;
- unsent bytes across connections (`VAE_MAX_UNSENT_TOTAL_BYTES`): past it the connection stalled
  the longest (its last progress the oldest) is aborted first, until the total is under it.

An aborted connection frees its request slot: the request still sending is told the client is
gone, and its queued pipelined requests are dropped unstarted. The protocol
(`service.http.connection`) also starts no pipelined request while the answer before it is still
unsent past the transport's high-water mark: it waits until the client reads, holding no slot.

Only connections with unsent bytes are tracked, and one timer serves them all: an answer the
kernel takes at once (nearly all of them) costs one buffer-size check.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from service.settings import Settings

MIB = 2**20

# Why a connection was closed on the sending side: the log's wording.
WRITE_TIMED_OUT = "answer not read for VAE_WRITE_TIMEOUT_S, closed"
UNSENT_TOO_LARGE = "unread answers over VAE_MAX_UNSENT_BYTES, closed"
UNSENT_TOTAL_TOO_LARGE = (
    "stalled the longest with unread answers over VAE_MAX_UNSENT_TOTAL_BYTES, closed"
)

# Progress is checked this many times per write timeout: a stalled connection is aborted between
# one and 1.25 timeouts after the kernel last took a byte of it.
CHECKS_PER_TIMEOUT = 4


@dataclass(frozen=True, slots=True)
class SendLimits:
    """The sending side's limits, from the settings of the same names."""

    write_timeout_s: float = 10.0
    max_unsent_bytes: int = 16 * MIB
    max_unsent_total_bytes: int = 64 * MIB

    @classmethod
    def from_settings(cls, settings: Settings) -> SendLimits:
        # every field is the setting of the same name
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


class Sender(Protocol):
    """What `UnsentAnswers` needs of a connection."""

    def unsent_bytes(self) -> int:
        """Bytes written that the kernel has not taken yet."""
        ...

    def sent_bytes(self) -> int:
        """Bytes the kernel has taken so far (it only grows)."""
        ...

    def abort_sending(self, reason: str) -> None:
        """Abort the connection, for `reason` (logged)."""
        ...


@dataclass(slots=True)
class Progress:
    sent: int  # the connection's sent bytes when last seen to grow
    since: float  # when that was (the loop's clock)


class UnsentAnswers:
    """The connections with unsent bytes, and the bounds on them. See the module docstring."""

    def __init__(self, limits: SendLimits) -> None:
        self.limits = limits
        self._stalled: dict[Sender, Progress] = {}
        self._ticker: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._stalled)

    def total(self) -> int:
        """Unsent bytes of every tracked connection."""
        return sum(sender.unsent_bytes() for sender in self._stalled)

    def written(self, sender: Sender, loop: asyncio.AbstractEventLoop) -> None:
        """After a write on `sender`: track it while the kernel has not taken everything, and
        enforce both byte bounds."""
        unsent = sender.unsent_bytes()
        if unsent == 0:  # the kernel took it all: nothing is held
            return
        if unsent > self.limits.max_unsent_bytes:
            self._abort(sender, UNSENT_TOO_LARGE)
            return
        progress = self._stalled.get(sender)
        if progress is None:
            self._stalled[sender] = Progress(sender.sent_bytes(), loop.time())
            if self._ticker is None:
                self._arm(loop)
        elif sender.sent_bytes() > progress.sent:  # it read since the last check
            progress.sent, progress.since = sender.sent_bytes(), loop.time()
        total = self.total()
        while total > self.limits.max_unsent_total_bytes and self._stalled:
            longest = min(self._stalled.items(), key=lambda item: item[1].since)[0]
            total -= longest.unsent_bytes()
            self._abort(longest, UNSENT_TOTAL_TOO_LARGE)

    def forget(self, sender: Sender) -> None:
        """The connection is gone."""
        self._stalled.pop(sender, None)

    def _abort(self, sender: Sender, reason: str) -> None:
        self.forget(sender)
        sender.abort_sending(reason)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = self.limits.write_timeout_s / CHECKS_PER_TIMEOUT
        self._ticker = loop.call_later(interval, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every connection still holding bytes: progress noted, or aborted once it has made
        none for the write timeout."""
        self._ticker = None
        now = loop.time()
        for sender, progress in list(self._stalled.items()):
            if sender.unsent_bytes() == 0:
                del self._stalled[sender]
                continue
            sent = sender.sent_bytes()
            if sent > progress.sent:
                progress.sent, progress.since = sent, now
            elif now - progress.since >= self.limits.write_timeout_s:
                self._abort(sender, WRITE_TIMED_OUT)
        if self._stalled:
            self._arm(loop)
