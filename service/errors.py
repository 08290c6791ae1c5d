"""The service's errors: one class per answer, each with the HTTP status it means.

Raised anywhere below the HTTP layer (codecs, operations, the registry); `service.http` turns
them into answers: `{"detail": message}` on the service's own endpoints, `{"error": message}` on
the Open Inference Protocol's (/v2). The message names the field at fault and the fix.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """A request the service cannot answer as asked; `status` is the HTTP status it means."""

    status: ClassVar[int] = 500

    def __init__(self, field: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.headers = headers


class InvalidInput(ServiceError):
    """A value the model cannot take (out of range, wrong shape, wrong type)."""

    status = 422


class BadRequest(ServiceError):
    """A body that cannot be read at all (a broken .npy or multipart body); on /v2, any request
    the protocol calls invalid."""

    status = 400


class Unauthorized(ServiceError):
    """No API key, or a wrong one, where keys are set."""

    status = 401


class Forbidden(ServiceError):
    """An action this service is configured not to allow (a reload with VAE_ALLOW_RELOAD=false)."""

    status = 403


class NotFound(ServiceError):
    """An unknown model, model version, route or resource."""

    status = 404


class NotAcceptable(ServiceError):
    """An Accept header naming no format the endpoint can produce."""

    status = 406


class RequestTimeout(ServiceError):
    """A request whose body did not arrive in time: the client was too slow."""

    status = 408


class Conflict(ServiceError):
    """A refused state change: a reload whose new files fail a check."""

    status = 409


class TooLarge(ServiceError):
    """A body or an uploaded file over a limit."""

    status = 413


class UnsupportedMediaType(ServiceError):
    """A Content-Type or image format the endpoint does not read."""

    status = 415


class TooManyRequests(ServiceError):
    """The same action again too soon (a reload within VAE_RELOAD_MIN_INTERVAL_S, or while one
    of the same model is under way): the client should retry after `Retry-After` seconds."""

    status = 429

    def __init__(self, field: str, message: str, retry_after_s: int) -> None:
        super().__init__(field, message, {"Retry-After": str(retry_after_s)})


class Unavailable(ServiceError):
    """Not ready yet, at capacity or shutting down: the client should retry after a while."""

    status = 503

    def __init__(
        self,
        field: str,
        message: str,
        retry_after_s: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(field, message, {**(headers or {}), "Retry-After": str(retry_after_s)})


class TimedOut(ServiceError):
    """No answer within the request timeout."""

    status = 504


class InternalError(ServiceError):
    """An unexpected exception: the request fails alone, and it is logged."""

    status = 500
