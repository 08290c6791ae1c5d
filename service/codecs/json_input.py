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


# A row is N x latent, N x H*W*C, N x H x W or N x H x W x C: up to three levels of lists.
MAX_ROW_DEPTH = 3


def _regular(items: Any, shape: list[int]) -> bool:
    """Every one of `items` a list of shape[0] lists of shape[1]... (the last level: numbers,
    which the caller's count of '[' checks)."""
    if len(shape) == 1:
        return all(len(item) == shape[0] for item in items)
    return all(len(item) == shape[0] and _regular(item, shape[1:]) for item in items)


def json_tensor_body(body: bytes, tensor: str) -> tuple[dict[str, Any], NDArray[Any]] | None:
    """A JSON object whose `tensor` field (`images` or `z`) is a regular nested list of numbers,
    as its other fields and that field as one float64 array (N, ...); None for anything else,
    which pydantic then reads to name the fault.

    simdjson copies the numbers into a buffer without a Python float per number: faster than
    orjson plus numpy on large bodies, and no heap left fragmented by the freed floats. Its
    `as_buffer` flattens nested lists, so the shape is checked here: every row (and sub-row,
    down to a colour image's pixels) as long as the first, and no list deeper than that. The
    last holds because a body has at least one '[' per list (more when a string holds one,
    which only turns this path down).
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
        # Typed loosely: len() of a number or a string, where a list belongs, raises (or the
        # count below turns it down) and the except clause takes it.
        shape: list[int] = []  # of one row: (784,), (28, 28), (32, 32, 3)
        probe: Any = rows[0]
        while isinstance(probe, simdjson.Array) and len(shape) < MAX_ROW_DEPTH:
            if len(probe) == 0:
                return None
            shape.append(len(probe))
            probe = probe[0]
        if not shape or not _regular(rows, shape):
            return None
        lists_per_row = 1
        for size in reversed(shape[:-1]):
            lists_per_row = 1 + size * lists_per_row
        if body.count(b"[") != 1 + len(rows) * lists_per_row:
            return None
        flat = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
        if flat.size != len(rows) * math.prod(shape):
            return None
        return fields, flat.reshape(len(rows), *shape)
    # simdjson's words for bad JSON; KeyError: a key holding an escaped NUL, which it cannot
    # look up (pydantic then reads the body and names the field).
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError):
        return None
