"""service.http.oip: the Open Inference Protocol (KServe v2) REST API, with requests shaped as the
protocol's documents show them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import begin_shutdown
from service.models.runtime import ModelRuntime

IMAGES = np.random.default_rng(0).uniform(0, 1, size=(3, 784)).round(3)


def test_oip_server_endpoints(client: TestClient) -> None:
    assert client.get("/v2").json() == {
        "name": "vae-serving",
        "version": client.get("/v2").json()["version"],
        "extensions": ["binary_tensor_data"],
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    begin_shutdown(client.app)  # type: ignore[arg-type]
    assert client.get("/v2/health/ready").status_code == 400  # "4xx indicating false"


def test_oip_model_metadata_from_the_manifest(client: TestClient, model_dir: Path) -> None:
    encoder = client.get("/v2/models/tiny-vae-encoder").json()
    assert encoder == {
        "name": "tiny-vae-encoder",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
        "outputs": [
            {"name": "mu", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "logvar", "datatype": "FP32", "shape": [-1, 2]},
        ],
    }
    decoder = client.get("/v2/models/tiny-ae-decoder/versions/1").json()
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get("/v2/models/tiny-ae-decoder/ready").json() == {
        "name": "tiny-ae-decoder",
        "ready": True,
    }


def runtime(client: TestClient, name: str) -> ModelRuntime:
    found: ModelRuntime = client.app.state.service.registry.models[name]  # type: ignore[attr-defined]
    return found


def test_oip_infer_encoder_as_the_protocol_document_shows(client: TestClient) -> None:
    # The protocol's example request: an id, named inputs with shape, datatype and flat data,
    # and the outputs wanted.
    request = {
        "id": "42",
        "inputs": [
            {
                "name": "x",
                "shape": [3, 1, 28, 28],
                "datatype": "FP32",
                "data": IMAGES.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "mu"}, {"name": "logvar"}],
    }
    response = client.post("/v2/models/tiny-vae-encoder/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "42" and body["model_name"] == "tiny-vae-encoder"
    assert body["model_version"] == "1"
    mu, logvar = runtime(client, "tiny-vae").encode(IMAGES.reshape(3, 28, 28, 1).astype(np.float32))
    assert [o["name"] for o in body["outputs"]] == ["mu", "logvar"]
    for output, expected in zip(body["outputs"], [mu, logvar], strict=True):
        assert output["shape"] == [3, 2] and output["datatype"] == "FP32"
        np.testing.assert_allclose(np.array(output["data"]).reshape(3, 2), expected, rtol=1e-6)
    # Nested data, N x 784, only one output, versioned path: the same numbers.
    nested = {
        "inputs": [{"name": "x", "shape": [3, 784], "datatype": "FP64", "data": IMAGES.tolist()}],
        "outputs": [{"name": "mu"}],
    }
    again = client.post("/v2/models/tiny-vae-encoder/versions/1/infer", json=nested).json()
    assert "id" not in again and [o["name"] for o in again["outputs"]] == ["mu"]
    np.testing.assert_allclose(np.array(again["outputs"][0]["data"]).reshape(3, 2), mu, rtol=1e-6)


def test_oip_infer_decoder(client: TestClient) -> None:
    z = [[0.0, 0.0, 0.5, -0.5]]
    request = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": z}]}
    body = client.post("/v2/models/tiny-ae-decoder/infer", json=request).json()
    (output,) = body["outputs"]
    assert output["name"] == "x_mean" and output["shape"] == [1, 28, 28, 1]
    expected = runtime(client, "tiny-ae").decode(np.array(z, dtype=np.float32))
    np.testing.assert_allclose(np.array(output["data"]).reshape(1, 28, 28, 1), expected, rtol=1e-6)


def oip_input(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}
    return {"inputs": [{**tensor, **overrides}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope-encoder/infer", oip_input(), 404, "unknown model 'nope-encoder'"),
        ("/v2/models/tiny-vae/infer", oip_input(), 404, "known: tiny-ae-encoder"),
        ("/v2/models/tiny-vae-encoder/versions/9/infer", oip_input(), 404, "not '9'"),
        ("/v2/models/tiny-vae-encoder/infer", {"inputs": []}, 400, "at least 1 item"),
        ("/v2/models/tiny-vae-encoder/infer", {"id": 1}, 400, "inputs: Field required"),
        ("/v2/models/tiny-vae-encoder/infer", oip_input(name="z"), 400, "one tensor named 'x'"),
        ("/v2/models/tiny-vae-encoder/infer", oip_input(datatype="BYTES"), 400, "'BYTES' is not"),
        ("/v2/models/tiny-vae-encoder/infer", oip_input(shape=[2, 784]), 400, "holds 1568 values"),
        ("/v2/models/tiny-vae-encoder/infer", oip_input(shape=[784]), 400, "does not fit x"),
        # settings.max_images is 64: refused by counting the body's commas, before it is parsed
        (
            "/v2/models/tiny-vae-encoder/infer",
            oip_input(data=[0.5] * 60_000),
            400,
            "numbers; 64 rows of 784 (VAE_MAX_IMAGES) hold at most 50176: send fewer rows",
        ),
        # ... and from the declared shape, the data never converted
        (
            "/v2/models/tiny-vae-encoder/infer",
            oip_input(shape=[65, 784], data=[0.5] * 784 * 65),
            400,
            "inputs[0].shape: 65 rows; at most 64 (VAE_MAX_IMAGES)",
        ),
        ("/v2/models/tiny-vae-encoder/infer", oip_input(data=["a"] * 784), 400, "expected numbers"),
        ("/v2/models/tiny-vae-encoder/infer", oip_input(data=[2.0] * 784), 400, "[0, 1]"),
        # simdjson cannot look a name holding NUL up: the client's fault, not a 500
        ("/v2/models/tiny-vae-encoder/infer", {**oip_input(), "a\u0000": 1}, 400, "NUL char"),
        ("/v2/models/tiny-vae-encoder/infer", oip_input(**{"b\u0000": 1}), 400, "NUL char"),
        (
            "/v2/models/tiny-vae-decoder/infer",
            {"inputs": [{"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [1e30, 0]}]},
            400,
            "within +-1e+06",
        ),
        (
            "/v2/models/tiny-vae-encoder/infer",
            {**oip_input(), "outputs": [{"name": "sigma"}]},
            400,
            "['sigma'] not among",
        ),
    ],
)
def test_oip_errors(client: TestClient, path: str, body: Any, status: int, message: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"]
