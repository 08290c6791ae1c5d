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


def settings_rows() -> list[str]:
    """The README's settings table, one row per setting, from the settings' own docstrings."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, list):
            default = ",".join(map(str, default))
        if default is None or default == "":
            default = "unset"
        description = " ".join((field.description or "").split())
        rows.append(f"| `VAE_{name.upper()}` | `{default}` | {description} |")
    return rows


def test_readme_documents_every_setting_as_the_code_does() -> None:
    readme = (ROOT / "README.md").read_text()
    for row in settings_rows():
        assert row in readme, f"README settings table is out of date; expected row:\n{row}"
