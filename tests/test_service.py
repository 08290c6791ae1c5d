"""The service over HTTP: tiny models exported in tmp_path -> settings -> app -> client."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.manifest import ModelLoadError
from service.models.runtime import CPU, CUDA, resolve_providers
from service.settings import Settings
from training.data import preprocess_image

from .conftest import digits

ROOT = Path(__file__).resolve().parents[1]


def start(settings: Settings) -> None:
    """Run the app's start-up (the lifespan) and shut it down again."""
    with TestClient(create_app(settings)):
        pass


def post(client: TestClient, path: str, body: dict[str, Any], **kwargs: Any) -> Any:
    response = client.post(path, json=body, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


# --- happy paths ----------------------------------------------------------------------------------


def test_encode_flat_and_nested_agree(client: TestClient) -> None:
    x = digits(3)
    nested = post(client, "/encode", {"images": x.tolist()})
    flat = post(client, "/encode", {"images": x.reshape(3, 784).tolist()})
    assert nested == flat
    assert nested["model"] == "tiny-vae" and nested["latent_dim"] == 2
    assert np.array(nested["mu"]).shape == (3, 2) and np.array(nested["logvar"]).shape == (3, 2)


def test_encode_an_autoencoder(client: TestClient) -> None:
    body = post(client, "/encode?model=tiny-ae", {"images": digits(2).tolist()})
    assert body["model"] == "tiny-ae" and body["logvar"] is None
    assert np.array(body["mu"]).shape == (2, 4)


def test_encode_matches_the_trained_torch_model(client: TestClient, vae_run: Path) -> None:
    import torch

    from training.train import load_run

    x = digits(4)
    body = post(client, "/encode", {"images": x.tolist()})
    with torch.no_grad():
        mu, logvar = load_run(vae_run).model.encode(torch.from_numpy(x[:, None]))
    assert logvar is not None
    np.testing.assert_allclose(body["mu"], mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(body["logvar"], logvar.numpy(), atol=1e-5)


def test_deterministic_reconstruct_is_decode_of_mu(client: TestClient) -> None:
    x = digits(3).tolist()
    mu = post(client, "/encode", {"images": x})["mu"]
    decoded = post(client, "/decode", {"z": mu})["images"]
    first = post(client, "/reconstruct", {"images": x})
    second = post(client, "/reconstruct", {"images": x, "mode": "deterministic"})
    assert first == second  # identical on every call
    assert first["mode"] == "deterministic" and first["seed"] is None
    np.testing.assert_allclose(first["images"], decoded, atol=1e-6)
    assert np.array(first["images"]).shape == (3, 28, 28)


def test_sampled_reconstruct_is_seeded_and_uses_exp_half_logvar(client: TestClient) -> None:
    x = digits(2).tolist()
    a = post(client, "/reconstruct", {"images": x, "mode": "sampled", "seed": 11})
    b = post(client, "/reconstruct", {"images": x, "mode": "sampled", "seed": 11})
    c = post(client, "/reconstruct", {"images": x, "mode": "sampled", "seed": 12})
    assert a == b and a["seed"] == 11
    assert not np.allclose(a["images"], c["images"])
    # What the service computed equals decode(mu + exp(logvar / 2) * eps) with eps from the seed.
    enc = post(client, "/encode", {"images": x})
    mu, logvar = np.array(enc["mu"], np.float32), np.array(enc["logvar"], np.float32)
    eps = np.random.default_rng(11).standard_normal((2, 1, 2), dtype=np.float32)[:, 0]
    expected = post(client, "/decode", {"z": (mu + np.exp(0.5 * logvar) * eps).tolist()})
    np.testing.assert_allclose(a["images"], expected["images"], atol=1e-5)


def test_sampled_without_seed_returns_one_that_reproduces(client: TestClient) -> None:
    x = digits(1).tolist()
    first = post(client, "/reconstruct", {"images": x, "mode": "sampled"})
    assert isinstance(first["seed"], int)
    again = post(client, "/reconstruct", {"images": x, "mode": "sampled", "seed": first["seed"]})
    assert again["images"] == first["images"]


def test_several_samples_per_input_are_grouped_by_input(client: TestClient) -> None:
    x = digits(3).tolist()
    body = post(client, "/reconstruct", {"images": x, "mode": "sampled", "seed": 5, "samples": 4})
    images = np.array(body["images"])
    assert images.shape == (3, 4, 28, 28)
    assert not np.allclose(images[0, 0], images[0, 1])  # draws differ within an input


def test_generate(client: TestClient) -> None:
    a = post(client, "/generate", {"n": 5, "seed": 3})
    b = post(client, "/generate", {"n": 5, "seed": 3, "temperature": 0.5})
    assert a["seed"] == 3 and np.array(a["images"]).shape == (5, 28, 28)
    assert np.array(a["z"]).shape == (5, 2)
    np.testing.assert_allclose(np.array(b["z"]), 0.5 * np.array(a["z"]), rtol=1e-6)
    np.testing.assert_allclose(
        post(client, "/decode", {"z": a["z"]})["images"], a["images"], atol=1e-6
    )
    assert post(client, "/generate", {"n": 5, "seed": 4})["z"] != a["z"]
    mean = post(client, "/generate", {"n": 2, "temperature": 0})  # the prior's mean, z = 0
    assert np.array(mean["z"]).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    unseeded = post(client, "/generate", {})
    assert len(unseeded["images"]) == 1 and isinstance(unseeded["seed"], int)


def test_png_output_is_a_grid(client: TestClient) -> None:
    png = {"Accept": "image/png"}
    cases = [
        ("/generate", {"n": 5, "seed": 1}, (3 * 28, 2 * 28)),  # 5 -> 3 columns x 2 rows
        ("/decode", {"z": [[0.0, 0.0]]}, (28, 28)),
        (
            "/reconstruct",
            {"images": digits(2).tolist(), "mode": "sampled", "samples": 3},
            (3 * 28, 2 * 28),
        ),
    ]
    for path, body, size in cases:
        response = client.post(path, json=body, headers=png)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(response.content)) as img:
            assert img.size == size and img.mode == "L", path
    # The grid's first tile is the first image, at 8-bit precision.
    body = post(client, "/generate", {"n": 5, "seed": 1})
    with Image.open(
        io.BytesIO(client.post("/generate", json={"n": 5, "seed": 1}, headers=png).content)
    ) as img:
        tile = np.asarray(img, dtype=np.float32)[:28, :28] / 255
    np.testing.assert_allclose(tile, body["images"][0], atol=1 / 255)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_matches_json_input(client: TestClient) -> None:
    pixels = (digits(2) * 255).round().astype(np.uint8)
    files = [("images", (f"{i}.png", _png_bytes(p), "image/png")) for i, p in enumerate(pixels)]
    uploaded = client.post("/encode", files=files)
    assert uploaded.status_code == 200, uploaded.text
    as_json = post(client, "/encode", {"images": (pixels / 255.0).tolist()})
    np.testing.assert_allclose(uploaded.json()["mu"], as_json["mu"], atol=1e-6)
    # Form fields ride along: model, mode, seed and samples.
    response = client.post(
        "/reconstruct", files=files[:1], data={"mode": "sampled", "seed": "9", "samples": "2"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["seed"] == 9 and np.array(response.json()["images"]).shape == (
        1,
        2,
        28,
        28,
    )


def test_upload_is_preprocessed_exactly_as_in_training(client: TestClient) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    # Noise is about as bright as it is dark: `auto` could go either way, so it is turned off.
    response = client.post(
        "/encode",
        files=[("images", ("big.jpg", _png_bytes(rgb), "image/png"))],
        data={"invert": "false"},
    )
    expected = post(client, "/encode", {"images": [preprocess_image(image).tolist()]})
    np.testing.assert_allclose(response.json()["mu"], expected["mu"], atol=1e-6)


def test_models_and_health(client: TestClient) -> None:
    listing = client.get("/models").json()
    assert listing["default"] == "tiny-vae"
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {"tiny-vae", "tiny-ae"}
    assert by_name["tiny-vae"]["providers"] == [CPU] and by_name["tiny-vae"]["default"] is True
    assert by_name["tiny-ae"]["kind"] == "ae" and by_name["tiny-ae"]["manifest"]["latent_dim"] == 4
    assert client.get("/models/tiny-ae").json()["name"] == "tiny-ae"
    missing = client.get("/models/nope")
    assert missing.status_code == 404 and "tiny-vae" in missing.json()["detail"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_not_ready_before_the_models_are_loaded(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"retry_after_s": 7}))
    bare = TestClient(app)  # not entered: the lifespan has not loaded anything
    assert bare.get("/healthz").status_code == 200
    assert bare.get("/readyz").status_code == 503
    # Every way in says so, with the Retry-After of the settings: the fast path, the routes
    # (an upload, the model list) and the Open Inference Protocol (in its own shape).
    refused = bare.post("/encode", json={"images": digits(1).tolist()})
    assert refused.status_code == 503 and "loading" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "7"  # clients know when to come back
    png = _png_bytes(np.zeros((28, 28), np.uint8))
    upload = bare.post("/encode", files={"images": ("a.png", png)})
    assert upload.status_code == 503 and upload.headers["retry-after"] == "7"
    listing = bare.get("/models")
    assert listing.status_code == 503 and listing.headers["retry-after"] == "7"
    z = {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 0.0]}
    oip = bare.post("/v2/models/tiny-vae-decoder/infer", json={"inputs": [z]})
    assert oip.status_code == 503 and oip.headers["retry-after"] == "7"
    assert "loading" in oip.json()["error"]


# --- bad input ------------------------------------------------------------------------------------

IMG = digits(1).tolist()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (
            "/encode",
            {"images": [[0.5] * 780]},
            422,
            "images[0]: expected 28 rows of 28 numbers (H x W), or 784 numbers; got 780 numbers",
        ),
        ("/encode", {"images": [[[0.5] * 28] * 27]}, 422, "images[0]: expected 28 rows of 28"),
        ("/encode", {"images": [[[0.5] * 27] * 28]}, 422, "got 28 rows of 27 numbers"),
        ("/encode", {"images": [[2.0] * 784]}, 422, "images[0]: pixel values must be in [0, 1]"),
        ("/encode", {"images": [*IMG, [[-0.1] * 28] * 28]}, 422, "images[1]: pixel values"),
        ("/encode", {"images": []}, 422, "images: List should have at least 1 item"),
        ("/encode", {"images": [["a"] * 784]}, 422, "images[0][0]: Input should be a valid number"),
        ("/encode", {"images": [[True] * 784]}, 422, "Input should be a valid number"),
        ("/encode", {}, 422, "images: Field required"),
        ("/encode", {"images": IMG, "colour": 1}, 422, "colour: Extra inputs are not permitted"),
        (
            "/encode",
            {"images": IMG, "model": "nope"},
            404,
            "no model named 'nope'; available: tiny-ae, tiny-vae",
        ),
        ("/encode", {"images": IMG * 65}, 422, "65 images; at most 64"),
        (
            "/reconstruct",
            {"images": IMG, "mode": "fuzzy"},
            422,
            "mode: Input should be 'deterministic' or 'sampled'",
        ),
        ("/reconstruct", {"images": IMG, "seed": 3}, 422, "apply only to mode='sampled'"),
        (
            "/reconstruct",
            {"images": IMG, "mode": "sampled", "seed": -1},
            422,
            "seed: Input should be greater than or equal to 0",
        ),
        (
            "/reconstruct",
            {"images": IMG, "mode": "sampled", "samples": 9},
            422,
            "samples: 9; at most 8",
        ),
        (
            "/reconstruct",
            {"images": IMG * 20, "mode": "sampled", "samples": 4},
            422,
            "20 images x 4 samples",
        ),
        (
            "/reconstruct",
            {"images": IMG, "mode": "sampled", "model": "tiny-ae"},
            422,
            "is an autoencoder",
        ),
        ("/generate", {"n": 0}, 422, "n: Input should be greater than or equal to 1"),
        ("/generate", {"n": 33}, 422, "n: 33; at most 32"),
        ("/generate", {"n": "3"}, 422, "n: Input should be a valid integer"),
        (
            "/generate",
            {"temperature": -1},
            422,
            "temperature: Input should be greater than or equal to 0",
        ),
        ("/generate", {"model": "tiny-ae"}, 422, "nothing made its codes follow N(0, I)"),
        (
            "/decode",
            {"z": [[0.0, 0.0, 0.0]]},
            422,
            "z[0]: has 3 numbers but this model's latent size is 2",
        ),
        ("/decode", {"z": []}, 422, "z: List should have at least 1 item"),
    ],
)
def test_bad_json_input(
    client: TestClient, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"images": [[NaN' + ", 0" * 783 + "]]}", "images[0]: NaN or infinity"),
        ('{"images": [[Infinity' + ", 0" * 783 + "]]}", "images[0]: NaN or infinity"),
        ('{"z": [[NaN, 0]]}', "z[0]: NaN or infinity"),
        # a list where a number belongs, with the right count of numbers when flattened
        (
            '{"images": [[[0.5]' + ", 0" * 783 + "]]}",
            "images[0][0]: Input should be a valid number",
        ),
        ('{"images": [[0.1, ', "Invalid JSON"),
        ('"just a string"', "Input should be an object"),
    ],
)
def test_bad_raw_bodies(client: TestClient, raw: str, message: str) -> None:
    path = "/decode" if raw.startswith('{"z"') else "/encode"
    response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_model_named_twice_must_agree(client: TestClient) -> None:
    response = client.post("/encode?model=tiny-ae", json={"images": IMG, "model": "tiny-vae"})
    assert response.status_code == 422 and "?model= says 'tiny-ae'" in response.json()["detail"]
    bad = client.post("/encode?model=../etc", json={"images": IMG})
    assert bad.status_code == 422 and "model: String should match pattern" in bad.json()["detail"]


def test_bad_uploads(client: TestClient) -> None:
    garbage = client.post("/encode", files=[("images", ("x.png", b"not an image", "image/png"))])
    assert (
        garbage.status_code == 422
        and "images[0] (x.png): is not a readable" in garbage.json()["detail"]
    )
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="GIF")
    gif = client.post("/encode", files=[("images", ("a.gif", buffer.getvalue(), "image/gif"))])
    assert gif.status_code == 415 and "send PNG or JPEG" in gif.json()["detail"]
    no_files = client.post(
        "/encode", data={"model": "tiny-vae"}, files=[("other", ("a", b"x", "text/plain"))]
    )
    assert no_files.status_code == 422 and "`images` parts" in no_files.json()["detail"]
    bad_seed = client.post(
        "/reconstruct",
        files=[("images", ("a.png", _png_bytes(np.zeros((28, 28), np.uint8)), "image/png"))],
        data={"mode": "sampled", "seed": "x"},
    )
    assert bad_seed.status_code == 422 and "seed: expected an integer" in bad_seed.json()["detail"]
    text = client.post("/encode", content=b"images", headers={"Content-Type": "text/plain"})
    assert (
        text.status_code == 415
        and "send application/json, application/x-npy or multipart/form-data"
        in text.json()["detail"]
    )


# --- start-up -------------------------------------------------------------------------------------


def test_corrupted_model_stops_the_start(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models"
    shutil.copytree(model_dir, broken)
    encoder = broken / "tiny-ae" / "encoder.onnx"
    encoder.write_bytes(encoder.read_bytes()[:-50])
    with pytest.raises(
        ModelLoadError, match=r"model 'tiny-ae': .*encoder.onnx has sha256 .* corrupt"
    ):
        start(Settings(model_dir=broken))
    done = subprocess.run(
        [sys.executable, "-m", "service", "--model-dir", str(broken), "--port", "8999"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "cannot start: model 'tiny-ae'" in done.stderr and "encoder.onnx" in done.stderr


def test_manifest_that_lies_about_tensors_stops_the_start(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models"
    shutil.copytree(model_dir / "tiny-vae", broken / "tiny-vae")
    manifest = json.loads((broken / "tiny-vae" / "manifest.json").read_text())
    manifest["encoder"]["outputs"][0]["name"] = "mean"
    manifest["latent"]["code_output"] = "mean"
    (broken / "tiny-vae" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ModelLoadError,
        match=r"model 'tiny-vae' cannot be served: .*encoder.onnx: has no tensor 'mean'; its "
        r"inputs and outputs are \['x', 'mu', 'logvar'\]: name one of them in the manifest",
    ):
        start(Settings(model_dir=broken))
    # Names right, a shape the graph does not have: the manifest is out of date.
    manifest["encoder"]["outputs"][0]["name"] = manifest["latent"]["code_output"] = "mu"
    manifest["encoder"]["outputs"].append({"name": "z", "dtype": "float32", "shape": ["N", 2]})
    (broken / "tiny-vae" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ModelLoadError,
        match=r"encoder.onnx: the graph's outputs are \['mu', 'logvar'\], the manifest lists "
        r"\['mu', 'logvar', 'z'\]: list them as the graph has them",
    ):
        start(Settings(model_dir=broken))


def test_settings_fail_with_a_message_naming_the_variable(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "VAE_PORT" in done.stderr
    with pytest.raises(ModelLoadError, match="holds no model"):
        start(Settings(model_dir=tmp_path))


def test_providers() -> None:
    assert resolve_providers(["auto"], [CUDA, CPU]) == [CUDA, CPU]
    assert resolve_providers(["auto"], [CPU]) == [CPU]
    assert resolve_providers([CPU], [CUDA, CPU]) == [CPU]
    with pytest.raises(
        ModelLoadError,
        match="asks for CUDAExecutionProvider, but this onnxruntime offers only CPUExecution",
    ):
        resolve_providers([CUDA, CPU], [CPU])


def test_unavailable_provider_is_a_start_up_error(model_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    settings = Settings(model_dir=model_dir, providers="CUDAExecutionProvider,CPUExecutionProvider")  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="VAE_PROVIDERS asks for CUDAExecutionProvider"):
        start(settings)


def test_the_service_never_imports_torch() -> None:
    code = "import sys, service.app, service.__main__; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# --- docs -----------------------------------------------------------------------------------------


def test_docs_assets_come_from_the_service(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn" not in html.lower() and "https://" not in html, page
        for asset in [part.split('"')[0] for part in html.split('"/static/')[1:]]:
            response = client.get(f"/static/{asset}")
            assert response.status_code == 200 and len(response.content) > 500, asset


def test_the_playground_and_its_comparison_view_are_served_with_their_assets(
    client: TestClient,
) -> None:
    playground = client.get("/")
    assert playground.status_code == 200 and "/static/playground/playground.js" in playground.text
    assert 'href="/?compare=mnist-ae-2d,mnist-vae-2d"' in playground.text  # linked from it
    # ?compare=A,B (whatever the names: the page checks them against GET /models) is the view.
    for query in ("compare=mnist-ae-2d,mnist-vae-2d", "compare=", "compare=nope&model=x"):
        page = client.get(f"/?{query}")
        assert page.status_code == 200 and "/static/playground/compare.js" in page.text, query
    for html in (playground.text, page.text):
        assert "https://" not in html
        for asset in [part.split('"')[0] for part in html.split('"/static/')[1:]]:
            response = client.get(f"/static/{asset}")
            assert response.status_code == 200 and len(response.content) > 500, asset
            assert b"https://" not in response.content, asset  # nothing from the internet


def test_openapi_has_examples_for_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/encode", "/reconstruct", "/generate", "/decode"):
        operation = spec["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["example"], path
        assert operation["responses"]["200"]["content"]["application/json"]["example"], path
    assert "multipart/form-data" in spec["paths"]["/encode"]["post"]["requestBody"]["content"]
    assert "image/png" in spec["paths"]["/generate"]["post"]["responses"]["200"]["content"]
    assert {"EncodeRequest", "ReconstructRequest", "GenerateRequest", "DecodeRequest"} <= set(
        spec["components"]["schemas"]
    )


# --- the committed default models, end to end -----------------------------------------------------


def test_bundled_default_models_end_to_end() -> None:
    with TestClient(create_app(Settings(model_dir=ROOT / "models"))) as client:
        listing = client.get("/models").json()
        assert listing["default"] == "mnist-vae"
        assert {m["name"] for m in listing["models"]} == {
            "mnist-vae",
            "mnist-vae-2d",
            "mnist-ae",
            "mnist-ae-2d",
            "fashion-vae",
        }
        one = np.zeros((28, 28), np.float32)
        one[4:24, 13:16] = 1.0  # a "1"
        recon = np.array(post(client, "/reconstruct", {"images": [one.tolist()]})["images"][0])
        assert np.abs(recon - one).mean() < 0.1  # a trained model gives the digit back
        generated = post(client, "/generate", {"model": "fashion-vae", "n": 4, "seed": 0})
        assert np.array(generated["images"]).shape == (4, 28, 28)
        for two_d in ("mnist-vae-2d", "mnist-ae-2d"):
            code = post(client, f"/encode?model={two_d}", {"images": [one.tolist()]})
            assert code["latent_dim"] == 2
        ae = post(client, "/reconstruct?model=mnist-ae-2d", {"images": [one.tolist()]})
        assert np.abs(np.array(ae["images"][0]) - one).mean() < 0.1


def test_openapi_error_bodies_are_what_the_service_sends(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(spec)
    ref = spec["paths"]["/models/{name}"]["get"]["responses"]["422"]["content"]["application/json"]
    assert ref["schema"]["$ref"] == "#/components/schemas/ErrorResponse"


# --- binary tensors ---------------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _load(content: bytes) -> Any:
    return np.load(io.BytesIO(content), allow_pickle=False)


NPY_HEADERS = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}


def test_binary_encode_matches_json(client: TestClient) -> None:
    x = digits(5)
    as_json = post(client, "/encode", {"images": x.tolist()})
    for body in (x, x.reshape(5, 784), x[:, None]):
        response = client.post(
            "/encode", content=_npy(body.astype(np.float32)), headers=NPY_HEADERS
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-npz"
        archive = _load(response.content)
        assert sorted(archive.files) == ["logvar", "mu"]
        np.testing.assert_allclose(archive["mu"], as_json["mu"], atol=1e-6)
        np.testing.assert_allclose(archive["logvar"], as_json["logvar"], atol=1e-6)
    # uint8 pixels are scaled by 1/255; an AE's archive holds its code as `mu` only.
    u8 = (x * 255).round().astype(np.uint8)
    response = client.post("/encode?model=tiny-ae", content=_npy(u8), headers=NPY_HEADERS)
    assert _load(response.content).files == ["mu"]
    expected = post(client, "/encode?model=tiny-ae", {"images": (u8 / 255).tolist()})
    np.testing.assert_allclose(_load(response.content)["mu"], expected["mu"], atol=1e-6)


def test_binary_reconstruct_generate_decode(client: TestClient) -> None:
    x = digits(3).astype(np.float32)
    response = client.post(
        "/reconstruct?mode=sampled&seed=4&samples=2", content=_npy(x), headers=NPY_HEADERS
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-seed"] == "4"
    as_json = post(
        client, "/reconstruct", {"images": x.tolist(), "mode": "sampled", "seed": 4, "samples": 2}
    )
    np.testing.assert_allclose(_load(response.content), as_json["images"], atol=1e-6)
    generated = client.post(
        "/generate", json={"n": 4, "seed": 2}, headers={"Accept": "application/x-npy"}
    )
    assert _load(generated.content).shape == (4, 28, 28) and generated.headers["x-seed"] == "2"
    z = np.zeros((2, 2), np.float32)
    decoded = client.post("/decode", content=_npy(z), headers=NPY_HEADERS)
    np.testing.assert_allclose(
        _load(decoded.content), post(client, "/decode", {"z": z.tolist()})["images"], atol=1e-6
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/encode", b"not npy", 400, "not a readable .npy array"),
        ("/encode", _npy(np.zeros((2, 784), np.float64)), 422, "dtype float64"),
        ("/encode", _npy(np.zeros((2, 780), np.float32)), 422, "array of shape (2, 780)"),
        ("/encode", _npy(np.full((1, 784), 2, np.float32)), 422, "pixel values must be in [0, 1]"),
        ("/encode", _npy(np.full((1, 784), np.nan, np.float32)), 422, "NaN or infinity"),
        ("/encode", _npy(np.zeros((0, 784), np.float32)), 422, "holds no images"),
        ("/encode", _npy(np.zeros((65, 784), np.float32)), 422, "65 images; at most 64"),
        ("/decode", _npy(np.zeros((2, 3), np.float32)), 422, "z[0]: has 3 numbers"),
        ("/decode", _npy(np.zeros((2, 2), np.float64)), 422, "expected a float32 array"),
        (
            "/encode?seed=x",
            _npy(np.zeros((1, 784), np.float32)),
            422,
            "Extra inputs are not permitted",
        ),
        (
            "/reconstruct?mode=sampled&seed=x",
            _npy(np.zeros((1, 784), np.float32)),
            422,
            "seed: expected an integer",
        ),
    ],
)
def test_bad_binary_input(
    client: TestClient, path: str, body: bytes, status: int, message: str
) -> None:
    response = client.post(path, content=body, headers=NPY_HEADERS)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
