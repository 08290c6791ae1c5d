"""The playground page, its comparison view and the API docs (Swagger UI, ReDoc), served
without internet."""

from __future__ import annotations

import functools
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = files("service") / "static"
# ReDoc's sidebar footer shows a logo fetched from Redocly's CDN, the one request of /redoc that
# would leave the machine. The vendored file stays as released; it is served with that address
# emptied, and ReDoc hides an image that fails to load.
REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def playground_page() -> str:
    return (STATIC / "playground" / "index.html").read_text()


@functools.cache
def compare_page() -> str:
    return (STATIC / "playground" / "compare.html").read_text()


@functools.cache
def redoc_offline_script() -> bytes:
    script = (STATIC / "redoc" / "redoc.standalone.js").read_text()
    return script.replace(REDOC_LOGO_URL, "").encode()


def add_docs(app: FastAPI) -> None:
    """/ (the playground), /docs, /redoc and their static files."""

    @app.get("/static/redoc/redoc.standalone.js", include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(redoc_offline_script(), media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/", include_in_schema=False)
    async def playground(request: Request) -> HTMLResponse:
        """The playground web page (service/static/playground): draw, reconstruct, explore;
        with ?compare=A,B the view of two models side by side (the page reads the names)."""
        compare = "compare" in request.query_params
        return HTMLResponse(compare_page() if compare else playground_page())

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
