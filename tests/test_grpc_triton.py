"""The Open Inference Protocol over gRPC as NVIDIA's own client speaks it: `tritonclient.grpc`
against `python -m service` on free ports (the tiny models of `model_dir`, copied: the repository
calls change the folder): health, metadata, inference on the encoder, decoder and scorer (raw and
typed contents), requested outputs, errors, the model repository calls, the standard health
service, the body limit; then hostile requests, one row each, sent with tritonclient's own
messages and stub: the protocol's status and a message naming the tensor, never INTERNAL."""

from __future__ import annotations

import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import digits
from .test_oip_repository import add_copy

grpc = pytest.importorskip("grpc")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="pip install 'tritonclient[grpc]'")
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import Server, free_port, serve  # noqa: E402

BODY_LIMIT = 4 * 2**20


@pytest.fixture(scope="module")
def models(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("grpc") / "models"
    shutil.copytree(model_dir, folder)
    return folder


@pytest.fixture(scope="module")
def running(models: Path) -> Iterator[tuple[Server, str]]:
    port = free_port()
    env = {
        "VAE_DEFAULT_MODEL": "tiny-vae",
        "VAE_GRPC_PORT": str(port),
        "VAE_RELOAD_MIN_INTERVAL_S": "0",
        "VAE_MAX_BODY_BYTES": str(BODY_LIMIT),
    }
    with serve(env, model_dir=models) as server:
        yield server, f"127.0.0.1:{port}"


@pytest.fixture
def triton(running: tuple[Server, str]) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(running[1])
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(running: tuple[Server, str]) -> Iterator[Any]:
    with grpc.insecure_channel(running[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def images(n: int = 3) -> np.ndarray:
    return digits(n)[..., None]  # (n, 28, 28, 1) float32 in [0, 1]


def infer_input(name: str, array: np.ndarray, datatype: str = "FP32") -> Any:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def wanted(*names: str) -> list[Any]:
    return [grpcclient.InferRequestedOutput(name) for name in names]


# --- the client ---------------------------------------------------------------------------------


def test_health_and_metadata(triton: Any, running: tuple[Server, str]) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tiny-vae-encoder")
    assert triton.get_server_metadata().name == "vae-serving"
    metadata = triton.get_model_metadata("tiny-vae-encoder", as_json=True)
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": ["-1", "28", "28", "1"]}
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["mu", "logvar"]
    assert triton.get_model_metadata("tiny-ae-decoder", model_version="1").versions == ["1"]
    with grpc.insecure_channel(running[1]) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert check.status == health_pb2.HealthCheckResponse.SERVING


def test_encoder_raw_gives_the_service_own_answer(triton: Any, running: tuple[Server, str]) -> None:
    x = images()
    own = httpx.post(f"{running[0].url}/encode", json={"images": x[..., 0].tolist()}).json()
    result = triton.infer("tiny-vae-encoder", [infer_input("x", x)], request_id="req-7")
    response = result.get_response()
    assert response.id == "req-7" and response.model_name == "tiny-vae-encoder"
    assert len(response.raw_output_contents) == 2  # raw in, raw out (as Triton answers)
    for name in ("mu", "logvar"):
        array = result.as_numpy(name)
        assert array.dtype == np.float32 and array.shape == (3, 2)
        np.testing.assert_allclose(array, own[name], rtol=0, atol=1e-6)


def test_typed_contents_in_and_out(stub: Any, triton: Any) -> None:
    x = images(2)
    request = pb.ModelInferRequest(model_name="tiny-vae-encoder", id="typed")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.outputs.add(name="logvar")
    response = stub.ModelInfer(request)
    assert not response.raw_output_contents and response.id == "typed"
    (output,) = response.outputs
    assert output.name == "logvar" and list(output.shape) == [2, 2]
    raw = triton.infer("tiny-vae-encoder", [infer_input("x", x)]).as_numpy("logvar")
    np.testing.assert_allclose(
        np.array(output.contents.fp32_contents).reshape(2, 2), raw, atol=1e-6
    )
    pixels = pb.ModelInferRequest(model_name="tiny-vae-encoder")
    uint8 = pixels.inputs.add(name="x", datatype="UINT8", shape=list(x.shape))
    uint8.contents.uint_contents.extend(np.round(x * 255).astype(int).ravel().tolist())
    assert len(stub.ModelInfer(pixels).outputs[0].contents.fp32_contents) == 4


def test_requested_outputs_in_their_order(triton: Any) -> None:
    x = [infer_input("x", images(2))]
    result = triton.infer("tiny-vae-encoder", x, outputs=wanted("logvar", "mu"))
    assert [o.name for o in result.get_response().outputs] == ["logvar", "mu"]
    only = triton.infer("tiny-vae-encoder", x, outputs=wanted("logvar"))
    assert only.as_numpy("mu") is None and only.as_numpy("logvar").shape == (2, 2)


def test_decoder_and_fp16(triton: Any, running: tuple[Server, str]) -> None:
    z = np.array([[0.0, 0.5, -0.5, 1.0], [1.0, 0.0, 0.0, -1.0]], np.float32)
    decoded = triton.infer("tiny-ae-decoder", [infer_input("z", z)]).as_numpy("x_mean")
    assert decoded.shape == (2, 28, 28, 1) and decoded.dtype == np.float32
    own = httpx.post(f"{running[0].url}/decode", json={"model": "tiny-ae", "z": z.tolist()}).json()
    np.testing.assert_allclose(decoded[..., 0], own["images"], rtol=0, atol=1e-6)
    half = triton.infer("tiny-ae-decoder", [infer_input("z", z.astype(np.float16), "FP16")])
    np.testing.assert_allclose(half.as_numpy("x_mean"), decoded, atol=1e-2)


def test_scorer_fp64_and_bool_outputs_and_parameters(
    triton: Any, running: tuple[Server, str]
) -> None:
    x = images(3)
    parameters = {"seed": 1, "threshold": 0.05, "k": 8}
    result = triton.infer(
        "tiny-vae-scorer",
        [infer_input("images", x)],
        outputs=wanted("score", "is_outlier", "nll"),
        parameters=parameters,
    )
    score, outlier, nll = (result.as_numpy(n) for n in ("score", "is_outlier", "nll"))
    assert score.dtype == np.float64 and nll.dtype == np.float64 and outlier.dtype == np.bool_
    assert score.shape == outlier.shape == nll.shape == (3,)
    own = httpx.post(
        f"{running[0].url}/score", json={"images": x[..., 0].tolist(), **parameters}
    ).json()
    np.testing.assert_allclose(score, own["score"], rtol=1e-6)
    np.testing.assert_array_equal(outlier, own["is_outlier"])
    answered = result.get_response().parameters
    assert answered["threshold"].double_param == 0.05 and answered["k"].int64_param == 8


@pytest.mark.parametrize(
    ("model", "version", "tensor", "status", "message"),
    [
        ("nope-encoder", "", ("x", "FP32"), "NOT_FOUND", "unknown model 'nope-encoder'"),
        ("tiny-vae-encoder", "7", ("x", "FP32"), "NOT_FOUND", "has version '1', not '7'"),
        ("tiny-vae-encoder", "", ("z", "FP32"), "INVALID_ARGUMENT", "one tensor named 'x'"),
        (
            "tiny-vae-encoder",
            "",
            ("x", "INT32"),
            "INVALID_ARGUMENT",
            "'INT32' is not accepted for x",
        ),
    ],
)
def test_errors_surface_as_the_client_exception(
    triton: Any, model: str, version: str, tensor: tuple[str, str], status: str, message: str
) -> None:
    name, datatype = tensor
    x = images(1).astype(np.int32 if datatype == "INT32" else np.float32)
    with pytest.raises(InferenceServerException) as caught:
        triton.infer(model, [infer_input(name, x, datatype)], model_version=version)
    assert caught.value.status() == f"StatusCode.{status}" and message in caught.value.message()


def test_a_message_over_the_body_limit_is_resource_exhausted(triton: Any) -> None:
    x = np.zeros((BODY_LIMIT // (784 * 4) + 1, 28, 28, 1), np.float32)
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("tiny-vae-encoder", [infer_input("x", x)])
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert str(BODY_LIMIT) in caught.value.message()
    assert (
        triton.infer("tiny-vae-encoder", [infer_input("x", images(1))]).as_numpy("mu") is not None
    )


def test_the_documented_example_runs(
    running: tuple[Server, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/api.md's tritonclient.grpc example, on the tiny models (latent 2, uncalibrated)."""
    page = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    (example,) = [block for block in blocks if "tritonclient.grpc" in block]
    code = example.replace("localhost:8081", running[1]).replace("mnist-vae", "tiny-vae")
    exec(code.replace('{"seed": 1}', '{"seed": 1, "threshold": 0.05}'), {})
    assert capsys.readouterr().out.splitlines() == [
        "(8, 2)",
        "(8,) float64 bool",
        "['tiny-ae', 'tiny-vae']",
    ]


# --- the model repository -----------------------------------------------------------------------


def test_repository_index_load_and_unload(triton: Any, models: Path) -> None:
    index = triton.get_model_repository_index(as_json=True)["models"]
    assert {m["name"]: m["state"] for m in index} == {"tiny-ae": "READY", "tiny-vae": "READY"}
    add_copy(models, "tiny-ae", "tiny-ae-copy")
    try:
        entry = next(
            m for m in triton.get_model_repository_index().models if m.name == "tiny-ae-copy"
        )
        assert entry.state == "UNAVAILABLE" and "not loaded" in entry.reason
        triton.load_model("tiny-ae-copy")
        assert triton.is_model_ready("tiny-ae-copy-encoder")
        z = np.zeros((1, 4), np.float32)
        assert (
            triton.infer("tiny-ae-copy-decoder", [infer_input("z", z)]).as_numpy("x_mean")
            is not None
        )
        triton.unload_model("tiny-ae-copy-encoder")  # a protocol model's name means its model
        with pytest.raises(InferenceServerException, match="unknown model 'tiny-ae-copy-encoder'"):
            triton.is_model_ready("tiny-ae-copy-encoder")
    finally:
        shutil.rmtree(models / "tiny-ae-copy")


def test_a_broken_model_is_refused_and_the_old_one_keeps_serving(triton: Any, models: Path) -> None:
    encoder = models / "tiny-vae" / "encoder.onnx"
    original = encoder.read_bytes()
    triton.load_model("tiny-vae")  # loaded: a reload
    encoder.write_bytes(b"not a graph")
    try:
        with pytest.raises(InferenceServerException) as refused:
            triton.load_model("tiny-vae")
        assert refused.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert "the previous version keeps serving" in refused.value.message()
        assert "encoder.onnx" in refused.value.message()
        assert (
            triton.infer("tiny-vae-encoder", [infer_input("x", images(1))]).as_numpy("mu")
            is not None
        )
    finally:
        encoder.write_bytes(original)


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (lambda t: t.load_model("nope"), "NOT_FOUND", "holds a model named 'nope'"),
        (lambda t: t.unload_model("nope"), "NOT_FOUND", "model 'nope' is not loaded"),
        (lambda t: t.unload_model("tiny-vae"), "FAILED_PRECONDITION", "VAE_DEFAULT_MODEL"),
        (
            lambda t: t.load_model("tiny-ae", config="{}"),
            "INVALID_ARGUMENT",
            "['config'] not supported",
        ),
    ],
)
def test_repository_refusals(
    triton: Any, call: Callable[[Any], Any], status: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call(triton)
    assert caught.value.status() == f"StatusCode.{status}" and message in caught.value.message()


# --- hostile requests ---------------------------------------------------------------------------


def infer_request(
    model: str = "tiny-vae-encoder",
    name: str = "x",
    datatype: str = "FP32",
    shape: tuple[int, ...] = (1, 28, 28, 1),
    raw: bytes | None = None,
    extra_raw: bytes | None = None,
    **parameters: Any,
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    for data in (raw, extra_raw):
        if data is not None:
            request.raw_input_contents.append(data)
    for key, value in parameters.items():
        if isinstance(value, str):
            request.parameters[key].string_param = value
        elif value is None:
            request.parameters[key].CopyFrom(pb.InferParameter())
        else:
            request.parameters[key].int64_param = value
    return request


def many_inputs(count: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny-vae-encoder")
    for i in range(count):
        request.inputs.add(name=f"x{i}", datatype="FP32", shape=[1])
    return request


def typed(field: str, values: list[Any], **kwargs: Any) -> pb.ModelInferRequest:
    request = infer_request(**kwargs)
    getattr(request.inputs[0].contents, field).extend(values)
    return request


def with_output(
    request: pb.ModelInferRequest, name: str, **parameters: int
) -> pb.ModelInferRequest:
    output = request.outputs.add(name=name)
    for key, value in parameters.items():
        output.parameters[key].int64_param = value
    return request


IMAGE = bytes(784 * 4)
HOSTILE = [
    (
        "wrong datatype",
        infer_request(datatype="INT32", raw=IMAGE),
        "INVALID_ARGUMENT",
        "'INT32' is not accepted for x",
    ),
    (
        "BYTES",
        infer_request(datatype="BYTES", raw=b"ab"),
        "INVALID_ARGUMENT",
        "'BYTES' is not accepted for x",
    ),
    (
        "raw size that lies",
        infer_request(raw=b"\0" * 100),
        "INVALID_ARGUMENT",
        "inputs[0] ('x'): raw_input_contents[0] holds 100 bytes, but shape [1, 28, 28, 1] of FP32",
    ),
    (
        "shape that does not match the typed data",
        typed("fp32_contents", [0.0] * 784, shape=(2, 28, 28, 1)),
        "INVALID_ARGUMENT",
        "inputs[0] ('x'): shape [2, 28, 28, 1] holds 1568 values but contents.fp32_contents "
        "has 784",
    ),
    (
        "shape that does not fit the model",
        infer_request(shape=(1, 10), raw=bytes(40)),
        "INVALID_ARGUMENT",
        "inputs[0].shape: [1, 10] does not fit x",
    ),
    (
        "negative dimension",
        infer_request(shape=(-1, 784)),
        "INVALID_ARGUMENT",
        "inputs[0].shape[0]: Input should be greater",
    ),
    (
        "unknown model",
        infer_request(model="nope-encoder", raw=IMAGE),
        "NOT_FOUND",
        "unknown model 'nope-encoder'",
    ),
    (
        "unknown version",
        pb.ModelInferRequest(model_name="tiny-vae-encoder", model_version="9"),
        "NOT_FOUND",
        "has version '1', not '9'",
    ),
    (
        "huge declared rows",
        infer_request(shape=(2**62, 784), raw=b""),
        "INVALID_ARGUMENT",
        "rows; at most 1024 (VAE_MAX_IMAGES)",
    ),
    (
        "huge declared values",
        infer_request(shape=(1, 2**40), raw=b""),
        "INVALID_ARGUMENT",
        "hold at most",
    ),
    ("too many inputs", many_inputs(1000), "INVALID_ARGUMENT", "inputs: 1000 tensors; at most 16"),
    ("two inputs", many_inputs(2), "INVALID_ARGUMENT", "expected one tensor named 'x'"),
    (
        "raw entries and inputs differ",
        infer_request(raw=IMAGE, extra_raw=IMAGE),
        "INVALID_ARGUMENT",
        "raw_input_contents: 2 entries for 1 inputs",
    ),
    (
        "a parameter without a value",
        infer_request(raw=IMAGE, invert=None),
        "INVALID_ARGUMENT",
        "parameters.invert: holds no value",
    ),
    (
        "a bad invert",
        infer_request(raw=IMAGE, invert="sideways"),
        "INVALID_ARGUMENT",
        "parameters.invert",
    ),
    (
        "invert on a decoder",
        infer_request(
            model="tiny-vae-decoder", name="z", shape=(1, 2), raw=bytes(8), invert="auto"
        ),
        "INVALID_ARGUMENT",
        "parameters.invert: applies to images",
    ),
    (
        "a bad scorer parameter",
        infer_request(model="tiny-vae-scorer", name="images", raw=IMAGE, k=10**9),
        "INVALID_ARGUMENT",
        "parameters.k",
    ),
    (
        "FP16 as typed contents",
        typed("fp32_contents", [0.0] * 784, datatype="FP16"),
        "INVALID_ARGUMENT",
        "FP16 has no typed contents",
    ),
    (
        "typed contents in the wrong field",
        typed("int_contents", [0] * 784),
        "INVALID_ARGUMENT",
        "FP32 values go in fp32_contents",
    ),
    (
        "an unknown output",
        with_output(infer_request(raw=IMAGE), "sigma"),
        "INVALID_ARGUMENT",
        "['sigma'] not among",
    ),
    (
        "classification",
        with_output(infer_request(raw=IMAGE), "mu", classification=2),
        "INVALID_ARGUMENT",
        "outputs[0].parameters.classification: the classification extension is not supported",
    ),
    (
        "pixels out of range",
        infer_request(raw=np.full(784, 7, "<f4").tobytes()),
        "INVALID_ARGUMENT",
        "inputs[0]",
    ),
    (
        "NaN latents",
        infer_request(
            model="tiny-vae-decoder",
            name="z",
            shape=(1, 2),
            raw=np.full(2, np.nan, "<f4").tobytes(),
        ),
        "INVALID_ARGUMENT",
        "finite",
    ),
]


@pytest.mark.parametrize(
    ("what", "request_", "status", "message"), HOSTILE, ids=[row[0] for row in HOSTILE]
)
def test_hostile_infer_requests(
    stub: Any, what: str, request_: Any, status: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request_)
    assert caught.value.code().name == status, caught.value.details()
    assert message in caught.value.details()
    assert stub.ServerLive(pb.ServerLiveRequest()).live  # and the service still answers


def test_one_repository_only(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="other"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "this service has one repository" in caught.value.details()


# --- shutdown -----------------------------------------------------------------------------------


def test_sigterm_stops_grpc_and_exits_zero(model_dir: Path) -> None:
    port = free_port()
    with serve(
        {"VAE_GRPC_PORT": str(port), "VAE_SHUTDOWN_DRAIN_S": "0"}, model_dir=model_dir
    ) as server:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        client.close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.stderr()
        assert "Traceback" not in server.stderr()


def test_a_busy_grpc_port_stops_the_start(model_dir: Path, running: tuple[Server, str]) -> None:
    busy = running[1].rpartition(":")[2]
    with serve({"VAE_GRPC_PORT": busy}, model_dir=model_dir, ready=False) as server:
        assert server.proc.wait(60) != 0
        assert "VAE_GRPC_PORT" in server.stderr() and "in use" in server.stderr()
