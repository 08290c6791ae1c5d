"""Metadata and health routes: the models, their latent maps and reloads; liveness, readiness and
the Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.errors import Conflict, NotFound
from service.http.openapi import GUARD_RESPONSES, error_doc
from service.http.state import Registry, State
from service.manifest import ModelLoadError
from service.models.registry import ModelRegistry
from service.models.runtime import ModelRuntime
from service.schemas import Health, LatentMapResponse, ModelInfo, ModelList

ModelName = Annotated[str, Path(description="Model name, as listed by /models")]


def model_info(registry: ModelRegistry, runtime: ModelRuntime) -> ModelInfo:
    return ModelInfo(**runtime.describe(runtime.name == registry.default_name))


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

    @router.post(
        "/models/{name}/reload",
        response_model=ModelInfo,
        summary="Load a model again from its folder (a new version); a bad one is refused",
        responses={
            404: error_doc("Unknown model"),
            409: error_doc(
                "The files now in the folder fail a check; the previous version keeps serving"
            ),
            **GUARD_RESPONSES,
        },
    )
    async def reload_model(name: ModelName, registry: Registry) -> ModelInfo:
        """Re-read the model's folder (manifest, checksums, shapes), open and warm up the new
        sessions, then swap them in; requests already running finish on the old version. The
        same happens for every model on SIGHUP."""
        registry.pick(None, name)  # 404 for an unknown name
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
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
