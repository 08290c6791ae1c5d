"""The gRPC transport's own rules (`service.grpc`): the .proto against Triton's (tritonclient's
compiled messages), the committed generated code against a fresh generation, the codec's
refusals, and an app serving gRPC in-process (`create_app(serve_grpc=True)`): keys, capacity,
shutdown, health, metrics and the access log. tritonclient.grpc against `python -m service` is in
tests/test_grpc_triton.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import ServiceApp, begin_shutdown, create_app
from service.errors import BadRequest
from service.settings import Settings

grpc = pytest.importorskip("grpc")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="pip install 'tritonclient[grpc]'")
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.grpc import service_pb2 as triton_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from service.grpc import codec  # noqa: E402
from service.grpc import oip_pb2 as pb  # noqa: E402

from .conftest import digits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import free_port  # noqa: E402

KEY = "grpc-key-" + "x" * 16


# --- the .proto and its generated code ----------------------------------------------------------


def fields(descriptor: Any) -> dict[str, Any]:
    """A message's fields, nested messages included: name -> (number, type, repeated, type name)."""
    found: dict[str, Any] = {}
    for field in descriptor.fields:
        kind = field.message_type.full_name if field.message_type else field.type
        found[field.name] = (
            field.number,
            kind,
            field.is_repeated,
            field.containing_oneof and field.containing_oneof.name,
        )
    for nested in descriptor.nested_types:
        found[nested.name] = fields(nested)
    return found


def test_every_message_and_method_is_tritons() -> None:
    ours, theirs = pb.DESCRIPTOR, triton_pb2.DESCRIPTOR
    assert ours.package == theirs.package == "inference"
    assert ours.message_types_by_name, "no messages found: the test is broken"
    for name, message in ours.message_types_by_name.items():
        assert fields(message) == fields(theirs.message_types_by_name[name]), name
    (service,) = ours.services_by_name.values()
    triton_service = theirs.services_by_name[service.name]
    for method in service.methods:
        other = triton_service.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (
            other.input_type.name,
            other.output_type.name,
        )


def test_the_committed_generated_code_is_what_the_proto_generates() -> None:
    pytest.importorskip("grpc_tools", reason="pip install grpcio-tools (the dev extra)")
    from service.grpc.regenerate import HERE, generate

    for name, text in generate().items():
        assert (HERE / name).read_text() == text, f"service/grpc/{name} is stale: make grpc-code"


# --- the codec ----------------------------------------------------------------------------------


def request_with(**tensor: Any) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="tiny-vae-encoder")
    message.inputs.add(
        name="x",
        datatype=tensor.pop("datatype", "FP32"),
        shape=tensor.pop("shape", [1, 2]),
        **tensor,
    )
    return message


def no_check(request: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            request_with(contents=pb.InferTensorContents(fp64_contents=[0.5, 0.5])),
            "inputs[0] ('x').contents: FP32 values go in fp32_contents, not ['fp64_contents']",
        ),
        (
            request_with(contents=pb.InferTensorContents(fp32_contents=[0.5])),
            "inputs[0] ('x'): shape [1, 2] holds 2 values but contents.fp32_contents has 1",
        ),
        (
            request_with(datatype="FP16", contents=pb.InferTensorContents(fp32_contents=[0, 0])),
            "inputs[0] ('x'): FP16 has no typed contents field; send it in raw_input_contents",
        ),
        (
            request_with(datatype="UINT8", contents=pb.InferTensorContents(uint_contents=[1, 256])),
            "inputs[0] ('x').contents: values out of UINT8's range [0, 255]",
        ),
    ],
)
def test_typed_contents_that_do_not_fit_are_refused_naming_the_tensor(
    message: pb.ModelInferRequest, error: str
) -> None:
    with pytest.raises(BadRequest, match=None) as caught:
        codec.read_request(message, no_check)
    assert str(caught.value) == error


def test_raw_contents_are_read_in_place_and_their_sizes_checked() -> None:
    message = request_with()
    message.raw_input_contents.append(np.array([0.25, 0.75], "<f4").tobytes())
    request, (values,) = codec.read_request(message, no_check)
    assert request.inputs[0].shape == [1, 2] and values.tolist() == [0.25, 0.75]
    message.raw_input_contents[0] = b"\0" * 7
    with pytest.raises(
        BadRequest, match=r"raw_input_contents\[0\] holds 7 bytes, but shape \[1, 2\] of FP32"
    ):
        codec.read_request(message, no_check)
    message.raw_input_contents.append(b"")
    with pytest.raises(BadRequest, match="raw_input_contents: 2 entries for 1 inputs"):
        codec.read_request(message, no_check)


def test_a_parameter_without_a_value_is_refused() -> None:
    message = request_with()
    message.parameters["k"].CopyFrom(pb.InferParameter())
    with pytest.raises(BadRequest, match=r"parameters.k: holds no value"):
        codec.read_request(message, no_check)


# --- an app serving gRPC in-process -------------------------------------------------------------


@pytest.fixture
def served(model_dir: Path) -> Iterator[tuple[TestClient, Any, str]]:
    port = free_port()
    settings = Settings(
        model_dir=model_dir, default_model="tiny-vae", grpc_port=port, max_concurrent_requests=4
    )
    app = create_app(settings, serve_grpc=True)
    with TestClient(app) as http:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        yield http, client, f"127.0.0.1:{port}"
        client.close()


def encoder_input() -> Any:
    x = digits(2)[..., None]
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def health(address: str, service: str = "") -> Any:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service)).status


def test_a_plain_app_opens_no_grpc_port(model_dir: Path) -> None:
    app = create_app(Settings(model_dir=model_dir, grpc_port=free_port()))
    with TestClient(app):
        assert app.state.grpc_server is None


def test_in_process_infer_health_metrics_and_shared_capacity(
    served: tuple[TestClient, Any, str],
) -> None:
    http, client, address = served
    app: ServiceApp = http.app  # type: ignore[assignment]
    assert health(address) == health_pb2.HealthCheckResponse.SERVING
    assert (
        health(address, "inference.GRPCInferenceService") == health_pb2.HealthCheckResponse.SERVING
    )
    result = client.infer("tiny-vae-encoder", [encoder_input()])
    assert result.as_numpy("mu").shape == (2, 2)
    metrics = http.get("/metrics").text
    endpoint = 'endpoint="/inference.GRPCInferenceService/ModelInfer"'
    assert f'vae_requests_total{{{endpoint},model="tiny-vae",status="200"}} 1.0' in metrics
    # REST and gRPC share VAE_MAX_CONCURRENT_REQUESTS: with every slot taken, a call is refused.
    app.service.in_flight = 4
    with pytest.raises(InferenceServerException) as full:
        client.infer("tiny-vae-encoder", [encoder_input()])
    assert full.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "at capacity (4 requests in flight, VAE_MAX_CONCURRENT_REQUESTS)" in full.value.message()
    assert client.is_server_live()  # the probes are never refused
    app.service.in_flight = 0


def test_shutdown_turns_health_not_serving_and_refuses_new_calls(
    served: tuple[TestClient, Any, str],
) -> None:
    http, client, address = served
    app: ServiceApp = http.app  # type: ignore[assignment]
    app.service.settings.shutdown_drain_s = 60  # the server keeps taking calls meanwhile
    begin_shutdown(app)
    assert health(address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(InferenceServerException) as refused:
        client.infer("tiny-vae-encoder", [encoder_input()])
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert "shutting down; retry on another replica" in refused.value.message()
    assert not client.is_server_ready()


def test_keys_in_the_metadata(model_dir: Path) -> None:
    port = free_port()
    settings = Settings(model_dir=model_dir, grpc_port=port, api_keys=KEY)
    with TestClient(create_app(settings, serve_grpc=True)):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready()  # no key needed
        with pytest.raises(InferenceServerException) as missing:
            client.get_model_metadata("tiny-vae-encoder")
        assert missing.value.status() == "StatusCode.UNAUTHENTICATED"
        assert (
            "missing API key: send it in the metadata as `authorization: Bearer"
            in missing.value.message()
        )
        with pytest.raises(InferenceServerException) as wrong:
            client.infer("tiny-vae-encoder", [encoder_input()], headers={"x-api-key": "nope"})
        assert "invalid API key" in wrong.value.message()
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            result = client.infer("tiny-vae-encoder", [encoder_input()], headers=headers)
            assert result.as_numpy("mu").shape == (2, 2)
        client.close()
