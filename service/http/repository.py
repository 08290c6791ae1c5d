"""The protocol's model repository extension over REST, as Triton's API and clients have it:
`POST /v2/repository/index`, `POST /v2/repository/models/{name}/load` and `.../unload`; and
`GET /v2/models`, the protocol models served. What they do is `service.oip.repository`'s."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service.codecs.json_input import describe_errors
from service.errors import BadRequest
from service.http.openapi import GUARD_RESPONSES, error_doc
from service.http.state import Registry, State
from service.oip import dataplane, repository
from service.oip.schemas import (
    ProtocolModelList,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryModelRequest,
)

RepositoryModel = Annotated[
    str,
    Path(
        description="A model's name as the index lists it (`mnist-vae`); a protocol model's "
        "name (`mnist-vae-encoder`) means its model"
    ),
]
NOT_FOUND = error_doc("No such model (load: in the model folder; unload: loaded)", "ErrorBody")
REFUSED = error_doc(
    "Refused: a model that fails a check (a loaded one keeps serving), or the last model or "
    "VAE_DEFAULT_MODEL's on unload",
    "ErrorBody",
)
INVALID = error_doc("A body that is not the request's JSON, or unknown parameters", "ErrorBody")
# The reload gate's refusals, in the protocol's error shape.
GATE: dict[int | str, dict[str, Any]] = {
    403: error_doc("Turned off (VAE_ALLOW_RELOAD=false)", "ErrorBody"),
    429: error_doc(
        "A load or unload of the same model is under way, or the last one started less than "
        "VAE_RELOAD_MIN_INTERVAL_S ago; see Retry-After",
        "ErrorBody",
    ),
}
EMPTY_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"description": "Done (an empty body, as Triton answers)"}
}


def _body(raw: bytes, schema: type[RepositoryIndexRequest | RepositoryModelRequest]) -> Any:
    """The JSON body, none meaning the defaults (tritonclient sends none to the index)."""
    if not raw.strip():
        return schema()
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest("", f"body: {describe_errors(exc.errors())}") from None


def _body_doc(schema: str, example: dict[str, Any]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    content = {"application/json": {"schema": ref, "example": example}}
    return {"requestBody": {"required": False, "content": content}}


def repository_router() -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

    @router.get(
        "/models",
        response_model=ProtocolModelList,
        summary="The protocol models served (each model's encoder, decoder and scorer)",
        responses=GUARD_RESPONSES,
    )
    async def protocol_models(registry: Registry) -> ProtocolModelList:
        return ProtocolModelList(models=dataplane.model_names(registry))

    @router.post(
        "/repository/index",
        response_model=list[RepositoryIndexEntry],
        summary="Every model folder: its model, version, and whether it is served",
        responses={400: INVALID, **GUARD_RESPONSES},
        openapi_extra=_body_doc("RepositoryIndexRequest", {"ready": False}),
    )
    async def index(registry: Registry, request: Request) -> Response:
        """One entry per folder of VAE_MODEL_DIR holding a manifest.json: `READY` for a served
        model; `UNAVAILABLE` with the `reason` for the others (not loaded, or a manifest that
        cannot be read). `{"ready": true}`: the served ones only."""
        asked = _body(await request.body(), RepositoryIndexRequest)
        entries = repository.index(registry, asked.ready)
        listed = [dataclasses.asdict(entry) for entry in entries]
        return Response(orjson.dumps(listed), media_type="application/json")

    @router.post(
        "/repository/models/{model_name}/load",
        summary="Load a model from its folder, or reload a loaded one (a bad one is refused)",
        response_class=Response,
        responses={
            **EMPTY_ANSWER,
            400: INVALID,
            404: NOT_FOUND,
            409: REFUSED,
            **GATE,
            **GUARD_RESPONSES,
        },
        openapi_extra=_body_doc("RepositoryModelRequest", {}),
    )
    async def load(
        model_name: RepositoryModel, registry: Registry, state: State, request: Request
    ) -> Response:
        """A model not served is loaded from the folder whose manifest names it (checked and
        warmed up) and served beside the others; a loaded one is reloaded from its folder, as
        POST /models/{name}/reload: a new version that fails a check is refused (409) and the
        old one keeps serving. The same rules as reloads apply (VAE_ALLOW_RELOAD, one at a time,
        VAE_RELOAD_MIN_INTERVAL_S apart)."""
        asked = _body(await request.body(), RepositoryModelRequest)
        repository.check_parameters(asked.parameters)
        await repository.load(registry, state.reload_gate, model_name)
        return Response(status_code=200)

    @router.post(
        "/repository/models/{model_name}/unload",
        summary="Stop serving a model (requests running on it finish)",
        response_class=Response,
        responses={
            **EMPTY_ANSWER,
            400: INVALID,
            404: NOT_FOUND,
            409: REFUSED,
            **GATE,
            **GUARD_RESPONSES,
        },
        openapi_extra=_body_doc("RepositoryModelRequest", {"parameters": {}}),
    )
    async def unload(
        model_name: RepositoryModel, registry: Registry, state: State, request: Request
    ) -> Response:
        """Its encoder, decoder and scorer are no longer served; its folder stays, and the load
        call (or POST /models/reload, or SIGHUP) serves it again. The last model and
        VAE_DEFAULT_MODEL's cannot be unloaded (409)."""
        asked = _body(await request.body(), RepositoryModelRequest)
        repository.check_parameters(asked.parameters)
        await repository.unload(registry, state.reload_gate, model_name)
        return Response(status_code=200)

    return router
