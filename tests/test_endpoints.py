"""The endpoint table: every row answered alike, byte for byte, by the fast path and by the
FastAPI routes, for every request format and answer format it takes; the cases come from the
table, so a new row is covered without a new test."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from service.app import ServiceApp
from service.codecs.accept import Offer
from service.codecs.npy import NPY
from service.http.endpoints import ENDPOINTS, Endpoint
from service.http.fastpath import FastLane

from .conftest import digits

# The headers an answer carries beyond the body; X-Request-ID and the like differ by design.
COMPARED_HEADERS = ("content-type", "x-model", "x-seed", "retry-after")


def request_formats(endpoint: Endpoint[Any]) -> list[str]:
    if endpoint.tensor is None:
        return ["json"]
    return ["json", "npy", *(["multipart"] if endpoint.tensor.uploads else [])]


CASES = [
    pytest.param(endpoint, request_format, offer, id=f"{endpoint.path}-{request_format}-{offer[0]}")
    for endpoint in ENDPOINTS
    for request_format in request_formats(endpoint)
    for offer in endpoint.produces
]
# Refusals: (what is wrong, where the request puts it, status, words of the answer)
FAULTS = [
    ("unknown model", {"model": "nope"}, {}, 404, b"no model named 'nope'"),
    ("bad ?model=", {"model": "tiny-vae"}, {"model": "no spaces"}, 422, b"model: String should"),
]
ERROR_CASES = [
    pytest.param(
        endpoint, request_format, *fault[1:], id=f"{endpoint.path}-{request_format}-{fault[0]}"
    )
    for endpoint in ENDPOINTS
    for request_format in request_formats(endpoint)
    for fault in FAULTS
]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def request(
    endpoint: Endpoint[Any], request_format: str, accept: str, latent_dim: int, model: str
) -> dict[str, Any]:
    """A request to `endpoint` built from its row's example, with data the tiny models take."""
    tensor = endpoint.tensor
    params = {k: v for k, v in endpoint.example_request.items() if k != "model"}
    if tensor is not None:
        params.pop(tensor.name)
    headers = {"Accept": accept}
    if tensor is None:
        return {"json": {**params, "model": model}, "headers": headers}
    data = digits(2) if tensor.name == "images" else np.full((2, latent_dim), 0.5, np.float32)
    if request_format == "json":
        return {"json": {**params, "model": model, tensor.name: data.tolist()}, "headers": headers}
    fields = {k: str(v) for k, v in params.items()}
    if request_format == "npy":
        return {
            "content": npy(data),
            "params": {**fields, "model": model},
            "headers": {**headers, "Content-Type": NPY},
        }
    files = [(tensor.name, (f"{i}.png", png(image), "image/png")) for i, image in enumerate(data)]
    return {"files": files, "data": {**fields, "model": model}, "headers": headers}


async def not_the_fast_path(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("passed on by the fast path", status_code=599)(scope, receive, send)


@pytest.fixture
def clients(client: TestClient) -> Iterator[dict[str, TestClient]]:
    """The whole app; the fast path alone (what it passes on answers 599); FastAPI's routes
    alone. All three share the app's state, loaded by `client`."""
    app: ServiceApp = client.app  # type: ignore[assignment]
    yield {
        "app": client,
        "fast path": TestClient(FastLane(not_the_fast_path, app.service)),
        "routes": TestClient(app.fastapi),
    }


def answer(client: TestClient, path: str, kwargs: dict[str, Any]) -> tuple[Any, ...]:
    response = client.post(path, **kwargs)
    headers = tuple(response.headers.get(name) for name in COMPARED_HEADERS)
    return response.status_code, headers, response.content


@pytest.mark.parametrize(("endpoint", "request_format", "offer"), CASES)
def test_fast_path_and_routes_answer_alike(
    clients: dict[str, TestClient], endpoint: Endpoint[Any], request_format: str, offer: Offer
) -> None:
    kwargs = request(endpoint, request_format, offer.media_type, latent_dim=2, model="tiny-vae")
    answers = {name: answer(client, endpoint.path, kwargs) for name, client in clients.items()}
    status, headers, body = answers["app"]
    assert status == 200, body
    assert headers[0] == (offer.alias_of or offer.media_type)
    if request_format == "multipart":  # the fast path passes uploads on to the routes
        assert answers["fast path"][0] == 599
        assert answers["routes"] == answers["app"]
    else:
        assert answers["fast path"] == answers["routes"] == answers["app"]


@pytest.mark.parametrize(
    ("endpoint", "request_format", "given", "query", "status", "words"), ERROR_CASES
)
def test_fast_path_and_routes_refuse_alike(
    clients: dict[str, TestClient],
    endpoint: Endpoint[Any],
    request_format: str,
    given: dict[str, str],
    query: dict[str, str],
    status: int,
    words: bytes,
) -> None:
    kwargs = request(endpoint, request_format, "application/json", 2, given["model"])
    if query:
        kwargs["params"] = {**kwargs.get("params", {}), **query}
    answers = {name: answer(client, endpoint.path, kwargs) for name, client in clients.items()}
    assert answers["app"][0] == status and words in answers["app"][2], answers["app"]
    if request_format == "multipart":
        assert answers["routes"] == answers["app"]
    else:
        assert answers["fast path"] == answers["routes"] == answers["app"]


def test_every_row_is_routed_and_documented(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path]["post"]
        assert operation["summary"] == endpoint.summary
        answers = operation["responses"]
        documented = {offer.media_type for offer in endpoint.produces if offer.alias_of is None}
        assert set(answers["200"]["content"]) == documented and "406" in answers
        assert {str(status) for status in endpoint.answers} <= set(answers)
        body = operation["requestBody"]["content"]
        assert body["application/json"]["example"] == endpoint.example_request
        assert ("multipart/form-data" in body) == bool(endpoint.tensor and endpoint.tensor.uploads)
