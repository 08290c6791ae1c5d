"""benchmarks/oip_bench.py's peer: MLServer must get the very request the service gets. No MLServer
here (it lives in its own venv): the test reads the harness's bodies and benchmarks/mlserver/'s
model settings, and sends the body to the service."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import oip_bench  # noqa: E402

MODEL_SETTINGS = oip_bench.MLSERVER_REPOSITORY / oip_bench.MLSERVER_MODEL / "model-settings.json"


def model_settings() -> dict[str, Any]:
    settings: dict[str, Any] = json.loads(MODEL_SETTINGS.read_text())
    return settings


@pytest.mark.parametrize(("images", "connections"), [(1, 64), (3, 4)])
def test_mlserver_gets_the_services_oip_json_request_byte_for_byte(
    images: int, connections: int
) -> None:
    x = digits(images)
    ours = oip_bench.service_loads(x, connections)[0][0]
    peer = oip_bench.mlserver_load(x, connections)
    assert ours.label == peer.label == oip_bench.JSON_LABEL
    assert peer.body == ours.body
    assert (peer.content_type, peer.accept) == (ours.content_type, ours.accept)
    assert (peer.images, peer.connections) == (ours.images, ours.connections)
    # The URLs may differ only in the model's name; MLServer's model is named as ours.
    assert peer.endpoint.replace(oip_bench.MLSERVER_MODEL, "M") == ours.endpoint.replace(
        f"{oip_bench.MODEL}-encoder", "M"
    )


def test_the_service_answers_the_harness_body(client: TestClient) -> None:
    body = oip_bench.oip_json(digits(3))
    answer = client.post("/v2/models/tiny-vae-encoder/infer", content=body)
    assert answer.status_code == 200, answer.text
    outputs = {out["name"]: out for out in answer.json()["outputs"]}
    assert sorted(outputs) == ["logvar", "mu"]
    assert outputs["mu"]["shape"] == [3, 2] and len(outputs["mu"]["data"]) == 6


def test_mlservers_model_declares_what_the_body_and_the_service_say(client: TestClient) -> None:
    settings = model_settings()
    assert settings["name"] == oip_bench.MLSERVER_MODEL
    tensor = json.loads(oip_bench.oip_json(digits(2)))["inputs"][0]
    declared = settings["inputs"][0]
    assert (declared["name"], declared["datatype"]) == (tensor["name"], tensor["datatype"])
    assert declared["shape"][1:] == tensor["shape"][1:]
    # The service's own metadata for an encoder of the same image shape (the tiny model's).
    ours = client.get("/v2/models/tiny-vae-encoder").json()["inputs"]
    assert settings["inputs"] == ours
    assert [out["name"] for out in settings["outputs"]] == ["mu", "logvar"]


def test_mlservers_model_is_the_bundled_encoder_with_adaptive_batching_on() -> None:
    settings = model_settings()
    uri = (MODEL_SETTINGS.parent / settings["parameters"]["uri"]).resolve()
    assert uri == ROOT / "models" / oip_bench.MODEL / "encoder.onnx" and uri.is_file()
    # MLServer leaves batching off unless both are set (mlserver.batching.hooks.load_batching).
    assert settings["max_batch_size"] > 1 and settings["max_batch_time"] > 0
    module, _, name = settings["implementation"].rpartition(".")
    runtime = ast.parse((oip_bench.MLSERVER_REPOSITORY / f"{module}.py").read_text())
    classes = {node.name for node in runtime.body if isinstance(node, ast.ClassDef)}
    assert name in classes


def test_parse_loads() -> None:
    assert oip_bench.parse_loads("256x4, 1x64") == [(256, 4), (1, 64)]


def test_without_h2load_the_grpc_rows_are_skipped_saying_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(oip_bench.shutil, "which", lambda name: None)
    assert oip_bench.grpc_missing() == (
        "gRPC rows skipped: h2load is not installed (apt install nghttp2-client)"
    )
    assert oip_bench.grpc_paths(digits(2), [(2, 4)], 1, 1, tmp_path) == []


def test_the_grpc_rows_body_is_answered_by_the_service(model_dir: Path, tmp_path: Path) -> None:
    """The body h2load sends (grpc_bench.grpc_body, renamed to the tiny model) passes the rows'
    check against an app serving gRPC in-process; a model it lacks fails it."""
    import struct

    from grpc_bench import grpc_body
    from reliability import free_port

    from service.app import create_app
    from service.grpc import oip_pb2 as pb
    from service.settings import Settings

    framed = grpc_body(digits(2)[..., None])
    request = pb.ModelInferRequest.FromString(framed[5:])
    assert request.model_name == f"{oip_bench.MODEL}-encoder"
    assert list(request.inputs[0].shape) == [2, 28, 28, 1]
    request.model_name = "tiny-vae-encoder"
    message = request.SerializeToString()
    port = free_port()
    with TestClient(create_app(Settings(model_dir=model_dir, grpc_port=port), serve_grpc=True)):
        oip_bench.grpc_check(port, struct.pack(">BI", 0, len(message)) + message)
        grpc = pytest.importorskip("grpc")
        with pytest.raises(grpc.RpcError) as missing:
            oip_bench.grpc_check(port, framed)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
