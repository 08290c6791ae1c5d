"""The fast path: POST to an inference endpoint with a JSON or .npy body, or an Open Inference
Protocol inference request, answered here.

An ASGI middleware in front of FastAPI: FastAPI's per-request routing, dependency and middleware
machinery costs several times what the model does for a one-image request, so the endpoint
table's rows are dispatched here directly. Multipart uploads, docs, metadata and health go on to
FastAPI, whose routes for the same paths call the same `respond`, so both answer alike, errors
included.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from service.codecs.requests import Call, media_type
from service.errors import ServiceError
from service.http.endpoints import BY_PATH, respond
from service.http.errors import error_response
from service.http.oip import answer_inference
from service.http.state import AppState

# An Open Inference Protocol inference request: /v2/models/{model}[/versions/{version}]/infer.
OIP_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class FastLane:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = BY_PATH.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            oip = OIP_INFER.fullmatch(scope["path"]) if scope["type"] == "http" else None
            if oip is not None and scope["method"] == "POST":
                await self._oip(oip, scope, receive, send)
            else:
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

    async def _oip(self, path: re.Match[str], scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        name, version = path.groups()
        try:
            registry = self.state.ready_registry()
            response = await answer_inference(registry, name, version, headers, body)
        except ServiceError as exc:
            response = error_response(exc, oip=True)
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
