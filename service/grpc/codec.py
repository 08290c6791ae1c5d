"""The protocol's inference messages over gRPC: a `ModelInferRequest` read into the dataplane's
`InferenceRequest` and each input's values as a flat numpy array, and an `InferenceResult`
written as a `ModelInferResponse`.

An input's values come either from `raw_input_contents` (one entry per input, little-endian
bytes, row-major, read in place with `np.frombuffer`; its size must be the shape's values times
the datatype's size) or from its typed `contents` (`fp32_contents` for FP32, ...; FP16 has no
typed field and is sent raw). Every size is checked before a value is converted, and a size that
lies is a 400 naming the tensor. The answer's outputs go as `raw_output_contents` when the
request sent raw inputs, as Triton answers, else as typed contents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from service.codecs.json_input import describe_errors
from service.codecs.oip_input import BINARY_TYPES, declared_count
from service.errors import BadRequest
from service.grpc import oip_pb2 as pb
from service.oip.dataplane import InferenceResult, datatype, requested_outputs
from service.oip.schemas import InferenceRequest

# The typed contents field of each datatype (FP16 has none: it is sent raw).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
CONTENT_FIELDS = tuple(dict.fromkeys(CONTENTS.values()))


def parameter_value(parameter: pb.InferParameter, where: str) -> Any:
    """The value an InferParameter holds; 400 for one that holds none."""
    choice = parameter.WhichOneof("parameter_choice")
    if choice is None:
        raise BadRequest("", f"{where}: holds no value; set one of its *_param fields")
    return getattr(parameter, choice)


def parameters(given: Mapping[str, pb.InferParameter], where: str) -> dict[str, Any] | None:
    if not given:
        return None
    return {key: parameter_value(value, f"{where}.{key}") for key, value in given.items()}


def read_request(
    message: pb.ModelInferRequest, check: Callable[[InferenceRequest], None]
) -> tuple[InferenceRequest, list[NDArray[Any]]]:
    """The request and each input's values, flat. `check` (the dataplane's: names, datatypes,
    declared sizes) runs before any value is read."""
    fields = {
        "id": message.id or None,
        "parameters": parameters(message.parameters, "parameters"),
        "inputs": [
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": parameters(tensor.parameters, f"inputs[{i}].parameters"),
            }
            for i, tensor in enumerate(message.inputs)
        ],
        "outputs": [
            {"name": o.name, "parameters": parameters(o.parameters, f"outputs[{i}].parameters")}
            for i, o in enumerate(message.outputs)
        ]
        or None,
    }
    try:
        request = InferenceRequest.model_validate(fields)
    except ValidationError as exc:
        raise BadRequest("", describe_errors(exc.errors())) from None
    _check_outputs(request)
    check(request)
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(
            "",
            f"raw_input_contents: {len(raw)} entries for {len(message.inputs)} inputs; send one "
            "per input, in their order, or none (typed contents)",
        )
    values = []
    for i, (tensor, spec) in enumerate(zip(message.inputs, request.inputs, strict=True)):
        where = f"inputs[{i}] ({spec.name!r})"
        if raw:
            values.append(_raw_values(raw[i], tensor, spec.shape, where, i))
        else:
            values.append(_typed_values(tensor, spec.shape, where))
    return request, values


def _check_outputs(request: InferenceRequest) -> None:
    """Requested outputs take no parameters over gRPC (`binary_data` is REST's, and harmless)."""
    for i, output in enumerate(request.outputs or ()):
        given = sorted(set(output.parameters or {}) - {"binary_data"})
        if "classification" in given:
            raise BadRequest(
                "",
                f"outputs[{i}].parameters.classification: the classification extension is not "
                "supported",
            )
        if given:
            raise BadRequest("", f"outputs[{i}].parameters: {given} not supported")


def _raw_values(
    data: bytes, tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int], where: str, i: int
) -> NDArray[Any]:
    if any(tensor.contents.ListFields()):
        raise BadRequest("", f"{where}: both contents and raw_input_contents[{i}]; send one")
    dtype = BINARY_TYPES.get(tensor.datatype)
    if dtype is None:
        known = ", ".join(BINARY_TYPES)
        raise BadRequest(
            "", f"{where}.datatype: {tensor.datatype!r} is not accepted as raw data ({known})"
        )
    count = declared_count(shape)
    if len(data) != count * dtype.itemsize:
        raise BadRequest(
            "",
            f"{where}: raw_input_contents[{i}] holds {len(data)} bytes, but shape {shape} of "
            f"{tensor.datatype} holds {count} values of {dtype.itemsize} bytes = "
            f"{count * dtype.itemsize} bytes",
        )
    return np.frombuffer(data, dtype=dtype)


def _typed_values(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int], where: str
) -> NDArray[Any]:
    expected = CONTENTS.get(tensor.datatype)
    if expected is None:
        raise BadRequest(
            "",
            f"{where}: {tensor.datatype} has no typed contents field; send it in "
            "raw_input_contents",
        )
    given = [f.name for f, _ in tensor.contents.ListFields()]
    misplaced = [name for name in given if name != expected]
    if misplaced:
        raise BadRequest(
            "", f"{where}.contents: {tensor.datatype} values go in {expected}, not {misplaced}"
        )
    values = getattr(tensor.contents, expected)
    if len(values) != declared_count(shape):
        raise BadRequest(
            "",
            f"{where}: shape {shape} holds {declared_count(shape)} values but "
            f"contents.{expected} has {len(values)}",
        )
    dtype = BINARY_TYPES[tensor.datatype]
    wide = np.array(values, dtype=np.float64 if dtype.kind == "f" else None)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise BadRequest(
                "",
                f"{where}.contents: values out of {tensor.datatype}'s range "
                f"[{info.min}, {info.max}]",
            )
    return wide.astype(dtype)


def write_response(
    name: str, version: str, request: InferenceRequest, result: InferenceResult, raw: bool
) -> pb.ModelInferResponse:
    """The outputs the request asks for (all by default), in its order: `raw` as
    raw_output_contents, else as typed contents."""
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request.id or "")
    for key, value in (result.parameters or {}).items():
        _set_parameter(response.parameters[key], value)
    for output_name, value in requested_outputs(request, result):
        kind = datatype(value)
        tensor = response.outputs.add(name=output_name, datatype=kind, shape=value.shape)
        if raw:
            response.raw_output_contents.append(
                value.astype(BINARY_TYPES[kind], copy=False).tobytes()
            )
        else:
            getattr(tensor.contents, CONTENTS[kind]).extend(np.ravel(value).tolist())
    return response


def _set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)
