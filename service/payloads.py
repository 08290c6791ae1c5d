"""Request bodies in (JSON, NumPy .npy, multipart uploads) and responses out (JSON, .npy/.npz, PNG).

The JSON path avoids a Python object per pixel where it can: orjson parses the body and numpy
takes the image lists in one call, with range, size and NaN checks done on the array. Only when
that fast path finds something wrong does pydantic validate the body, to name the field at fault.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.imaging import (
    InputError,
    check_pixels,
    image_from_file,
    images_from_lists,
    latents_from_lists,
    png_grid,
)
from service.manifest import NAME_PATTERN
from service.runtime import ModelRegistry, ModelRuntime
from service.settings import Settings

Array = NDArray[np.float32]
Params = TypeVar("Params", bound=BaseModel)
NPY = "application/x-npy"
NPZ = "application/x-npz"
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
ResponseFormat = Literal["json", "npy", "png"]
NAME_RE = re.compile(NAME_PATTERN)


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


def error_response(exc: InputError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


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


def _npy_body(body: bytes, field: str) -> NDArray[Any]:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(field, f"the body is not a readable .npy array ({exc})", 400) from exc
    if not isinstance(array, np.ndarray):
        raise InputError(field, "send one .npy array, not an .npz archive", 400)
    return array


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


def _numbers(raw: Any) -> NDArray[Any] | None:
    """Non-empty JSON lists of numbers as one array in one numpy call; None for anything else
    (ragged lists, strings, booleans, nulls), which the slow path then finds and names."""
    if not isinstance(raw, list) or not raw:
        return None
    try:
        array = np.array(raw)
    except ValueError:  # ragged lists
        return None
    return array if array.dtype.kind in "fiu" else None


def _fast_images(raw: Any, shape: tuple[int, int, int]) -> Array | None:
    """The JSON image lists as one (N, C, H, W) array, or None when anything is off."""
    array = _numbers(raw)
    if array is None:
        return None
    c, h, w = shape
    if (array.ndim == 2 and array.shape[1] == c * h * w) or (c == 1 and array.shape[1:] == (h, w)):
        return array.astype(np.float32, copy=False).reshape(len(array), c, h, w)
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
    async with request.form(max_files=settings.max_images, max_fields=32) as form:
        uploads = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
        if not uploads:
            raise InputError("images", "multipart requests carry image files as `images` parts")
        _check_count(len(uploads), settings)
        fields = {k: v for k, v in form.multi_items() if k != "images" and isinstance(v, str)}
        params = _validate(params_type, _coerce_text_fields(fields, params_type))
        model = pick_model(registry, getattr(params, "model", None), query_model)
        batch = np.empty((len(uploads), *model.image_shape), dtype=np.float32)
        for i, upload in enumerate(uploads):
            field = f"images[{i}] ({upload.filename})" if upload.filename else f"images[{i}]"
            data = await upload.read(settings.max_upload_bytes + 1)
            if len(data) > settings.max_upload_bytes:
                raise InputError(field, f"file over {settings.max_upload_bytes} bytes", 413)
            batch[i] = image_from_file(
                data, field, model.image_shape, model.manifest.input.preprocessing
            )
    return params, model, batch


@dataclass(frozen=True)
class TensorField:
    """How one request field (`images` or `z`) becomes the model's input array."""

    name: str
    from_npy: Callable[[NDArray[Any], ModelRuntime], Array]
    from_fast_json: Callable[[Any, ModelRuntime], Array | None]  # None: let pydantic look
    from_lists: Callable[[Any, ModelRuntime], Array]


def _latents_from_npy(array: NDArray[Any], model: ModelRuntime) -> Array:
    if array.dtype != np.float32 or array.ndim != 2 or len(array) == 0:
        raise InputError(
            "z", f"expected a float32 array (N, latent), got {array.dtype} {array.shape}"
        )
    return latents_from_lists(array, model.latent_dim)


def _fast_latents(raw: Any, model: ModelRuntime) -> Array | None:
    z = _numbers(raw)
    if z is None or z.ndim != 2:
        return None
    return latents_from_lists(z.astype(np.float32), model.latent_dim)


def _fast_checked_images(raw: Any, model: ModelRuntime) -> Array | None:
    fast = _fast_images(raw, model.image_shape)
    return None if fast is None else check_pixels(fast, "images")


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
    """Parameters, model and input array of a JSON or .npy request.

    .npy: the body is the array, the other fields are query parameters. JSON: orjson and numpy
    first; when that finds anything off, pydantic validates the body to name the field at fault.
    """
    query_model = query_model_name(call)
    if call.content_type == NPY:
        params = _validate(params_type, _coerce_text_fields(dict(call.query), params_type))
        model = pick_model(registry, getattr(params, "model", None), query_model)
        array = field.from_npy(_npy_body(call.body, field.name), model)
        _check_count(len(array), settings, field.name)
        return params, model, array

    _require_json(call, accepts_binary=True)
    data = _loads(call.body)
    if isinstance(data, dict) and field.name in data:
        params = _validate(params_type, {k: v for k, v in data.items() if k != field.name})
        model = pick_model(registry, getattr(params, "model", None), query_model)
        fast = field.from_fast_json(data[field.name], model)
        if fast is not None:
            _check_count(len(fast), settings, field.name)
            return params, model, fast
    try:
        full = full_type.model_validate_json(call.body)
    except ValidationError as exc:
        raise InputError("", describe_errors(exc.errors())) from exc
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
        raise InputError("", describe_errors(exc.errors())) from exc


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


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # NaN literals and broken JSON alike: the slow path words the error


def _check_count(count: int, settings: Settings, field: str = "images") -> None:
    if count > settings.max_images:
        raise InputError(field, f"{count} {field}; at most {settings.max_images} per request")


# ---------------------------------------------------------------------------------------------
# Responses


def response_format(accept: str) -> ResponseFormat:
    if "application/json" in accept or not accept:
        return "json"
    if NPY in accept or NPZ in accept:
        return "npy"
    if "image/png" in accept:
        return "png"
    return "json"


def npy_response(array: Array, headers: dict[str, str] | None = None) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return Response(buffer.getvalue(), media_type=NPY, headers=headers)


def npz_response(arrays: dict[str, Array], headers: dict[str, str] | None = None) -> Response:
    buffer = io.BytesIO()
    contiguous = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    np.savez(buffer, allow_pickle=False, **contiguous)
    return Response(buffer.getvalue(), media_type=NPZ, headers=headers)


def images_response(
    fmt: ResponseFormat, images: Array, fields: dict[str, Any], seed: int | None = None
) -> Response:
    """Images (…, 1, H, W) in the asked-for format. JSON drops the channel axis."""
    pixels = images.squeeze(-3)
    headers = {"X-Seed": str(seed)} if seed is not None else None
    if fmt == "png":
        return Response(png_grid(pixels), media_type="image/png", headers=headers)
    if fmt == "npy":
        return npy_response(pixels, headers)
    return JSONBody({**fields, "images": pixels})
