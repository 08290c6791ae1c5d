"""OpenTelemetry tracing (VAE_TRACING=otlp), checked with the real SDK and OTLP/HTTP exporter
against an OTLP receiver run here: the spans it received, decoded with opentelemetry-proto."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from service.app import create_app
from service.models.batching import DynamicBatcher
from service.observability.context import RequestInfo, current_request
from service.settings import Settings
from tests.conftest import digits

ROOT = Path(__file__).resolve().parents[1]
IMAGES = digits(3)
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@dataclass
class Received:
    """One span as the receiver decoded it, with its resource's attributes."""

    span: Any  # opentelemetry.proto.trace.v1.Span
    resource: dict[str, object]

    @property
    def name(self) -> str:
        return str(self.span.name)

    @property
    def attributes(self) -> dict[str, object]:
        return attribute_dict(self.span.attributes)

    @property
    def trace_id(self) -> str:
        return bytes(self.span.trace_id).hex()

    @property
    def span_id(self) -> str:
        return bytes(self.span.span_id).hex()

    @property
    def parent_id(self) -> str:
        return bytes(self.span.parent_span_id).hex()

    @property
    def links(self) -> set[tuple[str, str]]:
        return {(bytes(k.trace_id).hex(), bytes(k.span_id).hex()) for k in self.span.links}


def attribute_dict(pairs: Any) -> dict[str, object]:
    values: dict[str, object] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, kind)
    return values


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP receiver: takes protobuf bodies at /v1/traces, keeps their spans."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.spans: list[Received] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def named(self, name: str) -> list[Received]:
        return [s for s in self.spans if s.name == name]


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.headers["Content-Type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            self.server.paths.append(self.path)
            for resource_spans in request.resource_spans:
                resource = attribute_dict(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend(Received(s, resource) for s in scope_spans.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A running receiver, and the standard OTEL_* variables pointing the service at it."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "vae-under-test")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def traced_settings(model_dir: Path, **overrides: Any) -> Settings:
    return Settings(model_dir=model_dir, default_model="tiny-vae", tracing="otlp", **overrides)


def test_every_request_gets_a_server_span_and_a_child_for_its_onnxruntime_call(
    model_dir: Path, receiver: Receiver
) -> None:
    app = create_app(traced_settings(model_dir))
    written = io.StringIO()
    app.state.service.access_log.stream = written
    with TestClient(app) as client:
        encoded = client.post(
            "/encode", json={"images": IMAGES.tolist()}, headers={"X-Request-ID": "fast-1"}
        )
        assert encoded.status_code == 200
        refused = client.post("/decode", json={"z": [[0.0]]}, headers={"X-Request-ID": "bad-1"})
        assert refused.status_code == 422
        unknown = client.post("/nowhere", json={}, headers={"X-Request-ID": "lost-1"})
        assert unknown.status_code == 404
        assert client.get("/healthz").status_code == 200  # a probe: no span
    # The lifespan's end sent every span still queued: nothing to wait for.
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    by_id = {s.attributes.get("vae.request.id"): s for s in receiver.spans if s.span.kind == 2}
    assert set(by_id) == {"fast-1", "bad-1", "lost-1"}

    request = by_id["fast-1"]
    assert request.name == "POST /encode" and request.span.kind == ProtoSpan.SPAN_KIND_SERVER
    assert request.resource["service.name"] == "vae-under-test"
    attributes = request.attributes
    assert attributes["http.request.method"] == "POST" and attributes["url.path"] == "/encode"
    assert attributes["http.route"] == "/encode" and attributes["http.response.status_code"] == 200
    assert attributes["url.scheme"] == "http" and attributes["server.address"] == "testserver"
    assert attributes["vae.model"] == "tiny-vae" and attributes["vae.batch.size"] == 3
    assert "error.type" not in attributes and request.parent_id == ""
    version, trace_id, span_id, flags = encoded.headers["traceresponse"].split("-")
    assert (version, trace_id, span_id) == ("00", request.trace_id, request.span_id)
    assert int(flags, 16) & 1  # sampled (the SDK also sets W3C level 2's random-id flag)

    (call,) = [s for s in receiver.named("onnxruntime encoder") if s.trace_id == request.trace_id]
    assert call.parent_id == request.span_id and call.span.kind == ProtoSpan.SPAN_KIND_INTERNAL
    assert call.attributes == {
        "vae.batch.size": 3,
        "vae.batch.requests": 1,
        "vae.request.rows": 3,
    }
    assert not call.links  # its call served this request alone: no batch span to link
    assert call.span.start_time_unix_nano >= request.span.start_time_unix_nano
    assert call.span.end_time_unix_nano <= request.span.end_time_unix_nano

    refused_span = by_id["bad-1"].attributes
    assert refused_span["http.response.status_code"] == 422 and "error.type" not in refused_span
    assert "vae.batch.size" not in refused_span
    lost = by_id["lost-1"]  # no route: the span is named after the method alone
    assert lost.name == "POST" and "http.route" not in lost.attributes

    assert f"request_id=fast-1 trace_id={request.trace_id} " in written.getvalue()


def test_the_callers_traceparent_is_the_parent_and_comes_back(
    model_dir: Path, receiver: Receiver
) -> None:
    app = create_app(traced_settings(model_dir, log_format="json"))
    written = io.StringIO()
    app.state.service.access_log.stream = written
    caller = {
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        "tracestate": "vendor=opaque",
    }
    with TestClient(app) as client:
        answer = client.post("/reconstruct", json={"images": IMAGES[:1].tolist()}, headers=caller)
        assert answer.status_code == 200
    (request,) = [s for s in receiver.spans if s.span.kind == ProtoSpan.SPAN_KIND_SERVER]
    assert request.trace_id == CALLER_TRACE and request.parent_id == CALLER_SPAN
    assert request.span.trace_state == "vendor=opaque"
    assert answer.headers["traceresponse"] == f"00-{CALLER_TRACE}-{request.span_id}-01"
    # the caller's flags (no random-id flag: its trace id is not ours to vouch for)
    # reconstruct: the encoder's call, then the decoder's, both children of the request
    calls = [s for s in receiver.spans if s.name.startswith("onnxruntime ")]
    assert sorted(s.name for s in calls) == ["onnxruntime decoder", "onnxruntime encoder"]
    assert {(s.trace_id, s.parent_id) for s in calls} == {(CALLER_TRACE, request.span_id)}
    (line,) = [json.loads(line) for line in written.getvalue().splitlines()]
    assert line["trace_id"] == CALLER_TRACE and len(line["request_id"]) == 32


def test_uploads_answered_by_fastapi_and_refusals_of_the_guard_are_traced_once(
    model_dir: Path, receiver: Receiver
) -> None:
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray((IMAGES[0] * 255).astype(np.uint8)).save(png, format="PNG")
    app = create_app(traced_settings(model_dir, api_keys="k1"))
    with TestClient(app) as client:
        upload = client.post(
            "/encode",
            files={"images": ("d.png", png.getvalue(), "image/png")},
            headers={"X-API-Key": "k1", "X-Request-ID": "upload-1"},
        )
        assert upload.status_code == 200
        denied = client.post("/encode", json={"images": []}, headers={"X-Request-ID": "nokey-1"})
        assert denied.status_code == 401
    servers = [s for s in receiver.spans if s.span.kind == ProtoSpan.SPAN_KIND_SERVER]
    assert sorted(s.attributes["vae.request.id"] for s in servers) == ["nokey-1", "upload-1"]
    upload_span = next(s for s in servers if s.attributes["vae.request.id"] == "upload-1")
    assert upload_span.attributes["vae.batch.size"] == 1
    assert [s.parent_id for s in receiver.named("onnxruntime encoder")] == [upload_span.span_id]
    denied_span = next(s for s in servers if s.attributes["vae.request.id"] == "nokey-1")
    assert denied_span.attributes["http.response.status_code"] == 401


def test_an_open_inference_protocol_request_is_traced_with_its_route(
    model_dir: Path, receiver: Receiver
) -> None:
    request = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, 28, 28],
                "datatype": "FP32",
                "data": IMAGES[:2].ravel().tolist(),
            }
        ]
    }
    with TestClient(create_app(traced_settings(model_dir))) as client:
        answer = client.post("/v2/models/tiny-vae-encoder/infer", json=request)
        assert answer.status_code == 200, answer.text
    (span,) = [s for s in receiver.spans if s.span.kind == ProtoSpan.SPAN_KIND_SERVER]
    assert span.name == "POST /v2/models/{model}/infer"
    assert span.attributes["url.path"] == "/v2/models/tiny-vae-encoder/infer"
    assert span.attributes["http.response.status_code"] == 200
    (call,) = receiver.named("onnxruntime encoder")
    assert call.parent_id == span.span_id and call.attributes["vae.request.rows"] == 2


def test_a_5xx_marks_the_span_failed(model_dir: Path, receiver: Receiver) -> None:
    app = create_app(traced_settings(model_dir))

    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    with TestClient(app) as client:
        registry = app.state.service.registry
        registry.models["tiny-vae"].encode_batched = broken  # type: ignore[method-assign]
        assert client.post("/encode", json={"images": IMAGES.tolist()}).status_code == 500
    (request,) = [s for s in receiver.spans if s.span.kind == ProtoSpan.SPAN_KIND_SERVER]
    assert request.attributes["http.response.status_code"] == 500
    assert request.attributes["error.type"] == "500"
    assert request.span.status.code == 2  # STATUS_CODE_ERROR


def test_a_trace_the_caller_did_not_sample_exports_nothing(
    model_dir: Path, receiver: Receiver
) -> None:
    app = create_app(traced_settings(model_dir))
    with TestClient(app) as client:
        answer = client.post(
            "/encode",
            json={"images": IMAGES.tolist()},
            headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"},
        )
    assert answer.status_code == 200 and receiver.spans == []
    assert answer.headers["traceresponse"].startswith(f"00-{CALLER_TRACE}-")
    assert answer.headers["traceresponse"].endswith("-00")


def test_requests_sharing_a_call_each_get_its_span_linked_to_the_call(
    receiver: Receiver,
) -> None:
    from service.observability.tracing import Tracing

    tracing = Tracing.from_environment()
    calls: list[int] = []

    def double(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        calls.append(len(rows))
        return (rows * 2,)

    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = DynamicBatcher(double, 64, 0.0, 16, executor, model="m", graph="encoder")
        infos = [RequestInfo(f"r{i}") for i in range(3)]
        for info in infos:
            info.trace = tracing.request("POST /encode", {}, {}, info.request_id)

        async def one(info: RequestInfo, n: int) -> np.ndarray:
            current_request.set(info)  # as the guard does, in the request's own task
            return (await batcher.run(np.ones((n, 2), dtype=np.float32)))[0]

        async def three() -> list[np.ndarray]:
            results = await asyncio.gather(*(one(info, i + 1) for i, info in enumerate(infos)))
            await batcher.close()
            return results

        results = asyncio.run(three())
    assert calls == [6] and [len(r) for r in results] == [1, 2, 3]  # one call for all three
    for info in infos:
        assert info.trace is not None
        info.trace.end({})
    tracing.shutdown()

    requests = {s.attributes["vae.request.id"]: s for s in receiver.named("POST /encode")}
    (batch,) = receiver.named("onnxruntime encoder batch")
    assert batch.parent_id == "" and batch.trace_id not in {s.trace_id for s in requests.values()}
    assert batch.links == {(s.trace_id, s.span_id) for s in requests.values()}
    assert batch.attributes == {"vae.batch.size": 6, "vae.batch.requests": 3, "vae.model": "m"}
    children = receiver.named("onnxruntime encoder")
    assert len(children) == 3
    for i, info in enumerate(infos):
        parent = requests[info.request_id]
        (child,) = [c for c in children if c.trace_id == parent.trace_id]
        assert child.parent_id == parent.span_id
        assert child.links == {(batch.trace_id, batch.span_id)}
        assert child.attributes["vae.request.rows"] == i + 1
        assert child.attributes["vae.batch.size"] == 6
        assert child.attributes["vae.batch.requests"] == 3


SCRIPT_OFF = """
import sys
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from service.app import create_app
from service.settings import Settings
app = create_app(Settings(model_dir=sys.argv[1], default_model="tiny-vae"))
with TestClient(app) as client:
    answer = client.post("/encode", json={"images": [[0.0] * 784]})
    assert answer.status_code == 200 and "traceresponse" not in answer.headers, answer.headers
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exp")))
print(loaded, "service.observability.tracing" in sys.modules)
"""


def test_tracing_off_imports_no_sdk(model_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT_OFF, str(model_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "", "PYTHONPATH": str(ROOT), "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] False"


SCRIPT_MISSING = """
import sys
for name in ("opentelemetry.sdk", "opentelemetry.exporter"):
    sys.modules[name] = None  # as if the `tracing` extra were not installed
from service.__main__ import main
sys.exit(main(["--model-dir", sys.argv[1]]))
"""


def test_otlp_without_the_extra_refuses_to_start_and_names_it(model_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT_MISSING, str(model_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "", "PYTHONPATH": str(ROOT), "VAE_TRACING": "otlp"},
        timeout=120,
    )
    assert done.returncode == 2
    assert "error: VAE_TRACING:" in done.stderr
    assert "pip install 'vae-serving[tracing]'" in done.stderr
    assert "opentelemetry.sdk.trace" in done.stderr


def test_a_grpc_call_is_traced_with_the_rpc_conventions(
    model_dir: Path, receiver: Receiver
) -> None:
    """tritonclient.grpc's own messages and stub against an app serving gRPC in-process: the
    caller's traceparent in the metadata is the parent, the onnxruntime call a child, the
    trace comes back in the trailing metadata; a refusal is the caller's error, a probe no span."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tritonclient.grpc", reason="pip install 'tritonclient[grpc]'")
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from reliability import free_port

    port = free_port()
    app = create_app(traced_settings(model_dir, grpc_port=port), serve_grpc=True)
    written = io.StringIO()
    app.state.service.access_log.stream = written
    message = pb.ModelInferRequest(model_name="tiny-vae-encoder")
    message.inputs.add(name="x", datatype="FP32", shape=[2, 28, 28, 1])
    message.raw_input_contents.append(IMAGES[:2].astype(np.float32).tobytes())
    caller = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"), ("x-request-id", "rpc-1"))
    with TestClient(app), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ModelInfer.with_call(message, metadata=caller)
        assert [o.name for o in answer.outputs] == ["mu", "logvar"]
        trailing = dict(call.trailing_metadata())
        unknown = pb.ModelInferRequest(model_name="nowhere")
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(unknown, metadata=(("x-request-id", "rpc-404"),))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.ServerLive(pb.ServerLiveRequest()).live  # a probe: no span
    servers = {
        s.attributes["vae.request.id"]: s
        for s in receiver.spans
        if s.span.kind == ProtoSpan.SPAN_KIND_SERVER
    }
    assert set(servers) == {"rpc-1", "rpc-404"}
    span = servers["rpc-1"]
    assert span.name == "inference.GRPCInferenceService/ModelInfer"
    assert span.trace_id == CALLER_TRACE and span.parent_id == CALLER_SPAN
    assert span.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": 0,
        "vae.request.id": "rpc-1",
        "vae.model": "tiny-vae",
        "vae.batch.size": 2,
    }
    assert trailing["traceresponse"] == f"00-{CALLER_TRACE}-{span.span_id}-01"
    (child,) = receiver.named("onnxruntime encoder")
    assert child.parent_id == span.span_id and child.attributes["vae.request.rows"] == 2
    missing = servers["rpc-404"]  # the caller's error: the span is not failed
    assert missing.attributes["rpc.grpc.status_code"] == 5
    assert "error.type" not in missing.attributes
    assert missing.span.status.code == 0
    assert f"request_id=rpc-1 trace_id={CALLER_TRACE} " in written.getvalue()


def test_a_failed_grpc_call_marks_its_span_failed(model_dir: Path, receiver: Receiver) -> None:
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="pip install 'tritonclient[grpc]'")
    from tritonclient.utils import InferenceServerException

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from reliability import free_port

    port = free_port()
    app = create_app(traced_settings(model_dir, grpc_port=port), serve_grpc=True)

    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    x = IMAGES[:1, ..., None].astype(np.float32)
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with TestClient(app):
        registry = app.state.service.registry
        registry.models["tiny-vae"].encode_batched = broken  # type: ignore[method-assign]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException) as failed:
            client.infer("tiny-vae-encoder", [tensor])
        client.close()
    assert failed.value.status() == "StatusCode.INTERNAL"
    (span,) = [s for s in receiver.spans if s.span.kind == ProtoSpan.SPAN_KIND_SERVER]
    assert span.attributes["rpc.grpc.status_code"] == 13
    assert span.attributes["error.type"] == "INTERNAL" and span.span.status.code == 2
