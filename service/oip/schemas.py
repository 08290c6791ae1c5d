"""The protocol's objects, as its REST API writes them in JSON; the gRPC transport maps its
messages to and from the same objects."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class RequestInput(BaseModel):
    name: str
    # Strict: a JSON `true` or `784.0` is not a dimension.
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: str
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size`: the input's bytes after the JSON header."
    )
    data: list[Any] | None = Field(
        None, description="Row-major values, flat or nested (absent for binary data)."
    )


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data: true`: this output as binary data after the JSON."
    )


class InferenceRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.5, -1.0]}
                    ],
                    "outputs": [{"name": "x_mean"}],
                }
            ]
        }
    )

    id: str | None = Field(None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_output: true`: every output as binary data by default."
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = Field(
        None, description="Outputs to return (default: all)."
    )


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of any size (the batch).")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32", "FP64", "BOOL"]
    data: list[float] | list[bool]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, str | float | int | bool] | None = Field(
        None, description="A scorer's: score_name, threshold, fpr, k, seed, calibrated, note."
    )
    outputs: list[ResponseOutput]


class ProtocolModelList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"models": ["mnist-vae-encoder", "mnist-vae-decoder", "mnist-vae-scorer"]}]
        }
    )

    models: list[str] = Field(description="`<model>-encoder`, `-decoder` and `-scorer` of each.")


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="true: only the models served.")


class RepositoryIndexEntry(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "mnist-vae", "version": "1", "state": "READY", "reason": ""}]
        }
    )

    name: str = Field(description="The model's name (its manifest's; a folder's name if unread).")
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = Field(description="Why it is UNAVAILABLE (empty when READY).")


class RepositoryModelRequest(BaseModel):
    parameters: dict[str, Any] | None = Field(
        None,
        description="Triton's `unload_dependents` is taken (models here have none); no other.",
    )
