"""Python client of the service: `Client` (blocking) and `AsyncClient` (asyncio), on httpx.

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        encoding = client.encode(images)  # images: (N, H, W[, C]) float in [0, 1] or uint8
        encoding.mu, encoding.sigma        # (N, latent) float32 arrays

Needs only numpy and httpx (`pip install -e '.[client]'` from a checkout, or the wheel that
`make wheel` builds, with its `[client]` extra): this module must never import the service's
own stack (FastAPI, onnxruntime) or torch.

Both clients share one implementation: each call is a generator that yields the HTTP requests
it needs and receives their responses (`_Flow`), so request building, response parsing, error
mapping and the retry policy live in `_BaseClient`; the two subclasses only send and sleep.
Images and latent vectors travel as binary `.npy`/`.npz` wherever the service offers it.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import operator
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt

from service import __version__

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "Encoding",
    "Generation",
    "InvalidInputError",
    "Invert",
    "ModelInfo",
    "ModelNotFoundError",
    "Reconstruction",
    "Scores",
    "ServiceConnectionError",
    "ServiceError",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
]

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
Mode = Literal["deterministic", "sampled"]
# Invert images (1 - pixel) before the model sees them: True, False, or "auto" (those whose
# background, judged by their border, differs from the model's: dark for the bundled models, so
# dark ink on light paper is inverted). None: the service's default for arrays, False.
Invert = Literal["auto"] | bool | None
T = TypeVar("T")
H = TypeVar("H", httpx.Client, httpx.AsyncClient)
# A call: yields the requests it needs, is sent each one's final response, returns the result.
_Flow = Generator[httpx.Request, httpx.Response, T]

DEFAULT_URL = "http://127.0.0.1:8000"
NPY = "application/x-npy"
NPZ = "application/x-npz"
# A 2-D (28, 28) array is one image of the bundled models; any other 2-D array is N flat images
# (one image of another shape: send it as a batch of one, images[None]).
IMAGE_SIDE = 28
# Worth retrying: the request never reached the service (refused, unreachable, connect timeout)
# or the connection broke before an answer (a replica closing keep-alive connections as it shuts
# down). Safe even for POST: inference has no side effects.
RETRYABLE_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.NetworkError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
)


# --- errors -----------------------------------------------------------------------------------


class ServiceError(Exception):
    """An error answer of the service (`status_code`), or no answer at all (`status_code` None).
    `message` is the service's own text (`detail`, or `error` on /v2)."""

    def __init__(
        self, message: str, status_code: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.request_id = request_id

    def __str__(self) -> str:
        prefix = f"HTTP {self.status_code}: " if self.status_code is not None else ""
        suffix = f" (request id {self.request_id})" if self.request_id else ""
        return f"{prefix}{self.message}{suffix}"


class AuthenticationError(ServiceError):
    """401/403: the API key is missing or wrong."""


class ModelNotFoundError(ServiceError):
    """404: no model of that name (the message lists the loaded ones)."""


class InvalidInputError(ServiceError):
    """Any other 4xx: the message names the field at fault and what is expected."""


class ServiceUnavailableError(ServiceError):
    """503 (loading, at capacity, shutting down) still answered after every retry."""

    def __init__(
        self,
        message: str,
        status_code: int | None = 503,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code, request_id)
        self.retry_after = retry_after


class ServiceConnectionError(ServiceError):
    """No answer: the connection failed (after every retry) or broke."""


class ServiceTimeoutError(ServiceError):
    """No answer within the client's `timeout`."""


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoding:
    """Posterior of each image: `mu` (N, latent); `logvar` (N, latent), None for an AE."""

    model: str
    mu: FloatArray
    logvar: FloatArray | None

    @property
    def sigma(self) -> FloatArray | None:
        """Posterior standard deviation exp(logvar / 2); None for an AE."""
        return None if self.logvar is None else np.exp(self.logvar / 2).astype(np.float32)


@dataclass(frozen=True)
class Reconstruction:
    """`images` (N, H, W) for a grayscale model, (N, H, W, C) for a colour one, or (N, samples,
    ...) when `samples` was given; `seed` is None in deterministic mode."""

    model: str
    mode: Mode
    seed: int | None
    images: FloatArray


@dataclass(frozen=True)
class Generation:
    """`images` (n, H, W) or, colour, (n, H, W, C) decoded from `z` (n, latent); `seed`
    reproduces them."""

    model: str
    seed: int
    z: FloatArray
    images: FloatArray


@dataclass(frozen=True)
class Scores:
    """POST /score: per image (arrays of N), `score` (higher = less like the training data;
    which score, `score_name`), `is_outlier` (score > `threshold`; None without a threshold),
    `percentile` among the model's held-out images (None when the model has no calibration:
    `calibrated` False, `note` says so), and the parts: a VAE's `nll`, `elbo`,
    `reconstruction`, `kl` (nats; None for an AE), every model's `reconstruction_error` and, when
    asked, `per_pixel_error` (N, H, W) or colour (N, H, W, C). `k` and `seed` (None for an AE)
    reproduce the numbers; `fpr` is the threshold's false-positive rate on held-out data."""

    model: str
    score_name: str
    calibrated: bool
    note: str | None
    threshold: float | None
    fpr: float | None
    k: int | None
    seed: int | None
    score: Float64Array
    is_outlier: npt.NDArray[np.bool_] | None
    percentile: Float64Array | None
    nll: Float64Array | None
    elbo: Float64Array | None
    reconstruction: Float64Array | None
    kl: Float64Array | None
    reconstruction_error: Float64Array
    per_pixel_error: FloatArray | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Scores:
        def array(name: str, dtype: type[np.generic] = np.float64) -> Any:
            value = raw.get(name)
            return None if value is None else np.asarray(value, dtype=dtype)

        return cls(
            model=raw["model"],
            score_name=raw["score_name"],
            calibrated=bool(raw["calibrated"]),
            note=raw.get("note"),
            threshold=raw.get("threshold"),
            fpr=raw.get("fpr"),
            k=raw.get("k"),
            seed=raw.get("seed"),
            score=array("score"),
            is_outlier=array("is_outlier", np.bool_),
            percentile=array("percentile"),
            nll=array("nll"),
            elbo=array("elbo"),
            reconstruction=array("reconstruction"),
            kl=array("kl"),
            reconstruction_error=array("reconstruction_error"),
            per_pixel_error=array("per_pixel_error", np.float32),
        )


@dataclass(frozen=True)
class ModelInfo:
    """One entry of GET /models; `raw` is the whole JSON object (manifest, providers...)."""

    name: str
    kind: Literal["ae", "vae"]
    latent_dim: int
    version: str
    default: bool
    image_shape: tuple[int, ...]  # one image: (H, W) grayscale, (H, W, C) colour
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelInfo:
        return cls(
            name=raw["name"],
            kind=raw["kind"],
            latent_dim=int(raw["latent_dim"]),
            version=str(raw["version"]),
            default=bool(raw["default"]),
            image_shape=tuple(raw["image_shape"]),
            raw=raw,
        )


# --- shared implementation --------------------------------------------------------------------


def as_images(images: npt.ArrayLike) -> npt.NDArray[Any]:
    """A batch to send, shaped as the model's `image_shape` (`ModelInfo`) says: (N, H, W) for
    a grayscale model (also (N, H, W, 1) and (N, 1, H, W)), (N, H, W, C) for a colour one
    (channels last), or flat (N, H*W*C); one flat (H*W*C,) image, or a (28, 28) one, becomes a
    batch of one. uint8 is sent as is (4x smaller), other floats as float32. Shapes and values
    are checked by the service, which knows each model's image size."""
    array = np.asarray(images)
    if array.ndim == 1 or array.shape == (IMAGE_SIDE, IMAGE_SIDE):
        array = array[None]
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    return array


def as_latents(z: npt.ArrayLike) -> FloatArray:
    """(N, latent) float32; one (latent,) vector becomes a batch of one."""
    array = np.asarray(z, dtype=np.float32)
    return array[None] if array.ndim == 1 else array


def _npy_bytes(array: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date (RFC 9110 allows both)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:1000] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "error"):  # the service's shape, and the /v2 (KServe) one
            if key in body:
                text = body[key]
                return text if isinstance(text, str) else json.dumps(text)
    return json.dumps(body)[:1000]


def raise_for_status(response: httpx.Response) -> None:
    """The service's error answer as the matching `ServiceError`; nothing for a 2xx."""
    status = response.status_code
    if status < 400:
        return
    message = _error_message(response)
    request_id = response.headers.get("x-request-id")
    if status == 503:
        retry_after = _parse_retry_after(response.headers.get("retry-after"))
        raise ServiceUnavailableError(message, status, request_id, retry_after)
    error_type: type[ServiceError]
    if status in (401, 403):
        error_type = AuthenticationError
    elif status == 404:
        error_type = ModelNotFoundError
    elif status < 500:
        error_type = InvalidInputError
    else:
        error_type = ServiceError
    raise error_type(message, status, request_id)


def _load_npy(response: httpx.Response) -> FloatArray:
    _expect(response, NPY)
    array: FloatArray = np.load(io.BytesIO(response.content), allow_pickle=False)
    return array.astype(np.float32, copy=False)


def _expect(response: httpx.Response, media_type: str) -> None:
    # np.load on anything else (a proxy's HTML page, say) would fail with a puzzling message.
    got = response.headers.get("content-type", "").split(";")[0].strip()
    if got != media_type:
        raise ServiceError(
            f"expected a {media_type} answer, got {got or 'no content type'!r}",
            response.status_code,
            response.headers.get("x-request-id"),
        )


def _invert_param(invert: Invert) -> str | None:
    if invert is None or invert == "auto":
        return invert
    if isinstance(invert, bool):
        return "true" if invert else "false"
    raise ValueError(f"invert must be 'auto', True, False or None, got {invert!r}")


def _model_of(response: httpx.Response) -> str:
    return response.headers.get("x-model", "")  # binary answers name their model here


def _seed(response: httpx.Response) -> int | None:
    value = response.headers.get("x-seed")
    return None if value is None else int(value)


class _BaseClient(Generic[H]):
    """Everything but sending and sleeping: requests, parsing, errors, the retry policy."""

    def __init__(
        self,
        http: H,
        owns_http: bool,
        base_url: str,
        api_key: str | None,
        max_retries: int,
        max_retry_wait: float,
        backoff: float,
        model: str | None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self._http: H = http
        self._owns_http = owns_http
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.backoff = backoff
        self.default_model = model
        self._headers = {"User-Agent": f"vae-serving-client/{__version__}"}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"

    # --- requests --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> httpx.Request:
        headers = {**self._headers, "Accept": accept}
        if content_type is not None:
            headers["Content-Type"] = content_type
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        return self._http.build_request(
            method, self.base_url + path, params=query, content=content, headers=headers
        )

    def _json_request(self, path: str, body: dict[str, Any]) -> httpx.Request:
        content = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
        return self._request("POST", path, content=content, content_type="application/json")

    # --- retry policy ----------------------------------------------------------------------

    def _next_step(
        self, attempt: int, outcome: httpx.Response | httpx.TransportError
    ) -> httpx.Response | float:
        """After attempt `attempt` (0 first): the final response, or the seconds to wait before
        trying again. Raises once a transport error is final."""
        retries_left = attempt < self.max_retries
        if isinstance(outcome, httpx.Response):
            if outcome.status_code != 503 or not retries_left:
                return outcome
            # Honour the service's own estimate (capped); without one, back off exponentially.
            after = _parse_retry_after(outcome.headers.get("retry-after"))
            return min(self._backoff(attempt) if after is None else after, self.max_retry_wait)
        if isinstance(outcome, RETRYABLE_ERRORS) and retries_left:
            return self._backoff(attempt)
        what = f"{outcome.request.method} {outcome.request.url}"
        tries = f" after {attempt + 1} attempts" if attempt else ""
        if isinstance(outcome, httpx.TimeoutException) and not isinstance(
            outcome, httpx.ConnectTimeout
        ):
            raise ServiceTimeoutError(f"{what}: no answer in time ({outcome!r})") from outcome
        raise ServiceConnectionError(f"{what}: {outcome!r}{tries}") from outcome

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * 2.0**attempt, self.max_retry_wait)

    # --- calls -----------------------------------------------------------------------------

    def _encode(self, images: npt.ArrayLike, model: str | None, invert: Invert) -> _Flow[Encoding]:
        response = yield self._request(
            "POST",
            "/encode",
            params={"model": model or self.default_model, "invert": _invert_param(invert)},
            content=_npy_bytes(as_images(images)),
            content_type=NPY,
            accept=NPZ,
        )
        raise_for_status(response)
        _expect(response, NPZ)
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            mu = archive["mu"].astype(np.float32, copy=False)
            logvar = archive["logvar"].astype(np.float32) if "logvar" in archive else None
        return Encoding(_model_of(response), mu, logvar)

    def _reconstruct(
        self,
        images: npt.ArrayLike,
        mode: Mode,
        seed: int | None,
        samples: int | None,
        model: str | None,
        invert: Invert,
    ) -> _Flow[Reconstruction]:
        params = {
            "model": model or self.default_model,
            "mode": mode,
            "seed": seed,
            "samples": samples,
            "invert": _invert_param(invert),
        }
        response = yield self._request(
            "POST",
            "/reconstruct",
            params=params,
            content=_npy_bytes(as_images(images)),
            content_type=NPY,
            accept=NPY,
        )
        raise_for_status(response)
        return Reconstruction(_model_of(response), mode, _seed(response), _load_npy(response))

    def _generate(
        self, n: int, seed: int | None, temperature: float, model: str | None
    ) -> _Flow[Generation]:
        # JSON, not .npy: only the JSON answer carries z (and names the model).
        body = {
            "model": model or self.default_model,
            "n": operator.index(n),
            "seed": None if seed is None else operator.index(seed),
            "temperature": float(temperature),
        }
        response = yield self._json_request("/generate", body)
        raise_for_status(response)
        data = response.json()
        return Generation(
            model=data["model"],
            seed=int(data["seed"]),
            z=np.asarray(data["z"], dtype=np.float32),
            images=np.asarray(data["images"], dtype=np.float32),
        )

    def _decode(self, z: npt.ArrayLike, model: str | None) -> _Flow[FloatArray]:
        response = yield self._request(
            "POST",
            "/decode",
            params={"model": model or self.default_model},
            content=_npy_bytes(as_latents(z)),
            content_type=NPY,
            accept=NPY,
        )
        raise_for_status(response)
        return _load_npy(response)

    def _score(
        self,
        images: npt.ArrayLike,
        model: str | None,
        k: int | None,
        seed: int | None,
        fpr: float | None,
        threshold: float | None,
        per_pixel: bool,
        invert: Invert,
    ) -> _Flow[Scores]:
        # The images go as .npy; the answer comes as JSON, the one format with every field.
        params = {
            "model": model or self.default_model,
            "k": None if k is None else operator.index(k),
            "seed": None if seed is None else operator.index(seed),
            "fpr": None if fpr is None else repr(float(fpr)),
            "threshold": None if threshold is None else repr(float(threshold)),
            "per_pixel": "true" if per_pixel else None,
            "invert": _invert_param(invert),
        }
        response = yield self._request(
            "POST",
            "/score",
            params=params,
            content=_npy_bytes(as_images(images)),
            content_type=NPY,
        )
        raise_for_status(response)
        _expect(response, "application/json")
        return Scores.from_json(response.json())

    def _models(self) -> _Flow[list[ModelInfo]]:
        response = yield self._request("GET", "/models")
        raise_for_status(response)
        data = response.json()
        return [ModelInfo.from_json(m) for m in data["models"]]

    def _model(self, name: str) -> _Flow[ModelInfo]:
        response = yield self._request("GET", "/models/" + quote(name, safe=""))
        raise_for_status(response)
        return ModelInfo.from_json(response.json())


class Client(_BaseClient[httpx.Client]):
    """Blocking client. Retries 503 (after `Retry-After`, at most `max_retry_wait` s) and
    failed connections (exponential back-off from `backoff` s) up to `max_retries` times.
    `timeout` applies to a client made here, not to an `httpx_client` passed in."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 10.0,
        backoff: float = 0.25,
        model: str | None = None,
        transport: httpx.BaseTransport | None = None,
        httpx_client: httpx.Client | None = None,
    ) -> None:
        http = httpx_client or httpx.Client(timeout=timeout, transport=transport)
        super().__init__(
            http,
            httpx_client is None,
            base_url,
            api_key,
            max_retries,
            max_retry_wait,
            backoff,
            model,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:  # not an httpx client the caller passed in
            self._http.close()

    def _send(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.send(request)
            except httpx.TransportError as exc:
                outcome = exc
            step = self._next_step(attempt, outcome)
            if isinstance(step, httpx.Response):
                return step
            time.sleep(step)
            attempt += 1

    def _run(self, flow: _Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                request = flow.send(self._send(request))
        except StopIteration as done:
            result: T = done.value
            return result

    def _probe(self, path: str) -> bool:
        # Probes answer now: no retries, and an unreachable service is simply not up.
        try:
            return self._http.send(self._request("GET", path)).status_code == 200
        except httpx.TransportError:
            return False

    def encode(
        self, images: npt.ArrayLike, model: str | None = None, *, invert: Invert = None
    ) -> Encoding:
        """Posterior mu and logvar of each image (see `as_images` for the shapes taken).
        `invert`: True, False or "auto" (see `Invert`); None sends the images as they are."""
        return self._run(self._encode(images, model, invert))

    def reconstruct(
        self,
        images: npt.ArrayLike,
        mode: Mode = "deterministic",
        seed: int | None = None,
        samples: int | None = None,
        model: str | None = None,
        *,
        invert: Invert = None,
    ) -> Reconstruction:
        """decode(mu), or with mode="sampled" decode(mu + sigma * eps) with eps from `seed`.
        `invert` as for `encode`."""
        return self._run(self._reconstruct(images, mode, seed, samples, model, invert))

    def generate(
        self,
        n: int = 1,
        seed: int | None = None,
        temperature: float = 1.0,
        model: str | None = None,
    ) -> Generation:
        """`n` images decoded from z = temperature * eps, eps ~ N(0, I) drawn from `seed`."""
        return self._run(self._generate(n, seed, temperature, model))

    def decode(self, z: npt.ArrayLike, model: str | None = None) -> FloatArray:
        """Images (N, H, W), or (N, H, W, C) for a colour model, decoded from latent vectors
        z (N, latent)."""
        return self._run(self._decode(z, model))

    def score(
        self,
        images: npt.ArrayLike,
        model: str | None = None,
        *,
        k: int | None = None,
        seed: int | None = None,
        fpr: float | None = None,
        threshold: float | None = None,
        per_pixel: bool = False,
        invert: Invert = None,
    ) -> Scores:
        """Anomaly scores of the images (POST /score): the calibrated `score`, `is_outlier`,
        `percentile` and the parts. `k`, `seed`: a VAE's importance samples (defaults: the
        calibration's k, a drawn seed, returned); `fpr` or `threshold` (not both) sets the
        threshold; `per_pixel` adds the per-pixel squared error. `invert` as for `encode`."""
        return self._run(self._score(images, model, k, seed, fpr, threshold, per_pixel, invert))

    def models(self) -> list[ModelInfo]:
        """Every loaded model; `default` marks the one used when a call names none."""
        return self._run(self._models())

    def model(self, name: str) -> ModelInfo:
        """One model (raises ModelNotFoundError for an unknown name)."""
        return self._run(self._model(name))

    def health(self) -> bool:
        """Whether the service is alive (GET /healthz answers 200)."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Whether every model is loaded and the service takes requests (GET /readyz)."""
        return self._probe("/readyz")


class AsyncClient(_BaseClient[httpx.AsyncClient]):
    """The asyncio twin of `Client`: the same arguments, the same methods, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 10.0,
        backoff: float = 0.25,
        model: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        httpx_client: httpx.AsyncClient | None = None,
    ) -> None:
        http = httpx_client or httpx.AsyncClient(timeout=timeout, transport=transport)
        super().__init__(
            http,
            httpx_client is None,
            base_url,
            api_key,
            max_retries,
            max_retry_wait,
            backoff,
            model,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:  # not an httpx client the caller passed in
            await self._http.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.send(request)
            except httpx.TransportError as exc:
                outcome = exc
            step = self._next_step(attempt, outcome)
            if isinstance(step, httpx.Response):
                return step
            await asyncio.sleep(step)
            attempt += 1

    async def _run(self, flow: _Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                request = flow.send(await self._send(request))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _probe(self, path: str) -> bool:
        try:
            response = await self._http.send(self._request("GET", path))
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def encode(
        self, images: npt.ArrayLike, model: str | None = None, *, invert: Invert = None
    ) -> Encoding:
        """See `Client.encode`."""
        return await self._run(self._encode(images, model, invert))

    async def reconstruct(
        self,
        images: npt.ArrayLike,
        mode: Mode = "deterministic",
        seed: int | None = None,
        samples: int | None = None,
        model: str | None = None,
        *,
        invert: Invert = None,
    ) -> Reconstruction:
        """See `Client.reconstruct`."""
        return await self._run(self._reconstruct(images, mode, seed, samples, model, invert))

    async def generate(
        self,
        n: int = 1,
        seed: int | None = None,
        temperature: float = 1.0,
        model: str | None = None,
    ) -> Generation:
        """See `Client.generate`."""
        return await self._run(self._generate(n, seed, temperature, model))

    async def decode(self, z: npt.ArrayLike, model: str | None = None) -> FloatArray:
        """See `Client.decode`."""
        return await self._run(self._decode(z, model))

    async def score(
        self,
        images: npt.ArrayLike,
        model: str | None = None,
        *,
        k: int | None = None,
        seed: int | None = None,
        fpr: float | None = None,
        threshold: float | None = None,
        per_pixel: bool = False,
        invert: Invert = None,
    ) -> Scores:
        """See `Client.score`."""
        return await self._run(
            self._score(images, model, k, seed, fpr, threshold, per_pixel, invert)
        )

    async def models(self) -> list[ModelInfo]:
        """See `Client.models`."""
        return await self._run(self._models())

    async def model(self, name: str) -> ModelInfo:
        """See `Client.model`."""
        return await self._run(self._model(name))

    async def health(self) -> bool:
        """See `Client.health`."""
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        """See `Client.ready`."""
        return await self._probe("/readyz")
