"""The fast path: POST to an inference endpoint with a JSON or .npy body, answered here.

An ASGI middleware in front of FastAPI: FastAPI's per-request routing, dependency and middleware
machinery costs several times what the model does for a one-image request, so the endpoint
table's rows are dispatched here directly. Multipart uploads, docs, metadata and health go on to
FastAPI, whose routes for the same paths call the same `respond`, so both answer alike, errors
included.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.codecs.requests import Call, media_type
from service.errors import ServiceError
from service.http.endpoints import BY_PATH, respond
from service.http.errors import error_response
from service.http.state import AppState


class FastLane:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = BY_PATH.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = media_type(headers)
        if content_type == b"multipart/form-data":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client hung up: nobody to answer
        call = Call.of(scope, headers, content_type, body)
        state = self.state
        try:
            response = await respond(endpoint, call, state.ready_registry(), state.settings)
        except ServiceError as exc:
            response = error_response(exc)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
