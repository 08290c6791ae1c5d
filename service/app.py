"""The FastAPI application: `create_app(settings)`; the lifespan owns the onnxruntime sessions."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service import __version__
from service.imaging import (
    InputError,
    image_from_file,
    images_from_lists,
    latents_from_lists,
    png_grid,
)
from service.manifest import NAME_PATTERN
from service.runtime import ModelRegistry, ModelRuntime
from service.schemas import (
    EXAMPLE_IMAGE,
    DecodeRequest,
    DecodeResponse,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    ModelInfo,
    ModelList,
    ReconstructRequest,
    ReconstructResponse,
)
from service.settings import Settings

logger = logging.getLogger("service")
RequestModel = TypeVar("RequestModel", bound=BaseModel)
STATIC = files("service") / "static"
REQUEST_MODELS: list[type[BaseModel]] = [
    EncodeRequest,
    ReconstructRequest,
    GenerateRequest,
    DecodeRequest,
]


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _describe_errors(errors: list[Any], prefix: tuple[Any, ...] = ()) -> str:
    """pydantic errors -> 'images[0][3]: Input should be a valid number; ...' (first five)."""
    parts = []
    seen = set()
    for error in errors:
        path = ""
        for item in (*prefix, *error["loc"]):
            if isinstance(item, int):
                path += f"[{item}]"
            elif "[" in str(item):
                continue  # a union branch such as 'list[float]': not a field
            else:
                path += ("." if path else "") + str(item)
        text = f"{path or 'body'}: {error['msg']}"
        if text not in seen:
            seen.add(text)
            parts.append(text)
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    return "; ".join(parts[:5]) + more


# ---------------------------------------------------------------------------------------------
# Dependencies (Annotated aliases, so tests can override them)


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry | None = getattr(request.app.state, "registry", None)
    if registry is None or not registry.ready:
        raise InputError("service", "models are still loading; retry shortly", 503)
    return registry


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Registry = Annotated[ModelRegistry, Depends(get_registry)]
AppSettings = Annotated[Settings, Depends(get_settings)]
ModelQuery = Annotated[
    str | None,
    Query(
        description="Model name (default: the default model); if the body names one too, "
        "both must agree.",
        pattern=NAME_PATTERN,
    ),
]


def pick_model(
    registry: ModelRegistry, from_body: str | None, from_query: str | None
) -> ModelRuntime:
    if from_body and from_query and from_body != from_query:
        raise InputError("model", f"the body says {from_body!r} but ?model= says {from_query!r}")
    name = from_body or from_query or registry.default_name
    model = registry.models.get(name)
    if model is None:
        raise InputError(
            "model", f"no model named {name!r}; available: {', '.join(registry.models)}", 404
        )
    return model


async def parse_body(
    request: Request, model_type: type[RequestModel], settings: Settings
) -> tuple[RequestModel, list[tuple[str, bytes]]]:
    """The request as `model_type`: from JSON, or from multipart/form-data where image files come
    as repeated `images` parts and the other fields as form fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data" and "images" in model_type.model_fields:
        async with request.form(max_files=settings.max_images, max_fields=32) as form:
            uploads = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
            if not uploads:
                raise InputError("images", "multipart requests carry image files as `images` parts")
            fields: dict[str, Any] = {
                k: v for k, v in form.multi_items() if k != "images" and isinstance(v, str)
            }
            for key in ("seed", "samples"):
                if key in fields:
                    try:
                        fields[key] = int(fields[key])
                    except ValueError as exc:
                        raise InputError(key, f"expected an integer, got {fields[key]!r}") from exc
            # The files are decoded once the model (and so the image size) is known; the JSON
            # field is validated with a placeholder.
            fields["images"] = [[0.0]]
            try:
                parsed = model_type.model_validate(fields)
            except ValidationError as exc:
                raise InputError("", _describe_errors(exc.errors())) from exc
            contents = []
            for upload in uploads:
                data = await upload.read(settings.max_upload_bytes + 1)
                contents.append((upload.filename or "", data))
        return parsed, contents
    if content_type not in ("application/json", ""):
        raise InputError(
            "content-type",
            f"{content_type!r} is not accepted; send application/json"
            + (" or multipart/form-data" if "images" in model_type.model_fields else ""),
            415,
        )
    body = await request.body()
    try:
        return model_type.model_validate_json(body or b"{}"), []
    except ValidationError as exc:
        raise InputError("", _describe_errors(exc.errors())) from exc


def input_images(
    body: EncodeRequest | ReconstructRequest,
    uploads: list[tuple[str, bytes]],
    model: ModelRuntime,
    settings: Settings,
) -> np.ndarray:
    count = len(uploads) or len(body.images)
    if count > settings.max_images:
        raise InputError("images", f"{count} images; at most {settings.max_images} per request")
    if not uploads:
        return images_from_lists(body.images, model.image_shape)
    batch = np.empty((len(uploads), *model.image_shape), dtype=np.float32)
    for i, (filename, data) in enumerate(uploads):
        field = f"images[{i}] ({filename})" if filename else f"images[{i}]"
        if len(data) > settings.max_upload_bytes:
            raise InputError(field, f"file over {settings.max_upload_bytes} bytes", 413)
        batch[i] = image_from_file(
            data, field, model.image_shape, model.manifest.input.preprocessing
        )
    return batch


def wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "image/png" in accept and "application/json" not in accept


def image_payload(images: np.ndarray) -> Any:
    """(…, 1, H, W) model output -> nested lists without the channel axis."""
    return images.squeeze(-3).tolist()


def _draw_seed(seed: int | None) -> int:
    return secrets.randbelow(2**31) if seed is None else seed


# ---------------------------------------------------------------------------------------------
# OpenAPI helpers


def _json_and_upload_body(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    form_fields = {
        name: {"type": "string", "description": (field.description or "")}
        for name, field in model.model_fields.items()
        if name != "images"
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
                    "example": example,
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["images"],
                        "properties": {
                            "images": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "PNG or JPEG files, preprocessed as in training.",
                            },
                            **form_fields,
                        },
                    }
                },
            },
        }
    }


def _json_body(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
                    "example": example,
                }
            },
        }
    }


def _responses(response_model: type[BaseModel], example: Any, png: bool) -> dict[int | str, Any]:
    ok: dict[str, Any] = {
        "description": "Success",
        "content": {"application/json": {"example": example}},
    }
    if png:
        ok["content"]["image/png"] = {
            "schema": {"type": "string", "format": "binary"},
            "example": "(one PNG grid of all images, sent with Accept: image/png)",
        }
    return {
        200: ok,
        404: {"model": ErrorResponse, "description": "Unknown model"},
        415: {"model": ErrorResponse, "description": "Unsupported content type or image format"},
        422: {"model": ErrorResponse, "description": "Invalid input; the message names the field"},
        503: {"model": ErrorResponse, "description": "Models still loading"},
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


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
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
        app.state.registry = loaded
        logger.info("ready: %s (default %s)", ", ".join(loaded.models), loaded.default_name)
        try:
            yield
        finally:
            app.state.registry = None
            loaded.close()

    app = FastAPI(
        title="VAE serving",
        version=__version__,
        summary="Encode, reconstruct, generate and decode with exported AEs and VAEs.",
        description=(
            "Images are pixel values in [0, 1] (flat 784 or 28 x 28), or PNG/JPEG uploads as "
            "multipart/form-data. `logvar` is the log-variance of q(z|x): sigma = exp(logvar / 2). "
            "Sampled results are reproducible with `seed`. Send `Accept: image/png` to get one "
            "PNG grid instead of JSON images."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = None
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return _problem(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, _describe_errors(list(exc.errors())))

    # --- inference -----------------------------------------------------------------------

    @app.post(
        "/encode",
        response_model=EncodeResponse,
        tags=["inference"],
        summary="Images -> latent mu and logvar",
        openapi_extra=_json_and_upload_body(EncodeRequest, EXAMPLES["encode"][0]),
        responses=_responses(EncodeResponse, EXAMPLES["encode"][1], png=False),
    )
    async def encode(
        request: Request, registry: Registry, settings: AppSettings, model: ModelQuery = None
    ) -> Response:
        """Posterior mean and log-variance of each image. For an AE, `mu` holds the code and
        `logvar` is null."""
        body, uploads = await parse_body(request, EncodeRequest, settings)
        runtime = pick_model(registry, body.model, model)
        x = input_images(body, uploads, runtime, settings)
        mu, logvar = await run_in_threadpool(runtime.encode, x)
        return JSONResponse(
            {
                "model": runtime.name,
                "latent_dim": runtime.latent_dim,
                "mu": mu.tolist(),
                "logvar": None if logvar is None else logvar.tolist(),
            }
        )

    @app.post(
        "/reconstruct",
        response_model=ReconstructResponse,
        tags=["inference"],
        summary="Images -> decode(encode(images)), deterministic or sampled",
        openapi_extra=_json_and_upload_body(ReconstructRequest, EXAMPLES["reconstruct"][0]),
        responses=_responses(ReconstructResponse, EXAMPLES["reconstruct"][1], png=True),
    )
    async def reconstruct(
        request: Request, registry: Registry, settings: AppSettings, model: ModelQuery = None
    ) -> Response:
        """`deterministic` decodes mu: the same output on every call. `sampled` decodes
        z = mu + exp(logvar / 2) * eps with eps drawn from `seed` (returned, so any result can be
        reproduced); a VAE's reconstructions differ from draw to draw by design."""
        body, uploads = await parse_body(request, ReconstructRequest, settings)
        runtime = pick_model(registry, body.model, model)
        if body.mode == "deterministic" and (body.samples is not None or body.seed is not None):
            raise InputError(
                "mode", "seed and samples apply only to mode='sampled'; deterministic is decode(mu)"
            )
        if body.mode == "sampled" and not runtime.is_vae:
            raise InputError(
                "mode",
                f"model {runtime.name!r} is an autoencoder: its encoder gives one code per image "
                "and no variance to sample from; use mode='deterministic' or a VAE",
            )
        if body.samples is not None and body.samples > settings.max_samples:
            raise InputError("samples", f"{body.samples}; at most {settings.max_samples}")
        x = input_images(body, uploads, runtime, settings)
        k = body.samples or 1
        if len(x) * k > settings.max_images:
            raise InputError(
                "samples", f"{len(x)} images x {k} samples; at most {settings.max_images} outputs"
            )
        seed = None if body.mode == "deterministic" else _draw_seed(body.seed)

        def run() -> np.ndarray:
            mu, logvar = runtime.encode(x)
            if seed is None or logvar is None:
                return runtime.decode(mu)
            eps = np.random.default_rng(seed).standard_normal(
                (len(x), k, mu.shape[1]), dtype=np.float32
            )
            z = mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps  # inputs x samples x latent
            decoded = runtime.decode(z.reshape(-1, mu.shape[1]))
            return decoded.reshape(len(x), k, *decoded.shape[1:])

        images = await run_in_threadpool(run)
        if body.samples is None and images.ndim == 5:
            images = images[:, 0]
        if wants_png(request):
            return Response(png_grid(images.squeeze(-3)), media_type="image/png")
        return JSONResponse(
            {
                "model": runtime.name,
                "mode": body.mode,
                "seed": seed,
                "images": image_payload(images),
            }
        )

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        tags=["inference"],
        summary="Decode samples of the prior z ~ N(0, I)",
        openapi_extra=_json_body(GenerateRequest, EXAMPLES["generate"][0]),
        responses=_responses(GenerateResponse, EXAMPLES["generate"][1], png=True),
    )
    async def generate(
        request: Request, registry: Registry, settings: AppSettings, model: ModelQuery = None
    ) -> Response:
        """New images from z = temperature * eps, eps ~ N(0, I) drawn from `seed`."""
        body, _ = await parse_body(request, GenerateRequest, settings)
        runtime = pick_model(registry, body.model, model)
        if not runtime.is_vae:
            raise InputError(
                "model",
                f"model {runtime.name!r} is an autoencoder: nothing made its codes follow N(0, I), "
                "so decoding prior samples gives garbage; use a VAE such as mnist-vae",
            )
        if body.n > settings.max_generate:
            raise InputError("n", f"{body.n}; at most {settings.max_generate} per request")
        seed = _draw_seed(body.seed)
        z = body.temperature * np.random.default_rng(seed).standard_normal(
            (body.n, runtime.latent_dim), dtype=np.float32
        )
        images = await run_in_threadpool(runtime.decode, z.astype(np.float32))
        if wants_png(request):
            return Response(png_grid(images.squeeze(-3)), media_type="image/png")
        return JSONResponse(
            {"model": runtime.name, "seed": seed, "z": z.tolist(), "images": image_payload(images)}
        )

    @app.post(
        "/decode",
        response_model=DecodeResponse,
        tags=["inference"],
        summary="Latent vectors -> images",
        openapi_extra=_json_body(DecodeRequest, EXAMPLES["decode"][0]),
        responses=_responses(DecodeResponse, EXAMPLES["decode"][1], png=True),
    )
    async def decode(
        request: Request, registry: Registry, settings: AppSettings, model: ModelQuery = None
    ) -> Response:
        """Decode the given latent vectors (for a VAE, points of its latent space; for an AE,
        codes from /encode)."""
        body, _ = await parse_body(request, DecodeRequest, settings)
        runtime = pick_model(registry, body.model, model)
        if len(body.z) > settings.max_images:
            raise InputError(
                "z", f"{len(body.z)} vectors; at most {settings.max_images} per request"
            )
        z = latents_from_lists(body.z, runtime.latent_dim)
        images = await run_in_threadpool(runtime.decode, z)
        if wants_png(request):
            return Response(png_grid(images.squeeze(-3)), media_type="image/png")
        return JSONResponse({"model": runtime.name, "images": image_payload(images)})

    # --- metadata and health ----------------------------------------------------------------

    @app.get("/models", response_model=ModelList, tags=["models"], summary="Every loaded model")
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
        responses={404: {"model": ErrorResponse}},
    )
    async def get_model(name: str, registry: Registry) -> ModelInfo:
        runtime = pick_model(registry, None, name)
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
        if registry is not None and registry.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    # --- docs, served without internet ---------------------------------------------------------

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
            # Request bodies are parsed by hand (JSON or multipart), so add their schemas here.
            _, defs = models_json_schema(
                [(m, "validation") for m in REQUEST_MODELS],
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
