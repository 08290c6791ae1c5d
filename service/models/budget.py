"""The answer budget: memory of answers in progress, bounded across every request.

A large answer costs far more memory than its request: /generate n=1024 is a 25-byte body and a
3.2 MB float32 result, rendered into 8.6 MB of JSON. Without a bound, every request slot
(`VAE_MAX_CONCURRENT_REQUESTS`) may hold one: inference is quick and rendering is one thread, so
results pile up waiting for it (128 x 3.2 MB), whatever the clients do with the answers.

So a request reserves its answer's size (estimated before inference, from what it asks for)
before its operation runs, and gives it back once the answer is rendered: from then on its bytes
are the connection's, bounded by the sending side (`service.http.sending`). A request
whose answer does not fit waits its turn (first come, first served) holding its slot, within
`VAE_REQUEST_TIMEOUT_S` (else 504, as for any request too slow to serve); an answer larger than
the whole budget runs alone. Small answers (`SMALL_ANSWER_BYTES`) never wait: they count against
the budget, so large ones wait for them, but they are never queued behind large ones. As with a
weighted semaphore, memory is the resource admitted, not requests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

# At most this many bytes, an answer never waits: 64 images as JSON are about 0.8 MB, and such
# requests take milliseconds, so letting them through costs little memory and keeps their latency.
SMALL_ANSWER_BYTES = 1024 * 1024
# Bytes an answer takes per array value while in progress: the float32 result, plus its rendering
# (JSON: orjson writes a float32 in 9 to 12 characters and a comma; .npy: a copy; PNG: a byte).
BYTES_PER_VALUE = {"json": 4 + 12, "npy": 4 + 4, "png": 4 + 1}


@dataclass(slots=True)
class _Waiter:
    size: int
    granted: asyncio.Future[None]


class AnswerBudget:
    """`capacity` bytes of answers in progress at once. See the module docstring."""

    def __init__(self, capacity: int, small: int = SMALL_ANSWER_BYTES) -> None:
        self.capacity = capacity
        self.small = small
        self.held = 0  # bytes reserved by the answers in progress (small ones may pass capacity)
        self._waiters: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return sum(1 for w in self._waiters if not w.granted.done())

    async def acquire(self, size: int) -> int:
        """Reserves `size` bytes (at most the capacity), waiting for room first unless the
        answer is small; returns what it holds, for `release`. A wait cancelled (the request
        timed out) holds nothing."""
        small = size <= self.small
        size = min(size, self.capacity)
        if small or (not self._waiters and self.held + size <= self.capacity):
            self.held += size
        else:
            await self._wait(size)
        return size

    def release(self, size: int) -> None:
        """Gives back what `acquire` returned."""
        self.held -= size
        if self._waiters:
            self._grant()

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """`acquire` and `release` around a block."""
        held = await self.acquire(size)
        try:
            yield
        finally:
            self.release(held)

    async def _wait(self, size: int) -> None:
        waiter = _Waiter(size, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.granted
        except asyncio.CancelledError:
            if waiter.granted.done() and not waiter.granted.cancelled():
                self.held -= size  # granted just as it was cancelled: give it back
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            self._grant()  # the waiter behind it may fit now
            raise

    def _grant(self) -> None:
        """Room to the waiters at the head of the queue, in order, while it lasts."""
        while self._waiters:
            head = self._waiters[0]
            if head.granted.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.held + head.size > self.capacity:
                return
            self._waiters.popleft()
            self.held += head.size
            head.granted.set_result(None)


def answer_bytes(values: int, fmt: str) -> int:
    """What an answer of `values` array values in format `fmt` reserves."""
    return values * BYTES_PER_VALUE.get(fmt, BYTES_PER_VALUE["json"])
