"""The inference endpoints as FastAPI routes, one per row of the endpoint table: they read
multipart uploads (the fast path passes those on) and give the endpoints their OpenAPI entries.
A JSON or .npy request that reaches them is answered exactly as the fast path answers it: the
query is read by the same codec, not by FastAPI (whose errors would word the same fault
otherwise)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.codecs.requests import Call, media_type, query_model_name, query_of
from service.http.endpoints import ENDPOINTS, Endpoint, respond, respond_to_upload
from service.http.openapi import request_body, responses
from service.http.state import AppSettings, Registry, get_state

Route = Callable[..., Awaitable[Response]]


def _route(endpoint: Endpoint[Any]) -> Route:
    uploads = endpoint.tensor is not None and endpoint.tensor.uploads

    async def route(request: Request, registry: Registry, settings: AppSettings) -> Response:
        headers = dict(request.scope["headers"])
        content_type = media_type(headers)
        if uploads and content_type == b"multipart/form-data":
            model = query_model_name(query_of(request.scope))
            decoder = get_state(request).decode_pool
            return await respond_to_upload(endpoint, request, registry, settings, model, decoder)
        call = Call.of(request.scope, headers, content_type, await request.body())
        return await respond(endpoint, call, registry, settings)

    route.__name__ = endpoint.path.strip("/").replace("/", "_").replace("-", "_")
    return route


def inference_router() -> APIRouter:
    router = APIRouter(tags=["inference"])
    for endpoint in ENDPOINTS:
        router.add_api_route(
            endpoint.path,
            _route(endpoint),
            methods=["POST"],
            response_model=endpoint.response_model,
            summary=endpoint.summary,
            description=endpoint.description,
            openapi_extra=request_body(endpoint),
            responses=responses(endpoint),
        )
    return router
