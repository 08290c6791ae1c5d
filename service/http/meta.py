"""Metadata and health routes: the models, their latent maps and reloads (one model, or the whole
model folder); liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.errors import Conflict, NotFound
from service.http.openapi import GUARD_RESPONSES, error_doc
from service.http.reload_gate import FOLDER
from service.http.state import Registry, State
from service.manifest import ModelLoadError
from service.models.registry import ModelRegistry, RescanReport
from service.models.runtime import ModelRuntime
from service.schemas import (
    Health,
    LatentMapResponse,
    ModelInfo,
    ModelList,
    RefusedFolder,
    RepositoryReload,
    RepositoryReloadRefused,
)

ModelName = Annotated[str, Path(description="Model name, as listed by /models")]


def model_info(registry: ModelRegistry, runtime: ModelRuntime) -> ModelInfo:
    return ModelInfo(**runtime.describe(runtime.name == registry.default_name))


def rescan_answer(registry: ModelRegistry, outcome: RescanReport | ModelLoadError) -> JSONResponse:
    """What POST /models/reload answers: the report, with 409 when anything was refused."""
    if isinstance(outcome, ModelLoadError):
        nothing = RepositoryReloadRefused(
            detail=f"reload of the model folder refused, nothing was changed: {outcome}",
            added=[],
            dropped=[],
            reloaded=[],
            unchanged=sorted(registry.models),
            refused=[],
            default=registry.default_name,
        )
        return JSONResponse(nothing.model_dump(mode="json"), status_code=409)
    report = outcome
    answer = RepositoryReload(
        added=report.added,
        dropped=report.dropped,
        reloaded=report.reloaded,
        unchanged=report.unchanged,
        refused=[
            RefusedFolder(folder=str(r.folder), model=r.model, problem=r.problem)
            for r in report.refused
        ],
        default=report.default,
    ).model_dump(mode="json")
    if not report.refused:
        return JSONResponse(answer)
    names = ", ".join(r.model or r.folder.name for r in report.refused)
    detail = (
        f"refused: {names} (see `refused`; old versions keep serving, new folders were not "
        "added); everything else was applied: "
        + "; ".join(f"{r.folder}: {r.problem}" for r in report.refused)
    )
    return JSONResponse({"detail": detail, **answer}, status_code=409)


def models_router() -> APIRouter:
    router = APIRouter(tags=["models"])

    @router.get(
        "/models",
        response_model=ModelList,
        summary="Every loaded model",
        responses=GUARD_RESPONSES,
    )
    async def list_models(registry: Registry) -> ModelList:
        models = [model_info(registry, runtime) for runtime in registry.models.values()]
        return ModelList(default=registry.default_name, models=models)

    @router.get(
        "/models/{name}",
        response_model=ModelInfo,
        summary="One model: manifest, providers in use",
        responses={404: error_doc("Unknown model"), **GUARD_RESPONSES},
    )
    async def get_model(name: ModelName, registry: Registry) -> ModelInfo:
        return model_info(registry, registry.pick(None, name))

    @router.get(
        "/models/{name}/latent-map",
        response_model=LatentMapResponse,
        summary="The test set's latent means and labels, for a scatter (2-D models)",
        responses={
            404: error_doc("Unknown model, or a model without a latent map"),
            **GUARD_RESPONSES,
        },
    )
    async def get_latent_map(name: ModelName, registry: Registry) -> Response:
        """The latent means mu (an AE: its codes) of every test image, with their labels, as
        exported beside the model: one point per image, to draw coloured by label. Only models
        with a 2-D latent space exported with their dataset have one (`latent_map` in
        GET /models says which)."""
        runtime = registry.pick(None, name)
        if runtime.latent_map_body is None:
            why = (
                "it was exported without its dataset"
                if runtime.latent_dim == 2
                else f"its latent_dim is {runtime.latent_dim}"
            )
            raise NotFound(
                "",
                f"model {runtime.name!r} has no latent map: only models with a 2-D latent space "
                f"exported with their dataset have one ({why})",
            )
        return Response(runtime.latent_map_body, media_type="application/json")

    return router


RELOAD_REFUSALS: dict[int | str, dict[str, Any]] = {
    403: error_doc("Reloads through the API are turned off (VAE_ALLOW_RELOAD=false)"),
    429: error_doc(
        "A reload of the same model (or folder) is under way, or the last one started less than "
        "VAE_RELOAD_MIN_INTERVAL_S ago; see Retry-After"
    ),
}


def reload_router() -> APIRouter:
    router = APIRouter(tags=["models"])

    @router.post(
        "/models/reload",
        response_model=RepositoryReload,
        summary="Read the model folder again: new models added, removed ones dropped, changed "
        "ones reloaded",
        responses={
            409: error_doc(
                "Something was refused (each in `refused`, with its problem; everything else "
                "was applied), or the folder holds no model that can be served (nothing changed)",
                "RepositoryReloadRefused",
            ),
            **RELOAD_REFUSALS,
            **GUARD_RESPONSES,
        },
    )
    async def reload_repository(registry: Registry, state: State) -> JSONResponse:
        """Scan VAE_MODEL_DIR as at start-up and serve what it now holds, swapped in at once:
        a new folder is loaded (checked and warmed up) and added; a model whose folder is gone is
        dropped (requests already running on it finish); a changed folder is reloaded; an
        unchanged one is left as it is. What fails a check is refused and the rest goes ahead: a
        broken new folder is not added, a broken new version leaves the old one serving (as
        POST /models/{name}/reload). The VAE_DEFAULT_MODEL model is never dropped; without that
        setting, the default is chosen again as at start-up (mnist-vae if loaded, else the first
        folder). A folder with no servable model left changes nothing (409). SIGHUP does the
        same, and logs it."""
        with state.reload_gate.admit(FOLDER, state.settings):
            # Shielded: a request that times out (504) leaves the scan to finish and swap.
            return rescan_answer(registry, await asyncio.shield(registry.start_rescan()))

    @router.post(
        "/models/{name}/reload",
        response_model=ModelInfo,
        summary="Load a model again from its folder (a new version); a bad one is refused",
        responses={
            404: error_doc("Unknown model"),
            409: error_doc(
                "The files now in the folder fail a check; the previous version keeps serving"
            ),
            **RELOAD_REFUSALS,
            **GUARD_RESPONSES,
        },
    )
    async def reload_model(name: ModelName, registry: Registry, state: State) -> ModelInfo:
        """Re-read the model's folder (manifest, checksums, shapes), open and warm up the new
        sessions, then swap them in; requests already running finish on the old version.
        POST /models/reload (and SIGHUP) does this for every changed folder, and adds and drops
        models too."""
        if name not in registry.models:
            registry.pick(None, name)  # its 404, without taking the version being replaced
        with state.reload_gate.admit(name, state.settings):
            try:
                runtime = await registry.reload(name)
            except ModelLoadError as exc:
                raise Conflict(
                    "name", f"reload refused, the previous version keeps serving: {exc}"
                ) from exc
        return model_info(registry, runtime)

    return router


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Health,
        summary="Readiness: 200 once every model is loaded and warmed up, else 503",
        responses={503: {"model": Health}},
    )
    async def readyz(state: State) -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if state.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    # HEAD as GET (without the body): load balancers and uptime checkers often probe with it.
    # Left out of the OpenAPI document, where it would repeat the GET operations.
    router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
    router.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)

    @router.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics(state: State) -> Response:
        """Requests by endpoint, model and status; latency of whole requests, of the queue
        before a batch and of each onnxruntime call; batch sizes; requests in flight; loaded
        model versions. Never refused, never needs a key."""
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router
