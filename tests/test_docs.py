"""The documentation: its links and sample images, the commands it shows, and the build hook
that writes the OpenAPI document. (`make docs` builds the site itself with --strict in CI.)"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps
from pydantic import BaseModel

import service.manifest as manifest_module
from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PAGES = [ROOT / "README.md", EXAMPLES / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(page: Path) -> set[str]:
    """The ids Python-Markdown's toc extension (MkDocs) and GitHub give the page's headings."""
    anchors = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = re.sub(r"[^\w\s-]", "", line.lstrip("#")).strip().lower()
            anchors.add(re.sub(r"[-\s]+", "-", title))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings_that_exist(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not followed here
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: link to {target}, no such file"
        if anchor and destination.suffix == ".md":
            assert anchor in heading_anchors(destination), f"{page.name}: no #{anchor} in {path}"


def test_every_example_file_named_in_the_docs_exists() -> None:
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"examples/([\w.-]+\.(?:png|jpg))", page.read_text()))
    assert named >= {"digit-7.png", "fashion-ankle-boot.png", "photo-digit-2.jpg"}
    for name in named:
        assert (EXAMPLES / name).is_file(), f"examples/{name} is named in the docs but missing"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), np.float32) / 255


def test_sample_images_are_what_examples_readme_says() -> None:
    for name in ("digit-7.png", "fashion-ankle-boot.png"):
        with Image.open(EXAMPLES / name) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (28, 28), "L")
        assert pixels(EXAMPLES / name).mean() < 0.5, f"{name}: not bright on dark"
    with Image.open(EXAMPLES / "photo-digit-2.jpg") as photo:
        assert photo.format == "JPEG" and photo.mode == "RGB" and min(photo.size) >= 100
    assert pixels(EXAMPLES / "photo-digit-2.jpg").mean() > 0.5, "the photo is not dark on light"
    for path in EXAMPLES.glob("*.*g"):
        assert path.stat().st_size < 30_000, f"{path.name} is too large for the repository"


@pytest.fixture(scope="module")
def bundled() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=ROOT / "models"))) as client:
        yield client


def reconstruction_error(client: TestClient, png: bytes, model: str) -> float:
    """Mean squared error per pixel of decode(mu) against the 28 x 28 input the model saw."""
    response = client.post(
        "/reconstruct", files=[("images", ("x.png", png, "image/png"))], data={"model": model}
    )
    assert response.status_code == 200, response.text
    out = np.array(response.json()["images"][0], np.float32)
    with Image.open(io.BytesIO(png)) as image:
        seen = np.asarray(image.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    return float(((out - seen.astype(np.float32) / 255) ** 2).mean())


@pytest.mark.parametrize(
    ("name", "model"), [("digit-7.png", "mnist-vae"), ("fashion-ankle-boot.png", "fashion-vae")]
)
def test_the_sample_images_reconstruct_well_on_their_models(
    bundled: TestClient, name: str, model: str
) -> None:
    # The bundled models' average is 0.0092 (MNIST) and 0.0141 (Fashion-MNIST) per pixel.
    assert reconstruction_error(bundled, (EXAMPLES / name).read_bytes(), model) < 0.02


def test_the_documented_photo_recipe_gives_an_mnist_like_input(bundled: TestClient) -> None:
    """docs/api.md, "Photos of dark ink on paper": invert, then push the paper to black."""
    with Image.open(EXAMPLES / "photo-digit-2.jpg") as photo:
        prepared = ImageOps.autocontrast(ImageOps.invert(photo.convert("L")), cutoff=(60, 1))
    buffer = io.BytesIO()
    prepared.save(buffer, format="PNG")
    assert "ImageOps.autocontrast(ImageOps.invert(" in (ROOT / "docs" / "api.md").read_text()
    assert reconstruction_error(bundled, buffer.getvalue(), "mnist-vae") < 0.03


def load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_hook_writes_the_services_openapi_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAE_MAX_IMAGES", "not a number")  # the build must not read VAE_* settings
    hooks = load_hooks()
    hooks.on_pre_build({"docs_dir": str(tmp_path)})
    written = tmp_path / "openapi.json"
    monkeypatch.delenv("VAE_MAX_IMAGES")
    assert json.loads(written.read_text()) == create_app().openapi()
    assert {"/encode", "/reconstruct", "/generate", "/decode"} <= set(
        json.loads(written.read_text())["paths"]
    )

    # Unchanged: not rewritten, so `mkdocs serve` (which watches docs/) does not rebuild forever.
    os.utime(written, ns=(0, 0))
    hooks.on_pre_build({"docs_dir": str(tmp_path)})
    assert written.stat().st_mtime_ns == 0
    # Stale (say, after an endpoint changed): rewritten.
    written.write_text("{}")
    hooks.on_pre_build({"docs_dir": str(tmp_path)})
    assert json.loads(written.read_text()) == create_app().openapi()


def _manifest_models() -> list[type[BaseModel]]:
    """Manifest and every model its fields hold (found in their annotations, so that a new
    section of the schema is found too), and the latent map file's model."""
    found: list[type[BaseModel]] = []
    pending: list[Any] = [manifest_module.Manifest, manifest_module.LatentMap]
    while pending:
        annotation = pending.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in found:
                found.append(annotation)
                pending += [f.annotation for f in annotation.model_fields.values()]
        else:
            pending += list(typing.get_args(annotation))
    return found


def test_the_manifest_page_explains_every_field_of_the_schema() -> None:
    """docs/serving-your-model.md has one table per model of service/manifest.py, under a heading
    naming it, with a row for each of its fields: the page cannot fall behind the schema."""
    page = (ROOT / "docs" / "serving-your-model.md").read_text()
    sections = re.split(r"^#+ ", page, flags=re.MULTILINE)
    models = _manifest_models()
    assert {m.__name__ for m in models} >= {"Manifest", "InputSpec", "TensorSpec", "LatentMap"}
    for model in models:
        [section] = [s for s in sections if f"(`{model.__name__}`)" in s.partition("\n")[0]]
        rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", section, re.MULTILINE)}
        missing = set(model.model_fields) - rows
        assert not missing, f"{model.__name__}: no row for {sorted(missing)}"
        unknown = rows - set(model.model_fields)
        assert not unknown, f"{model.__name__}: rows for fields it lacks: {sorted(unknown)}"
