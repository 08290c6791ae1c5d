"""latent_map.json: the test split's latent means, exported beside 2-D models and served by
GET /models/{name}/latent-map for the playground's scatter."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.manifest import ModelLoadError, load_manifest, sha256sum
from service.settings import Settings
from training.data import load_splits
from training.export import export_run
from training.train import train

from .conftest import N_TEST, tiny_config


def _latent_map(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "latent_map.json").read_text())


def _start(model_dir: Path) -> None:
    with TestClient(create_app(Settings(model_dir=model_dir))):
        pass


# --- export -------------------------------------------------------------------------------------


def test_export_writes_the_test_split_latent_means(exported_vae: Path, data_dir: Path) -> None:
    manifest = load_manifest(exported_vae)  # checks the map's sha256 as well
    content = _latent_map(exported_vae)
    test = load_splits("mnist", data_dir, val_size=50).test
    assert len(test) == N_TEST
    assert manifest.latent_map is not None
    assert manifest.latent_map.model_dump() == {
        "file": "latent_map.json",
        "sha256": sha256sum(exported_vae / "latent_map.json"),
        "split": "test",
        "points": N_TEST,
    }
    assert {k: v for k, v in content.items() if k not in ("mu", "labels")} == {
        "split": "test",
        "dataset": "mnist",
        "points": N_TEST,
        "label_names": list("0123456789"),
    }
    assert content["labels"] == test.labels.tolist()
    session = ort.InferenceSession(
        str(exported_vae / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    (mu,) = session.run(["mu"], {"x": test.images})
    got = np.array(content["mu"])
    assert got.shape == (N_TEST, 2)
    np.testing.assert_allclose(got, mu, atol=1e-3)
    np.testing.assert_allclose(got * 1000, np.round(got * 1000), atol=1e-6)  # 3 decimals
    assert len((exported_vae / "latent_map.json").read_bytes()) < 40 * N_TEST  # compact JSON


def test_an_autoencoder_map_holds_its_codes(tmp_path: Path, data_dir: Path) -> None:
    train(tiny_config(data_dir, model="ae", epochs=1), tmp_path / "run", progress=False)
    manifest = export_run(tmp_path / "run", tmp_path / "ae-2d")
    assert manifest["latent_map"]["points"] == N_TEST
    test = load_splits("mnist", data_dir, val_size=50).test
    session = ort.InferenceSession(
        str(tmp_path / "ae-2d" / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    (z,) = session.run(["z"], {"x": test.images})
    np.testing.assert_allclose(_latent_map(tmp_path / "ae-2d")["mu"], z, atol=1e-3)


def test_no_map_for_other_latent_sizes(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train(tiny_config(data_dir, latent_dim=3, epochs=1), tmp_path / "run", progress=False)
    with caplog.at_level(logging.WARNING, logger="training.export"):
        manifest = export_run(tmp_path / "run", tmp_path / "vae-3d")
    assert "latent_map" not in manifest
    assert "latent_map" not in json.loads((tmp_path / "vae-3d" / "manifest.json").read_text())
    assert not (tmp_path / "vae-3d" / "latent_map.json").exists()
    # No map is expected here: nothing to warn about (the tiny validation split's calibration
    # warning is test_export.py's).
    assert not [r for r in caplog.records if "latent_map" in r.getMessage()]


def test_export_without_data_still_succeeds_with_a_warning(
    vae_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "models" / "no-data"
    with caplog.at_level(logging.WARNING, logger="training.export"):
        manifest = export_run(vae_run, out, data_dir=str(tmp_path / "nowhere"))
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "manifest.json",
    ]
    assert "latent_map" not in manifest and load_manifest(out).latent_map is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "no latent_map.json written" in message and "cannot be loaded" in message
    assert "no score calibration written" in message and "python -m service.calibrate" in message
    assert "nowhere" in message  # where the data was looked for

    # The service serves it; its latent map is a 404 that says why.
    with TestClient(create_app(Settings(model_dir=out.parent))) as client:
        assert client.get("/models/no-data").json()["latent_map"] is False
        response = client.get("/models/no-data/latent-map")
    assert response.status_code == 404
    assert response.json() == {
        "detail": "model 'no-data' has no latent map: only models with a 2-D latent space "
        "exported with their dataset have one (it was exported without its dataset)"
    }


# --- service ------------------------------------------------------------------------------------


def test_service_serves_the_exported_map(client: TestClient, model_dir: Path) -> None:
    response = client.get("/models/tiny-vae/latent-map")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    content = _latent_map(model_dir / "tiny-vae")
    assert response.json() == {"model": "tiny-vae", "version": "1", **content}
    assert list(response.json()) == [
        "model",
        "version",
        "split",
        "dataset",
        "label_names",
        "points",
        "mu",
        "labels",
    ]


def test_models_say_which_have_a_map(client: TestClient) -> None:
    by_name = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert by_name["tiny-vae"]["latent_map"] is True
    assert by_name["tiny-ae"]["latent_map"] is False
    one = client.get("/models/tiny-vae").json()
    assert one["latent_map"] is True and one["manifest"]["latent_map"]["points"] == N_TEST
    assert client.get("/models/tiny-ae").json()["manifest"]["latent_map"] is None


def test_latent_map_404s(client: TestClient) -> None:
    response = client.get("/models/tiny-ae/latent-map")
    assert response.status_code == 404
    assert response.json() == {
        "detail": "model 'tiny-ae' has no latent map: only models with a 2-D latent space "
        "exported with their dataset have one (its latent_dim is 4)"
    }
    response = client.get("/models/nope/latent-map")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "no model named 'nope'" in detail and "tiny-vae" in detail


def test_latent_map_is_documented(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/models/{name}/latent-map"]["get"]
    assert operation["tags"] == ["models"]
    assert {"200", "401", "404", "413", "503", "504"} <= set(operation["responses"])
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/LatentMapResponse"}


# --- a map that cannot be trusted ---------------------------------------------------------------


@pytest.fixture
def own_vae(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "tiny-vae"
    shutil.copytree(model_dir / "tiny-vae", folder)
    return folder


def test_corrupted_map_is_refused_at_load(own_vae: Path) -> None:
    path = own_vae / "latent_map.json"
    content = _latent_map(own_vae)
    content["mu"][0][0] += 1.0
    path.write_text(json.dumps(content))
    with pytest.raises(
        ModelLoadError, match=r"model 'tiny-vae': .*latent_map.json has sha256 .* corrupt"
    ):
        _start(own_vae.parent)
    path.unlink()
    with pytest.raises(ModelLoadError, match=r"latent map file .*latent_map.json is missing"):
        _start(own_vae.parent)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m["mu"].pop(), "points is 120, but mu holds 119 points and labels 120"),
        (lambda m: m["labels"].pop(), "points is 120, but mu holds 120 points and labels 119"),
        (lambda m: m["mu"][3].append(0.5), "mu.3: List should have at most 2 items"),
        (lambda m: m["mu"][5].__setitem__(1, float("nan")), "mu.5.1: Input should be a finite"),
        (lambda m: m["labels"].__setitem__(0, "7"), "labels.0: Input should be a valid integer"),
    ],
)
def test_malformed_map_is_refused_at_load(
    own_vae: Path, change: Callable[[dict[str, Any]], object], problem: str
) -> None:
    """A map whose sha256 matches (re-recorded after the change) but whose content is wrong."""
    path = own_vae / "latent_map.json"
    content = _latent_map(own_vae)
    change(content)
    path.write_text(json.dumps(content))  # NaN is written as the literal NaN
    manifest = json.loads((own_vae / "manifest.json").read_text())
    manifest["latent_map"]["sha256"] = sha256sum(path)
    (own_vae / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError) as info:
        _start(own_vae.parent)
    message = str(info.value)
    assert message.startswith("model 'tiny-vae': ") and "latent_map.json is invalid" in message
    assert problem in message


def test_manifest_and_map_must_agree_on_the_points(own_vae: Path) -> None:
    manifest = json.loads((own_vae / "manifest.json").read_text())
    manifest["latent_map"]["points"] = 7
    (own_vae / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"holds 120 points of the test split, the manifest"):
        _start(own_vae.parent)


def test_export_command_takes_the_data_folder(
    vae_run: Path, tmp_path: Path, data_dir: Path
) -> None:
    from training.cli import main

    out = tmp_path / "models" / "from-cli"
    assert main(["export", str(vae_run), "--out", str(out), "--data-dir", str(data_dir)]) == 0
    latent_map = load_manifest(out).latent_map
    assert latent_map is not None and latent_map.points == N_TEST
    assert main(["export", str(vae_run), "--out", str(out), "--data-dir", str(tmp_path)]) == 0
    assert not (out / "latent_map.json").exists()  # no data there: exported without the map
