"""JSON request bodies: the tensor field read by simdjson straight into numpy, and pydantic's
errors worded as one message naming the fields.

The JSON path avoids a Python object per pixel where it can: simdjson copies the numbers of the
`images` (or `z`) lists straight into a numpy array, and the range, size and NaN checks run on the
array. Only when that fast path finds something wrong does pydantic validate the body, to name the
field at fault.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import simdjson
from numpy.typing import NDArray


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


# Separators a body may hold besides those between its tensor's values: its other fields,
# the commas of a shape, of `outputs`, of `parameters`.
OTHER_SEPARATORS = 4096


def most_values(body: bytes, most: int) -> int | None:
    """How many values the JSON `body` may hold at most, counted before it is parsed, when that
    is more than `most`; None when it is within. Parsing costs time and memory per value (simdjson
    holds the interpreter ~15 ns and keeps 16 bytes a value, pydantic far more), so a body is
    first bounded by what a valid request could hold. Counting its commas runs at memchr speed
    (~0.6 ms a MB) and never undercounts: n values need n - 1 commas."""
    if len(body) <= most + OTHER_SEPARATORS:  # fewer bytes than that many commas: no need
        return None
    count = body.count(b",")
    return count + 1 if count > most + OTHER_SEPARATORS else None


def json_tensor_body(body: bytes, tensor: str) -> tuple[dict[str, Any], NDArray[Any]] | None:
    """A JSON object whose `tensor` field (`images` or `z`) is a regular nested list of numbers,
    as its other fields and that field as one float64 array (N, ...); None for anything else,
    which pydantic then reads to name the fault.

    simdjson copies the numbers into a buffer without a Python float per number: faster than
    orjson plus numpy on large bodies, and no heap left fragmented by the freed floats. Its
    `as_buffer` flattens nested lists, so the shape is checked here: every row (and sub-row)
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
