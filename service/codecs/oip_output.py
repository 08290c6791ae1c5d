"""Open Inference Protocol (KServe v2) answers over REST: JSON, or a JSON header followed by
binary tensor data (the binary tensor data extension) for the outputs that ask so."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from service.codecs.oip_input import BINARY_TYPES, HEADER_LENGTH
from service.codecs.responses import JSON_OPTIONS, JSONBody
from service.errors import BadRequest
from service.oip.dataplane import InferenceResult, datatype, requested_outputs
from service.oip.schemas import InferenceRequest

BINARY_ANSWER = "application/octet-stream"


def inference_response(
    name: str, version: str, request: InferenceRequest, result: InferenceResult
) -> Response:
    """The outputs the request asks for (all by default), in its order, as the protocol writes
    them: JSON data, or binary data after the JSON header for those it asks so."""
    chosen = requested_outputs(request, result)
    binary = _binary_outputs(request, len(chosen))
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for (output_name, value), as_binary in zip(chosen, binary, strict=True):
        kind = datatype(value)
        output: dict[str, Any] = {"name": output_name, "shape": list(value.shape), "datatype": kind}
        if as_binary:
            blobs.append(value.astype(BINARY_TYPES[kind], copy=False).tobytes())
            output["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            output["data"] = np.ravel(value)
        outputs.append(output)
    body: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    if result.parameters:
        body["parameters"] = result.parameters
    if not blobs:
        return JSONBody(body)
    head = orjson.dumps(body, option=JSON_OPTIONS)
    return Response(
        b"".join([head, *blobs]),
        media_type=BINARY_ANSWER,
        headers={HEADER_LENGTH: str(len(head))},
    )


def _binary_outputs(request: InferenceRequest, count: int) -> list[bool]:
    """Which of the `count` outputs answered go as binary data: each requested output's
    `binary_data`, else the request's `binary_data_output` (default false)."""
    default = _flag(request.parameters, "parameters.binary_data_output")
    if not request.outputs:
        return [bool(default)] * count
    chosen = []
    for i, output in enumerate(request.outputs):
        given = output.parameters or {}
        if "classification" in given:
            raise BadRequest(
                "",
                f"outputs[{i}].parameters.classification: the classification extension is "
                "not supported",
            )
        flag = _flag(given, f"outputs[{i}].parameters.binary_data", "binary_data")
        chosen.append(bool(default) if flag is None else flag)
    return chosen


def _flag(parameters: dict[str, Any] | None, where: str, key: str = "") -> bool | None:
    key = key or where.rpartition(".")[2]
    value = (parameters or {}).get(key)
    if value is None or isinstance(value, bool):
        return value
    raise BadRequest("", f"{where}: expected true or false, not {value!r}")
