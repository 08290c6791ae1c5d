"""JSON and .npy requests -> (parameters, model, input array).

.npy: the body is the array, the other fields are query parameters. JSON: simdjson and numpy
first; when that finds anything off, pydantic validates the body to name the field at fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError
from starlette.types import Scope

from service.codecs.images import (
    Invert,
    as_hwc,
    check_pixels,
    images_from_lists,
    invert_where_needed,
    latents_from_lists,
)
from service.codecs.json_input import (
    OTHER_SEPARATORS,
    describe_errors,
    json_tensor_body,
    most_values,
)
from service.codecs.npy import NPY, images_from_npy, read_npy
from service.errors import InvalidInput, UnsupportedMediaType
from service.manifest import NAME_PATTERN
from service.models.registry import ModelRegistry
from service.models.runtime import ModelRuntime
from service.ops import check_image_values
from service.settings import Settings

Array = NDArray[np.float32]
Params = TypeVar("Params", bound=BaseModel)
NAME_RE = re.compile(NAME_PATTERN)
Parsed = tuple[BaseModel, ModelRuntime, Array | None]


@dataclass
class Call:
    """What an inference endpoint reads from an HTTP request, however it arrived."""

    body: bytes
    content_type: str  # media type only, lower case
    accept: str
    query: dict[str, str]

    @classmethod
    def of(
        cls, scope: Scope, headers: dict[bytes, bytes], content_type: bytes, body: bytes
    ) -> Call:
        """The call an ASGI request makes: `headers` are its headers as a dict, `content_type`
        their media_type()."""
        return cls(
            body,
            content_type.decode("latin-1"),
            headers.get(b"accept", b"").decode("latin-1"),
            query_of(scope),
        )


def query_of(scope: Scope) -> dict[str, str]:
    """An ASGI request's query parameters (the last of a repeated one; blank ones left out)."""
    return dict(parse_qsl(scope["query_string"].decode("latin-1")))


def media_type(headers: dict[bytes, bytes]) -> bytes:
    """The Content-Type's media type, lower case, without its parameters."""
    return headers.get(b"content-type", b"").split(b";")[0].strip().lower()


@dataclass(frozen=True)
class TensorField:
    """How one request field (`images` or `z`) becomes the model's input array."""

    name: str
    from_npy: Callable[[NDArray[Any], ModelRuntime], Array]
    from_fast_json: Callable[[NDArray[Any], ModelRuntime], Array | None]  # None: pydantic looks
    from_lists: Callable[[Any, ModelRuntime], Array]
    uploads: bool  # whether image files may be sent instead (multipart/form-data)
    invertible: bool  # whether `invert` applies (images: 1 - pixel)
    what: str  # how a count of them is said: "65 latent vectors", not "65 z"


class RequestSpec(Protocol):
    """What an endpoint's request holds: the endpoint table's rows are these."""

    @property
    def params(self) -> type[BaseModel]: ...  # every field but the tensor
    @property
    def body(self) -> type[BaseModel]: ...  # the whole JSON body
    @property
    def tensor(self) -> TensorField | None: ...  # None: parameters only


def _latents_from_npy(array: NDArray[Any], model: ModelRuntime) -> Array:
    if array.dtype != np.float32 or array.ndim != 2 or len(array) == 0:
        raise InvalidInput(
            "z", f"expected a float32 array (N, latent), got {array.dtype} {array.shape}"
        )
    return latents_from_lists(array, model.latent_dim)


def _fast_latents(z: NDArray[Any], model: ModelRuntime) -> Array | None:
    return latents_from_lists(z, model.latent_dim) if z.ndim == 2 else None


def _fast_images(array: NDArray[Any], model: ModelRuntime) -> Array | None:
    """The JSON image rows as one (N, H, W, C) array, or None when their shape is off (pydantic
    and `images_from_lists` then name the image at fault). The pixel check comes before the cast
    to float32, which would turn 1e300 into infinity."""
    images = as_hwc(array, model.image_hwc)
    if images is None:
        return None
    return check_pixels(images, "images").astype(np.float32, copy=False)


IMAGES = TensorField(
    "images",
    from_npy=lambda array, model: images_from_npy(array, model.image_hwc),
    from_fast_json=_fast_images,
    from_lists=lambda raw, model: images_from_lists(raw, model.image_hwc),
    uploads=True,
    invertible=True,
    what="images",
)
LATENTS = TensorField(
    "z",
    from_npy=_latents_from_npy,
    from_fast_json=_fast_latents,
    from_lists=lambda raw, model: latents_from_lists(raw, model.latent_dim),
    uploads=False,
    invertible=False,
    what="latent vectors",
)


def parse_request(
    call: Call, spec: RequestSpec, registry: ModelRegistry, settings: Settings
) -> Parsed:
    """Parameters, model and input array (None for an endpoint of parameters only)."""
    if spec.tensor is None:
        params = parse_params(call, spec.params)
        model = registry.pick(getattr(params, "model", None), query_model_name(call.query))
        return params, model, None
    return parse_tensor_request(call, spec.tensor, spec.params, spec.body, registry, settings)


# When a request does not say: an array is taken as the model's input as it is; a file is a
# picture (a photo, a scan: often dark ink on light paper), see service.codecs.multipart.
ARRAY_INVERT_DEFAULT: Invert = False


def invert_choice(params: BaseModel, default: Invert) -> Invert:
    """What the request's `invert` says, or `default` when it says nothing."""
    choice: Invert | None = getattr(params, "invert", None)
    return default if choice is None else choice


def parse_tensor_request(
    call: Call,
    field: TensorField,
    params_type: type[Params],
    body_type: type[BaseModel],
    registry: ModelRegistry,
    settings: Settings,
) -> tuple[Params, ModelRuntime, Array]:
    """Parameters, model and input array of a JSON or .npy request; images inverted as their
    `invert` says (default: not at all)."""
    params, model, array = _read_tensor_request(
        call, field, params_type, body_type, registry, settings
    )
    if field.invertible:
        array = invert_where_needed(
            array, invert_choice(params, ARRAY_INVERT_DEFAULT), model.manifest.input.background
        )
    return params, model, array


def _read_tensor_request(
    call: Call,
    field: TensorField,
    params_type: type[Params],
    body_type: type[BaseModel],
    registry: ModelRegistry,
    settings: Settings,
) -> tuple[Params, ModelRuntime, Array]:
    query_model = query_model_name(call.query)
    if call.content_type == NPY:
        params = validate_fields(params_type, call.query)
        model = registry.pick(getattr(params, "model", None), query_model)
        raw_array = read_npy(call.body, field.name, field.what)
        if raw_array.ndim >= 1:  # bounded before any conversion (uint8 -> float32 is 4x)
            check_rows(len(raw_array), model, settings, field)
        array = field.from_npy(raw_array, model)
        check_rows(len(array), model, settings, field)
        return params, model, array

    _require_json(call, field)
    _check_value_count(call.body, field, registry, settings)
    parsed = json_tensor_body(call.body, field.name)
    if parsed is not None:
        fields, tensor = parsed
        try:
            fast_params: Params | None = params_type.model_validate(fields)
        except ValidationError:  # pydantic on the raw body words it, with its JSON locations
            fast_params = None
        if fast_params is not None:
            model = registry.pick(getattr(fast_params, "model", None), query_model)
            fast = field.from_fast_json(tensor, model)
            if fast is not None:
                check_rows(len(fast), model, settings, field)
                return fast_params, model, fast
    try:
        full = body_type.model_validate_json(call.body)
    except ValidationError as exc:
        raise _json_error(call, exc) from exc
    params = _validate(params_type, full.model_dump(exclude={field.name}, exclude_unset=True))
    model = registry.pick(getattr(params, "model", None), query_model)
    raw = getattr(full, field.name)
    check_rows(len(raw), model, settings, field)
    return params, model, field.from_lists(raw, model)


def parse_params(call: Call, params_type: type[Params]) -> Params:
    """A body of parameters only (/generate): JSON, or nothing at all for the defaults."""
    _require_json(call, None)
    if not call.body.strip():
        return _validate(params_type, {})
    try:
        return params_type.model_validate_json(call.body)
    except ValidationError as exc:
        raise _json_error(call, exc) from exc


def _validate(model_type: type[Params], values: dict[str, Any]) -> Params:
    try:
        return model_type.model_validate(values)
    except ValidationError as exc:
        raise InvalidInput("", describe_errors(exc.errors())) from exc


# JSON's number syntax: int() and float() also take "1_000", " 5", "+5", "nan" and "inf",
# which a client may then believe were read as it meant them.
JSON_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def validate_fields(model_type: type[Params], fields: dict[str, str]) -> Params:
    """Query or form fields (text) as `model_type`: the numeric ones read as numbers first,
    written as JSON writes them."""
    values: dict[str, Any] = dict(fields)
    for name, value in fields.items():
        info = model_type.model_fields.get(name)
        if info is None:
            continue
        annotation = str(info.annotation)
        if "int" in annotation:
            # int() refuses more than 4,300 digits with a ValueError; no field takes 40.
            if not JSON_INTEGER.fullmatch(value) or len(value) > 40:
                raise InvalidInput(
                    name,
                    f"expected an integer, got {shorten(value)!r}; write it in digits (at most "
                    "40), such as 7",
                )
            values[name] = int(value)
        elif "float" in annotation:
            if not JSON_NUMBER.fullmatch(value):
                raise InvalidInput(
                    name,
                    f"expected a number, got {shorten(value)!r}; write it as JSON does, such "
                    "as 0.5",
                )
            values[name] = float(value)
    return _validate(model_type, values)


def shorten(text: str, limit: int = 50) -> str:
    """`text`, cut to `limit` characters for a message."""
    return text if len(text) <= limit else text[:limit] + "..."


def _json_error(call: Call, exc: ValidationError) -> InvalidInput:
    message = describe_errors(exc.errors())
    if not call.content_type and "Invalid JSON" in message:
        message += " (the request has no Content-Type, so its body was read as JSON)"
    return InvalidInput("", message)


def query_model_name(query: dict[str, str]) -> str | None:
    """The `?model=` of a request, if any."""
    name = query.get("model")
    if name is not None and not NAME_RE.fullmatch(name):
        raise InvalidInput("model", f"String should match pattern '{NAME_PATTERN}'")
    return name


def _require_json(call: Call, field: TensorField | None) -> None:
    if call.content_type not in ("application/json", ""):
        alternatives = ""
        if field is not None and field.uploads:
            alternatives = f", {NPY} or multipart/form-data"
        elif field is not None:
            alternatives = f" or {NPY}"
        raise UnsupportedMediaType(
            "content-type",
            f"{call.content_type!r} is not accepted; send application/json{alternatives}",
        )


def _check_value_count(
    call_body: bytes, field: TensorField, registry: ModelRegistry, settings: Settings
) -> None:
    """A JSON body holding more numbers than `VAE_MAX_IMAGES` rows of the widest model's could,
    refused before it is parsed (the model it names is only known once it is)."""
    if len(call_body) <= settings.max_images + OTHER_SEPARATORS:
        return  # too short to hold too many (every model's row has a value at least): no loop
    widths = [
        m.latent_dim if field.name == "z" else m.image_values for m in registry.models.values()
    ]
    most = settings.max_images * max(widths, default=0)
    limit = "VAE_MAX_IMAGES"
    if field.name != "z" and settings.max_request_values < most:  # no request carries more
        most, limit = settings.max_request_values, "VAE_MAX_REQUEST_VALUES"
    found = most_values(call_body, most)
    if found is not None:
        raise InvalidInput(
            field.name,
            f"the body holds about {found} numbers; {settings.max_images} {field.what} "
            f"({limit}) hold at most {most}: send fewer per request",
        )


def check_rows(count: int, model: ModelRuntime, settings: Settings, field: TensorField) -> None:
    """At most VAE_MAX_IMAGES rows and, for images, VAE_MAX_REQUEST_VALUES values."""
    check_count(count, settings, field)
    if field.uploads:
        check_image_values(count, model, settings, field.name)


def check_count(count: int, settings: Settings, field: TensorField) -> None:
    if count > settings.max_images:
        raise InvalidInput(
            field.name, f"{count} {field.what}; at most {settings.max_images} per request"
        )
