"""MkDocs hook: writes the service's OpenAPI document to docs/openapi.json before each build.

The API page renders that file (neoteroi-mkdocs' `[OAD(openapi.json)]`), and the site offers it
for download, so the reference always describes the code being built. The document comes from
`create_app().openapi()`, which needs no model loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.app import create_app
from service.settings import Settings

OPENAPI_FILE = "openapi.json"


def on_pre_build(config: Any) -> None:
    """Runs before MkDocs collects the files of docs/, so the fresh file is among them."""
    path = Path(config["docs_dir"]) / OPENAPI_FILE
    # Default settings without reading this shell's VAE_* variables, which a build must not
    # depend on (a bad one would stop it).
    document = create_app(Settings.model_construct()).openapi()
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    # `mkdocs serve` rebuilds whenever docs/ changes: write only what differs.
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
