"""POST /score, its OIP scorer and client.score, on tiny models: a VAE and an AE calibrated here
(scoring.build_calibration on synthetic held-out images, written into their manifests) and an
uncalibrated copy of the VAE. Every number is checked against scoring.score_parts run directly on
the same images through the same ONNX graphs with the same seed."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import scoring
from service.app import create_app
from service.client import AsyncClient, Client, InvalidInputError, Scores
from service.codecs.images import heat_map
from service.models.runtime import ModelRuntime
from service.ops import likelihood_of
from service.settings import Settings

from .conftest import digits

NPY = "application/x-npy"


def load_runtime(folder: Path) -> ModelRuntime:
    settings = Settings(model_dir=folder.parent)
    return ModelRuntime.load(folder, settings, ["CPUExecutionProvider"], ThreadPoolExecutor(1))


def calibrate(folder: Path) -> None:
    """Write a calibration of the model's default score, from 200 synthetic held-out images,
    into its manifest (the files' sha256 do not cover the manifest)."""
    runtime = load_runtime(folder)
    held_out = digits(200, seed=5)[..., None]
    mu, logvar = runtime.encode(held_out)
    likelihood = scoring.DecoderLikelihood.from_training(runtime.manifest.training)
    parts = scoring.score_parts(held_out, mu, logvar, runtime.decode, k=4, likelihood=likelihood)
    calibration = scoring.build_calibration(
        parts,
        score=scoring.default_score_name(runtime.is_vae),
        split="synthetic held-out",
        likelihood=likelihood,
        quantiles=101,
    )
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["score_calibration"] = calibration.model_dump(mode="json")
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def score_models(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """tiny-vae and tiny-ae calibrated; plain-vae, the same VAE without calibration."""
    folder = tmp_path_factory.mktemp("scored")
    for name in ("tiny-vae", "tiny-ae"):
        shutil.copytree(model_dir / name, folder / name)
        calibrate(folder / name)
    shutil.copytree(model_dir / "tiny-vae", folder / "plain-vae")
    path = folder / "plain-vae" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": "plain-vae"}))
    return folder


@pytest.fixture(scope="module")
def client(score_models: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=score_models,
        default_model="tiny-vae",
        max_images=64,
        max_score_values=64 * 16 * 784,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def runtimes(score_models: Path) -> dict[str, ModelRuntime]:
    names = ("tiny-vae", "tiny-ae", "plain-vae")
    return {name: load_runtime(score_models / name) for name in names}


def expected(
    runtime: ModelRuntime, images: np.ndarray, k: int, seed: int, per_pixel: bool = False
) -> scoring.ScoreParts:
    """score_parts run directly on the same graphs (no batching, no service)."""
    hwc = images[..., None] if images.ndim == 3 else images
    mu, logvar = runtime.encode(hwc)
    return scoring.score_parts(
        hwc,
        mu,
        logvar,
        runtime.decode,
        k=k,
        seed=seed,
        likelihood=likelihood_of(runtime.manifest),
        per_pixel=per_pixel,
    )


def score(client: TestClient, **body: Any) -> Any:
    images = body.pop("images", digits(3))
    response = client.post("/score", json={"images": np.asarray(images).tolist(), **body})
    assert response.status_code == 200, response.text
    return response.json()


def close(actual: Any, wanted: Any) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), wanted, rtol=1e-5, atol=1e-6)


# --- values --------------------------------------------------------------------------------------


def test_a_calibrated_vae_answers_score_parts_of_the_same_images_and_seed(
    client: TestClient, runtimes: dict[str, ModelRuntime]
) -> None:
    runtime = runtimes["tiny-vae"]
    calibration = runtime.manifest.score_calibration
    assert calibration is not None and calibration.score == scoring.DEFAULT_SCORE
    images = digits(5)
    body = score(client, images=images, seed=11)
    parts = expected(runtime, images, calibration.k, 11)
    name, values = scoring.default_score(parts, calibration)
    assert body["model"] == "tiny-vae" and body["score_name"] == name == "complexity_residual"
    assert body["calibrated"] is True and body["note"] is None
    assert body["k"] == calibration.k == 4 and body["seed"] == 11
    assert body["threshold"] == calibration.threshold and body["fpr"] == calibration.target_fpr
    close(body["score"], values)
    for part in ("nll", "elbo", "reconstruction", "kl", "reconstruction_error"):
        close(body[part], getattr(parts, part))
    close(body["percentile"], scoring.percentile(values, calibration))
    assert body["is_outlier"] == [bool(v > calibration.threshold) for v in body["score"]]
    assert body["per_pixel_error"] is None


def test_the_same_seed_gives_the_same_numbers_and_a_drawn_seed_is_returned(
    client: TestClient,
) -> None:
    first = score(client, seed=3, k=6)
    assert score(client, seed=3, k=6) == first
    other = score(client, seed=4, k=6)
    assert other["nll"] != first["nll"]
    assert other["reconstruction_error"] == first["reconstruction_error"]  # decode(mu): no noise
    drawn = score(client, k=6)
    assert isinstance(drawn["seed"], int)
    assert score(client, k=6, seed=drawn["seed"]) == drawn
    # A k other than the calibration's is said to make the percentiles approximate.
    assert first["k"] == 6 and "approximate" in first["note"]


def test_an_autoencoder_is_scored_by_reconstruction_error_alone(
    client: TestClient, runtimes: dict[str, ModelRuntime]
) -> None:
    runtime = runtimes["tiny-ae"]
    calibration = runtime.manifest.score_calibration
    assert calibration is not None
    images = digits(4)
    body = score(client, model="tiny-ae", images=images)
    parts = expected(runtime, images, 1, 0)
    assert body["score_name"] == "reconstruction_error"
    assert body["k"] is None and body["seed"] is None
    for part in ("nll", "elbo", "reconstruction", "kl"):
        assert body[part] is None
    close(body["score"], parts.reconstruction_error)
    close(body["reconstruction_error"], parts.reconstruction_error)
    close(body["percentile"], scoring.percentile(parts.reconstruction_error, calibration))
    for field in ("k", "seed"):
        response = client.post("/score", json={"model": "tiny-ae", "images": [], field: 1})
        assert response.status_code == 422
    response = client.post(
        "/score", json={"model": "tiny-ae", "images": digits(1).tolist(), "k": 2}
    )
    assert response.status_code == 422 and "k: model 'tiny-ae' is an autoencoder" in response.text


def test_fpr_sets_the_threshold_from_the_calibration_and_threshold_is_taken_as_given(
    client: TestClient, runtimes: dict[str, ModelRuntime]
) -> None:
    calibration = runtimes["tiny-vae"].manifest.score_calibration
    assert calibration is not None
    body = score(client, seed=1, fpr=0.25)
    assert body["fpr"] == 0.25
    assert body["threshold"] == pytest.approx(scoring.threshold_for(0.25, calibration))
    assert body["is_outlier"] == [s > body["threshold"] for s in body["score"]]
    middle = float(np.median(calibration.quantiles))
    given = score(client, seed=1, threshold=middle)
    assert given["threshold"] == middle
    assert given["fpr"] == pytest.approx(0.5, abs=0.02)  # half of held-out data lies above
    assert given["is_outlier"] == [s > middle for s in given["score"]]
    assert given["score"] == body["score"]


def test_without_calibration_no_percentile_and_the_answer_says_so(
    client: TestClient, runtimes: dict[str, ModelRuntime]
) -> None:
    images = digits(3)
    body = score(client, model="plain-vae", images=images, seed=2)
    parts = expected(runtimes["plain-vae"], images, scoring.DEFAULT_K, 2)
    assert body["calibrated"] is False and "no score calibration" in body["note"]
    assert body["score_name"] == scoring.UNCALIBRATED_SCORE
    assert body["k"] == scoring.DEFAULT_K
    assert body["percentile"] is None and body["threshold"] is None and body["fpr"] is None
    assert body["is_outlier"] is None
    close(body["score"], parts.reconstruction_error)
    close(body["nll"], parts.nll)
    with_threshold = score(client, model="plain-vae", images=images, threshold=0.01)
    assert with_threshold["is_outlier"] == [s > 0.01 for s in with_threshold["score"]]
    response = client.post(
        "/score", json={"model": "plain-vae", "images": images.tolist(), "fpr": 0.1}
    )
    assert response.status_code == 422
    assert "fpr: model 'plain-vae' has no score calibration" in response.text


# --- formats -------------------------------------------------------------------------------------


def test_per_pixel_error_and_the_npz_answer_hold_the_json_numbers(
    client: TestClient, runtimes: dict[str, ModelRuntime]
) -> None:
    images = digits(2)
    body = score(client, images=images, seed=5, per_pixel=True)
    parts = expected(runtimes["tiny-vae"], images, 4, 5, per_pixel=True)
    assert parts.reconstruction_map is not None
    pixel = np.asarray(body["per_pixel_error"])
    assert pixel.shape == (2, 28, 28)  # grayscale: no channel axis, as images
    close(pixel, parts.reconstruction_map[..., 0])
    close(pixel.mean(axis=(1, 2)), body["reconstruction_error"])
    response = client.post(
        "/score",
        content=npy(images),
        params={"seed": "5", "per_pixel": "true"},
        headers={"Content-Type": NPY, "Accept": NPY},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-npz"
    assert response.headers["x-seed"] == "5" and response.headers["x-model"] == "tiny-vae"
    with np.load(io.BytesIO(response.content)) as archive:
        assert set(archive.files) == {
            "score",
            "is_outlier",
            "percentile",
            "nll",
            "elbo",
            "reconstruction",
            "kl",
            "reconstruction_error",
            "per_pixel_error",
        }
        assert archive["is_outlier"].dtype == np.bool_
        for name in archive.files:
            close(archive[name], np.asarray(body[name], dtype=np.float64))


def test_the_png_answer_is_a_heat_map_grid_of_the_per_pixel_error(client: TestClient) -> None:
    images = digits(3)
    body = score(client, images=images, seed=5, per_pixel=True)
    response = client.post(
        "/score",
        json={"images": images.tolist(), "seed": 5, "per_pixel": True},
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.mode == "RGB" and picture.size == (2 * 28, 2 * 28)  # 3 images: 2 x 2 grid
    drawn = np.asarray(picture)
    colours = heat_map(np.asarray(body["per_pixel_error"], dtype=np.float32)[..., None])
    np.testing.assert_allclose(drawn[:28, :28] / 255.0, colours[0], atol=1 / 255 + 1e-6)
    assert not drawn[28:, 28:].any()  # the grid's empty cell
    refused = client.post(
        "/score", json={"images": images.tolist()}, headers={"Accept": "image/png"}
    )
    assert refused.status_code == 422 and "per_pixel: Accept: image/png" in refused.text


def test_the_heat_map_colours_absolute_error_on_a_fixed_scale() -> None:
    squared = np.array([0.0, 1 / 9, 4 / 9, 1.0], np.float32).reshape(1, 1, 4, 1)
    colours = heat_map(squared)[0, 0]
    np.testing.assert_allclose(
        colours, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], atol=1e-6
    )  # |error| 0, 1/3, 2/3, 1: black, red, yellow, white


def test_uploads_score_as_their_pixels_do(client: TestClient) -> None:
    images = np.round(digits(2) * 255) / 255  # exactly what 8-bit PNG files hold
    files = [("images", (f"{i}.png", png(image), "image/png")) for i, image in enumerate(images)]
    uploaded = client.post("/score", files=files, data={"seed": "9", "k": "3"})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == score(client, images=images.astype(np.float32), seed=9, k=3)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"k": 0}, "k: Input should be greater than or equal to 1"),
        ({"k": 400}, "k: 3 images x k 400 x 28 x 28 x 1 are 940800 decoded values"),
        ({"fpr": 0.0}, "fpr: Input should be greater than 0"),
        ({"fpr": 1.0}, "fpr: Input should be less than 1"),
        ({"fpr": 0.1, "threshold": 2.0}, "fpr: and threshold both given; send one"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"per_pixel": "maybe"}, "per_pixel"),
        ({"images": [[0.5] * 10]}, "images"),
        ({"model": "nope"}, "no model named 'nope'"),
    ],
)
def test_bad_inputs_are_refused_naming_the_field(
    client: TestClient, change: dict[str, Any], words: str
) -> None:
    body = {"images": digits(3).tolist(), **change}
    response = client.post("/score", json=body)
    assert 400 <= response.status_code < 500 and words in response.json()["detail"], response.text


@pytest.mark.parametrize("path", ["/score", "/encode"])
def test_a_field_name_holding_nul_is_refused_not_a_server_error(
    client: TestClient, path: str
) -> None:
    # simdjson cannot look such a key up; pydantic then names it.
    body = json.dumps({"images": digits(1).tolist(), "a\u0000": 1})
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "Extra inputs are not permitted" in response.text


def test_k_past_the_limit_names_the_setting_and_the_fix(client: TestClient) -> None:
    response = client.post("/score", json={"images": digits(64).tolist(), "k": 17})
    assert response.status_code == 422
    assert "VAE_MAX_SCORE_VALUES): use k <= 16 for 64 images" in response.text


# --- OpenAPI -------------------------------------------------------------------------------------


def test_the_openapi_document_shows_score_with_its_schemas(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/score"]["post"]
    answers = operation["responses"]["200"]["content"]
    assert set(answers) == {"application/json", "application/x-npz", "image/png"}
    schemas = document["components"]["schemas"]
    assert {"ScoreRequest", "ScoreResponse"} <= set(schemas)
    assert {"k", "seed", "fpr", "threshold", "per_pixel", "images"} <= set(
        schemas["ScoreRequest"]["properties"]
    )
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"images", "k", "fpr", "per_pixel"} <= set(form)


# --- OIP -----------------------------------------------------------------------------------------


def oip_images(images: np.ndarray) -> dict[str, Any]:
    return {
        "name": "images",
        "shape": [len(images), 28, 28, 1],
        "datatype": "FP32",
        "data": images.ravel().tolist(),
    }


def test_oip_scorer_metadata(client: TestClient) -> None:
    metadata = client.get("/v2/models/tiny-vae-scorer").json()
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs == {
        "score": ("FP64", [-1]),
        "is_outlier": ("BOOL", [-1]),
        "percentile": ("FP64", [-1]),
        "nll": ("FP64", [-1]),
        "elbo": ("FP64", [-1]),
        "reconstruction": ("FP64", [-1]),
        "kl": ("FP64", [-1]),
        "reconstruction_error": ("FP64", [-1]),
    }
    ae = client.get("/v2/models/tiny-ae-scorer").json()
    assert [o["name"] for o in ae["outputs"]] == [
        "score",
        "is_outlier",
        "percentile",
        "reconstruction_error",
    ]
    plain = client.get("/v2/models/plain-vae-scorer").json()
    assert "percentile" not in [o["name"] for o in plain["outputs"]]
    assert client.get("/v2/models/tiny-vae-scorer/ready").json() == {
        "name": "tiny-vae-scorer",
        "ready": True,
    }


def test_oip_scorer_infer_answers_as_score(client: TestClient) -> None:
    images = digits(3)
    request = {
        "id": "7",
        "parameters": {"seed": 5, "k": 3, "fpr": 0.2},
        "inputs": [oip_images(images)],
    }
    response = client.post("/v2/models/tiny-vae-scorer/infer", json=request)
    assert response.status_code == 200, response.text
    answer = response.json()
    body = score(client, images=images, seed=5, k=3, fpr=0.2)
    assert answer["id"] == "7" and answer["model_name"] == "tiny-vae-scorer"
    outputs = {o["name"]: o for o in answer["outputs"]}
    for name, output in outputs.items():
        assert output["shape"] == [3]
        assert output["data"] == body[name], name
    assert outputs["is_outlier"]["datatype"] == "BOOL"
    assert answer["parameters"] == {
        key: body[key]
        for key in ("score_name", "calibrated", "threshold", "fpr", "k", "seed", "note")
    }
    picked = {**request, "outputs": [{"name": "score"}]}
    answer = client.post("/v2/models/tiny-vae-scorer/infer", json=picked).json()
    assert [o["name"] for o in answer["outputs"]] == ["score"]


@pytest.mark.parametrize(
    ("model", "parameters", "words"),
    [
        ("tiny-vae", {"k": 0}, "parameters.k: Input should be greater than or equal to 1"),
        ("tiny-vae", {"fpr": 2}, "parameters.fpr: Input should be less than 1"),
        ("tiny-vae", {"fpr": 0.1, "threshold": 1.0}, "parameters.fpr: and threshold both"),
        ("plain-vae", {"fpr": 0.1}, "parameters.fpr: model 'plain-vae' has no score calib"),
        ("tiny-ae", {"seed": 1}, "parameters.seed: model 'tiny-ae' is an autoencoder"),
    ],
)
def test_oip_scorer_refuses_bad_parameters_with_400(
    client: TestClient, model: str, parameters: dict[str, Any], words: str
) -> None:
    request = {"parameters": parameters, "inputs": [oip_images(digits(1))]}
    response = client.post(f"/v2/models/{model}-scorer/infer", json=request)
    assert response.status_code == 400 and words in response.json()["error"], response.text


# --- the Python client ---------------------------------------------------------------------------


def test_client_score_returns_the_answer_typed(client: TestClient) -> None:
    images = digits(3)
    body = score(client, images=images, seed=8, per_pixel=True, fpr=0.1)
    with Client("http://testserver", transport=SyncThroughTestClient(client)) as service:
        result = service.score(images, seed=8, per_pixel=True, fpr=0.1)
        assert isinstance(result, Scores) and result.model == "tiny-vae"
        assert result.seed == 8 and result.k == 4 and result.fpr == 0.1 and result.calibrated
        assert result.score.dtype == np.float64 and result.score.tolist() == body["score"]
        assert result.is_outlier is not None and result.is_outlier.dtype == np.bool_
        assert result.per_pixel_error is not None and result.per_pixel_error.shape == (3, 28, 28)
        assert result.nll is not None and result.nll.tolist() == body["nll"]
        ae = service.score(images, model="tiny-ae")
        assert ae.nll is None and ae.k is None and ae.seed is None
        plain = service.score(images, model="plain-vae", threshold=0.01)
        assert plain.percentile is None and not plain.calibrated and plain.note
        with pytest.raises(InvalidInputError, match="fpr: and threshold both given"):
            service.score(images, fpr=0.1, threshold=1.0)


class SyncThroughTestClient(httpx.BaseTransport):
    """The client's requests, sent by the TestClient (which runs the app's lifespan)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.request(
            request.method, str(request.url), content=request.read(), headers=dict(request.headers)
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


class ThroughTestClient(httpx.AsyncBaseTransport):
    """The async client's requests, sent by the TestClient (which runs the app's lifespan)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        answer = await asyncio.to_thread(
            self.client.request,
            request.method,
            str(request.url),
            content=content,
            headers=dict(request.headers),
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def test_async_client_score(client: TestClient) -> None:
    images = digits(2)
    body = score(client, images=images, seed=4)

    async def main() -> Scores:
        transport = ThroughTestClient(client)
        async with AsyncClient("http://testserver", transport=transport) as service:
            return await service.score(images, seed=4)

    result = asyncio.run(main())
    assert result.score.tolist() == body["score"] and result.seed == 4


# --- helpers -------------------------------------------------------------------------------------


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(pixels * 255).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
