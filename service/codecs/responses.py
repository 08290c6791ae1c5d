"""Results -> answers: JSON (orjson), .npy/.npz, PNG; and which of them a request's Accept asks for.

JSON drops the images' channel axis; .npy and PNG answers carry the model and the seed in headers.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from starlette.responses import Response

from service.codecs.images import png_grid
from service.codecs.npy import NPY, NPZ, npy_bytes, npz_bytes
from service.ops import Latents, Result

ResponseFormat = Literal["json", "npy", "png"]
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
MEDIA_TYPES: dict[ResponseFormat, str] = {
    "json": "application/json",
    "npy": NPY,
    "png": "image/png",
}


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=JSON_OPTIONS)


def response_format(accept: str) -> ResponseFormat:
    """The format an Accept header asks for; JSON when it names none this service writes."""
    if "application/json" in accept or not accept:
        return "json"
    if NPY in accept or NPZ in accept:
        return "npy"
    if "image/png" in accept:
        return "png"
    return "json"


def render(result: Result, fmt: ResponseFormat) -> Response:
    """`result` as the answer in `fmt`."""
    if isinstance(result, Latents):
        return _latents(result, fmt)
    pixels = result.images.squeeze(-3)
    if fmt == "json":
        fields = {name: getattr(result, name) for name in result.__slots__}
        fields["images"] = pixels
        return JSONBody(fields)
    headers = {"X-Model": result.model}
    seed = getattr(result, "seed", None)
    if seed is not None:
        headers["X-Seed"] = str(seed)
    if fmt == "png":
        return Response(png_grid(pixels), media_type="image/png", headers=headers)
    return Response(npy_bytes(pixels), media_type=NPY, headers=headers)


def _latents(result: Latents, fmt: ResponseFormat) -> Response:
    if fmt == "npy":
        arrays = {"mu": result.mu}
        if result.logvar is not None:
            arrays["logvar"] = result.logvar
        return Response(npz_bytes(arrays), media_type=NPZ, headers={"X-Model": result.model})
    return JSONBody(
        {
            "model": result.model,
            "latent_dim": result.latent_dim,
            "mu": result.mu,
            "logvar": result.logvar,
        }
    )
