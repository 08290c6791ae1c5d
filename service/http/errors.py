"""Errors -> answers: `{"detail": message}` on the service's own endpoints, `{"error": message}`
on the Open Inference Protocol's (/v2), with the status each error means."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from service.codecs.json_input import describe_errors
from service.errors import BadRequest, InvalidInput, NotFound, ServiceError

OIP_PREFIX = "/v2/"
INTERNAL_ERROR = (
    "internal error while serving this request; it is logged, and other requests are unaffected"
)


def error_response(exc: ServiceError, oip: bool = False) -> JSONResponse:
    """The answer to `exc`, in the Open Inference Protocol's shape when `oip`."""
    body = {"error": str(exc)} if oip else {"detail": str(exc)}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _is_oip(request: Request) -> bool:
    return request.url.path.startswith(OIP_PREFIX)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc, _is_oip(request))


async def _validation_error(request: Request, exc: Exception) -> Response:
    # FastAPI's own check of a route's query, path or body: one message naming the fields,
    # where FastAPI would answer a list of errors. The protocol calls any invalid request 400.
    assert isinstance(exc, RequestValidationError)
    message = describe_errors(list(exc.errors()))
    error = BadRequest("", message) if _is_oip(request) else InvalidInput("", message)
    return error_response(error, _is_oip(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:  # no route: say which path, and where the list is
        unknown = NotFound("", f"no endpoint at {request.url.path!r}; /docs lists them")
        return error_response(unknown, _is_oip(request))
    if _is_oip(request):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, exc.headers)
    return await http_exception_handler(request, exc)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up before sending its whole body: nobody is left to answer, and it is
    # not the service's error. 499 is what nginx logs for this.
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> Response:
    key = "error" if _is_oip(request) else "detail"
    return JSONResponse({key: INTERNAL_ERROR}, 500)  # the guard logs it


Handler = Callable[[Request, Exception], Awaitable[Response]]
HANDLERS: dict[Any, Handler] = {
    ServiceError: _service_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
    ClientDisconnect: _client_gone,
    Exception: _unexpected,
}


def install_error_handlers(app: FastAPI) -> None:
    """Errors raised inside FastAPI get the answers the guard and the fast path give."""
    for error_type, handler in HANDLERS.items():
        app.add_exception_handler(error_type, handler)
