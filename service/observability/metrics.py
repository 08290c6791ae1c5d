"""Prometheus metrics (prometheus-client), one set per app.

Metric names (all prefixed `vae_`; docs/deployment.md lists them too):
- `vae_requests_total{endpoint, model, status}`: requests answered.
- `vae_request_duration_seconds{endpoint}`: whole request, from the guard to the last byte.
- `vae_batch_queue_wait_seconds{model, graph}`: time a request's rows waited for their batch.
- `vae_inference_duration_seconds{model, graph}`: one onnxruntime call (a batch).
- `vae_batch_size{model, graph}`: rows per onnxruntime call.
- `vae_requests_in_flight`: requests being served or queued now.
- `vae_model_info{model, version, kind, providers}`: 1 for every loaded model version.

With worker processes (VAE_WORKERS) the supervisor gives each run a folder in
PROMETHEUS_MULTIPROC_DIR, and prometheus-client's multi-process mode keeps every worker's
counters and histograms in files there: whichever worker answers /metrics sums them all, those of
workers that died and were replaced included, so counts never go back. In-flight requests are
summed over the live workers; the model info comes from the answering worker's own registry, as
every worker serves the same versions (reloads are all or none).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# The `*_created` timestamps double the series count and no dashboard here uses them.
disable_created_metrics()

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ModelInfo(Collector):
    """`vae_model_info`: one series per loaded model version, from this process's own registry
    (a collector rather than a gauge: in multi-process mode a gauge's series would be written to
    the shared files and repeated once per worker, and outlive the version it describes)."""

    def __init__(self) -> None:
        self.loaded: dict[str, tuple[str, str, str, str]] = {}

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "vae_model_info",
            "1 for every loaded model version",
            labels=["model", "version", "kind", "providers"],
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for labels in self.loaded.values():
            family.add_metric(labels, 1)
        yield family


@dataclass
class Metrics:
    """One set of metrics per app (tests build many apps in one process); shared by the worker
    processes through PROMETHEUS_MULTIPROC_DIR when it is set."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.shared_dir = os.environ.get(MULTIPROCESS_DIR) or None
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
        self._in_flight = 0  # kept by the guard
        self._in_flight_gauge = Gauge(
            "vae_requests_in_flight",
            "Requests being served or queued",
            registry=r,
            multiprocess_mode="livesum",  # summed over the live workers
        )
        if self.shared_dir is None:  # read when Prometheus scrapes, not written per request
            self._in_flight_gauge.set_function(lambda: self._in_flight)
        self.model_info = ModelInfo()
        r.register(self.model_info)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @in_flight.setter
    def in_flight(self, count: int) -> None:
        self._in_flight = count
        if self.shared_dir is not None:  # the other workers' scrapes read it from the file
            self._in_flight_gauge.set(count)

    def exposition(self) -> bytes:
        """What /metrics answers: this app's metrics, or every worker's summed."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, self.shared_dir)
        every_worker.register(self.model_info)
        return generate_latest(every_worker)

    def count_request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        # labels() takes a lock and builds a key on every call, and this runs for every
        # request: the children are cached here instead.
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

    def model_loaded(self, model: str, version: str, kind: str, providers: Sequence[str]) -> None:
        """`model` now serves `version`: its info series replaces the previous version's."""
        self.model_info.loaded[model] = (model, version, kind, ",".join(providers))

    def model_unloaded(self, model: str) -> None:
        self.model_info.loaded.pop(model, None)


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
