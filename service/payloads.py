"""Request bodies in (JSON, NumPy .npy, multipart uploads) and responses out (JSON, .npy/.npz, PNG).

The JSON path avoids a Python object per pixel where it can: simdjson copies the numbers of the
`images` (or `z`) lists straight into a numpy array, and the range, size and NaN checks run on the
array. Only when that fast path finds something wrong does pydantic validate the body, to name the
field at fault.
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
import simdjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from service.imaging import (
    InputError,
    Invert,
    check_pixels,
    image_from_file,
    images_from_lists,
    invert_where_needed,
    latents_from_lists,
    png_grid,
)
from service.manifest import NAME_PATTERN
from service.metrics import note_model
from service.runtime import ModelRegistry, ModelRuntime
from service.settings import Settings

Array = NDArray[np.float32]
Params = TypeVar("Params", bound=BaseModel)
NPY = "application/x-npy"
NPZ = "application/x-npz"
JSON = "application/json"
PNG = "image/png"
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
ResponseFormat = Literal["json", "npy", "png"]
NAME_RE = re.compile(NAME_PATTERN)
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=JSON_OPTIONS)


def describe_errors(errors: list[Any]) -> str:
    """pydantic errors -> 'images[0][3]: Input should be a valid number; ...' (first five)."""
    parts: list[str] = []
    for error in errors:
        path = ""
        for item in error["loc"]:
            if isinstance(item, int):
                path += f"[{item}]"
            elif "[" not in str(item):  # skip union branch tags such as 'list[float]'
                path += ("." if path else "") + str(item)
        text = f"{path or 'body'}: {error['msg']}"
        if text not in parts:
            parts.append(text)
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    return "; ".join(parts[:5]) + more


def ready_registry(registry: ModelRegistry | None) -> ModelRegistry:
    """The registry, once every model is loaded and warmed up; a 503 before that."""
    if registry is None or not registry.ready:
        raise InputError("service", "models are still loading; retry shortly", 503)
    return registry


# A 503 here means "still loading": the model warm-up takes well under a second.
LOADING_HEADERS = {"Retry-After": "1"}


def error_response(exc: InputError) -> JSONResponse:
    headers = LOADING_HEADERS if exc.status == 503 else None
    return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


def _validate(model_type: type[Params], values: dict[str, Any]) -> Params:
    try:
        return model_type.model_validate(values)
    except ValidationError as exc:
        raise InputError("", describe_errors(exc.errors())) from exc


def pick_model(
    registry: ModelRegistry, from_body: str | None, from_query: str | None
) -> ModelRuntime:
    if from_body and from_query and from_body != from_query:
        raise InputError("model", f"the body says {from_body!r} but ?model= says {from_query!r}")
    name = from_body or from_query or registry.default_name
    model = registry.models.get(name)
    if model is None:
        raise InputError(
            "model", f"no model named {name!r}; available: {', '.join(registry.models)}", 404
        )
    note_model(name)  # for the request's log line and metrics
    return model


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _coerce_text_fields(fields: dict[str, Any], model_type: type[BaseModel]) -> dict[str, Any]:
    """Form and query values arrive as text: turn the numeric ones into numbers."""
    out = dict(fields)
    for name, value in fields.items():
        info = model_type.model_fields.get(name)
        if info is None or not isinstance(value, str):
            continue
        annotation = str(info.annotation)
        try:
            if "int" in annotation:
                out[name] = int(value)
            elif "float" in annotation:
                out[name] = float(value)
        except ValueError as exc:
            kind = "an integer" if "int" in annotation else "a number"
            raise InputError(name, f"expected {kind}, got {value!r}") from exc
    return out


# numpy's own bound on the header it reads; also bounds what the header cache keeps.
NPY_HEADER_MAX = 10_000


def _npy_header_bytes(body: bytes) -> bytes:
    """The magic, version and header of a .npy body: everything before the data. Its length
    is a little-endian uint16 at bytes 8-9 in version 1.0, a uint32 at 8-11 in 2.0 and 3.0."""
    if body[6:7] == b"\x01":
        end = 10 + int.from_bytes(body[8:10], "little")
    else:
        end = 12 + int.from_bytes(body[8:12], "little")
    return body[: min(end, NPY_HEADER_MAX)]


@functools.lru_cache(maxsize=256)
def _npy_header(start: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Shape, Fortran order, dtype and data offset from the first bytes of a .npy body. numpy
    reads the header with ast.literal_eval (~30 us, a tenth of a one-image request), and a
    client sends the same header again and again, so it is cached on those bytes."""
    stream = io.BytesIO(start)
    version = np.lib.format.read_magic(stream)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read_header(stream)
    return shape, fortran_order, dtype, stream.tell()


def _npy_body(body: bytes, field: str) -> NDArray[Any]:
    if body.startswith(ZIP_MAGIC):
        raise InputError(field, "send one .npy array, not an .npz archive", 400)
    if not body.startswith(NPY_MAGIC):  # numpy would call anything else pickled data
        raise InputError(
            field,
            "the body is not a readable .npy array (it does not start with \\x93NUMPY); write it "
            "with np.save",
            400,
        )
    try:
        shape, fortran_order, dtype, offset = _npy_header(_npy_header_bytes(body))
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted; send float32 or uint8")
        # Not np.load: it allocates the whole array the header declares before reading any data,
        # so a 100-byte body claiming (10**12, 784) was a MemoryError, a 500. The data is read in
        # place instead (read-only), once its size matches the header.
        count = math.prod(shape)
        if count * dtype.itemsize != len(body) - offset:
            raise ValueError(
                f"the header declares {dtype} {shape} but {len(body) - offset} bytes of data "
                "follow it"
            )
        data = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
        return data.reshape(shape[::-1]).T if fortran_order else data.reshape(shape)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(field, f"the body is not a readable .npy array ({exc})", 400) from exc


def _images_from_npy(array: NDArray[Any], shape: tuple[int, int, int]) -> Array:
    c, h, w = shape
    if array.dtype == np.uint8:
        images = array.astype(np.float32) / 255.0
    elif array.dtype == np.float32:
        images = array
    else:
        raise InputError("images", f"dtype {array.dtype}: send float32 in [0, 1] or uint8 0-255")
    if (images.ndim == 2 and images.shape[1] == c * h * w) or (
        images.ndim == 3 and images.shape[1:] == (h, w)
    ):
        images = images.reshape(len(images), c, h, w)
    elif images.shape[1:] != (c, h, w):
        raise InputError(
            "images",
            f"array of shape {array.shape}; expected (N, {c * h * w}), (N, {h}, {w}) or "
            f"(N, {c}, {h}, {w})",
        )
    if len(images) == 0:
        raise InputError("images", "the array holds no images")
    return check_pixels(np.ascontiguousarray(images, dtype=np.float32), "images")


def json_tensor_body(body: bytes, tensor: str) -> tuple[dict[str, Any], NDArray[Any]] | None:
    """A JSON object whose `tensor` field (`images` or `z`) is a regular nested list of numbers,
    as its other fields and that field as one float64 array (N, ...); None for anything else,
    which pydantic then reads to name the fault.

    simdjson copies the numbers into a buffer without a Python float per number: 3x faster than
    orjson plus numpy on a 256-image body, and no heap left fragmented by 200,000 freed floats.
    Its `as_buffer` flattens nested lists, so the shape is checked here: every row (and sub-row)
    as long as the first, and no list deeper than that. The last holds because a body has at
    least one '[' per list (more when a string holds one, which only turns this path down).
    """
    try:
        doc = simdjson.Parser().parse(body)  # one per call: parsers are not shared across threads
        if not isinstance(doc, simdjson.Object):
            return None
        keys = list(doc.keys())
        fields: dict[str, Any] = {key: doc[key] for key in keys if key != tensor}
        rows = doc[tensor] if tensor in keys else None
        if (
            not isinstance(rows, simdjson.Array)
            or len(rows) == 0
            or len(set(keys)) != len(keys)  # pydantic keeps the last of a repeated key
            or any(isinstance(v, simdjson.Array | simdjson.Object) for v in fields.values())
        ):
            return None
        first = rows[0]
        if not isinstance(first, simdjson.Array) or len(first) == 0:
            return None
        # Typed loosely: len() of a number or a string, where a list belongs, raises (or the
        # count below turns it down) and the except clause takes it.
        elements: Any = rows
        shape: tuple[int, ...]
        if isinstance(first[0], simdjson.Array):  # N x 28 x 28
            shape = (len(first), len(first[0]))
            regular = all(
                len(r) == shape[0] and all(len(s) == shape[1] for s in r) for r in elements
            )
            lists = 1 + len(rows) * (1 + shape[0])
        else:  # N x 784, N x latent
            shape = (len(first),)
            regular = all(len(r) == shape[0] for r in elements)
            lists = 1 + len(rows)
        if not regular or body.count(b"[") != lists:
            return None
        flat = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
        if flat.size != len(rows) * math.prod(shape):
            return None
        return fields, flat.reshape(len(rows), *shape)
    except (ValueError, TypeError, RuntimeError, IndexError):  # simdjson's words for bad JSON
        return None


def _fast_images(array: NDArray[Any], shape: tuple[int, int, int]) -> NDArray[Any] | None:
    """The JSON image rows as one (N, C, H, W) array, or None when their shape is off. Not yet
    float32: the pixel check comes first, as a cast would turn 1e300 into infinity."""
    c, h, w = shape
    if (array.ndim == 2 and array.shape[1] == c * h * w) or (c == 1 and array.shape[1:] == (h, w)):
        return array.reshape(len(array), c, h, w)
    return None


@dataclass
class Call:
    """What an inference endpoint reads from an HTTP request, however it arrived."""

    body: bytes
    content_type: str  # media type only, lower case
    accept: str
    query: dict[str, str]

    @classmethod
    async def from_request(cls, request: Request) -> Call:
        return cls(
            await request.body(),
            content_type(request),
            request.headers.get("accept", ""),
            dict(request.query_params.items()),
        )


async def read_multipart_images(
    request: Request,
    params_type: type[Params],
    registry: ModelRegistry,
    settings: Settings,
    query_model: str | None,
) -> tuple[Params, ModelRuntime, Array]:
    """Image files as repeated `images` parts, the other fields as form fields."""
    form = await _read_form(request, settings)
    try:
        uploads = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
        if not uploads:
            raise InputError("images", "multipart requests carry image files as `images` parts")
        _check_count(len(uploads), settings)
        fields = {k: v for k, v in form.multi_items() if k != "images" and isinstance(v, str)}
        params = _validate(params_type, _coerce_text_fields(fields, params_type))
        model = pick_model(registry, getattr(params, "model", None), query_model)
        invert = _invert_choice(params, FILE_INVERT_DEFAULT)
        batch = np.empty((len(uploads), *model.image_shape), dtype=np.float32)
        for i, upload in enumerate(uploads):
            field = f"images[{i}] ({upload.filename})" if upload.filename else f"images[{i}]"
            data = await upload.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise InputError(field, f"file over {settings.max_upload_bytes} bytes", 413)
            # In a worker thread: a 16 kB PNG of 4096 x 4096 pixels takes ~70 ms to decode, and a
            # body full of them would hold the event loop (every other request, the timeout) for
            # a minute.
            batch[i] = await run_in_threadpool(
                image_from_file,
                data,
                field,
                model.image_shape,
                model.manifest.input.preprocessing,
                invert,
            )
    finally:
        await form.close()
    return params, model, batch


async def _read_form(request: Request, settings: Settings) -> FormData:
    # The whole body first (at most VAE_MAX_BODY_BYTES, the guard sees to it; the form parser
    # then reads it from memory): a body cut short would otherwise lose its last parts silently.
    body = await request.body()
    boundary = parse_options_header(request.headers.get("content-type", ""))[1].get(b"boundary")
    if boundary and b"--" + boundary + b"--" not in body:
        raise InputError(
            "body", "the multipart body ends before its closing boundary (truncated upload?)", 400
        )
    try:
        return await request.form(max_files=settings.max_images, max_fields=32)
    except HTTPException as exc:  # starlette's words for a malformed body or too many parts
        if str(exc.detail).startswith("Too many files"):
            raise InputError(
                "images",
                f"more than {settings.max_images} image files; at most {settings.max_images} per "
                "request",
            ) from exc
        raise InputError(
            "body", f"not a readable multipart/form-data body ({exc.detail})", 400
        ) from exc


# When a request does not say: a file is a picture (a photo, a scan: often dark ink on light
# paper), an array is taken as the model's input, as it always was (see schemas.InvertField).
FILE_INVERT_DEFAULT: Invert = "auto"
ARRAY_INVERT_DEFAULT: Invert = False


def _invert_choice(params: BaseModel, default: Invert) -> Invert:
    choice: Invert | None = getattr(params, "invert", None)
    return default if choice is None else choice


@dataclass(frozen=True)
class TensorField:
    """How one request field (`images` or `z`) becomes the model's input array."""

    name: str
    from_npy: Callable[[NDArray[Any], ModelRuntime], Array]
    from_fast_json: Callable[[NDArray[Any], ModelRuntime], Array | None]  # None: pydantic looks
    from_lists: Callable[[Any, ModelRuntime], Array]


def _latents_from_npy(array: NDArray[Any], model: ModelRuntime) -> Array:
    if array.dtype != np.float32 or array.ndim != 2 or len(array) == 0:
        raise InputError(
            "z", f"expected a float32 array (N, latent), got {array.dtype} {array.shape}"
        )
    return latents_from_lists(array, model.latent_dim)


def _fast_latents(z: NDArray[Any], model: ModelRuntime) -> Array | None:
    return latents_from_lists(z, model.latent_dim) if z.ndim == 2 else None


def _fast_checked_images(array: NDArray[Any], model: ModelRuntime) -> Array | None:
    fast = _fast_images(array, model.image_shape)
    return None if fast is None else check_pixels(fast, "images").astype(np.float32, copy=False)


IMAGES = TensorField(
    "images",
    from_npy=lambda array, model: _images_from_npy(array, model.image_shape),
    from_fast_json=_fast_checked_images,
    from_lists=lambda raw, model: images_from_lists(raw, model.image_shape),
)
LATENTS = TensorField(
    "z",
    from_npy=_latents_from_npy,
    from_fast_json=_fast_latents,
    from_lists=lambda raw, model: latents_from_lists(raw, model.latent_dim),
)


def parse_tensor_request(
    call: Call,
    field: TensorField,
    params_type: type[Params],
    full_type: type[BaseModel],
    registry: ModelRegistry,
    settings: Settings,
) -> tuple[Params, ModelRuntime, Array]:
    """Parameters, model and input array of a JSON or .npy request; images inverted as their
    `invert` says (default: not at all).

    .npy: the body is the array, the other fields are query parameters. JSON: simdjson and numpy
    first; when that finds anything off, pydantic validates the body to name the field at fault.
    """
    params, model, array = _read_tensor_request(
        call, field, params_type, full_type, registry, settings
    )
    if field is IMAGES:
        array = invert_where_needed(array, _invert_choice(params, ARRAY_INVERT_DEFAULT))
    return params, model, array


def _read_tensor_request(
    call: Call,
    field: TensorField,
    params_type: type[Params],
    full_type: type[BaseModel],
    registry: ModelRegistry,
    settings: Settings,
) -> tuple[Params, ModelRuntime, Array]:
    query_model = query_model_name(call)
    if call.content_type == NPY:
        params = _validate(params_type, _coerce_text_fields(dict(call.query), params_type))
        model = pick_model(registry, getattr(params, "model", None), query_model)
        array = field.from_npy(_npy_body(call.body, field.name), model)
        _check_count(len(array), settings, field.name)
        return params, model, array

    _require_json(call, accepts_binary=True)
    parsed = json_tensor_body(call.body, field.name)
    if parsed is not None:
        fields, tensor = parsed
        try:
            fast_params: Params | None = params_type.model_validate(fields)
        except ValidationError:  # pydantic on the raw body words it, with its JSON locations
            fast_params = None
        if fast_params is not None:
            model = pick_model(registry, getattr(fast_params, "model", None), query_model)
            fast = field.from_fast_json(tensor, model)
            if fast is not None:
                _check_count(len(fast), settings, field.name)
                return fast_params, model, fast
    try:
        full = full_type.model_validate_json(call.body)
    except ValidationError as exc:
        raise _json_error(call, exc) from exc
    params = _validate(params_type, full.model_dump(exclude={field.name}, exclude_unset=True))
    model = pick_model(registry, getattr(params, "model", None), query_model)
    raw = getattr(full, field.name)
    _check_count(len(raw), settings, field.name)
    return params, model, field.from_lists(raw, model)


def parse_params(call: Call, params_type: type[Params]) -> Params:
    """A body of parameters only (/generate): JSON, or nothing at all for the defaults."""
    _require_json(call, accepts_binary=False)
    if not call.body.strip():
        return _validate(params_type, {})
    try:
        return params_type.model_validate_json(call.body)
    except ValidationError as exc:
        raise _json_error(call, exc) from exc


def _json_error(call: Call, exc: ValidationError) -> InputError:
    message = describe_errors(exc.errors())
    if not call.content_type and "Invalid JSON" in message:
        message += " (the request has no Content-Type, so its body was read as JSON)"
    return InputError("", message)


def query_model_name(call: Call) -> str | None:
    name = call.query.get("model")
    if name is not None and not NAME_RE.fullmatch(name):
        raise InputError("model", f"String should match pattern '{NAME_PATTERN}'")
    return name


def _require_json(call: Call, accepts_binary: bool) -> None:
    if call.content_type not in ("application/json", ""):
        alternatives = f", {NPY} or multipart/form-data" if accepts_binary else ""
        raise InputError(
            "content-type",
            f"{call.content_type!r} is not accepted; send application/json{alternatives}",
            415,
        )


def _check_count(count: int, settings: Settings, field: str = "images") -> None:
    if count > settings.max_images:
        what = "latent vectors" if field == "z" else field  # not "65 z"
        raise InputError(field, f"{count} {what}; at most {settings.max_images} per request")


# ---------------------------------------------------------------------------------------------
# Responses


# What each inference endpoint can answer, in its order of preference (the first when the client
# has none); each media type with the format that answers it. /encode answers arrays as an .npz
# archive (mu and logvar), also to `Accept: application/x-npy` as it always has.
IMAGE_OUTPUTS: tuple[tuple[str, ResponseFormat], ...] = ((JSON, "json"), (NPY, "npy"), (PNG, "png"))
PRODUCES: dict[str, tuple[tuple[str, ResponseFormat], ...]] = {
    "/encode": ((JSON, "json"), (NPZ, "npy"), (NPY, "npy")),
    "/reconstruct": IMAGE_OUTPUTS,
    "/generate": IMAGE_OUTPUTS,
    "/decode": IMAGE_OUTPUTS,
    "/v2/models/{model}/infer": ((JSON, "json"),),
}
# Accept headers seen are cached with their answer (a client sends the same one every time);
# longer ones, which no real client sends, are worked out each time rather than kept.
CACHED_ACCEPT_CHARS = 256


def negotiate(accept: str, endpoint: str) -> ResponseFormat:
    """The format to answer `endpoint` in, for this `Accept` header (RFC 9110, 12.5.1): of the
    media types the endpoint produces, the one of highest quality; each takes its quality from
    the most specific range that matches it (`image/png`, then `image/*`, then `*/*`), q=0 is
    "not acceptable", ties go to the endpoint's preference, JSON first. No header, or an empty
    one, accepts anything. None acceptable: a 406 naming what the endpoint produces."""
    if not accept or accept == JSON:
        return "json"
    if len(accept) > CACHED_ACCEPT_CHARS:
        return _negotiate(accept, endpoint)
    return _negotiate_cached(accept, endpoint)


def _negotiate(accept: str, endpoint: str) -> ResponseFormat:
    ranges = parse_accept(accept)
    offers = PRODUCES[endpoint]
    if not ranges and not accept.strip(" \t,"):
        return offers[0][1]
    best: tuple[float, ResponseFormat] | None = None
    for media_type, fmt in offers:
        quality = accept_quality(ranges, media_type)
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, fmt)
    if best is None:
        shown = accept if len(accept) <= 100 else accept[:100] + "..."
        raise InputError(
            "", f"Accept: {shown} cannot be produced by {endpoint}; " + _produces(endpoint), 406
        )
    return best[1]


_negotiate_cached = functools.lru_cache(maxsize=256)(_negotiate)


def _produces(endpoint: str) -> str:
    types = [media_type for media_type, _ in PRODUCES[endpoint]]
    if endpoint == "/encode":
        return f"it answers {JSON} or {NPZ} (also sent for {NPY})"
    if len(types) == 1:
        return f"it answers {types[0]} only"
    return f"it answers {', '.join(types[:-1])} or {types[-1]}"


def parse_accept(accept: str) -> list[tuple[str, str, float]]:
    """An Accept header's media ranges as (type, subtype, q), lower case. A range that is not
    `type/subtype` (or `*/*`, `type/*`), or whose q is not a number in [0, 1], is left out, as
    the RFC lets a recipient do; media type parameters other than q are not compared."""
    ranges = []
    for item in accept.split(","):
        media_range, *parameters = item.split(";")
        main, slash, sub = media_range.strip().lower().partition("/")
        if not slash or not main or not sub or (main == "*" and sub != "*"):
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = math.nan
        if 0.0 <= quality <= 1.0:  # NaN is neither
            ranges.append((main, sub, quality))
    return ranges


def accept_quality(ranges: list[tuple[str, str, float]], media_type: str) -> float:
    """The quality the most specific matching range gives `media_type`; 0 when none matches."""
    main, _, sub = media_type.partition("/")
    best_specificity, quality = -1, 0.0
    for range_main, range_sub, range_quality in ranges:
        if range_main == main and range_sub == sub:
            specificity = 2
        elif range_main == main and range_sub == "*":
            specificity = 1
        elif range_main == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity or (
            specificity == best_specificity and range_quality > quality
        ):
            best_specificity, quality = specificity, range_quality
    return quality


def _npy_bytes(array: Array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def npy_response(array: Array, headers: dict[str, str] | None = None) -> Response:
    return Response(_npy_bytes(array), media_type=NPY, headers=headers)


def npz_response(arrays: dict[str, Array], headers: dict[str, str] | None = None) -> Response:
    members = {f"{name}.npy": _npy_bytes(array) for name, array in arrays.items()}
    return Response(stored_zip(members), media_type=NPZ, headers=headers)


def stored_zip(members: dict[str, bytes]) -> bytes:
    """A zip archive of uncompressed members, as np.savez writes it and np.load reads it.

    Written here rather than with zipfile (which np.savez uses): zipfile took 70 us for the two
    small arrays of a one-image /encode answer, a quarter of the request; this takes 5 us. The
    layout (PKWARE APPNOTE 4.3): per member a local header, then its bytes; then one central
    directory record per member; then the end record. Times are the DOS epoch, 1980-01-01.
    """
    out, directory = bytearray(), bytearray()
    for name, data in members.items():
        encoded, crc, size, offset = name.encode(), zlib.crc32(data), len(data), len(out)
        # signature, version needed (2.0), flags, method (0: stored), time, date, crc, sizes,
        # name length, extra length
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, size, size, len(encoded), 0
        )
        out += encoded + data
        # as above, after "version made by"; then comment length, disk, attributes, offset
        directory += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50, 20, 20, 0, 0, 0, 0x21, crc, size, size, len(encoded), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        directory += encoded
    count, start = len(members), len(out)
    out += directory
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), start, 0)
    return bytes(out)


def images_response(
    fmt: ResponseFormat, images: Array, fields: dict[str, Any], seed: int | None = None
) -> Response:
    """Images (…, 1, H, W) in the asked-for format. JSON drops the channel axis; PNG and .npy
    carry the model and the seed in headers."""
    pixels = images.squeeze(-3)
    if fmt == "json":
        return JSONBody({**fields, "images": pixels})
    headers = {"X-Model": fields["model"]}
    if seed is not None:
        headers["X-Seed"] = str(seed)
    if fmt == "png":
        return Response(png_grid(pixels), media_type="image/png", headers=headers)
    return npy_response(pixels, headers)
