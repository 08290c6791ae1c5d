from __future__ import annotations

from pathlib import Path

from service.settings import Settings
from training.export import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_models_match_their_manifests() -> None:
    folders = sorted(p.parent for p in (ROOT / "models").glob("*/manifest.json"))
    assert [f.name for f in folders] == ["fashion-vae", "mnist-ae", "mnist-vae", "mnist-vae-2d"]
    for folder in folders:
        manifest = read_manifest(folder)  # checks each ONNX file's sha256
        assert manifest["name"] == folder.name
        assert manifest["metrics"] is not None, f"{folder.name}: exported before evaluation"


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`VAE_{name.upper()}`" in readme, name
