"""The protocol's operations, whatever the transport: which model a name means, its metadata,
an inference request's checks and its run. Nothing here knows HTTP or gRPC: the transports read
their bodies into an `InferenceRequest` with each input's data as a flat array, call these, and
write the results back in their own encoding. Errors are the service's own (`service.errors`):
400 for an invalid request and 404 for an unknown model or version, as the protocol asks; each
transport says them its way.

Each model's encoder, decoder and scorer are protocol models of their own: `mnist-vae-encoder`
takes `x`, images as [N, H, W, C] (any shape whose rows hold H*W*C values in that order:
[N, 784], and for grayscale [N, 1, 28, 28], are taken too; FP32, FP64 or FP16 in [0, 1], or UINT8
0-255), and gives `mu` and (VAE) `logvar`, [N, latent] (a log-variance, whatever the graph's
variance output holds); `mnist-vae-decoder` takes `z` [N, latent] (FP32, FP64 or FP16) and gives
the images [N, H, W, C] in [0, 1]; `mnist-vae-scorer` is /score: it takes `images` as the encoder
takes `x` and gives per image `score`, `reconstruction_error` (FP64), with a calibration
`percentile` (FP64) and `is_outlier` (BOOL; also without one when `threshold` is given) and for a
VAE `nll`, `elbo`, `reconstruction`, `kl` (FP64); `parameters` `k`, `seed`, `fpr`, `threshold`
as /score's. Tensor names and the version come from the model's manifest.
`parameters: {"invert": "auto" | true | false}` inverts image inputs as /encode does (default
false: `x` is the model's input as it is). Requests run through the same dynamic batching and
answer budget as the service's own endpoints.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service import __version__, ops
from service.codecs.images import MAX_LATENT, Invert, check_pixels, invert_where_needed, shape_hint
from service.codecs.json_input import describe_errors
from service.codecs.oip_input import declared_count
from service.errors import BadRequest, InvalidInput, NotFound
from service.models.budget import answer_bytes
from service.models.registry import ModelRegistry
from service.models.runtime import ModelRuntime
from service.observability.context import note_model
from service.oip.schemas import InferenceRequest, ModelMetadata, ServerMetadata, TensorMetadata
from service.ops import check_image_values
from service.schemas import EncodeParams, ScoreParams
from service.settings import Settings

GRAPHS = ("encoder", "decoder", "scorer")
IMAGE_GRAPHS = ("encoder", "scorer")  # those that take images
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
SCORER_OUTPUTS = (
    "score",
    "is_outlier",
    "percentile",
    "nll",
    "elbo",
    "reconstruction",
    "kl",
    "reconstruction_error",
)
EXTENSIONS = ["binary_tensor_data"]  # Triton's name for the binary tensor data extension
PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class ProtocolModel:
    """One of a served model's graphs as the protocol names it (`mnist-vae-encoder`)."""

    runtime: ModelRuntime
    graph: str  # encoder, decoder or scorer
    name: str

    @property
    def version(self) -> str:
        return self.runtime.manifest.version

    @functools.cached_property
    def input(self) -> TensorMetadata:
        """The graph's input as the protocol sees it: images [-1, H, W, C] (whatever the
        graph's own layout: the service converts), or a decoder's latent vectors [-1, latent]."""
        runtime = self.runtime
        if self.graph == "encoder":
            return _tensor(runtime.manifest.encoder.inputs[0].name, runtime.image_hwc)
        if self.graph == "scorer":
            return _tensor(SCORER_INPUT, runtime.image_hwc)
        return _tensor(runtime.manifest.decoder.inputs[0].name, (runtime.latent_dim,))


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request to a model may hold: `rows` (VAE_MAX_IMAGES) and `values` in all (rows
    of the input, and for images at most VAE_MAX_REQUEST_VALUES)."""

    rows: int
    values: int
    row_values: int

    @property
    def setting(self) -> str:
        """The setting that `values` comes from."""
        return (
            "VAE_MAX_IMAGES"
            if self.values == self.rows * self.row_values
            else ("VAE_MAX_REQUEST_VALUES")
        )


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """A model's outputs by name, in the protocol's order, and the answer's `parameters`."""

    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any] | None = None


def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="vae-serving", version=__version__, extensions=EXTENSIONS)


def find_model(registry: ModelRegistry, name: str, version: str | None = None) -> ProtocolModel:
    """The protocol model `name` (at `version`, when given); 404 naming the known ones."""
    base, _, graph = name.rpartition("-")
    runtime = registry.lookup(base)
    if graph not in GRAPHS or runtime is None:
        known = ", ".join(model_names(registry))
        raise NotFound("", f"unknown model {name!r}; known: {known}")
    note_model(base)
    if version is not None and version not in ("", runtime.manifest.version):
        raise NotFound(
            "", f"model {name!r} has version {runtime.manifest.version!r}, not {version!r}"
        )
    return ProtocolModel(runtime, graph, name)


def model_names(registry: ModelRegistry) -> list[str]:
    """Every protocol model the registry's models make."""
    return [f"{name}-{graph}" for name in registry.models for graph in GRAPHS]


def _tensor(name: str, row: tuple[int, ...], datatype: str = "FP32") -> TensorMetadata:
    return TensorMetadata(name=name, datatype=datatype, shape=[-1, *row])


def output_tensors(model: ProtocolModel) -> list[TensorMetadata]:
    """An encoder's mean (or code) and a VAE's log-variance [-1, latent] (other outputs of the
    graph, such as a sampled z, are not served); a decoder's images [-1, H, W, C]; a scorer's
    numbers per image."""
    runtime = model.runtime
    if model.graph == "decoder":
        return [_tensor(runtime.manifest.image_output, runtime.image_hwc)]
    if model.graph == "scorer":
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


def model_metadata(model: ProtocolModel) -> ModelMetadata:
    return ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform=PLATFORM,
        inputs=[model.input],
        outputs=output_tensors(model),
    )


def limits(model: ProtocolModel, settings: Settings) -> Limits:
    row = math.prod(model.input.shape[1:])
    most = settings.max_images * row
    if model.graph in IMAGE_GRAPHS:  # and no request carries more image values than this
        most = min(most, settings.max_request_values)
    return Limits(settings.max_images, most, row)


def check_inputs(request: InferenceRequest, model: ProtocolModel, limits: Limits) -> None:
    """The request's inputs are the graph's one input, in a datatype it takes, within `limits`:
    all known before a value of the data is converted (binary data included)."""
    spec = model.input
    if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
        names = [i.name for i in request.inputs]
        raise BadRequest("", f"inputs: expected one tensor named {spec.name!r}, got {names}")
    datatype = request.inputs[0].datatype
    accepted = ACCEPTED[model.graph]
    if datatype not in accepted:
        raise BadRequest(
            "",
            f"inputs[0].datatype: {datatype!r} is not accepted for {spec.name}; send "
            + " or ".join(accepted)
            + (" (0-255)" if model.graph in IMAGE_GRAPHS else ""),
        )
    shape = request.inputs[0].shape
    if len(shape) > 1 and shape[0] > limits.rows:
        raise BadRequest(
            "", f"inputs[0].shape: {shape[0]} rows; at most {limits.rows} (VAE_MAX_IMAGES)"
        )
    if declared_count(shape) > limits.values:
        raise BadRequest(
            "",
            f"inputs[0].shape: {shape} holds {declared_count(shape)} values; {limits.rows} rows "
            f"of {limits.row_values} ({limits.setting}) hold at most {limits.values}: send "
            "fewer rows",
        )


def prepare(
    request: InferenceRequest, values: list[np.ndarray], model: ProtocolModel, settings: Settings
) -> np.ndarray:
    """The graph's input array from the request's checked inputs (`values`: each input's data,
    flat): its rows as the graph takes them ((N, H, W, C) images, (N, latent) vectors), checked,
    inverted as asked, float32."""
    x = _input_array(request, values, model)
    try:  # VAE_MAX_REQUEST_VALUES: the images read, or the images the answer will hold
        check_image_values(len(x), model.runtime, settings, "inputs[0]")
    except InvalidInput as exc:  # the protocol calls an invalid request 400
        raise BadRequest("", str(exc)) from None
    background = model.runtime.manifest.input.background
    x = invert_where_needed(x, _invert(request, model.graph), background)
    if len(x) > settings.max_images:  # VAE_MAX_IMAGES, for any shape the check lets through
        raise BadRequest(
            "", f"inputs[0]: {len(x)} rows; at most {settings.max_images} (VAE_MAX_IMAGES)"
        )
    return x


def _input_array(
    request: InferenceRequest, values: list[np.ndarray], model: ProtocolModel
) -> np.ndarray:
    spec = model.input
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
        if model.graph in IMAGE_GRAPHS:
            h, w, c = row_shape
            what += f": images of {h} x {w} x {c}, H x W x C, channels last"
            what += shape_hint(tuple(tensor.shape[1:]), (h, w, c), batch=True)
        raise BadRequest(
            "", f"inputs[0].shape: {tensor.shape} does not fit {spec.name} {spec.shape} ({what})"
        )
    if flat.size == 0:
        raise BadRequest("", "inputs[0]: no rows; send at least one")
    rows = flat.reshape(tensor.shape[0], *row_shape)
    # FP32 data is checked as it is (binary data: in place, no copy); FP64 is checked before it
    # is cast, which would turn a huge number into infinity.
    if tensor.datatype == "UINT8":
        rows = rows.astype(np.float32) / np.float32(255.0)
    elif tensor.datatype == "FP16":
        rows = rows.astype(np.float32)
    try:
        if model.graph in IMAGE_GRAPHS:
            rows = check_pixels(rows, "inputs[0].data")
        elif not np.isfinite(rows).all() or np.abs(rows).max() > MAX_LATENT:
            raise InvalidInput(
                "inputs[0].data", f"latent values must be finite and within +-{MAX_LATENT:g}"
            )
    except InvalidInput as exc:  # the protocol calls an invalid request 400
        raise BadRequest("", str(exc)) from None
    return rows.astype(np.float32, copy=False)


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


async def infer(
    model: ProtocolModel,
    request: InferenceRequest,
    x: np.ndarray,
    registry: ModelRegistry,
    settings: Settings,
    encoding: str = "json",
) -> InferenceResult:
    """Run `model` on its prepared input `x`, within the answer budget (`encoding`: how the
    answer will be written, "json" or "npy" for raw bytes, which sizes what it holds)."""
    runtime = model.runtime
    if model.graph == "scorer":
        params = _score_params(request)
        values = ops.score_values(params, runtime, x, settings)
        async with registry.answers.reserve(answer_bytes(values, encoding)):
            return await _score(runtime, x, params, settings)
    width = 2 * runtime.latent_dim if model.graph == "encoder" else runtime.image_values
    async with registry.answers.reserve(answer_bytes(len(x) * width, encoding)):
        if model.graph == "encoder":
            mu, logvar = await runtime.encode_batched(x)
            names = [t.name for t in output_tensors(model)]
            found = [mu] if logvar is None else [mu, logvar]
            return InferenceResult(dict(zip(names, found, strict=True)))
        images = await runtime.decode_batched(x)  # (N, H, W, C), as the metadata says
        return InferenceResult({runtime.manifest.image_output: images})


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
    runtime: ModelRuntime, x: np.ndarray, params: ScoreParams, settings: Settings
) -> InferenceResult:
    try:
        result = await ops.score(params, runtime, x, settings)
    except InvalidInput as exc:  # the protocol calls an invalid request 400
        where = "parameters." if exc.field in SCORE_PARAMETERS else ""
        raise BadRequest("", f"{where}{exc}") from None
    outputs = {
        name: value for name in SCORER_OUTPUTS if (value := getattr(result, name)) is not None
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
    return InferenceResult(outputs, parameters)


def requested_outputs(
    request: InferenceRequest, result: InferenceResult
) -> list[tuple[str, np.ndarray]]:
    """The outputs the request asks for (all by default), in its order; 400 naming an output
    the model does not have."""
    outputs = result.outputs
    wanted = [o.name for o in request.outputs] if request.outputs else list(outputs)
    unknown = [name for name in wanted if name not in outputs]
    if unknown:
        raise BadRequest("", f"outputs: {unknown} not among this model's outputs {list(outputs)}")
    return [(name, outputs[name]) for name in wanted]


def datatype(value: np.ndarray) -> str:
    """The protocol's datatype of an output array."""
    return {"bool": "BOOL", "float64": "FP64"}.get(value.dtype.name, "FP32")
