"""Uploaded images are decoded here: in a bounded pool of threads, each decode cancelled while
it still waits for a thread when its request ends first (a 504, or a client that left).

A decode that has started runs to its end (a thread cannot be stopped), but what one decode
may cost is bounded before it starts (`service.codecs.image_cost`), and how many run at once by
VAE_DECODE_THREADS: uploads cannot take every core, and abandoned ones cost nothing more.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from starlette.requests import ClientDisconnect
from starlette.types import Receive

P = ParamSpec("P")
T = TypeVar("T")


def decode_thread_count(configured: int) -> int:
    """VAE_DECODE_THREADS, with 0 meaning half the cores (at least 1): the other half is left to
    the models and the event loop."""
    return configured or max(1, (os.cpu_count() or 1) // 2)


class DecodePool:
    """A fixed number of decoding threads; `run` waits for one, and gives up its place in the
    queue when the awaiting request is cancelled."""

    def __init__(self, threads: int) -> None:
        self.threads = decode_thread_count(threads)
        self._executor: ThreadPoolExecutor | None = None  # opened at first use
        self.started = 0  # decodes that got a thread (the tests watch it)
        self._lock = threading.Lock()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in a decoding thread. Cancelling the caller cancels the queued
        call (asyncio.wrap_future passes the cancellation on), so it never starts."""

        def started() -> T:
            with self._lock:
                self.started += 1
            return fn(*args, **kwargs)

        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        return await asyncio.wrap_future(self._executor.submit(started))

    def close(self) -> None:
        """Queued decodes are dropped; running ones finish in their threads, not waited for.
        The next `run` opens the pool again (an app can be started twice, in tests)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """`work`, awaited while the connection is watched: when the client hangs up, `work` is
    cancelled (its queued decodes with it) and ClientDisconnect raised (answered 499). `receive`
    must be past the request's body, where the next message is the disconnect."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # the request's timeout, or shutdown: theirs to handle
        task.uncancel()
        raise ClientDisconnect() from None
    finally:
        watcher.cancel()
