"""Results -> answers: JSON (orjson), .npy/.npz, PNG; and which of them a request's Accept asks for.

Images are (N, H, W, C) (with samples, (N, K, H, W, C)); JSON and .npy drop the channel axis of
grayscale ones, (N, H, W), and so do per-pixel errors: a result without images but with them
(/score's `per_pixel_error`) draws them as a PNG heat map grid. .npy, .npz and PNG answers carry
the model and the seed in headers. `render_answer` renders a large answer in a worker thread,
off the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from service.codecs.accept import ResponseFormat
from service.codecs.images import heat_map, png_grid
from service.codecs.npy import NPY, NPZ, npy_bytes, npz_bytes
from service.ops import Result

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# Answers holding more array values than this are rendered in a worker thread: a 1,024-image JSON
# answer (8.6 MB) takes about 20 ms of orjson, and several finishing together (one batch) would
# hold the event loop, and the health probes with it, for their sum. Smaller ones (a 64-image
# JSON answer takes about 1 ms) render faster inline than the thread hop costs.
INLINE_MAX_VALUES = 64 * 784
# One thread: renders queue rather than contend for the interpreter, so the event loop gets
# its turn between any two of them.
_renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")


# orjson holds the interpreter for a whole call: a large array is written this many values at a
# time (about 1 ms each), so that the event loop, waiting for the interpreter while the render
# thread writes, waits no longer than that.
PIECE_VALUES = 64 * 784


def in_pieces(array: np.ndarray) -> orjson.Fragment:
    """`array` as JSON, written a block of rows at a time."""
    rows = max(PIECE_VALUES // max(array[0].size, 1), 1)
    pieces = (
        orjson.dumps(array[i : i + rows], option=JSON_OPTIONS)[1:-1]
        for i in range(0, len(array), rows)
    )
    return orjson.Fragment(b"[" + b",".join(pieces) + b"]")


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=JSON_OPTIONS)


class PiecewiseJSONBody(JSONBody):
    """A JSON answer whose large arrays are written in pieces (in the render thread)."""

    def render(self, content: Any) -> bytes:
        pieces = {
            name: in_pieces(v) if isinstance(v, np.ndarray) and v.size > PIECE_VALUES else v
            for name, v in content.items()
        }
        return orjson.dumps(pieces, option=JSON_OPTIONS)


def render(result: Result, fmt: ResponseFormat, json_body: type[JSONBody] = JSONBody) -> Response:
    """`result` as the answer in `fmt`. JSON: every field of the result. Binary: the images as
    one .npy array, or else the result's arrays as an .npz archive. PNG: the images as a grid."""
    fields = {name: getattr(result, name) for name in result.__slots__}
    images = fields.get("images")  # (N, [K,] H, W, C)
    errors = fields.get("per_pixel_error")  # (N, H, W, C)
    for name, value in (("images", images), ("per_pixel_error", errors)):
        if value is not None and value.shape[-1] == 1:  # grayscale: (N, [K,] H, W)
            fields[name] = value.reshape(value.shape[:-1])  # a view, still contiguous
    if fmt == "png" and images is None and errors is not None:
        images = heat_map(errors)
    if fmt == "json" or (fmt == "png" and images is None):  # no images to draw: JSON
        return json_body(fields)
    headers = {"X-Model": result.model}
    seed = fields.get("seed")
    if seed is not None:
        headers["X-Seed"] = str(seed)
    if fmt != "png" and "images" not in fields:
        arrays = {name: v for name, v in fields.items() if isinstance(v, np.ndarray)}
        return Response(npz_bytes(arrays), media_type=NPZ, headers=headers)
    if fmt == "png" and images is not None:
        return Response(png_grid(images), media_type="image/png", headers=headers)
    return Response(npy_bytes(fields["images"]), media_type=NPY, headers=headers)


def result_values(result: Result) -> int:
    """How many array values `result` holds: what its rendering costs."""
    return sum(
        v.size for name in result.__slots__ if isinstance(v := getattr(result, name), np.ndarray)
    )


async def render_answer(result: Result, fmt: ResponseFormat) -> Response:
    """`render`, inline for a small answer and in the render thread for a large one."""
    if result_values(result) <= INLINE_MAX_VALUES:
        return render(result, fmt)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_renderer, render, result, fmt, PiecewiseJSONBody)
