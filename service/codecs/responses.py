"""Results -> answers: JSON (orjson), .npy/.npz, PNG; and which of them a request's Accept asks for.

JSON drops the images' channel axis; .npy, .npz and PNG answers carry the model and the seed in
headers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from service.codecs.accept import ResponseFormat
from service.codecs.images import png_grid
from service.codecs.npy import NPY, NPZ, npy_bytes, npz_bytes
from service.ops import Result

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=JSON_OPTIONS)


def render(result: Result, fmt: ResponseFormat) -> Response:
    """`result` as the answer in `fmt`. JSON: every field of the result. Binary: the images as
    one .npy array, or else the result's arrays as an .npz archive. PNG: the images as a grid."""
    fields = {name: getattr(result, name) for name in result.__slots__}
    images = fields.get("images")
    if images is not None:
        fields["images"] = images = images.squeeze(-3)
    if fmt == "json" or (fmt == "png" and images is None):  # no images to draw: JSON
        return JSONBody(fields)
    headers = {"X-Model": result.model}
    seed = fields.get("seed")
    if seed is not None:
        headers["X-Seed"] = str(seed)
    if images is None:
        arrays = {name: v for name, v in fields.items() if isinstance(v, np.ndarray)}
        return Response(npz_bytes(arrays), media_type=NPZ, headers=headers)
    if fmt == "png":
        return Response(png_grid(images), media_type="image/png", headers=headers)
    return Response(npy_bytes(images), media_type=NPY, headers=headers)
