"""The FastAPI application: `create_app(settings)`; the lifespan owns the onnxruntime sessions."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.guards import INTERNAL_ERROR, BodyTooLarge, Guard
from service.imaging import InputError
from service.inference import (
    FastLane,
    encode_core,
    handle_decode,
    handle_encode,
    handle_generate,
    handle_reconstruct,
    reconstruct_core,
)
from service.manifest import NAME_PATTERN, ModelLoadError
from service.metrics import AccessLog, Metrics
from service.oip import ErrorBody, OIPError, build_router, oip_error_response
from service.payloads import (
    NPY,
    NPZ,
    PRODUCES,
    Call,
    ResponseFormat,
    content_type,
    describe_errors,
    error_response,
    negotiate,
    pick_model,
    read_multipart_images,
    ready_registry,
)
from service.runtime import ModelRegistry, RescanReport, memory_trimmer
from service.schemas import (
    EXAMPLE_IMAGE,
    INVERT_VALUES,
    DecodeRequest,
    DecodeResponse,
    EncodeParams,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    LatentMapResponse,
    ModelInfo,
    ModelList,
    ReconstructParams,
    ReconstructRequest,
    ReconstructResponse,
    RefusedFolder,
    RepositoryReload,
    RepositoryReloadRefused,
    error_doc,
)
from service.settings import Settings

logger = logging.getLogger("service")
STATIC = files("service") / "static"
PLAYGROUND_PAGE = (STATIC / "playground" / "index.html").read_text()
# ReDoc's sidebar footer shows a logo fetched from Redocly's CDN, the one request of /redoc that
# would leave the machine. The vendored file stays as released; it is served with that address
# emptied, and ReDoc hides an image that fails to load.
REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def redoc_offline_script() -> bytes:
    script = (STATIC / "redoc" / "redoc.standalone.js").read_text()
    return script.replace(REDOC_LOGO_URL, "").encode()


REQUEST_MODELS: list[type[BaseModel]] = [
    EncodeRequest,
    ReconstructRequest,
    GenerateRequest,
    DecodeRequest,
]
# Schemas the OpenAPI document gets by hand: the request bodies and the errors.
DOCUMENTED_MODELS: list[type[BaseModel]] = [
    *REQUEST_MODELS,
    ErrorResponse,
    ErrorBody,
    RepositoryReloadRefused,
]


async def _trim_memory(interval_s: float) -> None:
    trim = memory_trimmer()
    if trim is None or interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        await run_in_threadpool(trim)


async def _flush_access_log(access_log: AccessLog | None) -> None:
    while access_log is not None:
        await asyncio.sleep(0.25)
        access_log.flush()


async def _image_endpoint(
    request: Request,
    registry: ModelRegistry,
    settings: Settings,
    query_model: str | None,
    params_type: type[BaseModel],
    core: Callable[..., Awaitable[Response]],
    handler: Callable[[Call, ModelRegistry, Settings], Awaitable[Response]],
) -> Response:
    """An image endpoint reached through FastAPI: multipart uploads are parsed here, JSON and
    .npy bodies the same way as in the fast lane."""
    if content_type(request) == "multipart/form-data":
        fmt: ResponseFormat = negotiate(request.headers.get("accept", ""), request.url.path)
        parsed = await read_multipart_images(request, params_type, registry, settings, query_model)
        return await core(*parsed, fmt, settings)
    return await handler(await Call.from_request(request), registry, settings)


def begin_shutdown(app: FastAPI) -> None:
    """From now on readiness answers 503 and new requests are refused (503); requests already
    accepted run to the end. Called on SIGTERM, before uvicorn starts its graceful shutdown."""
    app.state.draining = True


def _add_signal_handler(
    loop: asyncio.AbstractEventLoop, sig: signal.Signals, handler: Callable[[], object]
) -> bool:
    try:
        loop.add_signal_handler(sig, handler)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        return False
    return True


async def _rescan(registry: ModelRegistry) -> RescanReport | ModelLoadError:
    """Read the model folder again; the registry logs what it added, dropped, reloaded and
    refused. A scan refused as a whole is logged here and returned."""
    try:
        return await registry.rescan()
    except ModelLoadError as exc:
        logger.error("reload of the model folder refused, nothing was changed: %s", exc)
        return exc


def _rescan_answer(registry: ModelRegistry, outcome: RescanReport | ModelLoadError) -> JSONResponse:
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


# ---------------------------------------------------------------------------------------------
# Dependencies (Annotated aliases, so tests can override them)


def get_registry(request: Request) -> ModelRegistry:
    return ready_registry(getattr(request.app.state, "registry", None))


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Registry = Annotated[ModelRegistry, Depends(get_registry)]
ModelName = Annotated[str, Path(description="Model name, as listed by /models")]
AppSettings = Annotated[Settings, Depends(get_settings)]
ModelQuery = Annotated[
    str | None,
    Query(
        description="Model name (default: the default model); if the body names one too, "
        "both must agree.",
        pattern=NAME_PATTERN,
    ),
]


# ---------------------------------------------------------------------------------------------
# OpenAPI helpers


def _schema_ref(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}, "example": example}


def _field_schemas(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """The fields other than the tensor, as text (form fields, query parameters)."""
    schemas = {}
    for name, field in model.model_fields.items():
        if name in ("images", "z"):
            continue
        schema: dict[str, Any] = {"type": "string", "description": field.description or ""}
        if name == "invert":
            schema["enum"] = list(INVERT_VALUES)
        schemas[name] = schema
    return schemas


def _npy_query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The fields a .npy request gives as query parameters (`model` is declared by the route)."""
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": f"With an application/x-npy body (JSON and multipart requests give it "
            f"as a field): {schema.pop('description')}",
            "schema": schema,
        }
        for name, schema in _field_schemas(model).items()
        if name != "model"
    ]


NPY_BODY = {"schema": {"type": "string", "format": "binary"}}


def _image_body(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "parameters": _npy_query_params(model),
        "requestBody": {
            "required": True,
            "description": "JSON; or PNG/JPEG files as multipart/form-data (repeated `images` "
            "parts, other fields as form fields); or one .npy array (N x 784, N x 28 x 28 or "
            "N x 1 x 28 x 28; float32 in [0, 1] or uint8 0-255) as application/x-npy, other "
            "fields as query parameters.",
            "content": {
                "application/json": _schema_ref(model, example),
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["images"],
                        "properties": {
                            "images": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "PNG or JPEG files, preprocessed as in training "
                                "(and inverted as `invert` says: by default `auto`).",
                            },
                            **_field_schemas(model),
                        },
                    }
                },
                NPY: NPY_BODY,
            },
        },
    }


def _latent_body(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "parameters": _npy_query_params(model),
        "requestBody": {
            "required": True,
            "description": "JSON; or one float32 .npy array (N x latent) as application/x-npy.",
            "content": {"application/json": _schema_ref(model, example), NPY: NPY_BODY},
        },
    }


def _params_body(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": _schema_ref(model, example)},
        }
    }


def _responses(path: str, example: Any, binary: str, png: bool = False) -> dict[int | str, Any]:
    content: dict[str, Any] = {"application/json": {"example": example}}
    if binary == "npz":
        content[NPZ] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "With Accept: application/x-npz (or application/x-npy): an .npz "
            "archive of float32 `mu` and (VAE) `logvar`, each N x latent.",
        }
    else:
        content[NPY] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "With Accept: application/x-npy: one float32 .npy array of the "
            "images (N x 28 x 28, or N x samples x 28 x 28).",
        }
    if png:
        content["image/png"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "With Accept: image/png: one PNG grid of all images.",
        }
    return {
        200: {"description": "Success", "content": content},
        400: error_doc("Unreadable .npy or multipart body"),
        404: error_doc("Unknown model"),
        406: error_doc(
            "The Accept header takes none of the types this endpoint answers: "
            + ", ".join(media_type for media_type, _ in PRODUCES[path])
            + " (any of them with */*, or with no Accept header)"
        ),
        415: error_doc("Unsupported content type or image format"),
        422: error_doc("Invalid input; the message names the field"),
        **GUARD_RESPONSES,
        # Replaces the guard's 413: here an uploaded file can be too large as well.
        413: error_doc("Body or uploaded file too large"),
    }


# What the guard (service.guards) may answer on any protected endpoint.
GUARD_RESPONSES: dict[int | str, Any] = {
    401: error_doc("API key missing or wrong (when keys are set)"),
    413: error_doc("Request body over VAE_MAX_BODY_BYTES"),
    503: error_doc("Models still loading, service at capacity or shutting down; see Retry-After"),
    504: error_doc("Not answered within VAE_REQUEST_TIMEOUT_S"),
}


_IMG = [[0.0] * 28] * 28
EXAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "encode": (
        {"model": "mnist-vae-2d", "images": [EXAMPLE_IMAGE]},
        {"model": "mnist-vae-2d", "latent_dim": 2, "mu": [[0.41, -1.2]], "logvar": [[-3.1, -2.8]]},
    ),
    "reconstruct": (
        {
            "model": "mnist-vae",
            "images": [EXAMPLE_IMAGE],
            "mode": "sampled",
            "seed": 7,
            "samples": 2,
        },
        {"model": "mnist-vae", "mode": "sampled", "seed": 7, "images": [[_IMG, _IMG]]},
    ),
    "generate": (
        {"model": "mnist-vae-2d", "n": 2, "seed": 42, "temperature": 1.0},
        {
            "model": "mnist-vae-2d",
            "seed": 42,
            "z": [[0.3, -0.5], [1.1, 0.2]],
            "images": [_IMG, _IMG],
        },
    ),
    "decode": (
        {"model": "mnist-vae-2d", "z": [[0.0, 0.0], [1.5, -0.5]]},
        {"model": "mnist-vae-2d", "images": [_IMG, _IMG]},
    ),
}


# ---------------------------------------------------------------------------------------------


class ServiceApp(FastAPI):
    """FastAPI with the service's own layers (CORS, the guard, the fast lane) in front of the
    middleware FastAPI wraps around every request (error page, telemetry, body limit) instead
    of inside it. Inference requests the fast lane answers skip those layers: at one image per
    request they took 19 % of the event loop's time. An exception there now reaches the guard,
    which answers with its JSON 500; FastAPI's own routes get the same answer from a handler."""

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None, registry: ModelRegistry | None = None
) -> ServiceApp:
    """The service. With `registry` given (already loaded), the app takes it over; otherwise the
    lifespan loads every model from `settings.model_dir` before the app accepts requests."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = (
            registry
            if registry is not None
            else await run_in_threadpool(ModelRegistry.load, settings)
        )
        loaded.attach(app.state.metrics)
        app.state.registry = loaded
        logger.info("ready: %s (default %s)", ", ".join(loaded.models), loaded.default_name)
        trimmer = asyncio.create_task(_trim_memory(settings.memory_trim_interval_s))
        flusher = asyncio.create_task(_flush_access_log(app.state.access_log))
        loop = asyncio.get_running_loop()

        def on_sighup() -> asyncio.Task[RescanReport | ModelLoadError]:
            # `kill -HUP`: read the model folder again, as POST /models/reload does.
            return start_rescan(loaded)

        app.state.on_sighup = on_sighup  # what SIGHUP runs (tests call it where no signal can go)
        hangup = _add_signal_handler(loop, signal.SIGHUP, on_sighup)
        try:
            yield
        finally:
            if hangup:
                loop.remove_signal_handler(signal.SIGHUP)
            for reload in list(rescans):
                reload.cancel()
            trimmer.cancel()
            flusher.cancel()
            if app.state.access_log is not None:
                app.state.access_log.flush()
            app.state.registry = None
            await loaded.close()

    app = ServiceApp(
        title="VAE serving",
        version=__version__,
        summary="Encode, reconstruct, generate and decode with exported AEs and VAEs.",
        description=(
            "Images are pixel values in [0, 1] (flat 784 or 28 x 28), or PNG/JPEG uploads as "
            "multipart/form-data (a photo of dark ink on light paper is inverted: see `invert`). "
            "`logvar` is the log-variance of q(z|x): sigma = exp(logvar / 2). "
            "Sampled results are reproducible with `seed`. Send `Accept: image/png` to get one "
            "PNG grid instead of JSON images."
        ),
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry hooks check their providers on every request (about
        # 20 us here); this service exports no OpenTelemetry data, so they stay off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
    )
    # Rescans of the model folder (SIGHUP, POST /models/reload) run as tasks of their own: one
    # that outlasts its HTTP request (504) still finishes, rather than stopping half way.
    rescans: set[asyncio.Task[RescanReport | ModelLoadError]] = set()

    def start_rescan(registry: ModelRegistry) -> asyncio.Task[RescanReport | ModelLoadError]:
        task = asyncio.get_running_loop().create_task(_rescan(registry))
        rescans.add(task)
        task.add_done_callback(rescans.discard)
        return task

    app.state.settings = settings
    app.state.registry = None
    app.state.draining = False  # set by begin_shutdown() on SIGTERM
    app.state.metrics = Metrics()
    app.state.access_log = AccessLog(settings.log_format) if settings.access_log else None
    # CORS first (it answers browser preflights), then the guard (keys, limits, timeouts), then
    # the fast lane, then FastAPI.
    app.front = Guard(FastLane(app.fastapi, owner=app), owner=app, settings=settings)
    if settings.cors_origins:
        app.front = CORSMiddleware(
            app.front,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept"],
            expose_headers=["X-Seed", "X-Model", "X-Request-ID", "Retry-After"],
        )

    @app.get("/static/redoc/redoc.standalone.js", include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(redoc_offline_script(), media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return error_response(exc)

    # Raised inside FastAPI (a multipart body read by a route), these would meet FastAPI's
    # plain-text error page before the guard: the same JSON answers the guard gives.
    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 413, {"Connection": "close"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": INTERNAL_ERROR}, 500)  # the guard logs it

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up before sending its whole body: nobody is left to answer, and it
        # is not the service's error. 499 is what nginx logs for this.
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = str(exc.detail)
        if exc.status_code == 404:  # no route: say which path, and where the list is
            detail = f"no endpoint at {request.url.path!r}; /docs lists them"
        if request.url.path.startswith("/v2/"):  # the Open Inference Protocol's error shape
            return oip_error_response(OIPError(detail, exc.status_code))
        if exc.status_code == 404:
            return JSONResponse({"detail": detail}, status_code=404)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = describe_errors(list(exc.errors()))
        if request.url.path.startswith("/v2/"):  # the Open Inference Protocol's error shape
            return oip_error_response(OIPError(message))
        return error_response(InputError("", message))

    @app.exception_handler(OIPError)
    async def _oip_error(request: Request, exc: OIPError) -> JSONResponse:
        return oip_error_response(exc)

    # --- inference -----------------------------------------------------------------------

    @app.post(
        "/encode",
        response_model=EncodeResponse,
        tags=["inference"],
        summary="Images -> latent mu and logvar",
        openapi_extra=_image_body(EncodeRequest, EXAMPLES["encode"][0]),
        responses=_responses("/encode", EXAMPLES["encode"][1], binary="npz"),
    )
    async def encode(
        request: Request, registry: Registry, settings: AppSettings, model: ModelQuery = None
    ) -> Response:
        """Posterior mean and log-variance of each image. For an AE, `mu` holds the code and
        `logvar` is null. With `Accept: application/x-npy` the answer is an .npz archive holding
        `mu` and (VAE) `logvar`."""
        return await _image_endpoint(
            request, registry, settings, model, EncodeParams, encode_core, handle_encode
        )

    @app.post(
        "/reconstruct",
        response_model=ReconstructResponse,
        tags=["inference"],
        summary="Images -> decode(encode(images)), deterministic or sampled",
        openapi_extra=_image_body(ReconstructRequest, EXAMPLES["reconstruct"][0]),
        responses=_responses("/reconstruct", EXAMPLES["reconstruct"][1], binary="npy", png=True),
    )
    async def reconstruct(
        request: Request, registry: Registry, settings: AppSettings, model: ModelQuery = None
    ) -> Response:
        """`deterministic` decodes mu: the same output on every call. `sampled` decodes
        z = mu + exp(logvar / 2) * eps with eps drawn from `seed` (returned, so any result can be
        reproduced); a VAE's reconstructions differ from draw to draw by design."""
        return await _image_endpoint(
            request,
            registry,
            settings,
            model,
            ReconstructParams,
            reconstruct_core,
            handle_reconstruct,
        )

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        tags=["inference"],
        summary="Decode samples of the prior z ~ N(0, I)",
        openapi_extra=_params_body(GenerateRequest, EXAMPLES["generate"][0]),
        responses=_responses("/generate", EXAMPLES["generate"][1], binary="npy", png=True),
    )
    async def generate(
        request: Request, registry: Registry, settings: AppSettings, model: ModelQuery = None
    ) -> Response:
        """New images from z = temperature * eps, eps ~ N(0, I) drawn from `seed`. The seed also
        comes back in the `X-Seed` header (the only place for it with PNG or .npy output)."""
        return await handle_generate(await Call.from_request(request), registry, settings)

    @app.post(
        "/decode",
        response_model=DecodeResponse,
        tags=["inference"],
        summary="Latent vectors -> images",
        openapi_extra=_latent_body(DecodeRequest, EXAMPLES["decode"][0]),
        responses=_responses("/decode", EXAMPLES["decode"][1], binary="npy", png=True),
    )
    async def decode(
        request: Request, registry: Registry, settings: AppSettings, model: ModelQuery = None
    ) -> Response:
        """Decode the given latent vectors (for a VAE, points of its latent space; for an AE,
        codes from /encode)."""
        return await handle_decode(await Call.from_request(request), registry, settings)

    # --- metadata and health ----------------------------------------------------------------

    @app.get(
        "/models",
        response_model=ModelList,
        tags=["models"],
        summary="Every loaded model",
        responses=GUARD_RESPONSES,
    )
    async def list_models(registry: Registry) -> ModelList:
        return ModelList(
            default=registry.default_name,
            models=[
                ModelInfo(**m.describe(m.name == registry.default_name))
                for m in registry.models.values()
            ],
        )

    @app.get(
        "/models/{name}",
        response_model=ModelInfo,
        tags=["models"],
        summary="One model: manifest, providers in use",
        responses={404: error_doc("Unknown model"), **GUARD_RESPONSES},
    )
    async def get_model(name: ModelName, registry: Registry) -> ModelInfo:
        runtime = pick_model(registry, None, name)
        return ModelInfo(**runtime.describe(runtime.name == registry.default_name))

    @app.get(
        "/models/{name}/latent-map",
        response_model=LatentMapResponse,
        tags=["models"],
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
        runtime = pick_model(registry, None, name)
        if runtime.latent_map_body is None:
            why = (
                "it was exported without its dataset"
                if runtime.latent_dim == 2
                else f"its latent_dim is {runtime.latent_dim}"
            )
            raise InputError(
                "",
                f"model {runtime.name!r} has no latent map: only models with a 2-D latent space "
                f"exported with their dataset have one ({why})",
                404,
            )
        return Response(runtime.latent_map_body, media_type="application/json")

    @app.post(
        "/models/reload",
        response_model=RepositoryReload,
        tags=["models"],
        summary="Read the model folder again: new models added, removed ones dropped, changed "
        "ones reloaded",
        responses={
            409: error_doc(
                "Something was refused (each in `refused`, with its problem; everything else "
                "was applied), or the folder holds no model that can be served (nothing changed)",
                "RepositoryReloadRefused",
            ),
            **GUARD_RESPONSES,
        },
    )
    async def reload_repository(registry: Registry) -> JSONResponse:
        """Scan VAE_MODEL_DIR as at start-up and serve what it now holds, swapped in at once:
        a new folder is loaded (checked and warmed up) and added; a model whose folder is gone is
        dropped (requests already running on it finish); a changed folder is reloaded; an
        unchanged one is left as it is. What fails a check is refused and the rest goes ahead: a
        broken new folder is not added, a broken new version leaves the old one serving (as
        POST /models/{name}/reload). The VAE_DEFAULT_MODEL model is never dropped; without that
        setting, the default is chosen again as at start-up (mnist-vae if loaded, else the first
        folder). A folder with no servable model left changes nothing (409). SIGHUP does the
        same, and logs it."""
        task = start_rescan(registry)
        # Shielded: a request that times out (504) leaves the scan to finish and swap.
        return _rescan_answer(registry, await asyncio.shield(task))

    @app.post(
        "/models/{name}/reload",
        response_model=ModelInfo,
        tags=["models"],
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
        sessions, then swap them in; requests already running finish on the old version.
        POST /models/reload (and SIGHUP) does this for every changed folder, and adds and drops
        models too."""
        pick_model(registry, None, name)  # 404 for an unknown name
        try:
            runtime = await registry.reload(name)
        except ModelLoadError as exc:
            raise InputError(
                "name", f"reload refused, the previous version keeps serving: {exc}", 409
            ) from exc
        return ModelInfo(**runtime.describe(runtime.name == registry.default_name))

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        tags=["health"],
        summary="Readiness: 200 once every model is loaded and warmed up, else 503",
        responses={503: {"model": Health}},
    )
    async def readyz(request: Request) -> JSONResponse:
        registry: ModelRegistry | None = request.app.state.registry
        if request.app.state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if registry is not None and registry.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics (text exposition format)",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        """Requests by endpoint, model and status; latency of whole requests, of the queue
        before a batch and of each onnxruntime call; batch sizes; requests in flight; loaded
        model versions. Never refused, never needs a key."""
        registry = request.app.state.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_router(GUARD_RESPONSES))

    # --- docs, served without internet ---------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        """The playground web page (service/static/playground): draw, reconstruct, explore."""
        return HTMLResponse(PLAYGROUND_PAGE)

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="VAE serving - API docs",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="VAE serving - API reference",
            redoc_js_url="/static/redoc/redoc.standalone.js",
            redoc_favicon_url="/static/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )

    base_openapi: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            # Request bodies are parsed by hand (JSON or multipart), so add their schemas here,
            # and those of the errors (see schemas.error_doc).
            _, defs = models_json_schema(
                [(m, "validation") for m in DOCUMENTED_MODELS],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            # Every 422 this service sends is {"detail": "<message>"} (see _validation_error),
            # not FastAPI's default list of errors.
            text = json.dumps(schema).replace(
                "#/components/schemas/HTTPValidationError", "#/components/schemas/ErrorResponse"
            )
            schema = json.loads(text)
            for unused in ("HTTPValidationError", "ValidationError"):
                schema["components"]["schemas"].pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
