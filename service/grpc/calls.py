"""What every gRPC call meets, in one place (REST's guard, `service.http.guard`, for gRPC): the
request context, API keys, shutdown and capacity refusals, the request timeout, the service's
errors as gRPC status codes, and one metrics count and access-log line per call.

1. `ServerLive`, `ServerReady` and the health service need no key (REST's probes and
   `/v2/health/*` need none either); every other call needs one where keys are set, in the
   metadata as `authorization: Bearer <key>` or `x-api-key: <key>` (UNAUTHENTICATED).
2. While the service shuts down (SIGTERM), new calls get UNAVAILABLE; until the models are
   loaded, UNAVAILABLE.
3. REST and gRPC share `VAE_MAX_CONCURRENT_REQUESTS`: a call beyond it gets RESOURCE_EXHAUSTED
   at once, with REST's message.
4. A call still unanswered `VAE_REQUEST_TIMEOUT_S` after it started gets DEADLINE_EXCEEDED.
5. An unexpected exception fails that call alone (INTERNAL, logged).

The body limit is gRPC's own: the server's largest message is VAE_MAX_BODY_BYTES (see
`service.grpc.server`). A call that ends without an answer because the client cancelled it (or
its deadline passed) is recorded as 499, as REST's clients that hang up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from service.errors import InternalError, ServiceError, TimedOut, Unauthorized, Unavailable
from service.http.errors import INTERNAL_ERROR
from service.http.guard import KeyCheck, presented_key, request_id
from service.http.state import AppState
from service.observability.context import RequestInfo, current_request

logger = logging.getLogger("service")

T = TypeVar("T")
SERVICE_NAME = "inference.GRPCInferenceService"
SERVICE = f"/{SERVICE_NAME}/"
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})
CLIENT_GONE = 499

# The service's errors (by the HTTP status each means) as gRPC status codes; the message is the
# same. 409 is a load or reload refused (the model keeps its state): a precondition failed.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: ServiceError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.UNKNOWN)


class Calls:
    """See the module docstring. `run` wraps every call of the servicer."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings = state.settings
        self.keys = KeyCheck(state.settings.api_key_list())

    async def run(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        """`work()`'s answer, or the call aborted with the status its error means."""
        metadata = {
            key.encode("latin-1"): value.encode() if isinstance(value, str) else value
            for key, value in context.invocation_metadata() or ()
        }
        info = RequestInfo(request_id(metadata))
        tracing = self.state.tracing
        if tracing is not None and method not in OPEN_METHODS:  # probes get no span, as REST's
            info.trace = tracing.grpc_call(SERVICE_NAME, method, metadata, info.request_id)
        token = current_request.set(info)
        trailing = [("x-request-id", info.request_id)]
        if info.trace is not None:  # REST's traceresponse header, in the trailing metadata
            trailing.append(("traceresponse", info.trace.traceresponse().decode()))
        context.set_trailing_metadata(trailing)
        status, failure = CLIENT_GONE, None
        start = time.perf_counter()
        try:
            result, failure = await self._answer(method, metadata, work)
            status = 200 if failure is None else failure.status
        finally:
            info.end()
            current_request.reset(token)
            code = (
                grpc.StatusCode.OK
                if failure is None and status == 200
                else (grpc.StatusCode.CANCELLED if failure is None else self._code(failure))
            )
            self._record(method, info, status, time.perf_counter() - start, code)
            if info.trace is not None:
                info.trace.end_grpc(code.value[0], code.name, info.model, info.batch_size)
        if failure is not None:
            await context.abort(code, str(failure))
        return result  # type: ignore[return-value]

    def _code(self, failure: ServiceError) -> grpc.StatusCode:
        if isinstance(failure, AtCapacity):
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        return status_code(failure)

    async def _answer(
        self, method: str, metadata: dict[bytes, bytes], work: Callable[[], Awaitable[T]]
    ) -> tuple[T | None, ServiceError | None]:
        refusal = None if method in OPEN_METHODS else self._refusal(metadata)
        if refusal is not None:
            return None, refusal
        state = self.state
        state.in_flight += 1
        state.metrics.in_flight = state.in_flight
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await work(), None
        except ServiceError as exc:
            return None, exc
        except TimeoutError:
            logger.warning("gRPC %s timed out after %s s", method, self.settings.request_timeout_s)
            return None, TimedOut(
                "",
                f"the service did not finish this request within "
                f"{self.settings.request_timeout_s:g} s of receiving it (VAE_REQUEST_TIMEOUT_S): "
                "it is busy; retry later, or split the request",
            )
        except Exception:
            logger.exception("gRPC %s failed", method)
            return None, InternalError("", INTERNAL_ERROR)
        finally:
            state.in_flight -= 1
            state.metrics.in_flight = state.in_flight

    def _refusal(self, metadata: dict[bytes, bytes]) -> ServiceError | None:
        """Why a call is turned away before it takes a slot, if it is: REST's rules."""
        settings = self.settings
        if self.keys.enabled:
            key = presented_key(metadata)
            if key is None or not self.keys.matches(key):
                problem = "missing" if key is None else "invalid"
                return Unauthorized(
                    "",
                    f"{problem} API key: send it in the metadata as `authorization: Bearer "
                    "<key>` or `x-api-key: <key>`",
                )
        if self.state.draining:
            return Unavailable(
                "", "the service is shutting down; retry on another replica", settings.retry_after_s
            )
        if self.state.registry is None or not self.state.registry.ready:
            return Unavailable(
                "", "models are still loading; retry shortly", settings.retry_after_s
            )
        if self.state.in_flight >= settings.max_concurrent_requests:
            return AtCapacity(
                "",
                f"the service is at capacity ({settings.max_concurrent_requests} requests in "
                f"flight, VAE_MAX_CONCURRENT_REQUESTS); retry after {settings.retry_after_s} s",
                settings.retry_after_s,
            )
        return None

    def _record(
        self,
        method: str,
        info: RequestInfo,
        status: int,
        seconds: float,
        code: grpc.StatusCode,
    ) -> None:
        endpoint = SERVICE + method
        self.state.metrics.count_request(endpoint, info.model, status, seconds)
        access_log = self.state.access_log
        if access_log is None:
            return
        fields: dict[str, object] = {"request_id": info.request_id}
        if info.trace is not None:  # tracing on: the call's trace, beside its id
            fields["trace_id"] = info.trace.trace_id
        fields.update(
            method="GRPC",
            endpoint=endpoint,
            model=info.model or None,
            status=status,
            grpc_status=code.name,
            latency_ms=round(seconds * 1000, 3),
            batch_size=info.batch_size or None,
        )
        access_log.write(f"GRPC {endpoint} {code.name} {seconds * 1000:.1f} ms", fields)


class AtCapacity(Unavailable):
    """VAE_MAX_CONCURRENT_REQUESTS reached: REST's 503, gRPC's RESOURCE_EXHAUSTED."""
