"""The OpenAPI document's parts that FastAPI cannot see: the inference endpoints' request bodies
and answers (from the endpoint table), the errors' schemas, and what the guard may answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.codecs.npy import NPY
from service.http.endpoints import ENDPOINTS, Endpoint
from service.manifest import NAME_PATTERN
from service.schemas import INVERT_VALUES


def error_doc(description: str, schema: str = "ErrorResponse") -> dict[str, Any]:
    """An error answer in the OpenAPI document. A reference rather than FastAPI's `model=`,
    which builds a validator per route and status that nothing uses, at a cost in start-up
    time. `install_openapi` adds the schemas to the document."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


# What the guard (service.http.guard) may answer on any protected endpoint.
GUARD_RESPONSES: dict[int | str, Any] = {
    401: error_doc("API key missing or wrong (when keys are set)"),
    413: error_doc("Request body over VAE_MAX_BODY_BYTES"),
    503: error_doc("Models still loading, service at capacity or shutting down; see Retry-After"),
    504: error_doc("Not answered within VAE_REQUEST_TIMEOUT_S"),
}
BINARY = {"type": "string", "format": "binary"}
MODEL_QUERY_DESCRIPTION = (
    "Model name (default: the default model); if the body names one too, both must agree."
)
# `?model=`, read by the codecs (service.codecs.requests.query_model_name) rather than FastAPI.
MODEL_QUERY = {
    "name": "model",
    "in": "query",
    "required": False,
    "description": MODEL_QUERY_DESCRIPTION,
    "schema": {
        "anyOf": [{"type": "string", "pattern": NAME_PATTERN}, {"type": "null"}],
        "title": "Model",
        "description": MODEL_QUERY_DESCRIPTION,
    },
}


def _schema_ref(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}, "example": example}


# Fields whose text (a form field, a query parameter) is one of a few words.
TEXT_CHOICES = {"invert": list(INVERT_VALUES)}


def _text_fields(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """The fields other than the tensor, as text (form fields, query parameters)."""
    fields = {}
    for name, field in model.model_fields.items():
        schema: dict[str, Any] = {"type": "string", "description": field.description or ""}
        if name in TEXT_CHOICES:
            schema["enum"] = TEXT_CHOICES[name]
        fields[name] = schema
    return fields


def _npy_query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The fields a .npy request gives as query parameters (`model` is MODEL_QUERY)."""
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": "With an application/x-npy body (JSON and multipart requests give it "
            f"as a field): {schema.pop('description')}",
            "schema": schema,
        }
        for name, schema in _text_fields(model).items()
        if name != "model"
    ]


def request_body(endpoint: Endpoint[Any]) -> dict[str, Any]:
    """The query parameters and `requestBody` of an inference endpoint, from its row."""
    json_body = _schema_ref(endpoint.body, endpoint.example_request)
    tensor = endpoint.tensor
    if tensor is None:
        return {
            "parameters": [MODEL_QUERY],
            "requestBody": {"required": False, "content": {"application/json": json_body}},
        }
    content: dict[str, Any] = {"application/json": json_body}
    if tensor.uploads:
        description = (
            "JSON; or PNG/JPEG files as multipart/form-data (repeated `images` parts, other "
            "fields as form fields; colour models keep the files' colour); or one .npy array "
            "(N x H x W x C or N x H*W*C, channels last; for a grayscale model also N x H x W "
            "and N x 1 x H x W; float32 in [0, 1] or uint8 0-255; sizes in GET /models' "
            "`image_shape`) as application/x-npy, other fields as query parameters."
        )
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "required": [tensor.name],
                "properties": {
                    tensor.name: {
                        "type": "array",
                        "items": BINARY,
                        "description": "PNG or JPEG files, preprocessed as in training "
                        "(and inverted as `invert` says: by default `auto`).",
                    },
                    **_text_fields(endpoint.params),
                },
            }
        }
    else:
        description = (
            f"JSON; or one float32 .npy array (N x latent) as application/x-npy, other fields "
            f"as query parameters (`{tensor.name}` is the array)."
        )
    content[NPY] = {"schema": BINARY}
    return {
        "parameters": [MODEL_QUERY, *_npy_query_params(endpoint.params)],
        "requestBody": {"required": True, "description": description, "content": content},
    }


def responses(endpoint: Endpoint[Any]) -> dict[int | str, Any]:
    """The answers of an inference endpoint, from its row: the formats it produces, its errors
    and the guard's."""
    content: dict[str, Any] = {}
    for offer in endpoint.produces:
        if offer.fmt == "json":
            content[offer.media_type] = {"example": endpoint.example_response}
        elif offer.alias_of is None:
            content[offer.media_type] = {"schema": BINARY, "description": offer.description}
    errors: dict[int | str, Any] = {
        status: error_doc(text) for status, text in endpoint.answers.items()
    }
    errors[406] = error_doc(
        "The Accept header takes none of the types this endpoint answers: "
        + ", ".join(offer.media_type for offer in endpoint.produces)
        + " (any of them with */*, or with no Accept header)"
    )
    return {200: {"description": "Success", "content": content}, **GUARD_RESPONSES, **errors}


def install_openapi(app: FastAPI, documented: list[type[BaseModel]]) -> None:
    """`app.openapi()` with the request bodies' and errors' schemas (`documented`) added, and
    FastAPI's validation error (never sent here) replaced by the error every 422 is."""
    base_openapi: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            _, defs = models_json_schema(
                [(model, "validation") for model in documented],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            text = json.dumps(schema).replace(
                "#/components/schemas/HTTPValidationError", "#/components/schemas/ErrorResponse"
            )
            schema = json.loads(text)
            for unused in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def documented_models(extra: list[type[BaseModel]]) -> list[type[BaseModel]]:
    """The schemas the document gets by hand: every row's JSON body, then `extra`."""
    return [*dict.fromkeys(endpoint.body for endpoint in ENDPOINTS), *extra]
