from __future__ import annotations

import ast
import inspect
import itertools
from pathlib import Path

import service.settings
from service.manifest import load_manifest
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_models_match_their_manifests() -> None:
    folders = sorted(p.parent for p in (ROOT / "models").glob("*/manifest.json"))
    names = ["fashion-vae", "mnist-ae", "mnist-ae-2d", "mnist-vae", "mnist-vae-2d"]
    assert [f.name for f in folders] == names
    for folder in folders:
        manifest = load_manifest(folder)  # checks each ONNX file's sha256
        assert manifest.name == folder.name
        assert manifest.metrics is not None, f"{folder.name}: exported before evaluation"


def settings_docstrings() -> dict[str, str]:
    """Each Settings field's docstring (the string right below its annotated assignment), read
    from the source as pydantic's `use_attribute_docstrings` would."""
    tree = ast.parse(inspect.getsource(service.settings))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings").body
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def test_every_setting_has_a_docstring() -> None:
    docs = settings_docstrings()
    assert set(docs) == set(Settings.model_fields)
    assert all(docs.values())


def settings_rows() -> list[str]:
    """The settings table of docs/settings.md, one row per setting, from the settings' own
    docstrings."""
    rows = []
    docs = settings_docstrings()
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, list):
            default = ",".join(map(str, default))
        if default is None or default == "":
            default = "unset"
        description = " ".join(docs.get(name, "").split())
        rows.append(f"| `VAE_{name.upper()}` | `{default}` | {description} |")
    return rows


def test_docs_document_every_setting_as_the_code_does() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    for row in settings_rows():
        assert row in page, f"docs/settings.md settings table is out of date; expected row:\n{row}"
