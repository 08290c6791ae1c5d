"""The model repository extension over REST (`service.oip.repository`, `service.http.repository`):
the index of the model folder, load (a new folder, or a reload) and unload by name, with the
reload rules; `GET /v2/models`. The same calls over gRPC are in tests/test_grpc_triton.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

from .conftest import digits

INDEX = "/v2/repository/index"


def load(name: str) -> str:
    return f"/v2/repository/models/{name}/load"


def unload(name: str) -> str:
    return f"/v2/repository/models/{name}/unload"


def add_copy(models: Path, source: str, name: str) -> Path:
    """A copy of the model folder `source` whose manifest names the model `name`."""
    folder = models / name
    shutil.copytree(models / source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"] = name
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def models(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    return folder


@pytest.fixture
def client(models: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=models, default_model="tiny-vae", reload_min_interval_s=0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def encodes(client: TestClient, model: str) -> bool:
    x = digits(1)[..., None]
    body = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    return client.post(f"/v2/models/{model}-encoder/infer", json=body).status_code == 200


def test_index_lists_every_folder_and_v2_models_the_protocol_models(
    client: TestClient, models: Path
) -> None:
    add_copy(models, "tiny-ae", "tiny-ae-copy")
    (models / "broken").mkdir()
    (models / "broken" / "manifest.json").write_text("{not json")
    index = client.post(INDEX)  # no body, as tritonclient sends it
    assert index.status_code == 200
    by_name = {entry["name"]: entry for entry in index.json()}
    assert by_name["tiny-vae"] == {
        "name": "tiny-vae",
        "version": "1",
        "state": "READY",
        "reason": "",
    }
    assert by_name["tiny-ae"]["state"] == "READY"
    assert by_name["tiny-ae-copy"]["state"] == "UNAVAILABLE"
    assert "not loaded" in by_name["tiny-ae-copy"]["reason"]
    assert by_name["broken"]["state"] == "UNAVAILABLE"
    assert "manifest.json" in by_name["broken"]["reason"]
    ready = client.post(INDEX, json={"ready": True}).json()
    assert sorted(e["name"] for e in ready) == ["tiny-ae", "tiny-vae"]
    listed = client.get("/v2/models").json()["models"]
    assert "tiny-vae-encoder" in listed and "tiny-ae-scorer" in listed and len(listed) == 6


def test_load_adds_a_new_folder_and_unload_drops_it(client: TestClient, models: Path) -> None:
    add_copy(models, "tiny-ae", "tiny-ae-copy")
    assert not encodes(client, "tiny-ae-copy")
    assert client.post(load("tiny-ae-copy"), json={}).status_code == 200
    assert encodes(client, "tiny-ae-copy")
    assert "tiny-ae-copy-decoder" in client.get("/v2/models").json()["models"]
    # A protocol model's name means its model: all three graphs go.
    answer = client.post(
        unload("tiny-ae-copy-encoder"), json={"parameters": {"unload_dependents": False}}
    )
    assert answer.status_code == 200, answer.text
    assert not encodes(client, "tiny-ae-copy")
    entry = next(e for e in client.post(INDEX).json() if e["name"] == "tiny-ae-copy")
    assert entry["state"] == "UNAVAILABLE"


def test_load_of_a_loaded_model_reloads_it_and_a_broken_one_is_refused(
    client: TestClient, models: Path
) -> None:
    assert client.post(load("tiny-vae")).status_code == 200  # a reload, nothing changed
    (models / "tiny-vae" / "encoder.onnx").write_bytes(b"not a graph")
    refused = client.post(load("tiny-vae"))
    assert refused.status_code == 409
    message = refused.json()["error"]
    assert "refused, the previous version keeps serving" in message and "encoder.onnx" in message
    assert encodes(client, "tiny-vae")  # the old version still serves
    entry = next(e for e in client.post(INDEX).json() if e["name"] == "tiny-vae")
    assert entry["state"] == "READY"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (load("nope"), {}, 404, "no model folder in VAE_MODEL_DIR holds a model named 'nope'"),
        (unload("nope"), {}, 404, "model 'nope' is not loaded"),
        (unload("tiny-vae"), {}, 409, "is VAE_DEFAULT_MODEL and cannot be unloaded"),
        (
            load("tiny-ae"),
            {"parameters": {"config": "{}"}},
            400,
            "parameters: ['config'] not supported",
        ),
        (load("tiny-ae"), [1], 400, "body:"),
        (INDEX, {"ready": "maybe"}, 400, "body: ready"),
    ],
)
def test_repository_refusals(
    client: TestClient, path: str, body: Any, status: int, message: str
) -> None:
    answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert encodes(client, "tiny-vae")


def test_repository_calls_follow_the_reload_rules(models: Path) -> None:
    key = "k" * 24
    settings = Settings(
        model_dir=models, default_model="tiny-vae", allow_reload=False, api_keys=key
    )
    with TestClient(create_app(settings)) as client:
        assert client.post(load("tiny-ae")).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        forbidden = client.post(load("tiny-ae"), headers=auth)
        assert forbidden.status_code == 403 and "VAE_ALLOW_RELOAD" in forbidden.json()["error"]
        assert client.post(unload("tiny-ae"), headers=auth).status_code == 403
        assert client.post(INDEX, headers=auth).status_code == 200


def test_the_last_model_cannot_be_unloaded(models: Path) -> None:
    shutil.rmtree(models / "tiny-ae")
    with TestClient(create_app(Settings(model_dir=models, reload_min_interval_s=0))) as client:
        refused = client.post(unload("tiny-vae"))
        assert refused.status_code == 409 and "the only model loaded" in refused.json()["error"]


def test_repository_paths_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (INDEX, load("{model_name}"), unload("{model_name}")):
        operation = paths[path]["post"]
        assert {"200", "401", "404" if path != INDEX else "400"} <= set(operation["responses"])
        assert "example" in operation["requestBody"]["content"]["application/json"]
    assert "/v2/models" in paths
