"""The Open Inference Protocol (KServe v2) REST API, beside the service's own.

Each model's encoder and decoder are OIP models of their own: `mnist-vae-encoder` takes `x`
(N x 1 x 28 x 28, or N x 784, FP32 in [0, 1]) and gives `mu` and (VAE) `logvar`;
`mnist-vae-decoder` takes `z` (N x latent) and gives the images. Tensor names, shapes and the
version come from the model's manifest. Requests run through the same dynamic batching as the
service's own endpoints. Errors are the service's own (`service.errors`), answered as
`{"error": "..."}` (`service.http.errors`): status 400 for an invalid request, 404 for an unknown
model, as the protocol asks. `parameters: {"invert": "auto" | true | false}` inverts encoder inputs
as the service's own /encode does (default false: `x` is the model's input as it is).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service import __version__
from service.codecs.accept import JSON, Offer, negotiate
from service.codecs.images import MAX_LATENT, Invert, check_pixels, invert_where_needed
from service.codecs.json_input import describe_errors
from service.codecs.responses import JSONBody
from service.errors import BadRequest, InvalidInput, NotFound
from service.http.openapi import GUARD_RESPONSES, error_doc
from service.http.state import Registry, State
from service.manifest import TensorSpec
from service.models.budget import answer_bytes
from service.models.registry import ModelRegistry
from service.models.runtime import ModelRuntime
from service.observability.context import note_model
from service.schemas import EncodeParams

GRAPHS = ("encoder", "decoder")
INFER_ANSWERS = (Offer(JSON, "json"),)
# OIP datatypes accepted for inputs; all are converted to float32, what the graphs take.
FLOAT_TYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}


# --- schemas (the protocol's JSON objects) ----------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of any size (the batch).")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class RequestInput(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="Row-major values, flat or nested.")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.5, -1.0]}
                    ],
                    "outputs": [{"name": "x_mean"}],
                }
            ]
        }
    )

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(
        None, description="Outputs to return (default: all)."
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32"]
    data: list[float]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


# --- models as the protocol sees them ------------------------------------------------------------


def _split_name(registry: ModelRegistry, oip_name: str) -> tuple[ModelRuntime, str]:
    base, _, graph = oip_name.rpartition("-")
    runtime = registry.lookup(base)
    if graph not in GRAPHS or runtime is None:
        known = ", ".join(f"{name}-{g}" for name in registry.models for g in GRAPHS)
        raise NotFound("", f"unknown model {oip_name!r}; known: {known}")
    note_model(base)
    return runtime, graph


def _check_version(runtime: ModelRuntime, oip_name: str, version: str | None) -> None:
    if version is not None and version != runtime.manifest.version:
        raise NotFound(
            "", f"model {oip_name!r} has version {runtime.manifest.version!r}, not {version!r}"
        )


def _tensors(specs: list[TensorSpec]) -> list[TensorMetadata]:
    return [
        TensorMetadata(
            name=t.name,
            datatype="FP32",
            shape=[d if isinstance(d, int) else -1 for d in t.shape],
        )
        for t in specs
    ]


def _metadata(runtime: ModelRuntime, graph: str) -> ModelMetadata:
    spec = runtime.manifest.encoder if graph == "encoder" else runtime.manifest.decoder
    return ModelMetadata(
        name=f"{runtime.name}-{graph}",
        versions=[runtime.manifest.version],
        platform="onnxruntime_onnx",
        inputs=_tensors(spec.inputs),
        outputs=_tensors(spec.outputs),
    )


def _input_array(request: InferenceRequest, runtime: ModelRuntime, graph: str) -> np.ndarray:
    spec = (runtime.manifest.encoder if graph == "encoder" else runtime.manifest.decoder).inputs[0]
    if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
        names = [i.name for i in request.inputs]
        raise BadRequest("", f"inputs: expected one tensor named {spec.name!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype not in FLOAT_TYPES:
        raise BadRequest(
            "",
            f"inputs[0].datatype: {tensor.datatype!r} is not supported; send FP32 (or FP64, FP16)",
        )
    try:
        values = np.asarray(tensor.data, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadRequest("", "inputs[0].data: expected numbers (flat or nested lists)") from None
    count = int(np.prod(tensor.shape)) if tensor.shape else 1
    if values.size != count:
        raise BadRequest(
            "", f"inputs[0]: shape {tensor.shape} holds {count} values but data has {values.size}"
        )
    per_row = int(np.prod([d for d in spec.shape[1:] if isinstance(d, int)]))
    if len(tensor.shape) < 2 or int(np.prod(tensor.shape[1:])) != per_row:
        expected = [-1, *spec.shape[1:]]
        raise BadRequest(
            "",
            f"inputs[0].shape: {tensor.shape} does not fit {spec.name} {expected} "
            f"(N rows of {per_row} values)",
        )
    if values.size == 0:
        raise BadRequest("", "inputs[0]: no rows; send at least one")
    rows = values.reshape(tensor.shape[0], *[d for d in spec.shape[1:] if isinstance(d, int)])
    try:
        if graph == "encoder":
            rows = check_pixels(rows, "inputs[0].data")
        elif not np.isfinite(rows).all() or np.abs(rows).max() > MAX_LATENT:
            raise InvalidInput(
                "inputs[0].data", f"latent values must be finite and within +-{MAX_LATENT:g}"
            )
    except InvalidInput as exc:  # the protocol calls an invalid request 400
        raise BadRequest("", str(exc)) from None
    return rows.astype(np.float32)


def _invert(request: InferenceRequest, graph: str) -> Invert:
    """`invert` from the request's parameters or its input's (both given: they must agree)."""
    given = [
        parameters["invert"]
        for parameters in (request.parameters, request.inputs[0].parameters)
        if parameters and "invert" in parameters
    ]
    if not given:
        return False
    if graph != "encoder":
        raise BadRequest("parameters.invert", "applies to an encoder's images; a decoder takes z")
    try:
        choices = {EncodeParams.model_validate({"invert": value}).invert for value in given}
    except ValidationError as exc:
        raise BadRequest("", f"parameters.{describe_errors(exc.errors())}") from None
    if len(choices) > 1:
        raise BadRequest("parameters.invert", "the request and its input say different things")
    choice = choices.pop()
    return False if choice is None else choice


async def _infer(
    registry: ModelRegistry,
    oip_name: str,
    version: str | None,
    request: InferenceRequest,
    accept: str,
) -> Response:
    negotiate(accept, INFER_ANSWERS, "/v2/models/{model}/infer")
    runtime, graph = _split_name(registry, oip_name)
    _check_version(runtime, oip_name, version)
    x = _input_array(request, runtime, graph)
    x = invert_where_needed(x, _invert(request, graph), runtime.manifest.input.background)
    if len(x) > registry.settings.max_images:
        raise BadRequest("", f"inputs[0]: {len(x)} rows; at most {registry.settings.max_images}")
    # The answer budget, as for the other inference endpoints (`service.models.budget`).
    width = 2 * runtime.latent_dim if graph == "encoder" else int(np.prod(runtime.image_shape))
    async with registry.answers.reserve(answer_bytes(len(x) * width, "json")):
        return await _run(runtime, graph, oip_name, x, request)


async def _run(
    runtime: ModelRuntime, graph: str, oip_name: str, x: np.ndarray, request: InferenceRequest
) -> Response:
    if graph == "encoder":
        mu, logvar = await runtime.encode_batched(x)
        names = [t.name for t in runtime.manifest.encoder.outputs]
        results = dict(zip(names, [mu] if logvar is None else [mu, logvar], strict=True))
    else:
        images = await runtime.decode_batched(x)
        results = {runtime.manifest.decoder.outputs[0].name: images}
    wanted = [o.name for o in request.outputs] if request.outputs else list(results)
    unknown = [name for name in wanted if name not in results]
    if unknown:
        raise BadRequest("", f"outputs: {unknown} not among this model's outputs {list(results)}")
    body: dict[str, Any] = {
        "model_name": oip_name,
        "model_version": runtime.manifest.version,
        "outputs": [
            {
                "name": name,
                "shape": list(results[name].shape),
                "datatype": "FP32",
                "data": results[name].ravel(),
            }
            for name in wanted
        ],
    }
    if request.id is not None:
        body["id"] = request.id
    return JSONBody(body)


# --- routes --------------------------------------------------------------------------------------

ModelPath = Annotated[str, Path(description="`<model>-encoder` or `<model>-decoder`")]
VersionPath = Annotated[str, Path(description="The model's version, as in its manifest")]
ERRORS: dict[int | str, Any] = {
    400: error_doc("Invalid request", "ErrorBody"),
    404: error_doc("Unknown model or version", "ErrorBody"),
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
        return ServerMetadata(name="vae-serving", version=__version__, extensions=[])

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
        runtime, graph = _split_name(registry, model_name)
        return _metadata(runtime, graph)

    @router.get(
        "/models/{model_name}/versions/{model_version}",
        response_model=ModelMetadata,
        summary="Model metadata, one version",
        responses=responses,
    )
    async def model_version_metadata(
        model_name: ModelPath, model_version: VersionPath, registry: Registry
    ) -> ModelMetadata:
        runtime, graph = _split_name(registry, model_name)
        _check_version(runtime, model_name, model_version)
        return _metadata(runtime, graph)

    @router.get(
        "/models/{model_name}/ready",
        response_model=ModelReady,
        summary="Model readiness",
        responses=responses,
    )
    async def model_ready(model_name: ModelPath, registry: Registry) -> ModelReady:
        runtime, _ = _split_name(registry, model_name)
        return ModelReady(name=model_name, ready=runtime.ready)

    @router.post(
        "/models/{model_name}/infer",
        response_model=InferenceResponse,
        summary="Inference",
        responses=infer_responses,
    )
    async def infer(
        model_name: ModelPath, body: InferenceRequest, registry: Registry, request: Request
    ) -> Response:
        """Run the encoder (`x` -> `mu`, `logvar`) or the decoder (`z` -> images). For the
        encoder, `parameters: {"invert": "auto" | true | false}` inverts the images first (see
        /encode; default false)."""
        accept = request.headers.get("accept", "")
        return await _infer(registry, model_name, None, body, accept)

    @router.post(
        "/models/{model_name}/versions/{model_version}/infer",
        response_model=InferenceResponse,
        summary="Inference, one version",
        responses=infer_responses,
    )
    async def infer_version(
        model_name: ModelPath,
        model_version: VersionPath,
        body: InferenceRequest,
        registry: Registry,
        request: Request,
    ) -> Response:
        accept = request.headers.get("accept", "")
        return await _infer(registry, model_name, model_version, body, accept)

    return router
