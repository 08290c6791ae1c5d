"""The request being served, as a context variable: set by the guard, filled in below it.

The handlers note the model a request picked, the batcher the size of the batch its rows ran in;
the guard's log line, metrics and span read both once the request is answered. With tracing on,
it also carries the request's span, the parent of the spans of its onnxruntime calls.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported only where tracing is on (VAE_TRACING)
    from service.observability.tracing import RequestTrace


@dataclass
class RequestInfo:
    """What a request's handlers learn that its log line and metrics need."""

    request_id: str
    model: str = ""
    batch_size: int = 0  # rows of the largest onnxruntime call this request's rows ran in
    trace: RequestTrace | None = None  # its span, when VAE_TRACING is on
    # Called once the request is answered (the model version it leased is let go); None until
    # the first, as most requests need none.
    on_end: list[Callable[[], object]] | None = None

    def at_end(self, callback: Callable[[], object]) -> None:
        """Call `callback` when the request ends (answered, refused, timed out or abandoned)."""
        if self.on_end is None:
            self.on_end = []
        self.on_end.append(callback)

    def end(self) -> None:
        callbacks, self.on_end = self.on_end or [], None
        for callback in callbacks:
            callback()


# Set by the guard for every request; the handlers fill in the model, the batcher the batch size.
current_request: ContextVar[RequestInfo | None] = ContextVar("current_request", default=None)


def note_model(name: str) -> None:
    info = current_request.get()
    if info is not None:
        info.model = name
