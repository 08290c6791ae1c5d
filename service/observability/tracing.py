"""OpenTelemetry traces (VAE_TRACING=otlp): a span for every request, and in each request's trace
a child span for the onnxruntime call its rows ran in.

Imported only when tracing is on (the app's lifespan), so that a service with tracing off
imports no OpenTelemetry SDK and does no work for it per request: the guard and the batcher only
test whether a request carries a `RequestTrace`.

The SDK is configured from the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`..._TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_PROPAGATORS`. Spans leave
through the SDK's batch processor, in its own thread: a request never waits on the collector.

A transport opens a request's span with one call, `Tracing.request` (or `Tracing.http_request`
for an ASGI scope, `Tracing.grpc_call` for a gRPC call), keeps the `RequestTrace` on the
request's `RequestInfo` (the batcher finds it there) and ends it with `RequestTrace.end` (or
`end_http`, `end_grpc`).

Batching puts several requests in one onnxruntime call. As Triton does for its compute span,
each request's trace gets a span of its own for that call (its start and end are the call's), so
every trace is whole by itself; when requests shared the call, one more span stands for the call
itself, linked to every request's span, and each request's call span links to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, StatusCode, Tracer, set_span_in_context
from opentelemetry.util.types import AttributeValue
from starlette.types import Scope

from service import __version__

DEFAULT_SERVICE_NAME = "vae-serving"
# HTTP semantic conventions: a method outside this set is `_OTHER`, and its span is named `HTTP`.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
CLIENT_GONE = 499  # the guard's status for a client that hung up before it was answered
# The gRPC codes that are the server's fault (RPC semantic conventions, server spans): UNKNOWN,
# DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS; the others are the caller's.
GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})


@dataclass(slots=True)
class RequestTrace:
    """One request's span, and what its children and its answer need."""

    tracing: Tracing
    span: Span
    context: Context  # the request span's: the parent of its onnxruntime call spans

    @property
    def recording(self) -> bool:
        """False when the sampler dropped this trace: its children would be dropped too."""
        return self.span.is_recording()

    @property
    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"

    def traceresponse(self) -> bytes:
        """The `traceresponse` answer header (W3C Trace Context Level 2): the trace and the
        service's span in it, so a caller can find the trace of its request."""
        context = self.span.get_span_context()
        flags = int(context.trace_flags)
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}".encode()

    def end(self, attributes: Mapping[str, AttributeValue], error_type: str | None = None) -> None:
        """Ends the span with `attributes`; `error_type` (an `error.type` value) marks it failed."""
        span = self.span
        if span.is_recording():
            span.set_attributes(attributes)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(StatusCode.ERROR)
        span.end()

    def end_http(self, status: int, model: str, batch_size: int) -> None:
        """Ends an HTTP request's span: a 5xx is the service's error, a 4xx the client's (left
        unset, as the HTTP conventions say for a server); a client that hung up got no status."""
        attributes: dict[str, AttributeValue] = {}
        if status == CLIENT_GONE:
            attributes["vae.client_gone"] = True
        else:
            attributes["http.response.status_code"] = status
        if model:
            attributes["vae.model"] = model
        if batch_size:
            attributes["vae.batch.size"] = batch_size
        self.end(attributes, str(status) if status >= 500 and status != CLIENT_GONE else None)

    def end_grpc(self, code: int, code_name: str, model: str, batch_size: int) -> None:
        """Ends a gRPC call's span with its status code (`rpc.grpc.status_code`): failed where
        the code is the server's error, `error.type` then its name (`INTERNAL`)."""
        attributes: dict[str, AttributeValue] = {"rpc.grpc.status_code": code}
        if model:
            attributes["vae.model"] = model
        if batch_size:
            attributes["vae.batch.size"] = batch_size
        self.end(attributes, code_name if code in GRPC_SERVER_ERRORS else None)


class CallSpans:
    """The spans of one onnxruntime call: one per request that shared it (and traces), and the
    call's own when several requests shared it."""

    __slots__ = ("spans",)

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans

    def end(self, error: BaseException | None = None) -> None:
        for span in self.spans:
            if error is not None:
                span.record_exception(error)
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(StatusCode.ERROR)
            span.end()


class Tracing:
    """The service's tracer: request spans and onnxruntime call spans, exported by `provider`."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("service", __version__)
        self.propagator = propagate.get_global_textmap()  # OTEL_PROPAGATORS; W3C by default
        # The request headers the propagator reads (traceparent, tracestate, baggage).
        self.fields = tuple(sorted(self.propagator.fields))

    @classmethod
    def from_environment(cls) -> Tracing:
        """Spans sent as OTLP over HTTP (protobuf) where the OTEL_* variables say."""
        attributes: dict[str, AttributeValue] = {"service.version": __version__}
        named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        if not named:
            attributes["service.name"] = DEFAULT_SERVICE_NAME
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def request(
        self,
        name: str,
        carrier: Mapping[str, str],
        attributes: Mapping[str, AttributeValue],
        request_id: str,
    ) -> RequestTrace:
        """Opens a request's server span, the child of the caller's span when `carrier` (its
        headers or gRPC metadata, lower-case keys) holds a `traceparent`."""
        parent = self.propagator.extract(carrier) if carrier else None
        span = self.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={**attributes, "vae.request.id": request_id},
        )
        return RequestTrace(self, span, set_span_in_context(span))

    def http_request(
        self, scope: Scope, headers: Mapping[bytes, bytes], route: str | None, request_id: str
    ) -> RequestTrace:
        """`request` for an ASGI HTTP request, named and described as OpenTelemetry's HTTP
        semantic conventions say; `route` is its low-cardinality path template, if known."""
        method = scope["method"]
        known = method in KNOWN_METHODS
        attributes: dict[str, AttributeValue] = {
            "http.request.method": method if known else "_OTHER",
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if not known:
            attributes["http.request.method_original"] = method
        if route is not None:
            attributes["http.route"] = route
        host, _, port = headers.get(b"host", b"").decode("latin-1").rpartition(":")
        if host and port.isdigit():
            attributes["server.address"], attributes["server.port"] = host, int(port)
        elif port:
            attributes["server.address"] = port
        client = scope.get("client")
        if client:  # (client.port is opt-in in the conventions: every attribute costs)
            attributes["client.address"] = client[0]
        agent = headers.get(b"user-agent")
        if agent:
            attributes["user_agent.original"] = agent.decode("latin-1")
        carrier = {
            field: headers[key].decode("latin-1")
            for field in self.fields
            if (key := field.encode()) in headers
        }
        name = method if known else "HTTP"
        return self.request(f"{name} {route}" if route else name, carrier, attributes, request_id)

    def grpc_call(
        self, service: str, method: str, metadata: Mapping[bytes, bytes], request_id: str
    ) -> RequestTrace:
        """`request` for a gRPC call (its metadata's keys are lower-case already), named
        `service/method` and described as OpenTelemetry's RPC semantic conventions say."""
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
        }
        carrier = {
            field: metadata[key].decode("latin-1")
            for field in self.fields
            if (key := field.encode()) in metadata
        }
        return self.request(f"{service}/{method}", carrier, attributes, request_id)

    def onnxruntime_call(
        self,
        traces: Sequence[tuple[RequestTrace, int]],
        requests: int,
        model: str,
        graph: str,
        rows: int,
        call_rows: int,
    ) -> CallSpans:
        """The spans of an onnxruntime call that is starting now for `requests` requests:
        `traces` are those whose traces are sampled, each with its own rows; `rows` all the
        rows, `call_rows` the most in one call (a request larger than VAE_MAX_BATCH_SIZE runs in
        several calls)."""
        # Few attributes: each costs the request time, and the export more. The model is on the
        # request's span, the graph in the name; rows only where they differ from the size.
        shared: dict[str, AttributeValue] = {
            "vae.batch.size": call_rows,
            "vae.batch.requests": requests,
        }
        if rows != call_rows:
            shared["vae.batch.rows"] = rows
        name = f"onnxruntime {graph}"
        spans: list[Span] = []
        links: list[Link] = []
        if requests > 1:  # the call itself, a trace of its own linked to each request
            call = self.tracer.start_span(
                f"{name} batch",
                context=Context(),  # a new trace, not the first request's
                links=[Link(trace.span.get_span_context()) for trace, _ in traces],
                attributes={**shared, "vae.model": model},
            )
            spans.append(call)
            links.append(Link(call.get_span_context()))
        for trace, own_rows in traces:
            spans.append(
                self.tracer.start_span(
                    name,
                    context=trace.context,
                    links=links,
                    attributes={**shared, "vae.request.rows": own_rows},
                )
            )
        return CallSpans(spans)

    def shutdown(self) -> None:
        """Sends the spans still queued (within OTEL_BSP_EXPORT_TIMEOUT), then stops."""
        self.provider.shutdown()
