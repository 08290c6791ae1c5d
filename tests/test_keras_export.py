"""A real Keras export, imported with `python -m service.importer` and served: every endpoint
against running the ONNX files directly with onnxruntime.

The files in tests/data/keras_vae are what Keras 3's own exporter wrote for the keras.io conv VAE
(examples/keras_vae/train_and_export.py, see the README there): channels-last images, names the
exporter chose (`keras_tensor`, `247`, `241`, `201`) and batch axes named differently in every
tensor. They run everywhere without keras; where keras is installed, a fresh export of both
variants (conv and flat) is imported and served too.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.importer.cli import main as import_model
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
KERAS_FILES = ROOT / "tests" / "data" / "keras_vae"
SCRIPT = ROOT / "examples" / "keras_vae" / "train_and_export.py"
LATENT = 2
NPY = "application/x-npy"


class KerasPair:
    """The two files run with onnxruntime, converted by hand as a Keras user would."""

    def __init__(self, folder: Path, flat: bool = False) -> None:
        options = {"providers": ["CPUExecutionProvider"]}
        self.encoder = ort.InferenceSession(str(folder / "encoder.onnx"), **options)
        self.decoder = ort.InferenceSession(str(folder / "decoder.onnx"), **options)
        self.flat = flat

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 28, 28) in [0, 1] -> z_mean, z_log_var (Keras' output order)."""
        x = images.reshape(len(images), 784) if self.flat else images[..., None]
        [feed] = self.encoder.get_inputs()
        z_mean, z_log_var = self.encoder.run(None, {feed.name: np.ascontiguousarray(x)})
        return z_mean, z_log_var

    def decode(self, z: np.ndarray) -> np.ndarray:
        """(N, 2) -> (N, 28, 28)."""
        [feed] = self.decoder.get_inputs()
        [images] = self.decoder.run(None, {feed.name: z})
        return images.reshape(len(z), 28, 28)


def pictures(n: int, seed: int = 0) -> np.ndarray:
    """n random 28 x 28 images on 8-bit levels."""
    levels = np.random.default_rng(seed).integers(0, 256, (n, 28, 28))
    return (levels / 255).astype(np.float32)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def close(actual: object, expected: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=1e-4, atol=2e-5)


def imported(encoder: Path, decoder: Path, out: Path, *flags: str) -> str:
    """`python -m service.importer` on the pair; its summary."""
    argv = ["--encoder", str(encoder), "--decoder", str(decoder), "--out", str(out), *flags]
    summary = io.StringIO()
    with redirect_stdout(summary):
        code = import_model(argv)
    assert code == 0, f"the importer refused {out.name} (exit {code})"
    return summary.getvalue()


def test_the_committed_files_are_what_keras_writes() -> None:
    # What the docs' Keras example and the fixtures' README say of them.
    pair = KerasPair(KERAS_FILES)
    [images] = pair.encoder.get_inputs()
    assert (images.name, images.type, images.shape) == (
        "keras_tensor",
        "tensor(float)",
        ["batch", 28, 28, 1],
    )
    assert [(o.name, o.shape) for o in pair.encoder.get_outputs()] == [
        ("247", ["Add247_dim_0", LATENT]),
        ("241", ["Add247_dim_0", LATENT]),
    ]
    [latent] = pair.decoder.get_inputs()
    assert (latent.name, latent.shape) == ("keras_tensor_8", ["batch", LATENT])
    assert [(o.name, o.shape) for o in pair.decoder.get_outputs()] == [
        ("201", ["Sigmoid201_dim_0", 28, 28, 1])
    ]
    decoded = pair.decode(np.random.default_rng(0).standard_normal((5, LATENT), np.float32))
    assert decoded.min() >= 0 and decoded.max() <= 1  # sigmoid probabilities


# --- the committed export, imported and served ------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    encoder, decoder = KERAS_FILES / "encoder.onnx", KERAS_FILES / "decoder.onnx"
    imported(encoder, decoder, folder / "keras-vae", "--variance", "logvar")
    return folder


@pytest.fixture(scope="module")
def served(models: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=models))) as client:
        yield client


def test_the_importer_reads_the_keras_graphs_without_being_told(models: Path) -> None:
    # Only --variance logvar is given (the importer would otherwise note that z_log_var of a
    # briefly trained model is never negative): names, layouts and the sigmoid come from the
    # graphs.
    manifest = json.loads((models / "keras-vae" / "manifest.json").read_text())
    assert manifest["kind"] == "vae" and manifest["latent_dim"] == LATENT
    assert manifest["input"]["shape"] == [1, 28, 28]
    assert manifest["input"]["layout"] == "NHWC"
    assert manifest["latent"]["code_output"] == "247"  # the first output: z_mean
    assert manifest["latent"]["logvar_output"] == "241"
    output = manifest["output"]
    assert (output["tensor"], output["layout"], output["activation"]) == ("201", "NHWC", "none")


def test_encode_matches_onnxruntime(served: TestClient) -> None:
    pair = KerasPair(KERAS_FILES)
    images = pictures(3)
    z_mean, z_log_var = pair.encode(images)
    nested = served.post("/encode", json={"model": "keras-vae", "images": images.tolist()})
    assert nested.status_code == 200, nested.text
    flat = served.post(
        "/encode", json={"model": "keras-vae", "images": images.reshape(3, -1).tolist()}
    )
    for answer in (nested.json(), flat.json()):
        close(answer["mu"], z_mean)
        close(answer["logvar"], z_log_var)
    as_npy = served.post(
        "/encode?model=keras-vae", content=npy(images), headers={"Content-Type": NPY, "Accept": NPY}
    )
    assert as_npy.status_code == 200, as_npy.text
    close(np.load(io.BytesIO(as_npy.content))["mu"], z_mean)


def test_reconstruct_generate_and_decode_match_onnxruntime(served: TestClient) -> None:
    pair = KerasPair(KERAS_FILES)
    images = pictures(2, seed=1)
    z_mean, z_log_var = pair.encode(images)
    body = {"model": "keras-vae", "images": images.tolist()}
    answer = served.post("/reconstruct", json=body)
    assert answer.status_code == 200, answer.text
    close(answer.json()["images"], pair.decode(z_mean))

    sampled = served.post("/reconstruct", json={**body, "mode": "sampled", "seed": 7, "samples": 3})
    eps = np.random.default_rng(7).standard_normal((2, 3, LATENT), np.float32)
    z = (z_mean[:, None] + np.exp(0.5 * z_log_var)[:, None] * eps).reshape(-1, LATENT)
    close(sampled.json()["images"], pair.decode(z.astype(np.float32)).reshape(2, 3, 28, 28))

    generated = served.post("/generate", json={"model": "keras-vae", "n": 4, "seed": 5}).json()
    prior = np.random.default_rng(5).standard_normal((4, LATENT), np.float32)
    close(generated["z"], prior)
    close(generated["images"], pair.decode(prior))

    z = np.random.default_rng(3).standard_normal((3, LATENT)).astype(np.float32)
    decoded = served.post("/decode", json={"model": "keras-vae", "z": z.tolist()})
    assert decoded.status_code == 200, decoded.text
    close(decoded.json()["images"], pair.decode(z))
    png = served.post(
        "/decode", json={"model": "keras-vae", "z": z[:1].tolist()}, headers={"Accept": "image/png"}
    )
    picture = Image.open(io.BytesIO(png.content))
    assert (picture.mode, picture.size) == ("L", (28, 28))
    close(np.asarray(picture, np.float32) / 255, np.round(pair.decode(z[:1])[0] * 255) / 255)


def test_oip_serves_the_keras_graphs_under_their_names(served: TestClient) -> None:
    encoder = served.get("/v2/models/keras-vae-encoder").json()
    assert encoder["inputs"][0]["shape"] == [-1, 28, 28, 1]
    assert [o["name"] for o in encoder["outputs"]] == ["247", "241"]
    z = np.random.default_rng(8).standard_normal((2, LATENT)).astype(np.float32)
    body = {
        "inputs": [
            {
                "name": "keras_tensor_8",
                "shape": [2, LATENT],
                "datatype": "FP32",
                "data": z.ravel().tolist(),
            }
        ]
    }
    answer = served.post("/v2/models/keras-vae-decoder/infer", json=body)
    assert answer.status_code == 200, answer.text
    [output] = answer.json()["outputs"]
    assert (output["name"], output["shape"]) == ("201", [2, 28, 28, 1])
    close(np.reshape(output["data"], (2, 28, 28)), KerasPair(KERAS_FILES).decode(z))


# --- a fresh export, where keras is installed ---------------------------------------------------


@pytest.mark.parametrize("flat", [False, True], ids=["conv", "flat"])
def test_a_fresh_keras_export_imports_and_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flat: bool
) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # keras' default backend is tensorflow
    pytest.importorskip("keras")
    exported = tmp_path / "export"
    command = [sys.executable, str(SCRIPT), "--out", str(exported), "--epochs", "1"]
    subprocess.run([*command, *(["--flat"] if flat else [])], check=True, capture_output=True)
    flags = ["--variance", "logvar", *(["--image-shape", "1,28,28"] if flat else [])]
    summary = imported(
        exported / "encoder.onnx", exported / "decoder.onnx", tmp_path / "models" / "k", *flags
    )
    assert ("flat (HWC order)" if flat else "NHWC") in summary
    pair = KerasPair(exported, flat)
    images = pictures(2)
    with TestClient(create_app(Settings(model_dir=tmp_path / "models"))) as client:
        answer = client.post("/reconstruct", json={"model": "k", "images": images.tolist()})
        assert answer.status_code == 200, answer.text
        close(answer.json()["images"], pair.decode(pair.encode(images)[0]))
