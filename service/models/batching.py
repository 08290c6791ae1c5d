"""Dynamic batching: concurrent requests for the same graph run as one onnxruntime call.

As in Triton and MLServer, requests that arrive while the previous batch is running (or within
`max_delay` of the first one) are stacked along the batch axis, run once, and each gets its own
rows back. Every request keeps its own errors and cancellation: a request cancelled while queued
is dropped from its batch, and an exception inside a batch reaches every request of that batch
and no other.

Small batches run inline on the event loop: an onnxruntime call of a few images takes tens of
microseconds, less than a hop to a worker thread. Larger ones go to one worker thread per graph,
so the loop keeps accepting and parsing requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from service.observability.context import RequestInfo, current_request

Array = NDArray[np.float32]
GraphFn = Callable[[Array], tuple[Array, ...]]


class Observer(Protocol):
    """Told about every onnxruntime call and every request's wait (the metrics)."""

    def call(self, rows: int, seconds: float) -> None: ...
    def waited(self, seconds: float) -> None: ...


@dataclass
class _Pending:
    rows: Array
    future: asyncio.Future[tuple[Array, ...]]
    enqueued: float
    request: RequestInfo | None  # the request's own, captured while its context is current


class DynamicBatcher:
    """Batches calls of `fn` (rows in, tuple of row-aligned arrays out)."""

    def __init__(
        self,
        fn: GraphFn,
        max_batch_size: int,
        max_delay_s: float,
        inline_max_rows: int,
        executor: ThreadPoolExecutor,
        model: str = "",
        graph: str = "",
    ) -> None:
        self.fn = fn
        self.model, self.graph = model, graph  # what the tracing spans of its calls name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.inline_max_rows = inline_max_rows
        self._queue: deque[_Pending] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        # Shared by every graph: each batcher runs one call at a time anyway, and every extra
        # thread keeps a malloc arena of its own (resident memory).
        self._executor = executor
        self.observer: Observer | None = None  # attached by the registry's observer

    async def run(self, rows: Array) -> tuple[Array, ...]:
        """fn(rows), possibly computed together with other requests' rows."""
        if len(rows) >= self.max_batch_size:
            # A full batch by itself gains nothing from waiting for others; running it now
            # lets two large requests use two cores at once.
            request = current_request.get()
            self._note_batch(request, len(rows), 0.0)
            if request is None or request.trace is None:
                return await self._execute(rows)
            return await self._traced(rows, [(request, len(rows))])
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            # Started lazily in the loop that serves requests (a new one after a restart).
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work())
        future: asyncio.Future[tuple[Array, ...]] = loop.create_future()
        self._queue.append(_Pending(rows, future, time.perf_counter(), current_request.get()))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    async def _execute(self, rows: Array) -> tuple[Array, ...]:
        if len(rows) <= self.inline_max_rows:
            return self._chunked(rows)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._chunked, rows)

    async def _traced(
        self, rows: Array, requests: list[tuple[RequestInfo | None, int]]
    ) -> tuple[Array, ...]:
        """`_execute`, with a span for the call in the trace of each of `requests` (each with
        its number of rows)."""
        traced = [
            (request.trace, own_rows)
            for request, own_rows in requests
            if request is not None and request.trace is not None and request.trace.recording
        ]
        if not traced:  # all sampled out
            return await self._execute(rows)
        calls = traced[0][0].tracing.onnxruntime_call(
            traced,
            len(requests),
            self.model,
            self.graph,
            len(rows),
            min(len(rows), self.max_batch_size),
        )
        try:
            outputs = await self._execute(rows)
        except BaseException as exc:
            calls.end(exc)
            raise
        calls.end()
        return outputs

    def _note_batch(self, request: RequestInfo | None, rows: int, waited_s: float) -> None:
        if request is not None:
            request.batch_size = max(request.batch_size, min(rows, self.max_batch_size))
        if self.observer is not None:
            self.observer.waited(waited_s)

    def _call(self, rows: Array) -> tuple[Array, ...]:
        if self.observer is None:
            return self.fn(rows)
        start = time.perf_counter()
        outputs = self.fn(rows)
        self.observer.call(len(rows), time.perf_counter() - start)
        return outputs

    def _chunked(self, rows: Array) -> tuple[Array, ...]:
        """fn over at most max_batch_size rows at a time. onnxruntime keeps buffers and memory
        plans per input shape, so capping the batch dimension caps the shapes it ever sees and
        with them its memory."""
        if len(rows) <= self.max_batch_size:
            return self._call(rows)
        step = self.max_batch_size
        parts = [self._call(rows[start : start + step]) for start in range(0, len(rows), step)]
        return tuple(np.concatenate(outputs) for outputs in zip(*parts, strict=True))

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        count = 0
        while self._queue:
            pending = self._queue[0]
            if pending.future.done():  # cancelled while queued: its client is gone
                self._queue.popleft()
                continue
            if batch and count + len(pending.rows) > self.max_batch_size:
                break
            batch.append(self._queue.popleft())
            count += len(pending.rows)
        return batch

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                queued = sum(len(p.rows) for p in self._queue)
                if self.max_delay_s > 0 and queued < self.max_batch_size:
                    await asyncio.sleep(self.max_delay_s)  # let a few more requests join
                batch = self._take_batch()
                if not batch:
                    continue
                rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
                now = time.perf_counter()
                for pending in batch:
                    self._note_batch(pending.request, len(rows), now - pending.enqueued)
                first = batch[0].request
                traced = first is not None and first.trace is not None  # tracing is on
                try:
                    outputs = await (
                        self._traced(rows, [(p.request, len(p.rows)) for p in batch])
                        if traced
                        else self._execute(rows)
                    )
                except Exception as exc:  # reaches exactly the requests of this batch
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                start = 0
                for pending in batch:
                    stop = start + len(pending.rows)
                    if not pending.future.done():
                        pending.future.set_result(tuple(out[start:stop] for out in outputs))
                    start = stop

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the service is shutting down"))
        self._queue.clear()
