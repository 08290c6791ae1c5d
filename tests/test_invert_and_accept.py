"""Per-request `invert` (auto, true, false) on every path that carries images (JSON, .npy,
multipart, the Open Inference Protocol), and `Accept` negotiation: the best type an endpoint can
produce, or 406 naming the types it can."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.codecs.accept import negotiate, parse_accept
from service.codecs.images import invert_where_needed, light_background
from service.codecs.npy import NPY, NPZ
from service.errors import NotAcceptable
from service.http.endpoints import BY_PATH
from service.manifest import InputSpec, load_manifest
from service.settings import Settings

from .conftest import digits

DARK = digits(3)  # bright bars on a dark background, as the models were trained
LIGHT = 1.0 - DARK  # the same images as dark ink on light paper


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=model_dir, default_model="tiny-vae", max_images=64)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def mu(client: TestClient, images: Any, path: str = "/encode", **fields: Any) -> np.ndarray:
    listed = images if isinstance(images, list) else np.asarray(images).tolist()
    response = client.post(path, json={"images": listed, **fields})
    assert response.status_code == 200, response.text
    return np.array(response.json()["mu"])


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the rule -------------------------------------------------------------------------------------


def garment(value: float = 0.95) -> np.ndarray:
    """A Fashion-MNIST-like picture: bright trousers filling the frame top to bottom on a dark
    background. Brighter than mid-grey on the whole (mean 0.68), yet bright-on-dark already."""
    image = np.zeros((28, 28), np.float32)
    image[:, 4:24] = value
    return image


def test_auto_inverts_each_image_whose_border_is_light() -> None:
    trousers = garment()
    assert trousers.mean() > 0.5
    batch = np.stack([DARK[0], LIGHT[1], np.full((28, 28), 0.49, np.float32), trousers])[..., None]
    out = invert_where_needed(batch, "auto")
    np.testing.assert_array_equal(out[0], batch[0])
    np.testing.assert_allclose(out[1], DARK[1][..., None], atol=1e-6)  # dark digit on light paper
    np.testing.assert_array_equal(out[2], batch[2])  # a border of 0.49: not above 0.5
    np.testing.assert_array_equal(out[3], batch[3])  # bright garment, dark border: as sent
    # Each picture's negative comes out the same: the garment's too.
    np.testing.assert_allclose(invert_where_needed(1.0 - batch, "auto"), out, atol=1e-6)
    # The inside does not count: light paper with a dark middle is still light paper.
    framed = np.zeros((1, 28, 28, 1), np.float32)
    framed[:, 0] = framed[:, -1] = framed[:, :, 0] = framed[:, :, -1] = 1.0
    np.testing.assert_allclose(invert_where_needed(framed, "auto"), 1.0 - framed)
    np.testing.assert_array_equal(invert_where_needed(batch, True), 1.0 - batch)
    assert invert_where_needed(batch, False) is batch
    # A read-only view of a request body is never written to.
    view = np.frombuffer(LIGHT.tobytes(), np.float32).reshape(3, 28, 28, 1)
    np.testing.assert_allclose(invert_where_needed(view, "auto"), DARK[..., None], atol=1e-6)


def test_auto_threshold_is_half_of_white_at_the_border_exactly() -> None:
    # A uniform grey 128 (of 255) is light and inverted, 127 is not; in float32 and float64, and
    # on 8-bit pixels (as uploads are judged).
    for dtype in (np.float32, np.float64):
        grey_128 = np.full((1, 28, 28), 128 / 255, dtype)
        grey_127 = np.full((1, 28, 28), 127 / 255, dtype)
        np.testing.assert_allclose(invert_where_needed(grey_128, "auto"), 127 / 255, rtol=1e-6)
        assert invert_where_needed(grey_127, "auto") is grey_127
    bytes_127_128 = np.array([np.full((28, 28), 127), np.full((28, 28), 128)], np.uint8)
    assert light_background(bytes_127_128, white=255).tolist() == [False, True]
    # A border exactly half 127 and half 128 is a tie, left as sent even after float32 rounding;
    # one border pixel a level brighter tips it. Pixels inside the border never count.
    tie = np.zeros((1, 28, 28), np.uint8)
    tie[0, 0, :] = tie[0, -1, :] = tie[0, :, 0] = tie[0, :, -1] = 127
    tie[0, 0, ::2] = tie[0, -1, ::2] = tie[0, 1:-1:2, 0] = tie[0, 1:-1:2, -1] = 128
    tie[0, 1:-1, 1:-1] = 255
    assert light_background(tie, white=255).tolist() == [False]
    as_float = tie.astype(np.float32) / 255
    assert invert_where_needed(as_float, "auto") is as_float
    tipped = tie.copy()
    tipped[0, -1, 1] = 128
    assert light_background(tipped, white=255).tolist() == [True]
    out = invert_where_needed(tipped.astype(np.float32) / 255, "auto")
    assert out[0, 0, 0] == pytest.approx(127 / 255) and out[0, 5, 5] == 0.0
    half_and_half = np.zeros((1, 28, 28), np.float32)
    half_and_half[0, :14] = 1.0  # border: exactly half white
    assert not light_background(half_and_half)[0]


@pytest.mark.parametrize(
    ("shape", "border"),
    [((1, 1), 1), ((1, 5), 5), ((5, 1), 5), ((2, 2), 4), ((3, 3), 8), ((3, 28, 28), 3 * 108)],
)
def test_border_of_small_and_multichannel_images(shape: tuple[int, ...], border: int) -> None:
    # Every border pixel counted once: exactly `border` light pixels tip a dark image.
    image = np.zeros(shape, np.uint8)
    inside = (..., slice(1, -1), slice(1, -1))
    whole = np.full(shape, 255, np.uint8)
    whole[inside] = 0
    assert int((whole == 255).sum()) == border
    assert light_background(whole[None], white=255).tolist() == [True]
    assert light_background(image[None], white=255).tolist() == [False]
    flat = np.full((2, 10), 0.6, np.float32)  # flat images: every pixel is border
    flat[1, :6] = 0.0
    assert light_background(flat).tolist() == [True, False]


# --- JSON -----------------------------------------------------------------------------------------


def test_json_invert_true_false_auto(client: TestClient) -> None:
    dark = mu(client, DARK)
    light = mu(client, LIGHT, invert=False)
    assert not np.allclose(dark, light)
    # Arrays are the model's input: not inverted unless asked.
    np.testing.assert_array_equal(mu(client, LIGHT), light)
    np.testing.assert_allclose(mu(client, LIGHT, invert=True), dark, atol=1e-5)
    np.testing.assert_allclose(mu(client, DARK, invert=True), light, atol=1e-5)
    # auto decides image by image.
    mixed = np.stack([DARK[0], LIGHT[1], DARK[2]])
    np.testing.assert_allclose(mu(client, mixed, invert="auto"), dark, atol=1e-5)
    np.testing.assert_allclose(mu(client, mixed, invert="AUTO"), dark, atol=1e-5)
    # Text forms are taken in JSON too.
    np.testing.assert_allclose(mu(client, LIGHT, invert="true"), dark, atol=1e-5)


def test_json_invert_on_the_pydantic_path_and_on_reconstruct(client: TestClient) -> None:
    # One flat image and one nested: not the simdjson fast path, pydantic reads the body.
    mixed = [LIGHT[0].ravel().tolist(), LIGHT[1].tolist()]
    np.testing.assert_allclose(mu(client, mixed, invert="auto"), mu(client, DARK[:2]), atol=1e-5)
    response = client.post("/reconstruct", json={"images": LIGHT.tolist(), "invert": True})
    expected = client.post("/reconstruct", json={"images": DARK.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["images"], expected.json()["images"], atol=1e-5)


# --- .npy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_uint8", [False, True], ids=["float32", "uint8"])
def test_npy_invert_is_a_query_parameter(client: TestClient, as_uint8: bool) -> None:
    light = (LIGHT * 255).round().astype(np.uint8) if as_uint8 else LIGHT
    dark = 255 - light if as_uint8 else DARK
    headers = {"Content-Type": NPY, "Accept": NPZ}

    def npy_mu(array: np.ndarray, query: str) -> np.ndarray:
        response = client.post(f"/encode{query}", content=npy(array), headers=headers)
        assert response.status_code == 200, response.text
        with np.load(io.BytesIO(response.content)) as archive:
            return np.asarray(archive["mu"])

    expected = npy_mu(dark, "")
    np.testing.assert_allclose(npy_mu(light, "?invert=auto"), expected, atol=1e-5)
    np.testing.assert_allclose(npy_mu(light, "?invert=true"), expected, atol=1e-5)
    assert not np.allclose(npy_mu(light, "?invert=false"), expected, atol=1e-3)
    np.testing.assert_array_equal(npy_mu(light, ""), npy_mu(light, "?invert=false"))
    reconstructed = client.post(
        "/reconstruct?invert=auto", content=npy(light), headers={"Content-Type": NPY}
    )
    assert reconstructed.status_code == 200, reconstructed.text
    plain = client.post("/reconstruct", content=npy(dark), headers={"Content-Type": NPY})
    np.testing.assert_allclose(reconstructed.json()["images"], plain.json()["images"], atol=1e-5)


# --- multipart ------------------------------------------------------------------------------------


def test_uploads_are_inverted_automatically_unless_told(client: TestClient) -> None:
    pixels = (DARK * 255).round().astype(np.uint8)
    dark_files = [("images", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(pixels)]
    light_files = [
        ("images", (f"{i}.png", png(255 - p), "image/png")) for i, p in enumerate(pixels)
    ]
    as_json = mu(client, pixels / 255.0)

    def upload_mu(files: list[Any], **form: str) -> np.ndarray:
        response = client.post("/encode", files=files, data=form)
        assert response.status_code == 200, response.text
        return np.array(response.json()["mu"])

    # A photo of dark ink on light paper comes out as the model's bright-on-dark by default.
    np.testing.assert_allclose(upload_mu(light_files), as_json, atol=1e-5)
    np.testing.assert_allclose(upload_mu(dark_files), as_json, atol=1e-5)
    np.testing.assert_allclose(upload_mu(light_files, invert="auto"), as_json, atol=1e-5)
    np.testing.assert_allclose(upload_mu(light_files, invert="true"), as_json, atol=1e-5)
    light_json = mu(client, (255 - pixels) / 255.0)
    np.testing.assert_allclose(upload_mu(light_files, invert="false"), light_json, atol=1e-5)
    np.testing.assert_allclose(upload_mu(dark_files, invert="true"), light_json, atol=1e-5)
    # Each file is judged alone.
    mixed = [light_files[0], dark_files[1], light_files[2]]
    np.testing.assert_allclose(upload_mu(mixed), as_json, atol=1e-5)
    response = client.post("/reconstruct", files=light_files[:1], data={"invert": "false"})
    assert response.status_code == 200, response.text


def test_uploads_auto_judges_the_border_of_the_picture_as_sent(client: TestClient) -> None:
    def upload_mu(pixels: np.ndarray, **form: str) -> np.ndarray:
        files = [("images", ("a.png", png(pixels), "image/png"))]
        response = client.post("/encode", files=files, data=form)
        assert response.status_code == 200, response.text
        return np.array(response.json()["mu"])

    # A bright garment on a dark background, brighter than mid-grey on the whole: left as sent;
    # its negative (a dark garment on light paper) is inverted.
    trousers = (garment() * 255).round().astype(np.uint8)
    as_sent = mu(client, trousers[None] / 255.0)
    np.testing.assert_allclose(upload_mu(trousers), as_sent, atol=1e-5)
    np.testing.assert_allclose(upload_mu(255 - trousers), as_sent, atol=1e-5)
    # A picture larger than the model's input is judged at its own size: a thin light frame on
    # black makes a light border there, though resizing to 28 x 28 blurs it into a dark one.
    framed = np.zeros((280, 280), np.uint8)
    framed[[0, -1], :] = framed[:, [0, -1]] = 255
    resized = np.asarray(Image.fromarray(framed).resize((28, 28), Image.Resampling.BILINEAR))
    assert not light_background(resized[None], white=255)[0]
    inverted = upload_mu(framed, invert="true")
    np.testing.assert_allclose(upload_mu(framed), inverted, atol=1e-6)
    assert not np.allclose(upload_mu(framed, invert="false"), inverted, atol=1e-3)


def test_upload_fields_may_come_as_query_parameters_too(client: TestClient) -> None:
    """As for a .npy body, `?invert=` (or `?mode=`) on an upload counts like the form field; a
    field given both ways must agree, and a bad value is refused the same way."""
    pixels = (DARK[0] * 255).round().astype(np.uint8)
    files = [("images", ("a.png", png(255 - pixels), "image/png"))]

    def upload(path: str, **form: str) -> Any:
        return client.post(path, files=files, data=form)

    light_json = mu(client, (255 - pixels)[None] / 255.0)
    response = upload("/encode?invert=false")
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()["mu"]), light_json, atol=1e-5)
    assert upload("/encode?invert=false", invert="false").status_code == 200
    response = upload("/encode?invert=false", invert="true")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("invert: the form says 'true' but ?invert= says")
    response = upload("/encode?invert=maybe")
    assert response.status_code == 422 and ALLOWED in response.json()["detail"]
    response = upload("/reconstruct?mode=sampled&seed=3")
    assert response.status_code == 200 and response.json()["seed"] == 3
    response = upload("/encode?colour=red")
    assert response.status_code == 422 and "colour" in response.json()["detail"]


# --- bad values -----------------------------------------------------------------------------------

ALLOWED = "expected 'auto', true or false"


@pytest.mark.parametrize("value", ["maybe", 1, 0, None, "", [True]])
def test_bad_invert_in_json_is_422_naming_it(client: TestClient, value: Any) -> None:
    if value is None:  # null is "not given": the default
        assert client.post("/encode", json={"images": DARK.tolist(), "invert": None}).is_success
        return
    for path in ("/encode", "/reconstruct"):
        response = client.post(path, json={"images": DARK.tolist(), "invert": value})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("invert: ") and ALLOWED in detail, detail


def test_bad_invert_in_a_query_or_a_form_is_422_naming_it(client: TestClient) -> None:
    response = client.post("/encode?invert=yes", content=npy(DARK), headers={"Content-Type": NPY})
    assert response.status_code == 422 and ALLOWED in response.json()["detail"]
    assert response.json()["detail"].startswith("invert: ")
    file = [("images", ("a.png", png((DARK[0] * 255).astype(np.uint8)), "image/png"))]
    response = client.post("/reconstruct", files=file, data={"invert": "1"})
    assert response.status_code == 422 and ALLOWED in response.json()["detail"]
    # Only image endpoints take it.
    response = client.post("/decode", json={"z": [[0.0, 0.0]], "invert": True})
    assert response.status_code == 422 and "invert" in response.json()["detail"]


# --- Open Inference Protocol ----------------------------------------------------------------------


def oip(client: TestClient, name: str, data: np.ndarray, **extra: Any) -> Any:
    tensor = {"name": "x", "shape": [len(data), 1, 28, 28], "datatype": "FP32"}
    body = {"inputs": [{**tensor, "data": data.ravel().tolist()}], **extra}
    return client.post(f"/v2/models/{name}/infer", json=body)


def test_oip_encoder_takes_invert_as_a_parameter(client: TestClient) -> None:
    def oip_mu(data: np.ndarray, **extra: Any) -> np.ndarray:
        response = oip(client, "tiny-vae-encoder", data, **extra)
        assert response.status_code == 200, response.text
        return np.array(response.json()["outputs"][0]["data"])

    dark = oip_mu(DARK)
    np.testing.assert_allclose(oip_mu(LIGHT, parameters={"invert": True}), dark, atol=1e-5)
    np.testing.assert_allclose(oip_mu(LIGHT, parameters={"invert": "auto"}), dark, atol=1e-5)
    assert not np.allclose(oip_mu(LIGHT), dark, atol=1e-3)  # default: as sent
    bad = oip(client, "tiny-vae-encoder", DARK, parameters={"invert": "sometimes"})
    assert bad.status_code == 400 and ALLOWED in bad.json()["error"]
    assert "invert" in bad.json()["error"]
    z = {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 0.0]}
    decoder = client.post(
        "/v2/models/tiny-vae-decoder/infer", json={"inputs": [z], "parameters": {"invert": True}}
    )
    assert decoder.status_code == 400 and "invert" in decoder.json()["error"]


# --- Accept ---------------------------------------------------------------------------------------

IMAGE_BODIES: dict[str, dict[str, Any]] = {
    "/encode": {"images": DARK[:1].tolist()},
    "/reconstruct": {"images": DARK[:1].tolist()},
    "/generate": {"n": 1, "seed": 1},
    "/decode": {"z": [[0.0, 0.0]]},
}


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/encode", "image/jpeg"),
        ("/encode", "image/png"),
        ("/encode", "image/*"),
        ("/encode", "text/html"),
        ("/reconstruct", "image/jpeg"),
        ("/generate", "text/plain, image/webp"),
        ("/decode", NPZ),
        ("/decode", "*/*;q=0"),
        ("/decode", "not a media type"),
    ],
)
def test_json_requests_for_a_type_not_produced_get_406(
    client: TestClient, path: str, accept: str
) -> None:
    response = client.post(path, json=IMAGE_BODIES[path], headers={"Accept": accept})
    assert response.status_code == 406, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert detail.startswith(f"Accept: {accept} cannot be produced by {path}; it answers "), detail
    if path == "/encode":
        assert "application/json or application/x-npz" in detail
    else:
        assert "application/json, application/x-npy or image/png" in detail


def test_406_comes_before_the_body_is_read(client: TestClient) -> None:
    response = client.post("/encode", content=b"{not json", headers={"Accept": "image/png"})
    assert response.status_code == 406


def test_npy_and_multipart_requests_negotiate_too(client: TestClient) -> None:
    body = npy(DARK)
    refused = client.post(
        "/encode", content=body, headers={"Content-Type": NPY, "Accept": "image/png"}
    )
    assert refused.status_code == 406 and "/encode" in refused.json()["detail"]
    pngs = client.post(
        "/reconstruct", content=body, headers={"Content-Type": NPY, "Accept": "image/*"}
    )
    assert pngs.status_code == 200 and pngs.headers["content-type"] == "image/png"
    file = [("images", ("a.png", png((DARK[0] * 255).astype(np.uint8)), "image/png"))]
    refused = client.post("/encode", files=file, headers={"Accept": "image/jpeg"})
    assert refused.status_code == 406, refused.text
    assert refused.json()["detail"].startswith("Accept: image/jpeg cannot be produced by /encode")
    answered = client.post(
        "/reconstruct", files=file, headers={"Accept": "image/png;q=0.9, application/json;q=0.1"}
    )
    assert answered.status_code == 200 and answered.headers["content-type"] == "image/png"
    archive = client.post("/encode", files=file, headers={"Accept": NPY})
    assert archive.status_code == 200 and archive.headers["content-type"] == NPZ


@pytest.mark.parametrize(
    ("path", "accept", "expected"),
    [
        ("/decode", "", "application/json"),  # no preference: the endpoint's first
        ("/decode", "*/*", "application/json"),
        ("/decode", "application/*", "application/json"),
        ("/decode", "image/*", "image/png"),
        ("/decode", "image/png, application/json", "application/json"),  # a tie: JSON first
        ("/decode", "image/png;q=0.5, application/json;q=0.4", "image/png"),
        ("/decode", "application/json;q=0, */*", NPY),
        ("/decode", "application/json;q=0, image/png;q=0.2, */*;q=0.1", "image/png"),
        ("/generate", "*/*, image/png;q=0", "application/json"),
        ("/generate", "IMAGE/PNG", "image/png"),
        ("/generate", "application/json;q=oops, image/png", "image/png"),  # bad q: range left out
        ("/generate", "text/html,application/xhtml+xml,*/*;q=0.8", "application/json"),
        ("/encode", NPY, NPZ),  # /encode answers arrays as an .npz archive, as it always has
        ("/encode", f"{NPZ}, application/json;q=0.5", NPZ),
        ("/encode", "application/*;q=0.5, application/json;q=0.1", NPZ),
        ("/reconstruct", f"{NPY};q=1.0", NPY),
    ],
)
def test_accept_picks_the_best_type_as_http_says(
    client: TestClient, path: str, accept: str, expected: str
) -> None:
    response = client.post(path, json=IMAGE_BODIES[path], headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == expected


def test_oip_infer_answers_json_only(client: TestClient) -> None:
    z = {"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 0.0]}
    path = "/v2/models/tiny-vae-decoder/infer"
    refused = client.post(path, json={"inputs": [z]}, headers={"Accept": "image/png"})
    assert refused.status_code == 406
    assert refused.json() == {
        "error": "Accept: image/png cannot be produced by /v2/models/{model}/infer; it "
        "answers application/json only"
    }
    for accept in ("*/*", "application/*", "application/json;q=0.5, text/html"):
        answered = client.post(path, json={"inputs": [z]}, headers={"Accept": accept})
        assert answered.status_code == 200, (accept, answered.text)


def test_negotiation_unit() -> None:
    assert negotiate("", BY_PATH["/encode"].produces, "/encode") == "json"
    assert negotiate(" , ", BY_PATH["/decode"].produces, "/decode") == "json"
    assert parse_accept("image/png;q=0.3, */x, foo, a/b;q=2, a/c;q=nan, text/*; q=0") == [
        ("image", "png", 0.3),
        ("text", "*", 0.0),
    ]
    long = ", ".join(["text/html"] * 100) + ", image/png"  # past the cache's size bound
    assert negotiate(long, BY_PATH["/decode"].produces, "/decode") == "png"
    with pytest.raises(NotAcceptable) as refused:
        negotiate(", ".join(["text/html"] * 100), BY_PATH["/decode"].produces, "/decode")
    assert refused.value.status == 406 and len(str(refused.value)) < 300


# --- OpenAPI --------------------------------------------------------------------------------------


def test_openapi_documents_invert_and_406(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for request in ("EncodeRequest", "ReconstructRequest"):
        invert = schemas[request]["properties"]["invert"]
        assert {"const": "auto", "type": "string"} in invert["anyOf"]
        assert {"type": "boolean"} in invert["anyOf"] and "dark ink" in invert["description"]
    for path in ("/encode", "/reconstruct"):
        operation = spec["paths"][path]["post"]
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["invert"]["enum"] == ["auto", "true", "false"]
        query = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
        assert query["invert"]["schema"]["enum"] == ["auto", "true", "false"]
        assert "application/x-npy" in query["invert"]["description"]
    assert "seed" in {p["name"] for p in spec["paths"]["/reconstruct"]["post"]["parameters"]}
    for path in ("/encode", "/reconstruct", "/generate", "/decode"):
        described = spec["paths"][path]["post"]["responses"]["406"]["description"]
        assert "application/json" in described, path
    assert "image/png" not in spec["paths"]["/encode"]["post"]["responses"]["406"]["description"]
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]["responses"]["406"]
    assert infer["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert json.dumps(spec).count("invert") > 4


# --- a model trained on a light background -------------------------------------------------------


@pytest.fixture(scope="module")
def light_client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The tiny VAE served as a model whose manifest says its input has a light background, as
    one trained on dark ink on paper without --invert would."""
    folder = tmp_path_factory.mktemp("light-models")
    shutil.copytree(model_dir / "tiny-vae", folder / "light-vae")
    manifest_path = folder / "light-vae" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["name"], manifest["input"]["background"] = "light-vae", "light"
    manifest_path.write_text(json.dumps(manifest))
    settings = Settings(model_dir=folder, default_model="light-vae", max_images=64)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_auto_turns_each_background_into_the_models() -> None:
    batch = np.stack([DARK[0], LIGHT[1], garment()])[..., None]
    out = invert_where_needed(batch, "auto", "light")
    np.testing.assert_allclose(out[0], LIGHT[0][..., None], atol=1e-6)  # dark background: inverted
    np.testing.assert_array_equal(out[1], batch[1])  # already the model's light background
    np.testing.assert_allclose(out[2], 1.0 - batch[2])  # a bright garment on black: inverted
    np.testing.assert_array_equal(invert_where_needed(batch, "auto", "dark")[0], batch[0])
    # true and false do not look at the background.
    np.testing.assert_array_equal(invert_where_needed(batch, True, "light"), 1.0 - batch)
    assert invert_where_needed(batch, False, "light") is batch


def test_a_light_background_model_keeps_light_uploads_and_inverts_dark_ones(
    light_client: TestClient,
) -> None:
    light_pixels = (LIGHT * 255).round().astype(np.uint8)
    as_trained = mu(light_client, light_pixels / 255.0)  # arrays: as sent

    def upload_mu(pixels: np.ndarray, **form: str) -> np.ndarray:
        files = [("images", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(pixels)]
        response = light_client.post("/encode", files=files, data=form)
        assert response.status_code == 200, response.text
        return np.array(response.json()["mu"])

    np.testing.assert_allclose(upload_mu(light_pixels), as_trained, atol=1e-5)
    np.testing.assert_allclose(upload_mu(255 - light_pixels), as_trained, atol=1e-5)
    mixed = np.stack([light_pixels[0], 255 - light_pixels[1], light_pixels[2]])
    np.testing.assert_allclose(upload_mu(mixed, invert="auto"), as_trained, atol=1e-5)
    # true and false still mean what they say.
    np.testing.assert_allclose(upload_mu(255 - light_pixels, invert="true"), as_trained, atol=1e-5)
    assert not np.allclose(upload_mu(light_pixels, invert="true"), as_trained, atol=1e-3)
    assert not np.allclose(upload_mu(255 - light_pixels, invert="false"), as_trained, atol=1e-3)


def test_a_light_background_model_under_auto_in_json_npy_and_oip(
    light_client: TestClient,
) -> None:
    as_trained = mu(light_client, LIGHT)
    np.testing.assert_allclose(mu(light_client, LIGHT, invert="auto"), as_trained, atol=1e-5)
    np.testing.assert_allclose(mu(light_client, DARK, invert="auto"), as_trained, atol=1e-5)
    assert not np.allclose(mu(light_client, DARK), as_trained, atol=1e-3)  # default: as sent
    response = light_client.post(
        "/encode?invert=auto", content=npy(DARK), headers={"Content-Type": NPY}
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["mu"], as_trained, atol=1e-5)
    for data in (DARK, LIGHT):
        response = oip(light_client, "light-vae-encoder", data, parameters={"invert": "auto"})
        assert response.status_code == 200, response.text
        oip_mu = np.array(response.json()["outputs"][0]["data"]).reshape(as_trained.shape)
        np.testing.assert_allclose(oip_mu, as_trained, atol=1e-5)


def test_a_manifest_without_background_means_dark(model_dir: Path) -> None:
    spec = load_manifest(model_dir / "tiny-vae").input.model_dump()
    del spec["background"]
    assert InputSpec.model_validate(spec).background == "dark"
    with pytest.raises(ValueError, match=r"background\n  Input should be 'dark' or 'light'"):
        InputSpec.model_validate({**spec, "background": "grey"})
