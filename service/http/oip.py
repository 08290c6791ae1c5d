"""The Open Inference Protocol (KServe v2) REST API, beside the service's own.

Each model's encoder, decoder and scorer are OIP models of their own: `mnist-vae-encoder` takes `x`,
images as [N, H, W, C] (any shape whose rows hold H*W*C values in that order: [N, 784], and for
grayscale [N, 1, 28, 28], are taken too; FP32 in [0, 1]), and gives `mu` and (VAE) `logvar`,
[N, latent] (a log-variance, whatever the graph's variance output holds); `mnist-vae-decoder`
takes `z` [N, latent] and gives the images [N, H, W, C] in [0, 1]. The service converts to and
from the graph's own layout. Tensor names and the version come from the model's manifest.
`mnist-vae-scorer` is /score: it takes `images` [N, H, W, C] as the encoder takes `x`, and gives
per image `score`, `reconstruction_error` (FP64), with a calibration `percentile` (FP64) and
`is_outlier` (BOOL; also without one when `threshold` is given) and for a VAE `nll`, `elbo`,
`reconstruction`, `kl` (FP64); `parameters` `k`, `seed`, `fpr`, `threshold` as /score's, and
the answer's `parameters` say `score_name`, `threshold`, `fpr`, `k`, `seed`, `calibrated`.
Requests run through the same dynamic batching as the service's own endpoints. Errors are the
service's own (`service.errors`), answered as `{"error": "..."}` (`service.http.errors`): status
400 for an invalid request, 404 for an unknown model, as the protocol asks.
`parameters: {"invert": "auto" | true | false}` inverts encoder inputs as the service's own
/encode does (default false: `x` is the model's input as it is).

The body is read by `service.codecs.oip_input` (simdjson, the data straight into numpy), off the
event loop when it is large. The declared datatype is checked against the data: `x` takes FP32,
FP64 or FP16 pixels in [0, 1], or UINT8 0-255; `z` takes FP32, FP64 or FP16.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from service import __version__, ops
from service.codecs.accept import JSON, Offer, negotiate
from service.codecs.images import (
    MAX_LATENT,
    Invert,
    check_pixels,
    invert_where_needed,
    shape_hint,
)
from service.codecs.json_input import describe_errors, most_values
from service.codecs.oip_input import (
    BINARY_TYPES,
    HEADER_LENGTH,
    InferenceRequest,
    declared_count,
    header_length,
    read_inference_request,
)
from service.codecs.responses import JSON_OPTIONS, JSONBody
from service.errors import BadRequest, InvalidInput, NotFound
from service.http.endpoints import OFF_LOOP_BODY_BYTES, parse_off_loop
from service.http.openapi import GUARD_RESPONSES, error_doc
from service.http.state import Registry, State
from service.models.budget import answer_bytes
from service.models.registry import ModelRegistry
from service.models.runtime import ModelRuntime
from service.observability.context import note_model
from service.ops import check_image_values
from service.schemas import EncodeParams, ScoreParams
from service.settings import Settings

GRAPHS = ("encoder", "decoder", "scorer")
IMAGE_GRAPHS = ("encoder", "scorer")  # those that take images
INFER_ANSWERS = (Offer(JSON, "json"),)
# The datatypes each graph's input takes; all become float32, what the graphs take. An encoder
# also takes UINT8 pixels 0-255 (divided by 255), as /encode takes a uint8 .npy array.
ACCEPTED = {
    "encoder": ("FP32", "FP64", "FP16", "UINT8"),
    "decoder": ("FP32", "FP64", "FP16"),
    "scorer": ("FP32", "FP64", "FP16", "UINT8"),
}
SCORER_INPUT = "images"
# The scorer's request parameters (the others, such as `invert`, are read where they apply).
SCORE_PARAMETERS = ("k", "seed", "fpr", "threshold")
EXTENSIONS = ["binary_tensor_data"]  # Triton's name for the binary tensor data extension
BINARY_ANSWER = "application/octet-stream"


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


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32", "FP64", "BOOL"]
    data: list[float] | list[bool]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, str | float | int | bool] | None = Field(
        None, description="A scorer's: score_name, threshold, fpr, k, seed, calibrated, note."
    )
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


def _tensor(name: str, row: tuple[int, ...], datatype: str = "FP32") -> TensorMetadata:
    return TensorMetadata(name=name, datatype=datatype, shape=[-1, *row])


def _input_tensor(runtime: ModelRuntime, graph: str) -> TensorMetadata:
    """The graph's input as the protocol sees it: an encoder's images [-1, H, W, C] (whatever
    the graph's own layout: the service converts), a decoder's latent vectors [-1, latent]."""
    if graph == "encoder":
        return _tensor(runtime.manifest.encoder.inputs[0].name, runtime.image_hwc)
    if graph == "scorer":
        return _tensor(SCORER_INPUT, runtime.image_hwc)
    return _tensor(runtime.manifest.decoder.inputs[0].name, (runtime.latent_dim,))


def _output_tensors(runtime: ModelRuntime, graph: str) -> list[TensorMetadata]:
    """An encoder's mean (or code) and a VAE's log-variance [-1, latent] (other outputs of the
    graph, such as a sampled z, are not served); a decoder's images [-1, H, W, C]."""
    if graph == "decoder":
        return [_tensor(runtime.manifest.image_output, runtime.image_hwc)]
    if graph == "scorer":
        return _scorer_outputs(runtime)
    latent = runtime.manifest.latent
    names = [latent.code_output, *([latent.logvar_output] if latent.logvar_output else [])]
    return [_tensor(name, (runtime.latent_dim,)) for name in names]


def _scorer_outputs(runtime: ModelRuntime) -> list[TensorMetadata]:
    """One number per image each: the score, its verdict and percentile (a calibrated model's),
    a VAE's likelihood parts, the reconstruction error."""
    calibrated = runtime.manifest.score_calibration is not None
    names = [
        "score",
        *(["is_outlier", "percentile"] if calibrated else []),
        *(["nll", "elbo", "reconstruction", "kl"] if runtime.is_vae else []),
        "reconstruction_error",
    ]
    return [_tensor(name, (), "BOOL" if name == "is_outlier" else "FP64") for name in names]


def _metadata(runtime: ModelRuntime, graph: str) -> ModelMetadata:
    return ModelMetadata(
        name=f"{runtime.name}-{graph}",
        versions=[runtime.manifest.version],
        platform="onnxruntime_onnx",
        inputs=[_input_tensor(runtime, graph)],
        outputs=_output_tensors(runtime, graph),
    )


def _check_inputs(
    request: InferenceRequest, spec: TensorMetadata, graph: str, limit: int, most: int
) -> None:
    """The request's inputs are the graph's one input, in a datatype it takes, with at most
    `limit` rows and `most` values declared: all known before a value of the data is
    converted (binary data included)."""
    if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
        names = [i.name for i in request.inputs]
        raise BadRequest("", f"inputs: expected one tensor named {spec.name!r}, got {names}")
    datatype = request.inputs[0].datatype
    if datatype not in ACCEPTED[graph]:
        raise BadRequest(
            "",
            f"inputs[0].datatype: {datatype!r} is not accepted for {spec.name}; send "
            + " or ".join(ACCEPTED[graph])
            + (" (0-255)" if graph in IMAGE_GRAPHS else ""),
        )
    shape = request.inputs[0].shape
    if len(shape) > 1 and shape[0] > limit:
        raise BadRequest("", f"inputs[0].shape: {shape[0]} rows; at most {limit} (VAE_MAX_IMAGES)")
    if declared_count(shape) > most:
        row = math.prod(spec.shape[1:])
        raise BadRequest(
            "",
            f"inputs[0].shape: {shape} holds {declared_count(shape)} values; {limit} rows of "
            f"{row} ({_limit_name(most, limit, row)}) hold at most {most}: send fewer rows",
        )


def _limit_name(most: int, limit: int, row: int) -> str:
    return "VAE_MAX_IMAGES" if most == limit * row else "VAE_MAX_REQUEST_VALUES"


def _input_array(
    request: InferenceRequest, values: list[np.ndarray], spec: TensorMetadata, graph: str
) -> np.ndarray:
    """The input's rows as `spec` has them ((N, H, W, C) images, (N, latent) vectors), from a
    tensor of any shape whose rows hold as many values (an encoder's images [N, H*W*C] or, for
    grayscale, [N, 1, H, W] too), checked and float32."""
    tensor, flat = request.inputs[0], values[0]
    count = declared_count(tensor.shape)
    if flat.size != count:
        raise BadRequest(
            "", f"inputs[0]: shape {tensor.shape} holds {count} values but data has {flat.size}"
        )
    row_shape = spec.shape[1:]
    per_row = math.prod(row_shape)
    if len(tensor.shape) < 2 or math.prod(tensor.shape[1:]) != per_row:
        what = f"N rows of {per_row} values"
        if graph in IMAGE_GRAPHS:
            h, w, c = row_shape
            what += f": images of {h} x {w} x {c}, H x W x C, channels last"
            what += shape_hint(tuple(tensor.shape[1:]), (h, w, c), batch=True)
        raise BadRequest(
            "", f"inputs[0].shape: {tensor.shape} does not fit {spec.name} {spec.shape} ({what})"
        )
    if flat.size == 0:
        raise BadRequest("", "inputs[0]: no rows; send at least one")
    rows = flat.reshape(tensor.shape[0], *row_shape).astype(np.float64)
    if tensor.datatype == "UINT8":
        rows /= 255.0
    try:
        if graph in IMAGE_GRAPHS:
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
    if graph not in IMAGE_GRAPHS:
        raise BadRequest("parameters.invert", "applies to images; a decoder takes z")
    try:
        choices = {EncodeParams.model_validate({"invert": value}).invert for value in given}
    except ValidationError as exc:
        raise BadRequest("", f"parameters.{describe_errors(exc.errors())}") from None
    if len(choices) > 1:
        raise BadRequest("parameters.invert", "the request and its input say different things")
    choice = choices.pop()
    return False if choice is None else choice


def _parse(
    body: bytes, runtime: ModelRuntime, graph: str, settings: Settings, header: int | None
) -> tuple[InferenceRequest, np.ndarray]:
    """The request and the graph's input array (checked, inverted as asked, float32). `header`:
    the JSON header's length when binary data follows it."""
    limit = settings.max_images
    spec = _input_tensor(runtime, graph)
    row = math.prod(spec.shape[1:])
    most = limit * row
    if graph in IMAGE_GRAPHS:  # and no request carries more image values than this
        most = min(most, settings.max_request_values)
    found = most_values(body if header is None else body[:header], most)
    if found is not None:  # before parsing: its cost grows with the values the body holds
        raise BadRequest(
            "",
            f"inputs: the body holds about {found} numbers; {limit} rows of {row} "
            f"({_limit_name(most, limit, row)}) hold at most {most}: send fewer rows per request",
        )
    check = functools.partial(_check_inputs, spec=spec, graph=graph, limit=limit, most=most)
    request, values = read_inference_request(body, check, header)
    x = _input_array(request, values, spec, graph)
    try:  # VAE_MAX_REQUEST_VALUES: the images read, or the images the answer will hold
        check_image_values(len(x), runtime, settings, "inputs[0]")
    except InvalidInput as exc:  # the protocol calls an invalid request 400
        raise BadRequest("", str(exc)) from None
    x = invert_where_needed(x, _invert(request, graph), runtime.manifest.input.background)
    if len(x) > limit:  # VAE_MAX_IMAGES, for any shape the check above lets through
        raise BadRequest("", f"inputs[0]: {len(x)} rows; at most {limit} (VAE_MAX_IMAGES)")
    return request, x


async def _infer(
    registry: ModelRegistry,
    oip_name: str,
    version: str | None,
    http_request: Request,
) -> Response:
    negotiate(http_request.headers.get("accept", ""), INFER_ANSWERS, "/v2/models/{model}/infer")
    runtime, graph = _split_name(registry, oip_name)
    _check_version(runtime, oip_name, version)
    raw = await http_request.body()
    header = _framing(http_request, raw)
    # Off the event loop when large: a 16 MB body takes long enough to parse and check that,
    # on the loop, it would hold up every other request and the probes. Binary data is not
    # parsed (numpy reads it in place): it costs an eighth of JSON text of the same size.
    parse = functools.partial(_parse, raw, runtime, graph, registry.settings, header)
    cost = len(raw) if header is None else header + (len(raw) - header) // 8
    if cost <= OFF_LOOP_BODY_BYTES:
        request, x = parse()
    else:
        request, x = await parse_off_loop(registry.executor, parse)
    settings = registry.settings
    # The answer budget, as for the other inference endpoints (`service.models.budget`).
    if graph == "scorer":
        params = _score_params(request)
        values = ops.score_values(params, runtime, x, settings)
        async with registry.answers.reserve(answer_bytes(values, "json")):
            return await _score(runtime, oip_name, x, request, params, settings)
    width = 2 * runtime.latent_dim if graph == "encoder" else runtime.image_values
    async with registry.answers.reserve(answer_bytes(len(x) * width, "json")):
        return await _run(runtime, graph, oip_name, x, request)


def _framing(http_request: Request, raw: bytes) -> int | None:
    """The JSON header's length when binary tensor data follows it (None: all JSON). Any
    Content-Type is taken, or none, as Triton's and KServe's clients send: the body says what
    it is. A compressed body is refused by name."""
    encoding = http_request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadRequest(
            "",
            f"Content-Encoding: {encoding[:40]!r} is not accepted on /v2; send the body "
            "uncompressed (tritonclient: no request_compression_algorithm)",
        )
    return header_length(http_request.headers, len(raw))


def _score_params(request: InferenceRequest) -> ScoreParams:
    """/score's parameters from the request's `parameters` (those it names; others, such as
    `invert`, are read where they apply)."""
    given = {
        name: value
        for name, value in (request.parameters or {}).items()
        if name in SCORE_PARAMETERS
    }
    try:
        return ScoreParams.model_validate(given)
    except ValidationError as exc:
        raise BadRequest("", f"parameters.{describe_errors(exc.errors())}") from None


async def _score(
    runtime: ModelRuntime,
    oip_name: str,
    x: np.ndarray,
    request: InferenceRequest,
    params: ScoreParams,
    settings: Settings,
) -> Response:
    try:
        result = await ops.score(params, runtime, x, settings)
    except InvalidInput as exc:  # the protocol calls an invalid request 400
        where = "parameters." if exc.field in SCORE_PARAMETERS else ""
        raise BadRequest("", f"{where}{exc}") from None
    results: dict[str, np.ndarray] = {
        name: value
        for name in (
            "score",
            "is_outlier",
            "percentile",
            "nll",
            "elbo",
            "reconstruction",
            "kl",
            "reconstruction_error",
        )
        if (value := getattr(result, name)) is not None
    }
    described = {
        "score_name": result.score_name,
        "calibrated": result.calibrated,
        "threshold": result.threshold,
        "fpr": result.fpr,
        "k": result.k,
        "seed": result.seed,
        "note": result.note,
    }
    parameters = {name: value for name, value in described.items() if value is not None}
    return _answer(runtime, oip_name, results, request, parameters)


async def _run(
    runtime: ModelRuntime, graph: str, oip_name: str, x: np.ndarray, request: InferenceRequest
) -> Response:
    if graph == "encoder":
        mu, logvar = await runtime.encode_batched(x)
        names = [t.name for t in _output_tensors(runtime, graph)]
        results = dict(zip(names, [mu] if logvar is None else [mu, logvar], strict=True))
    else:
        images = await runtime.decode_batched(x)  # (N, H, W, C), as the metadata says
        results = {runtime.manifest.image_output: images}
    return _answer(runtime, oip_name, results, request)


def _datatype(value: np.ndarray) -> str:
    return {"bool": "BOOL", "float64": "FP64"}.get(value.dtype.name, "FP32")


def _answer(
    runtime: ModelRuntime,
    oip_name: str,
    results: dict[str, np.ndarray],
    request: InferenceRequest,
    parameters: dict[str, Any] | None = None,
) -> Response:
    """The outputs the request asks for (all by default), in its order, as the protocol writes
    them: JSON data, or binary data after the JSON header (the binary tensor data extension)
    for those it asks so."""
    wanted = [o.name for o in request.outputs] if request.outputs else list(results)
    unknown = [name for name in wanted if name not in results]
    if unknown:
        raise BadRequest("", f"outputs: {unknown} not among this model's outputs {list(results)}")
    binary = _binary_outputs(request, len(wanted))
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, as_binary in zip(wanted, binary, strict=True):
        value, datatype = results[name], _datatype(results[name])
        output: dict[str, Any] = {"name": name, "shape": list(value.shape), "datatype": datatype}
        if as_binary:
            blobs.append(value.astype(BINARY_TYPES[datatype], copy=False).tobytes())
            output["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            output["data"] = value.ravel()
        outputs.append(output)
    body: dict[str, Any] = {
        "model_name": oip_name,
        "model_version": runtime.manifest.version,
        "outputs": outputs,
    }
    if request.id is not None:
        body["id"] = request.id
    if parameters:
        body["parameters"] = parameters
    if not blobs:
        return JSONBody(body)
    head = orjson.dumps(body, option=JSON_OPTIONS)
    return Response(
        b"".join([head, *blobs]),
        media_type=BINARY_ANSWER,
        headers={HEADER_LENGTH: str(len(head))},
    )


def _binary_outputs(request: InferenceRequest, count: int) -> list[bool]:
    """Which of the `count` outputs answered go as binary data: each requested output's
    `binary_data`, else the request's `binary_data_output` (default false)."""
    default = _flag(request.parameters, "parameters.binary_data_output")
    if not request.outputs:
        return [bool(default)] * count
    chosen = []
    for i, output in enumerate(request.outputs):
        given = output.parameters or {}
        if "classification" in given:
            raise BadRequest(
                "",
                f"outputs[{i}].parameters.classification: the classification extension is "
                "not supported",
            )
        flag = _flag(given, f"outputs[{i}].parameters.binary_data", "binary_data")
        chosen.append(bool(default) if flag is None else flag)
    return chosen


def _flag(parameters: dict[str, Any] | None, where: str, key: str = "") -> bool | None:
    key = key or where.rpartition(".")[2]
    value = (parameters or {}).get(key)
    if value is None or isinstance(value, bool):
        return value
    raise BadRequest("", f"{where}: expected true or false, not {value!r}")


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
        return ServerMetadata(name="vae-serving", version=__version__, extensions=EXTENSIONS)

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
        openapi_extra=INFER_BODY,
    )
    async def infer(model_name: ModelPath, registry: Registry, request: Request) -> Response:
        """Run the encoder (`x` -> `mu`, `logvar`), the decoder (`z` -> images) or the scorer
        (`images` -> `score`, `is_outlier`, `percentile`, `nll`, ..., as /score; `parameters`
        `k`, `seed`, `fpr`, `threshold`). For the encoder and the scorer, `parameters:
        {"invert": "auto" | true | false}` inverts the images first (see /encode; default
        false). Images take FP32, FP64, FP16 (pixels in [0, 1]) or UINT8 (0-255); a decoder's
        `z` takes FP32, FP64 or FP16."""
        return await _infer(registry, model_name, None, request)

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
        return await _infer(registry, model_name, model_version, request)

    return router
