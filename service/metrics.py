"""Prometheus metrics (prometheus-client), the per-request context they are labelled from, and
the structured log line written for every request.

Metric names (all prefixed `vae_`; the README lists them too):
- `vae_requests_total{endpoint, model, status}`: requests answered.
- `vae_request_duration_seconds{endpoint}`: whole request, from the guard to the last byte.
- `vae_batch_queue_wait_seconds{model, graph}`: time a request's rows waited for their batch.
- `vae_inference_duration_seconds{model, graph}`: one onnxruntime call (a batch).
- `vae_batch_size{model, graph}`: rows per onnxruntime call.
- `vae_requests_in_flight`: requests being served or queued now.
- `vae_model_info{model, version, kind, providers}`: 1 for every loaded model version.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

if TYPE_CHECKING:
    from service.runtime import ModelRuntime

# The `*_created` timestamps double the series count and no dashboard here uses them.
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Paths become bounded labels: a model name or a typo in the URL must not create a time series.
ENDPOINTS = [
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "/v2/models/{model}/infer"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$"), "/v2/models/{model}/ready"),
    (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?$"), "/v2/models/{model}"),
    (re.compile(r"^/models/[^/]+/reload$"), "/models/{name}/reload"),
    (re.compile(r"^/models/reload$"), "/models/reload"),
    (re.compile(r"^/models/[^/]+/latent-map$"), "/models/{name}/latent-map"),
    (re.compile(r"^/models/[^/]+$"), "/models/{name}"),
]
FIXED_ENDPOINTS = frozenset(
    {"/encode", "/reconstruct", "/generate", "/decode", "/models", "/v2", "/metrics"}
)


def endpoint_label(path: str) -> str:
    if path in FIXED_ENDPOINTS:
        return path
    for pattern, label in ENDPOINTS:
        if pattern.match(path):
            return label
    return "other"


@dataclass
class RequestInfo:
    """What a request's handlers learn that its log line and metrics need."""

    request_id: str
    model: str = ""
    batch_size: int = 0  # rows of the largest onnxruntime call this request's rows ran in


# Set by the guard for every request; the handlers fill in the model, the batcher the batch size.
current_request: ContextVar[RequestInfo | None] = ContextVar("current_request", default=None)


def note_model(name: str) -> None:
    info = current_request.get()
    if info is not None:
        info.model = name


@dataclass
class Metrics:
    """One set of metrics per app (tests build many apps in one process)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self._request_counters: dict[tuple[str, str, int], Any] = {}
        self._request_histograms: dict[str, Any] = {}
        self.requests = Counter(
            "vae_requests", "Requests answered", ["endpoint", "model", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "vae_request_duration_seconds",
            "Whole request, from arrival to the last byte of the answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "vae_batch_queue_wait_seconds",
            "Time a request's rows waited for their onnxruntime call",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "vae_inference_duration_seconds",
            "One onnxruntime call (a whole batch)",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vae_batch_size",
            "Rows (images or latent vectors) per onnxruntime call",
            ["model", "graph"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = 0  # kept by the guard; read when Prometheus scrapes
        Gauge("vae_requests_in_flight", "Requests being served or queued", registry=r).set_function(
            lambda: self.in_flight
        )
        self.model_info = Gauge(
            "vae_model_info",
            "1 for every loaded model version",
            ["model", "version", "kind", "providers"],
            registry=r,
        )

    def count_request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        # labels() takes a lock and builds a key on every call: about 3 us, a tenth of what
        # the whole guard may cost per request. The children are cached here instead.
        key = (endpoint, model, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(
                endpoint, model, str(status)
            )
        counter.inc()
        histogram = self._request_histograms.get(endpoint)
        if histogram is None:
            histogram = self._request_histograms[endpoint] = self.request_seconds.labels(endpoint)
        histogram.observe(seconds)

    def batch_observer(self, model: str, graph: str) -> BatchObserver:
        return BatchObserver(
            self.queue_seconds.labels(model, graph),
            self.inference_seconds.labels(model, graph),
            self.batch_size.labels(model, graph),
        )

    def describe_model(self, runtime: ModelRuntime, previous: ModelRuntime | None = None) -> None:
        if previous is not None:
            self.model_info.remove(*self._info_labels(previous))
        self.model_info.labels(*self._info_labels(runtime)).set(1)

    def forget_model(self, runtime: ModelRuntime) -> None:
        """A model no longer served: its version leaves `vae_model_info`."""
        self.model_info.remove(*self._info_labels(runtime))

    @staticmethod
    def _info_labels(runtime: ModelRuntime) -> tuple[str, str, str, str]:
        return (
            runtime.name,
            runtime.manifest.version,
            runtime.manifest.kind,
            ",".join(runtime.providers),
        )


@dataclass
class BatchObserver:
    """Records one graph's onnxruntime calls and the queue wait of each request's rows."""

    queue_seconds: Any
    inference_seconds: Any
    batch_size: Any

    def call(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.inference_seconds.observe(seconds)

    def waited(self, seconds: float) -> None:
        self.queue_seconds.observe(seconds)


class AccessLog:
    """One line per request (text or JSON, like the other logs), collected and written in
    batches: through `logging` each line cost about 45 us here (record, handler lock, a write
    per line), 18 % of the service's throughput for one-image requests; this costs about 3 us.
    Written when 256 lines are waiting, by the app every 0.25 s, and at shutdown."""

    def __init__(self, log_format: str, stream: TextIO | None = None) -> None:
        self.json = log_format == "json"
        self.stream = stream
        self.pending: list[str] = []
        self._second = -1
        self._stamp = ""

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            pattern = "%Y-%m-%dT%H:%M:%S" if self.json else "%Y-%m-%d %H:%M:%S"
            self._stamp = time.strftime(
                pattern, time.gmtime(second) if self.json else time.localtime(second)
            )
        millis = int((now - second) * 1000)
        return f"{self._stamp}.{millis:03d}Z" if self.json else f"{self._stamp},{millis:03d}"

    def write(self, message: str, fields: dict[str, Any]) -> None:
        stamp = self._time(time.time())
        if self.json:
            entry = {"time": stamp, "level": "info", "logger": "service.access", "message": message}
            line = orjson.dumps({**entry, **fields}).decode()
        else:
            # A path is percent-decoded: `%0A` would forge a line. JSON escapes it, text quotes it.
            if not message.isprintable():
                message = ascii(message)
            extras = " ".join(
                f"{k}={v if not isinstance(v, str) or v.isprintable() else ascii(v)}"
                for k, v in fields.items()
                if v is not None
            )
            line = f"{stamp} INFO service.access: {message} {extras}"
        self.pending.append(line)
        if len(self.pending) >= 256:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            stream = self.stream or sys.stderr
            stream.write("\n".join(self.pending) + "\n")
            stream.flush()
            self.pending.clear()


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry).decode()
        except TypeError:  # a field orjson cannot write: fall back to str()
            return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str) -> None:
    """The service's and uvicorn's loggers, as text or one JSON object per line."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
