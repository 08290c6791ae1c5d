"""The Open Inference Protocol (KServe v2) over REST, beside the service's own API: the /v2
routes, and the inference request's body read as the protocol's JSON or binary framing. What the
protocol's models are and do is `service.oip.dataplane`'s; answers are written by
`service.codecs.oip_output`.

The body is read by `service.codecs.oip_input` (simdjson, the data straight into numpy), off the
event loop when it is large. A JSON body is taken with any `Content-Type` or none, as Triton's and
KServe's clients send it; with `Inference-Header-Content-Length` (or SageMaker's
`json-header-size`) binary tensor data follows the JSON header. An inference request is answered
by the fast lane (`service.http.fastpath`) as the service's own endpoints are; the routes here
answer the same way for callers that reach FastAPI, and document the API.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from service.codecs.accept import JSON, Offer, negotiate
from service.codecs.json_input import most_values
from service.codecs.oip_input import header_length, read_inference_request
from service.codecs.oip_output import inference_response
from service.errors import BadRequest
from service.http.endpoints import OFF_LOOP_BODY_BYTES, parse_off_loop
from service.http.openapi import GUARD_RESPONSES, error_doc
from service.http.state import Registry, State
from service.models.registry import ModelRegistry
from service.oip import dataplane
from service.oip.dataplane import ProtocolModel
from service.oip.schemas import (
    InferenceRequest,
    InferenceResponse,
    Liveness,
    ModelMetadata,
    ModelReady,
    Readiness,
    ServerMetadata,
)
from service.settings import Settings

INFER_ANSWERS = (Offer(JSON, "json"),)
INFER_PATH = "/v2/models/{model}/infer"


async def answer_inference(
    registry: ModelRegistry,
    name: str,
    version: str | None,
    headers: Mapping[str, str],
    body: bytes,
) -> Response:
    """An inference request over REST, answered: `headers` with lower-case names."""
    negotiate(headers.get("accept", ""), INFER_ANSWERS, INFER_PATH)
    model = dataplane.find_model(registry, name, version)
    header = _framing(headers, body)
    settings = registry.settings
    # Off the event loop when large: a 16 MB body takes long enough to parse and check that,
    # on the loop, it would hold up every other request and the probes. Binary data is not
    # parsed (numpy reads it in place): it costs an eighth of JSON text of the same size.
    parse = functools.partial(_parse, body, model, settings, header)
    cost = len(body) if header is None else header + (len(body) - header) // 8
    if cost <= OFF_LOOP_BODY_BYTES:
        request, x = parse()
    else:
        request, x = await parse_off_loop(registry.executor, parse)
    result = await dataplane.infer(model, request, x, registry, settings)
    return inference_response(model.name, model.version, request, result)


def _framing(headers: Mapping[str, str], body: bytes) -> int | None:
    """The JSON header's length when binary tensor data follows it (None: all JSON). The body
    says what it is, whatever its Content-Type. A compressed body is refused by name."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadRequest(
            "",
            f"Content-Encoding: {encoding[:40]!r} is not accepted on /v2; send the body "
            "uncompressed (tritonclient: no request_compression_algorithm)",
        )
    return header_length(headers, len(body))


def _parse(
    body: bytes, model: ProtocolModel, settings: Settings, header: int | None
) -> tuple[InferenceRequest, np.ndarray]:
    """The request and the graph's input array. `header`: the JSON header's length when binary
    data follows it."""
    limits = dataplane.limits(model, settings)
    found = most_values(body if header is None else body[:header], limits.values)
    if found is not None:  # before parsing: its cost grows with the values the body holds
        raise BadRequest(
            "",
            f"inputs: the body holds about {found} numbers; {limits.rows} rows of "
            f"{limits.row_values} ({limits.setting}) hold at most {limits.values}: send fewer "
            "rows per request",
        )
    check = functools.partial(dataplane.check_inputs, model=model, limits=limits)
    request, values = read_inference_request(body, check, header)
    return request, dataplane.prepare(request, values, model, settings)


# --- routes --------------------------------------------------------------------------------------

ModelPath = Annotated[
    str, Path(description="`<model>-encoder`, `<model>-decoder` or `<model>-scorer`")
]
VersionPath = Annotated[str, Path(description="The model's version, as in its manifest")]
ERRORS: dict[int | str, Any] = {
    400: error_doc("Invalid request", "ErrorBody"),
    404: error_doc("Unknown model or version", "ErrorBody"),
}
# The body is read by service.codecs.oip_input, not by FastAPI: documented by hand.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
        },
    }
}
INFER_ERRORS: dict[int | str, Any] = {
    **ERRORS,
    406: error_doc("The Accept header does not take application/json", "ErrorBody"),
}


def oip_router() -> APIRouter:
    """The /v2 routes."""
    router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])
    guard_responses = GUARD_RESPONSES
    responses = {**ERRORS, **guard_responses}
    infer_responses = {**INFER_ERRORS, **guard_responses}

    @router.get(
        "", response_model=ServerMetadata, summary="Server metadata", responses=guard_responses
    )
    async def server_metadata() -> ServerMetadata:
        return dataplane.server_metadata()

    @router.get("/health/live", response_model=Liveness, summary="Server liveness")
    async def live() -> Liveness:
        return Liveness(live=True)

    @router.get(
        "/health/ready",
        response_model=Readiness,
        summary="Server readiness: 200 when ready, 400 when not (as the protocol asks)",
        responses={400: {"model": Readiness}},
    )
    async def ready(state: State) -> JSONResponse:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 400)

    @router.get(
        "/models/{model_name}",
        response_model=ModelMetadata,
        summary="Model metadata",
        responses=responses,
    )
    async def model_metadata(model_name: ModelPath, registry: Registry) -> ModelMetadata:
        return dataplane.model_metadata(dataplane.find_model(registry, model_name))

    @router.get(
        "/models/{model_name}/versions/{model_version}",
        response_model=ModelMetadata,
        summary="Model metadata, one version",
        responses=responses,
    )
    async def model_version_metadata(
        model_name: ModelPath, model_version: VersionPath, registry: Registry
    ) -> ModelMetadata:
        model = dataplane.find_model(registry, model_name, model_version)
        return dataplane.model_metadata(model)

    @router.get(
        "/models/{model_name}/ready",
        response_model=ModelReady,
        summary="Model readiness",
        responses=responses,
    )
    async def model_ready(model_name: ModelPath, registry: Registry) -> ModelReady:
        model = dataplane.find_model(registry, model_name)
        return ModelReady(name=model_name, ready=model.runtime.ready)

    @router.post(
        "/models/{model_name}/infer",
        response_model=InferenceResponse,
        summary="Inference",
        responses=infer_responses,
        openapi_extra=INFER_BODY,
    )
    async def infer(model_name: ModelPath, registry: Registry, request: Request) -> Response:
        """Run the encoder (`x` -> `mu`, `logvar`), the decoder (`z` -> images) or the scorer
        (`images` -> `score`, `is_outlier`, `percentile`, `nll`, ..., as /score; `parameters`
        `k`, `seed`, `fpr`, `threshold`). For the encoder and the scorer, `parameters:
        {"invert": "auto" | true | false}` inverts the images first (see /encode; default
        false). Images take FP32, FP64, FP16 (pixels in [0, 1]) or UINT8 (0-255); a decoder's
        `z` takes FP32, FP64 or FP16."""
        body = await request.body()
        return await answer_inference(registry, model_name, None, request.headers, body)

    @router.post(
        "/models/{model_name}/versions/{model_version}/infer",
        response_model=InferenceResponse,
        summary="Inference, one version",
        responses=infer_responses,
        openapi_extra=INFER_BODY,
    )
    async def infer_version(
        model_name: ModelPath,
        model_version: VersionPath,
        registry: Registry,
        request: Request,
    ) -> Response:
        return await answer_inference(
            registry, model_name, model_version, request.headers, await request.body()
        )

    return router
