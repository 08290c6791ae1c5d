"""multipart/form-data requests: image files as repeated `images` parts, the other fields as form
fields -> (parameters, model, input array)."""

from __future__ import annotations

import numpy as np
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from service.codecs.decoding import DecodePool, unless_client_leaves
from service.codecs.images import Invert, image_from_file
from service.codecs.requests import (
    IMAGES,
    Array,
    Params,
    check_count,
    invert_choice,
    query_of,
    validate_fields,
)
from service.errors import BadRequest, InvalidInput, TooLarge
from service.models.registry import ModelRegistry
from service.models.runtime import ModelRuntime
from service.ops import check_image_values
from service.settings import Settings

# When a request does not say: a file is a picture (a photo, a scan: often dark ink on light
# paper), inverted where its background is not the model's; arrays are not
# (service.codecs.requests).
FILE_INVERT_DEFAULT: Invert = "auto"


async def read_multipart_images(
    request: Request,
    params_type: type[Params],
    registry: ModelRegistry,
    settings: Settings,
    query_model: str | None,
    decoder: DecodePool,
) -> tuple[Params, ModelRuntime, Array]:
    """Image files as repeated `images` parts, the other fields as form fields. The files are
    decoded by `decoder`, one after another; none more once the client has hung up (499)."""
    form = await _read_form(request, settings)
    try:
        uploads = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
        if not uploads:
            raise InvalidInput("images", "multipart requests carry image files as `images` parts")
        check_count(len(uploads), settings, IMAGES)
        fields = {k: v for k, v in form.multi_items() if k != "images" and isinstance(v, str)}
        params = validate_fields(params_type, _with_query(fields, query_of(request.scope)))
        model = registry.pick(getattr(params, "model", None), query_model)
        check_image_values(len(uploads), model, settings, "images")  # before any is decoded
        invert = invert_choice(params, FILE_INVERT_DEFAULT)
        decoding = _decode_files(uploads, model, invert, settings, decoder)
        batch = await unless_client_leaves(request.receive, decoding)
    finally:
        await form.close()
    return params, model, batch


async def _decode_files(
    uploads: list[UploadFile],
    model: ModelRuntime,
    invert: Invert,
    settings: Settings,
    decoder: DecodePool,
) -> Array:
    batch = np.empty((len(uploads), *model.image_hwc), dtype=np.float32)
    for i, upload in enumerate(uploads):
        field = f"images[{i}] ({upload.filename})" if upload.filename else f"images[{i}]"
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise TooLarge(field, f"file over {settings.max_upload_bytes} bytes")
        # Off the event loop, in the bounded decoding pool: a small file can hold a costly
        # image (its cost is checked there first, against VAE_MAX_UPLOAD_PIXEL_SCANS).
        batch[i] = await decoder.run(
            image_from_file,
            data,
            field,
            model.image_hwc,
            model.manifest.input.preprocessing,
            invert,
            model.manifest.input.background,
            settings.max_upload_pixel_scans,
        )
    return batch


def _with_query(form: dict[str, str], query: dict[str, str]) -> dict[str, str]:
    """The form's fields and the query's (`?invert=auto` on an upload counts as the form field
    would); a field given both ways must agree. `model` is left to the caller, which reads
    ?model= for every kind of body alike."""
    merged = dict(form)
    for name, value in query.items():
        if name == "model":
            continue
        if name in form and form[name] != value:
            raise InvalidInput(
                name, f"the form says {form[name]!r} but ?{name}= says {value!r}; send one"
            )
        merged[name] = value
    return merged


async def _read_form(request: Request, settings: Settings) -> FormData:
    # The whole body first (at most VAE_MAX_BODY_BYTES, the guard sees to it; the form parser
    # then reads it from memory): a body cut short would otherwise lose its last parts silently.
    body = await request.body()
    boundary = parse_options_header(request.headers.get("content-type", ""))[1].get(b"boundary")
    if boundary and b"--" + boundary + b"--" not in body:
        raise BadRequest(
            "body", "the multipart body ends before its closing boundary (truncated upload?)"
        )
    try:
        return await request.form(max_files=settings.max_images, max_fields=32)
    except HTTPException as exc:  # starlette's words for a malformed body or too many parts
        if str(exc.detail).startswith("Too many files"):
            raise InvalidInput(
                "images",
                f"more than {settings.max_images} image files; at most {settings.max_images} per "
                "request",
            ) from exc
        raise BadRequest("body", f"not a readable multipart/form-data body ({exc.detail})") from exc
