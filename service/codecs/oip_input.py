"""Open Inference Protocol (KServe v2) request bodies: the JSON read by simdjson, each input's
`data` copied straight into numpy as its declared datatype says, the rest validated by pydantic.

As for the service's own JSON bodies (`service.codecs.json_input`), no Python object is made per
number: a body of 16 MB parses in tens of milliseconds, and the caller can run it off the event
loop. The datatype is honoured: FP16/FP32/FP64 data must be JSON numbers (`true` and `"0.5"` are
not), INT*/UINT* data JSON integers within the type's range, and FP16/FP32 values are rounded to
that type. Which datatypes an input takes is the caller's to say (`service.http.oip`).

The binary tensor data extension (Triton's and KServe's): the body is a JSON header of
`header_length` bytes (the `Inference-Header-Content-Length` request header, or SageMaker's
`json-header-size` content-type parameter), then each input that says
`parameters.binary_data_size` has that many bytes of raw little-endian data, row-major, in the
order of `inputs`. Those bytes become arrays with `np.frombuffer` on the body itself (no copy,
no parsing); every size is checked against the input's shape and datatype and against the body,
and a size that lies is a 400 naming the tensor.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import simdjson
from numpy.typing import NDArray
from pydantic import ValidationError

from service.codecs.json_input import describe_errors
from service.errors import BadRequest
from service.oip.schemas import InferenceRequest, RequestInput

FLOAT_TYPES: dict[str, type[np.floating[Any]]] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
INTEGER_TYPES: dict[str, type[np.integer[Any]]] = {
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}

# The binary extension's element types: little-endian, BOOL one byte (0 or 1).
BINARY_TYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    **{name: np.dtype(kind).newbyteorder("<") for name, kind in FLOAT_TYPES.items()},
    **{name: np.dtype(kind).newbyteorder("<") for name, kind in INTEGER_TYPES.items()},
}
HEADER_LENGTH = "Inference-Header-Content-Length"
SAGEMAKER_BINARY = "application/vnd.sagemaker-triton.binary+json"

# simdjson's as_buffer() kinds: float64, int64, uint64.
BUFFER_TYPES = {"d": np.float64, "i": np.int64, "u": np.uint64}


# Bodies from this size on have their numbers read by numpy, when they can be (see
# `_flat_data`): simdjson holds the interpreter ~25 ms per 800,000 numbers, numpy none of the time.
UNLOCKED_PARSE_BYTES = 4 * 1024 * 1024
DATA_OPEN = re.compile(rb'"data"\s*:\s*\[')
NUMBER_BYTES = b"0123456789-.eE, \t\n\r"  # no "+": JSON allows it only in exponents


def read_inference_request(
    body: bytes,
    check: Callable[[InferenceRequest], None] | None = None,
    header_length: int | None = None,
) -> tuple[InferenceRequest, list[NDArray[Any]]]:
    """The request, and each input's data as one flat array of its declared datatype (JSON data:
    FP16 and FP32 as those types, FP64 and the integers as float64, int64 or uint64; binary
    data: the declared type itself); its `data` fields are left empty. `header_length`: the JSON
    header's length in bytes when binary data follows it (see `header_length`). `check` sees
    the request before its data is read (to refuse an input's name or datatype first).
    BadRequest (400, as the protocol says) for anything wrong."""
    if header_length is not None:
        request, found = _read(body[:header_length], check)
        return request, _binary_values(request, found, body, header_length)
    flat = _flat_data(body) if len(body) >= UNLOCKED_PARSE_BYTES else None
    if flat is not None:
        skeleton, numbers = flat
        request, found = _read(skeleton, check)
        tensor, data = request.inputs[0], found[0]
        plain = "binary_data_size" not in (tensor.parameters or {})
        one = len(request.inputs) == 1 and tensor.datatype in FLOAT_TYPES and plain
        if one and data is not None and data.size == 0:
            dtype = FLOAT_TYPES[tensor.datatype]
            return request, [_as_declared(numbers, dtype, tensor.datatype, "inputs[0]")]
    request, found = _read(body, check)
    return request, _binary_values(request, found, body, len(body))


def header_length(headers: Mapping[str, str], size: int) -> int | None:
    """Where the JSON header of a body of `size` bytes ends, when binary tensor data follows it:
    the `Inference-Header-Content-Length` request header, or the `json-header-size` parameter of
    SageMaker's `application/vnd.sagemaker-triton.binary+json` content type. None: the body is
    all JSON (also when the header says the whole body)."""
    given = headers.get(HEADER_LENGTH.lower())
    where = HEADER_LENGTH
    if given is None:
        media, _, rest = headers.get("content-type", "").partition(";")
        if media.strip().lower() == SAGEMAKER_BINARY:
            for parameter in rest.split(";"):
                key, _, value = parameter.partition("=")
                if key.strip().lower() == "json-header-size":
                    given, where = value, f"{SAGEMAKER_BINARY}; json-header-size"
    if given is None:
        return None
    text = given.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 18:
        raise BadRequest("", f"{where}: {given[:40]!r} is not a length in bytes")
    length = int(text)
    if length > size:
        raise BadRequest(
            "", f"{where}: {length} bytes of JSON header, but the body has only {size} bytes"
        )
    return None if length == size else length


def _binary_values(
    request: InferenceRequest, found: list[NDArray[Any] | None], body: bytes, start: int
) -> list[NDArray[Any]]:
    """Each input's data: its JSON `data` (`found`), or its `binary_data_size` bytes of `body`
    from `start` on, in the order of the inputs, read in place as the datatype's little-endian
    values. Every size is checked against the input's shape and datatype, and all of them
    against the body's bytes after the header."""
    values: list[NDArray[Any]] = []
    offset, tail = start, len(body) - start
    for i, (tensor, data) in enumerate(zip(request.inputs, found, strict=True)):
        where = f"inputs[{i}] ({tensor.name!r})"
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if data is None:
                raise BadRequest("", _no_data(where, tensor.parameters or {}))
            values.append(data)
            continue
        if data is not None and data.size:
            raise BadRequest("", f"{where}: both data and parameters.binary_data_size; send one")
        count = _binary_count(where, tensor, size)
        dtype = BINARY_TYPES[tensor.datatype]
        if offset + size > len(body):
            raise BadRequest(
                "",
                f"{where}: parameters.binary_data_size is {size} bytes, but only "
                f"{len(body) - offset} bytes of the body are left after the JSON header and the "
                "inputs before it",
            )
        values.append(np.frombuffer(body, dtype=dtype, count=count, offset=offset))
        offset += size
    if offset != len(body):
        declared = offset - start
        raise BadRequest(
            "",
            f"body: {tail} bytes after the JSON header, but the inputs' "
            f"parameters.binary_data_size add up to {declared}"
            + (
                f" (the header is {start} bytes, as {HEADER_LENGTH} says)"
                if start != len(body) or not declared
                else ""
            ),
        )
    return values


def _no_data(where: str, parameters: dict[str, Any]) -> str:
    if "shared_memory_region" in parameters:
        return f"{where}: shared memory (parameters.shared_memory_region) is not supported"
    return (
        f"{where}.data: Field required; send data, or binary data after the JSON header with "
        f"parameters.binary_data_size and the {HEADER_LENGTH} header"
    )


def _binary_count(where: str, tensor: RequestInput, size: Any) -> int:
    """How many values `size` bytes of binary data hold, checked against the declared shape."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(
            "", f"{where}: parameters.binary_data_size must be a count of bytes, not {size!r}"
        )
    dtype = BINARY_TYPES.get(tensor.datatype)
    if dtype is None:
        known = ", ".join(BINARY_TYPES)
        raise BadRequest(
            "", f"{where}.datatype: {tensor.datatype!r} is not accepted as binary data ({known})"
        )
    count = declared_count(tensor.shape)
    if size % dtype.itemsize or size // dtype.itemsize != count:
        raise BadRequest(
            "",
            f"{where}: parameters.binary_data_size is {size} bytes, but shape {tensor.shape} of "
            f"{tensor.datatype} holds {count} values of {dtype.itemsize} bytes = "
            f"{count * dtype.itemsize} bytes",
        )
    return count


def _flat_data(body: bytes) -> tuple[bytes, NDArray[np.float64]] | None:
    """The body with its one `data` list emptied, and that list's numbers, read by numpy's text
    parser, which lets go of the interpreter while it reads (a 15 MB body holds it ~30 ms in
    all, in pieces of 10 ms at most, where simdjson holds it 25-40 ms at once). None for
    anything else (more than one `data`, nested lists, anything but plain numbers): simdjson
    then reads the whole body and names what is wrong. numpy also takes `01`, `1.` and `.5`,
    which JSON does not; their values are what they look like."""
    found = DATA_OPEN.search(body)
    if found is None or body.find(b'"data"', found.end()) >= 0:
        return None
    start = found.end()
    end = body.find(b"]", start)
    if end < 0:
        return None
    text = body[start:end]
    if b"[" in text or b"+" in text or text.translate(None, NUMBER_BYTES):
        return None
    try:
        numbers = np.fromstring(text, dtype=np.float64, sep=",")
    except ValueError:  # ",," or a lone "-": not numbers
        return None
    # numpy stops early rather than fail at a trailing comma, and reads an empty number (as in
    # "1, ,2" or "[ ]") as -1: both are left to simdjson, as is the rare list that holds a -1.
    if len(numbers) != text.count(b",") + 1 or (numbers == -1.0).any():
        return None
    return body[:start] + body[end:], numbers


def _read(
    body: bytes, check: Callable[[InferenceRequest], None] | None
) -> tuple[InferenceRequest, list[NDArray[Any] | None]]:
    """The request, and each input's JSON data (None where it has no `data`)."""
    try:
        doc = simdjson.Parser().parse(body)  # one per call: parsers are not shared
    except (ValueError, RuntimeError) as exc:
        raise _unreadable(body, exc) from None
    if not isinstance(doc, simdjson.Object):
        raise _unreadable(body, None)
    plain: dict[str, Any] = {key: _plain(_field(doc, key)) for key in doc if key != "inputs"}
    raw: list[Any] = []
    if "inputs" in doc:
        inputs = doc["inputs"]
        plain["inputs"] = (
            [_input_fields(item, raw) for item in inputs]
            if isinstance(inputs, simdjson.Array)
            else inputs  # not a list: pydantic names the fault
        )
    try:
        request = InferenceRequest.model_validate(plain)
    except ValidationError as exc:
        raise BadRequest("", describe_errors(exc.errors())) from None
    if check is not None:
        check(request)
    values = [
        None if data is None else _values(data, tensor.datatype, f"inputs[{i}]")
        for i, (data, tensor) in enumerate(zip(raw, request.inputs, strict=True))
    ]
    return request, values


def declared_count(shape: list[int]) -> int:
    """How many values a tensor of `shape` holds, in Python integers: numpy's int64 product of
    [2**62 + 1, 784] wraps around to 784."""
    return math.prod(shape)


def _field(obj: Any, key: str) -> Any:
    """`obj[key]` of a simdjson object; one it cannot look up (a name holding an escaped NUL,
    "\\u0000") is the client's fault, not a 500."""
    try:
        return obj[key]
    except KeyError:
        raise BadRequest("", f"field name {key!r}: NUL characters are not accepted") from None


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Array):
        return value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


def _input_fields(item: Any, raw: list[Any]) -> Any:
    """One input's fields as Python values, its `data` left out (kept in `raw`, in order)."""
    if not isinstance(item, simdjson.Object):
        raw.append(None)
        return _plain(item)
    fields = {key: _plain(_field(item, key)) for key in item if key != "data"}
    data = item.get("data")
    raw.append(data)
    if isinstance(data, simdjson.Array):
        fields["data"] = []  # read by _values, not as Python objects
    elif "data" in item:
        fields["data"] = data  # not a list: pydantic names the fault
    return fields


def _values(data: Any, datatype: str, where: str) -> NDArray[Any]:
    if datatype in FLOAT_TYPES:
        dtype: type[np.generic] = FLOAT_TYPES[datatype]
        kind, what = "d", "numbers"
    elif datatype in INTEGER_TYPES:
        dtype = INTEGER_TYPES[datatype]
        kind, what = ("u" if datatype.startswith("U") else "i"), "integers"
    else:
        known = ", ".join([*FLOAT_TYPES, *INTEGER_TYPES])
        raise BadRequest("", f"{where}.datatype: {datatype!r} is not accepted; send one of {known}")
    try:
        flat = np.frombuffer(data.as_buffer(of_type=kind), dtype=BUFFER_TYPES[kind])
    except (TypeError, ValueError, RuntimeError):
        misfit = _first_misfit(data.as_list(), kind)
        raise BadRequest(
            "", f"{where}.data: expected {what} for {datatype} (found {misfit})"
        ) from None
    return _as_declared(flat, dtype, datatype, where)


def _as_declared(flat: NDArray[Any], dtype: type[np.generic], datatype: str, where: str) -> Any:
    """`flat` checked to fit `datatype`: integers within its range, floats within its finite
    range (then rounded to it; FP64 and the integers stay in 64 bits)."""
    if flat.size == 0:
        return flat
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)  # type: ignore[type-var]
        low, high = flat.min(), flat.max()
        if low < info.min or high > info.max:
            found = low if low < info.min else high
            raise BadRequest(
                "", f"{where}.data: {found} is out of {datatype}'s range [{info.min}, {info.max}]"
            )
        return flat
    if dtype is np.float64:
        return flat
    largest = float(np.finfo(dtype).max)  # type: ignore[type-var]
    peak = float(np.abs(flat).max())
    if peak > largest:
        raise BadRequest(
            "", f"{where}.data: {peak:g} is out of {datatype}'s range (at most {largest:g})"
        )
    return flat.astype(dtype)


def _first_misfit(values: list[Any], kind: str) -> str:
    """The first value of nested `values` that does not fit the buffer `kind`, described."""
    stack = [iter(values)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            problem = _misfit(value, kind)
            if problem is not None:
                return problem
        else:
            stack.pop()
    return "a value that does not fit"


def _misfit(value: Any, kind: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        names = {bool: "a boolean", str: "a string", dict: "an object"}
        return f"{json.dumps(value)[:40]}, {names.get(type(value), 'null')}"
    if kind != "d" and isinstance(value, float):
        return f"{value!r}, not a whole number"
    if kind == "u" and value < 0:
        return f"{value}, below 0"
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return f"{str(value)[:40]}, beyond 64 bits"
    return None


def _unreadable(body: bytes, exc: Exception | None) -> BadRequest:
    """The error for a body simdjson cannot read, worded by pydantic where it can."""
    try:
        InferenceRequest.model_validate_json(body)
    except ValidationError as error:
        message = describe_errors(error.errors())
        if "trailing characters" in message:  # most likely binary data without its header
            message += (
                f"; binary tensor data after the JSON needs the {HEADER_LENGTH} header (the "
                "JSON's length in bytes)"
            )
        return BadRequest("", message)
    # pydantic takes NaN, Infinity and integers of any size; simdjson (and JSON) does not
    return BadRequest(
        "body",
        f"not valid JSON ({exc}): numbers must be finite and integers fit in 64 bits (NaN and "
        "Infinity are not JSON)",
    )
