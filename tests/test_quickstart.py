"""The shortest path from a clone to a served model, as the documentation gives it, on tiny data.

The `python -m training` lines run in-process through the CLI's `main` with exactly the documented
arguments (the set-up lines are checked in the Makefile); `make run` is `python -m service` on
./models, here the same app behind a TestClient.
"""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from training.cli import main

from .conftest import digits, write_mnist_like

ROOT = Path(__file__).resolve().parents[1]

# Keep in step with the shortest path in the documentation.
QUICKSTART = [
    "make train-env",
    ". .venv/bin/activate",
    "python -m training train --dataset mnist --data-dir data --out runs/my-vae --epochs 10",
    "python -m training evaluate runs/my-vae",
    "python -m training report runs/my-vae",
    "python -m training export runs/my-vae --out models/my-vae",
    "make run",
]
SET_UP = QUICKSTART[:2]
TRAINING_PREFIX = ["python", "-m", "training"]


def test_make_train_env_installs_the_training_extra_only() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^train-env: \$\(VENV\)/\.installed-train\b", makefile, re.M)
    recipe = re.search(r"^\$\(VENV\)/\.installed-train: .*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None
    installs = re.findall(r"pip install .*", recipe.group(1))
    assert len(installs) == 1 and installs[0].endswith("-e '.[train]'")


def test_quickstart_from_clone_to_served_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MNIST's layout and file names, small: 400 training images once the default 5,000 are
    # carved off for validation, and 40 test images.
    write_mnist_like(tmp_path / "data", n_train=5400, n_test=40)
    monkeypatch.chdir(tmp_path)
    assert SET_UP == ["make train-env", ". .venv/bin/activate"] and QUICKSTART[-1] == "make run"
    for command in QUICKSTART[len(SET_UP) : -1]:
        argv = shlex.split(command)
        assert argv[:3] == TRAINING_PREFIX, command
        assert main(argv[3:]) == 0, command

    run = tmp_path / "runs" / "my-vae"
    assert (run / "checkpoints" / "best.pt").exists() and (run / "loss_curves.png").exists()
    assert sorted(p.name for p in (tmp_path / "models" / "my-vae").iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "manifest.json",
    ]

    # `make run`: the service on ./models with its default settings.
    with TestClient(create_app(Settings(model_dir=Path("models")))) as client:
        listed = client.get("/models").json()
        [model] = [m for m in listed["models"] if m["name"] == "my-vae"]
        assert model["latent_dim"] == 16
        # The evaluation at its defaults reached the manifest: k = 1000 over every test image.
        iwae = model["manifest"]["metrics"]["iwae"]
        assert (iwae["k"], iwae["images"]) == (1000, 40) and iwae["nll_stderr"] > 0

        x = digits(3)
        encoded = client.post("/encode?model=my-vae", json={"images": x.tolist()})
        assert encoded.status_code == 200, encoded.text
        assert np.array(encoded.json()["mu"]).shape == (3, 16)

        png = io.BytesIO()
        Image.fromarray((x[0] * 255).astype(np.uint8)).save(png, format="PNG")
        rebuilt = client.post(
            "/reconstruct?model=my-vae", files={"images": ("digit.png", png.getvalue())}
        )
        assert rebuilt.status_code == 200, rebuilt.text
        images = np.array(rebuilt.json()["images"])
        assert images.shape[0] == 1 and images.size == 784
        assert images.min() >= 0.0 and images.max() <= 1.0
