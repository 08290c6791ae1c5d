"""The Open Inference Protocol REST API as NVIDIA's own client speaks it: `tritonclient.http`
against `python -m service` on a free port (the tiny models of `model_dir`), in JSON and with the
binary tensor data extension both ways; then hostile binary framings (sizes that lie, a header
length past the body), each a 400 naming the tensor and never a 5xx."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from .conftest import digits

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import serve  # noqa: E402

ENCODER = "/v2/models/tiny-vae-encoder/infer"


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    with serve({"VAE_DEFAULT_MODEL": "tiny-vae"}, model_dir=model_dir) as running:
        yield running.url


@pytest.fixture
def triton(server: str) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    yield client
    client.close()


def images(n: int = 3) -> np.ndarray:
    return digits(n)[..., None]  # (n, 28, 28, 1) float32 in [0, 1]


def infer_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> Any:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def wanted(*names: str, binary: bool) -> list[Any]:
    return [httpclient.InferRequestedOutput(name, binary_data=binary) for name in names]


# --- the client --------------------------------------------------------------------------------


def test_server_and_model_metadata(triton: Any) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tiny-vae-encoder")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    metadata = triton.get_model_metadata("tiny-vae-encoder")
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["mu", "logvar"]
    assert triton.get_model_metadata("tiny-ae-decoder", model_version="1")["versions"] == ["1"]


@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, True), (True, False)])
def test_encoder_json_and_binary_give_the_service_own_answer(
    triton: Any, server: str, binary_in: bool, binary_out: bool
) -> None:
    x = images()
    own = httpx.post(f"{server}/encode", json={"images": x[..., 0].tolist()}).json()
    result = triton.infer(
        "tiny-vae-encoder",
        [infer_input("x", x, "FP32", binary_in)],
        outputs=wanted("mu", "logvar", binary=binary_out),
        request_id="req-7",
    )
    answer = result.get_response()
    assert answer["id"] == "req-7" and answer["model_name"] == "tiny-vae-encoder"
    assert [o["name"] for o in answer["outputs"]] == ["mu", "logvar"]
    for name in ("mu", "logvar"):
        array = result.as_numpy(name)
        assert array.dtype == np.float32 and array.shape == (3, 2)
        np.testing.assert_allclose(array, own[name], rtol=0, atol=1e-6)
        output = result.get_output(name)
        assert ("parameters" in output) is binary_out and ("data" in output) is not binary_out


def test_requested_outputs_in_their_order_and_only_those(triton: Any) -> None:
    x = infer_input("x", images(2), "FP32", True)
    result = triton.infer("tiny-vae-encoder", [x], outputs=wanted("logvar", "mu", binary=True))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logvar", "mu"]
    only = triton.infer("tiny-vae-encoder", [x], outputs=wanted("logvar", binary=False))
    assert [o["name"] for o in only.get_response()["outputs"]] == ["logvar"]
    assert only.as_numpy("mu") is None
    # No outputs named: the client asks for all of them in binary (binary_data_output)
    every = triton.infer("tiny-vae-encoder", [x])
    assert [o["name"] for o in every.get_response()["outputs"]] == ["mu", "logvar"]
    np.testing.assert_array_equal(every.as_numpy("logvar"), result.as_numpy("logvar"))


def test_uint8_and_fp16_binary_pixels(triton: Any) -> None:
    pixels = np.round(images(2) * 255).astype(np.uint8)
    x = (pixels / 255.0).astype(np.float32)
    reference = triton.infer("tiny-vae-encoder", [infer_input("x", x, "FP32", True)])
    as_bytes = triton.infer("tiny-vae-encoder", [infer_input("x", pixels, "UINT8", True)])
    np.testing.assert_allclose(as_bytes.as_numpy("mu"), reference.as_numpy("mu"), atol=1e-5)
    half = triton.infer("tiny-vae-encoder", [infer_input("x", x.astype(np.float16), "FP16", True)])
    np.testing.assert_allclose(half.as_numpy("mu"), reference.as_numpy("mu"), atol=1e-2)


@pytest.mark.parametrize("binary", [False, True])
def test_decoder(triton: Any, server: str, binary: bool) -> None:
    z = np.array([[0.0, 0.5, -0.5, 1.0], [1.0, 0.0, 0.0, -1.0]], np.float32)
    result = triton.infer(
        "tiny-ae-decoder",
        [infer_input("z", z, "FP32", binary)],
        outputs=wanted("x_mean", binary=binary),
    )
    decoded = result.as_numpy("x_mean")
    assert decoded.shape == (2, 28, 28, 1) and decoded.dtype == np.float32
    own = httpx.post(f"{server}/decode", json={"model": "tiny-ae", "z": z.tolist()}).json()
    np.testing.assert_allclose(decoded[..., 0], own["images"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_scorer_fp64_and_bool_outputs(triton: Any, server: str, binary: bool) -> None:
    x = images(3)
    parameters = {"seed": 1, "threshold": 0.05, "k": 8}
    result = triton.infer(
        "tiny-vae-scorer",
        [infer_input("images", x, "FP32", binary)],
        outputs=wanted("score", "is_outlier", "nll", binary=binary),
        parameters=parameters,
    )
    score, outlier, nll = (result.as_numpy(n) for n in ("score", "is_outlier", "nll"))
    assert score.dtype == np.float64 and nll.dtype == np.float64 and outlier.dtype == np.bool_
    assert score.shape == outlier.shape == nll.shape == (3,)
    assert [o["datatype"] for o in result.get_response()["outputs"]] == ["FP64", "BOOL", "FP64"]
    own = httpx.post(f"{server}/score", json={"images": x[..., 0].tolist(), **parameters}).json()
    np.testing.assert_allclose(score, own["score"], rtol=1e-6)
    np.testing.assert_allclose(nll, own["nll"], rtol=1e-6)
    np.testing.assert_array_equal(outlier, own["is_outlier"])
    assert result.get_response()["parameters"]["threshold"] == 0.05


@pytest.mark.parametrize(
    ("model", "tensor", "outputs", "status", "message"),
    [
        ("nope-encoder", ("x", "FP32"), None, "404", "unknown model 'nope-encoder'"),
        ("tiny-vae-encoder", ("z", "FP32"), None, "400", "one tensor named 'x'"),
        ("tiny-vae-encoder", ("x", "INT32"), None, "400", "'INT32' is not accepted for x"),
        ("tiny-vae-encoder", ("x", "FP32"), ["sigma"], "400", "['sigma'] not among"),
    ],
)
def test_errors_surface_as_the_client_exception(
    triton: Any,
    model: str,
    tensor: tuple[str, str],
    outputs: list[str] | None,
    status: str,
    message: str,
) -> None:
    name, datatype = tensor
    x = images(1).astype(np.int32 if datatype == "INT32" else np.float32)
    requested = wanted(*outputs, binary=True) if outputs else None
    with pytest.raises(InferenceServerException) as caught:
        triton.infer(model, [infer_input(name, x, datatype, True)], outputs=requested)
    assert caught.value.status() == status and message in caught.value.message()


def test_the_documented_example_runs(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/api.md's tritonclient example, on the tiny models (latent 2, uncalibrated)."""
    page = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    (example,) = [block for block in blocks if "tritonclient.http" in block]
    host = server.removeprefix("http://")
    code = example.replace("localhost:8000", host).replace("mnist-vae", "tiny-vae")
    # uncalibrated: is_outlier needs a threshold
    exec(code.replace('{"seed": 1}', '{"seed": 1, "threshold": 0.05}'), {})
    assert capsys.readouterr().out.splitlines() == ["batch-1 (8, 2)", "(8,) float64 bool"]


def test_classification_is_refused_by_name(triton: Any) -> None:
    asked = [httpclient.InferRequestedOutput("mu", class_count=2)]
    with pytest.raises(InferenceServerException, match="classification extension"):
        triton.infer("tiny-vae-encoder", [infer_input("x", images(1), "FP32", True)], outputs=asked)


# --- framing: what the clients send, and what lies -----------------------------------------------


def framed(
    x: np.ndarray | None = None,
    size: Any = None,
    extra: bytes = b"",
    outputs: list[dict[str, Any]] | None = None,
    datatype: str = "FP32",
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int]:
    """A binary-extension body (JSON header, then `x`'s bytes and `extra`) and its header's
    length; `size` overrides the declared binary_data_size."""
    x = images(1) if x is None else x
    data = x.astype(x.dtype.newbyteorder("<")).tobytes()
    tensor = {"name": "x", "shape": list(x.shape), "datatype": datatype}
    tensor["parameters"] = {"binary_data_size": len(data) if size is None else size}
    request: dict[str, Any] = {"inputs": [tensor]}
    if outputs is not None:
        request["outputs"] = outputs
    if parameters is not None:
        request["parameters"] = parameters
    head = json.dumps(request).encode()
    return head + data + extra, len(head)


def post_framed(client: TestClient, body: bytes, header: int | str, **headers: str) -> Any:
    return client.post(
        ENCODER, content=body, headers={"Inference-Header-Content-Length": str(header), **headers}
    )


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "text/plain",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
    ],
)
def test_a_json_body_is_taken_with_any_content_type(
    client: TestClient, content_type: str | None
) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}]}
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post(ENCODER, content=json.dumps(body), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"


def test_binary_both_ways_by_hand(client: TestClient) -> None:
    x = images(2)
    body, header = framed(x, outputs=[{"name": "logvar", "parameters": {"binary_data": True}}])
    response = post_framed(client, body, header, **{"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    head = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.content[:head])
    (output,) = answer["outputs"]
    assert output == {
        "name": "logvar",
        "shape": [2, 2],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 16},
    }
    logvar = np.frombuffer(response.content[head:], "<f4").reshape(2, 2)
    as_json = client.post(
        ENCODER,
        json={
            "inputs": [
                {"name": "x", "shape": [2, 784], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        },
    ).json()
    np.testing.assert_allclose(logvar.ravel(), as_json["outputs"][1]["data"], atol=1e-6)
    # binary_data_output makes every output binary; an output's own binary_data: false wins
    body, header = framed(
        x,
        outputs=[{"name": "mu"}, {"name": "logvar", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True},
    )
    mixed = post_framed(client, body, header)
    head = int(mixed.headers["inference-header-content-length"])
    mu, logvar_json = json.loads(mixed.content[:head])["outputs"]
    assert mu["parameters"] == {"binary_data_size": 16} and len(mixed.content) == head + 16
    assert "data" in logvar_json and "parameters" not in logvar_json
    # SageMaker's spelling of the header length: a parameter of its content type
    sagemaker = f"application/vnd.sagemaker-triton.binary+json;json-header-size={header}"
    assert (
        client.post(ENCODER, content=body, headers={"Content-Type": sagemaker}).status_code == 200
    )


LIE = "inputs[0] ('x'): parameters.binary_data_size is"


@pytest.mark.parametrize(
    ("body_and_header", "message"),
    [
        (lambda: framed(size=3136 + 4, extra=b"\0" * 4), f"{LIE} 3140 bytes, but shape"),
        (lambda: framed(size=3136 - 4), f"{LIE} 3132 bytes, but shape [1, 28, 28, 1] of FP32"),
        (lambda: framed(size=3135), f"{LIE} 3135 bytes, but shape"),
        (lambda: framed(size=-4), "inputs[0] ('x'): parameters.binary_data_size must be a count"),
        (lambda: framed(size="3136"), "must be a count of bytes, not '3136'"),
        (lambda: framed(size=True), "must be a count of bytes, not True"),
        # the size fits the shape, but the body holds fewer bytes, or more
        (lambda: (framed()[0][:-100], framed()[1]), f"{LIE} 3136 bytes, but only 3036 bytes"),
        (lambda: framed(extra=b"\0" * 8), "body: 3144 bytes after the JSON header, but the inputs"),
        # the header length itself lies
        (lambda: (framed()[0], len(framed()[0]) + 1), "bytes of JSON header, but the body has"),
        (lambda: (framed()[0], -5), "Inference-Header-Content-Length: '-5' is not a length"),
        (lambda: (framed()[0], "12abc"), "'12abc' is not a length in bytes"),
        (lambda: (framed()[0], 10**30), "is not a length in bytes"),
        (lambda: (framed()[0], framed()[1] - 3), "body: "),
        (lambda: (framed()[0], 0), "body: "),
        (
            lambda: framed(outputs=[{"name": "mu"}, {"name": "sigma"}]),
            "outputs: ['sigma'] not among this model's outputs",
        ),
        (
            lambda: framed(outputs=[{"name": "mu", "parameters": {"binary_data": "yes"}}]),
            "outputs[0].parameters.binary_data: expected true or false, not 'yes'",
        ),
        (
            lambda: framed(parameters={"binary_data_output": 1}),
            "parameters.binary_data_output: expected true or false, not 1",
        ),
        (
            lambda: framed(images(1).astype(np.float16), datatype="FP16", size=3136),
            f"{LIE} 3136 bytes, but shape [1, 28, 28, 1] of FP16 holds 784 values of 2 bytes",
        ),
        # binary NaN is no pixel
        (lambda: framed(np.full((1, 784), np.nan, np.float32)), "NaN or infinity is not a pixel"),
        # over VAE_MAX_IMAGES (64): refused from the declared shape, the data never read
        (lambda: framed(np.zeros((65, 784), np.float32)), "65 rows; at most 64 (VAE_MAX_IMAGES)"),
    ],
)
def test_binary_framings_that_lie_are_400(
    client: TestClient, body_and_header: Any, message: str
) -> None:
    body, header = body_and_header()
    response = post_framed(client, body, header)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"]
    fine = post_framed(client, *framed())
    assert fine.status_code == 200, fine.text


def test_binary_data_without_its_header_says_what_is_missing(client: TestClient) -> None:
    body, _ = framed()
    response = client.post(ENCODER, content=body)
    assert response.status_code == 400
    assert "needs the Inference-Header-Content-Length header" in response.json()["error"]


def test_a_json_input_without_data_says_how_to_send_it(client: TestClient) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32"}]}
    response = client.post(ENCODER, json=body)
    assert response.status_code == 400
    assert "inputs[0] ('x').data: Field required" in response.json()["error"]
    shared = {**body["inputs"][0], "parameters": {"shared_memory_region": "r"}}
    response = client.post(ENCODER, json={"inputs": [shared]})
    assert "shared memory" in response.json()["error"]


def test_a_compressed_body_is_refused_by_name(client: TestClient) -> None:
    response = client.post(ENCODER, content=b"\x1f\x8b", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert "Content-Encoding: 'gzip' is not accepted" in response.json()["error"]


def test_lying_sizes_on_the_live_server_never_5xx(server: str) -> None:
    body, header = framed()
    cases = [
        (body, header + 10**6),
        (body[:-1], header),
        (body + b"\0", header),
        (body, "x"),
        framed(size=2**62),
    ]
    with httpx.Client(base_url=server) as http:
        for content, length in cases:
            response = http.post(
                ENCODER,
                content=content,
                headers={"Inference-Header-Content-Length": str(length)},
            )
            assert response.status_code == 400, response.text
            assert "error" in response.json()
        assert http.post(
            ENCODER, content=body, headers={"Inference-Header-Content-Length": str(header)}
        ).is_success


def test_the_guards_refusals_are_in_the_protocols_shape(client: TestClient) -> None:
    body, header = framed()
    response = client.post(
        ENCODER,
        content=body,
        headers={"Inference-Header-Content-Length": str(header), "Content-Length": str(10**9)},
    )
    assert response.status_code == 413
    assert "VAE_MAX_BODY_BYTES" in response.json()["error"]
