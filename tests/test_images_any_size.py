"""Images of any size and colour, end to end, on models written the way other frameworks write
them (`tests.foreign_models`): every endpoint and content type against running the ONNX files
directly with onnxruntime; and the load-time contract: every way a pair can fail to fit the
manifest, refused at start-up and at a rescan with a message naming the model, the file and the
fix."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.app import create_app
from service.manifest import ModelLoadError, sha256sum
from service.settings import Settings
from tests import foreign_models
from tests.foreign_models import (
    LATENT,
    STYLES,
    Reference,
    close,
    export_style,
    pictures,
    public,
)
from tests.foreign_models import npy_bytes as npy

NPY = "application/x-npy"
Edit = Callable[[dict[str, Any]], None]


def _tensors(infos: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "dtype": "float32",
            "shape": [d if isinstance(d, int) else (d or "N") for d in t.shape],
        }
        for t in infos
    ]


def write_manifest(folder: Path, style_name: str, name: str, edit: Edit | None = None) -> None:
    """The manifest a person importing `style_name` would write, with `edit` applied."""
    style = STYLES[style_name]
    graphs = {}
    for graph in ("encoder", "decoder"):
        path = folder / f"{graph}.onnx"
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        graphs[graph] = {
            "file": path.name,
            "sha256": sha256sum(path),
            "inputs": _tensors(session.get_inputs()),
            "outputs": _tensors(session.get_outputs()),
        }
    manifest: dict[str, Any] = {
        "name": name,
        "kind": style.kind,
        "latent_dim": LATENT,
        "input": {
            "shape": list(style.chw),
            "dtype": "float32",
            "pixel_range": [0.0, 1.0],
            "preprocessing": {},
            "layout": style.input_layout,
            "flat_order": "HWC",
        },
        "encoder": graphs["encoder"],
        "decoder": graphs["decoder"],
        "output": {
            "tensor": style.decoder_output,
            "layout": style.output_layout,
            "flat_order": "HWC",
            "activation": "sigmoid" if style.logits else "none",
        },
        "latent": {
            "code_output": style.mean,
            "logvar_output": style.variance,
            "variance": style.variance_kind,
        },
        "opset": 17,
    }
    if edit is not None:
        edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def add_model(models: Path, style: str, name: str | None = None, edit: Edit | None = None) -> Path:
    folder = models / (name or style.replace("_", "-"))
    export_style(style, folder)
    write_manifest(folder, style, folder.name, edit)
    return folder


def start(models: Path) -> None:
    with TestClient(create_app(Settings(model_dir=models))):
        pass


# --- the reference: the ONNX files run directly --------------------------------------------------


# --- every endpoint and content type, per style -------------------------------------------------


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("foreign")
    for style in STYLES:
        add_model(models, style)
    return models


@pytest.fixture(scope="module")
def served(foreign: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=foreign, default_model="color-vae", max_images=64)
    with TestClient(create_app(settings)) as client:
        yield client


def model_of(style: str) -> str:
    return style.replace("_", "-")


@pytest.mark.parametrize("style", list(STYLES))
def test_models_list_the_public_image_shape(served: TestClient, style: str) -> None:
    c, h, w = STYLES[style].chw
    info = served.get(f"/models/{model_of(style)}").json()
    assert info["image_shape"] == ([h, w] if c == 1 else [h, w, c])
    assert info["manifest"]["input"]["shape"] == [c, h, w]


@pytest.mark.parametrize("style", list(STYLES))
def test_encode_in_json_and_npy_matches_onnxruntime(
    served: TestClient, foreign: Path, style: str
) -> None:
    reference = Reference.in_folder(foreign / model_of(style), style)
    images = pictures(style, 3)
    mu, logvar = reference.encode(images)
    model = model_of(style)
    nested = served.post("/encode", json={"model": model, "images": public(images).tolist()})
    assert nested.status_code == 200, nested.text
    flat = served.post("/encode", json={"model": model, "images": images.reshape(3, -1).tolist()})
    for answer in (nested.json(), flat.json()):
        close(answer["mu"], mu)
        if logvar is None:
            assert answer["logvar"] is None
        else:
            close(answer["logvar"], logvar)
    as_npy = served.post(
        f"/encode?model={model}",
        content=npy(public(images)),
        headers={"Content-Type": NPY, "Accept": NPY},
    )
    archive = np.load(io.BytesIO(as_npy.content))
    close(archive["mu"], mu)
    # uint8 arrays, channels last, are the same images
    levels = np.round(public(images) * 255).astype(np.uint8)
    as_bytes = served.post(
        f"/encode?model={model}", content=npy(levels), headers={"Content-Type": NPY, "Accept": NPY}
    )
    close(np.load(io.BytesIO(as_bytes.content))["mu"], mu)


def test_a_sigma_output_is_served_as_a_log_variance(served: TestClient, foreign: Path) -> None:
    images = pictures("gray64_vae", 2)
    session = ort.InferenceSession(str(foreign / "gray64-vae" / "encoder.onnx"))
    [sigma] = session.run(["sigma"], {"x": images.transpose(0, 3, 1, 2).copy()})
    answer = served.post("/encode", json={"model": "gray64-vae", "images": public(images).tolist()})
    close(answer.json()["logvar"], 2 * np.log(sigma))


@pytest.mark.parametrize("style", list(STYLES))
def test_reconstruct_generate_and_decode_match_onnxruntime(
    served: TestClient, foreign: Path, style: str
) -> None:
    reference = Reference.in_folder(foreign / model_of(style), style)
    model = model_of(style)
    images = pictures(style, 2, seed=1)
    mu, logvar = reference.encode(images)
    body = {"model": model, "images": public(images).tolist()}
    deterministic = served.post("/reconstruct", json=body).json()["images"]
    close(deterministic, public(reference.decode(mu)))
    as_npy = served.post(
        f"/reconstruct?model={model}",
        content=npy(public(images)),
        headers={"Content-Type": NPY, "Accept": NPY},
    )
    assert as_npy.headers["content-type"] == NPY
    close(np.load(io.BytesIO(as_npy.content)), public(reference.decode(mu)))

    z = np.random.default_rng(3).standard_normal((3, LATENT)).astype(np.float32)
    decoded = served.post("/decode", json={"model": model, "z": z.tolist()}).json()["images"]
    close(decoded, public(reference.decode(z)))
    if logvar is None:
        return
    sampled = served.post(
        "/reconstruct", json={**body, "mode": "sampled", "seed": 7, "samples": 3}
    ).json()
    eps = np.random.default_rng(7).standard_normal((2, 3, LATENT), np.float32)
    z_sampled = (mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps).reshape(-1, LATENT)
    expected = reference.decode(z_sampled.astype(np.float32))
    close(sampled["images"], public(expected.reshape(2, 3, *expected.shape[1:])))
    generated = served.post("/generate", json={"model": model, "n": 4, "seed": 5}).json()
    prior = np.random.default_rng(5).standard_normal((4, LATENT), np.float32)
    close(generated["z"], prior)
    close(generated["images"], public(reference.decode(prior)))


@pytest.mark.parametrize("style", list(STYLES))
def test_png_answers_are_grids_in_the_models_colour(
    served: TestClient, foreign: Path, style: str
) -> None:
    c, h, w = STYLES[style].chw
    z = np.random.default_rng(4).standard_normal((4, LATENT)).astype(np.float32)
    answer = served.post(
        "/decode", json={"model": model_of(style), "z": z.tolist()}, headers={"Accept": "image/png"}
    )
    grid = Image.open(io.BytesIO(answer.content))
    assert grid.mode == ("L" if c == 1 else "RGB") and grid.size == (2 * w, 2 * h)
    expected = Reference.in_folder(foreign / model_of(style), style).decode(z)
    top_left = np.asarray(grid, np.float32)[:h, :w].reshape(h, w, c) / 255
    close(top_left, np.round(expected[0] * 255) / 255)


@pytest.mark.parametrize("style", ["color_vae", "gray64_vae", "keras_nhwc"])
@pytest.mark.parametrize("file_format", ["PNG", "JPEG"])
def test_uploads_keep_their_colour(
    served: TestClient, foreign: Path, style: str, file_format: str
) -> None:
    c, h, w = STYLES[style].chw
    levels = np.round(pictures(style, 1, seed=2)[0] * 255).astype(np.uint8)
    picture = Image.fromarray(levels[..., 0] if c == 1 else levels)
    if c == 3:  # an RGBA upload is taken as its RGB pixels
        picture = picture.convert("RGBA")
    buffer = io.BytesIO()
    picture.convert("RGB" if file_format == "JPEG" and c == 3 else picture.mode).save(
        buffer, format=file_format
    )
    sent = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L" if c == 1 else "RGB"))
    expected, _ = Reference.in_folder(foreign / model_of(style), style).encode(
        (sent.reshape(1, h, w, c) / 255).astype(np.float32)
    )
    answer = served.post(
        "/encode",
        data={"model": model_of(style), "invert": "false"},
        files={"images": (f"x.{file_format.lower()}", buffer.getvalue())},
    )
    assert answer.status_code == 200, answer.text
    close(answer.json()["mu"], expected)


def test_a_grey_upload_to_a_colour_model_is_three_equal_channels(
    served: TestClient, foreign: Path
) -> None:
    levels = np.round(pictures("gray64_vae", 1)[0, :32, :32, 0] * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG")
    answer = served.post(
        "/encode", data={"invert": "false"}, files={"images": ("g.png", buffer.getvalue())}
    )
    grey = np.repeat((levels / 255).astype(np.float32)[None, ..., None], 3, axis=3)
    reference = Reference.in_folder(foreign / "color-vae", "color_vae")
    close(answer.json()["mu"], reference.encode(grey)[0])


def test_auto_invert_leaves_colour_pictures_as_sent(served: TestClient) -> None:
    # invert=auto is the grayscale ink-on-paper rule: a colour photo on light paper (green,
    # luminance 0.587) is not turned into its negative; invert=true still inverts.
    picture = np.zeros((32, 32, 3), np.uint8)
    picture[:] = (0, 255, 0)
    picture[8:24, 8:24] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    upload = {"images": ("p.png", buffer.getvalue())}
    auto = served.post("/encode", files=upload).json()
    kept = served.post("/encode", data={"invert": "false"}, files=upload).json()
    flipped = served.post("/encode", data={"invert": "true"}, files=upload).json()
    assert auto["mu"] == kept["mu"] and auto["mu"] != flipped["mu"]


@pytest.mark.parametrize("style", list(STYLES))
def test_oip_follows_the_model(served: TestClient, foreign: Path, style: str) -> None:
    c, h, w = STYLES[style].chw
    reference = Reference.in_folder(foreign / model_of(style), style)
    encoder = served.get(f"/v2/models/{model_of(style)}-encoder").json()
    decoder = served.get(f"/v2/models/{model_of(style)}-decoder").json()
    assert encoder["inputs"][0]["shape"] == [-1, h, w, c]
    assert [o["shape"] for o in encoder["outputs"]] == [[-1, LATENT]] * (
        2 if STYLES[style].kind == "vae" else 1
    )
    assert "z" not in [o["name"] for o in encoder["outputs"]]  # a sampled z is not served
    assert decoder["outputs"] == [
        {"name": STYLES[style].decoder_output, "datatype": "FP32", "shape": [-1, h, w, c]}
    ]
    images = pictures(style, 2, seed=6)
    for shape in ([2, h, w, c], [2, h * w * c]):
        body = {
            "inputs": [
                {
                    "name": STYLES[style].input_name,
                    "shape": shape,
                    "datatype": "FP32",
                    "data": images.ravel().tolist(),
                }
            ]
        }
        answer = served.post(f"/v2/models/{model_of(style)}-encoder/infer", json=body).json()
        mu, _ = reference.encode(images)
        close(np.reshape(answer["outputs"][0]["data"], (2, LATENT)), mu)
    z = np.random.default_rng(8).standard_normal((2, LATENT)).astype(np.float32)
    body = {
        "inputs": [
            {
                "name": STYLES[style].decoder_input,
                "shape": [2, LATENT],
                "datatype": "FP32",
                "data": z.ravel().tolist(),
            }
        ]
    }
    [output] = served.post(f"/v2/models/{model_of(style)}-decoder/infer", json=body).json()[
        "outputs"
    ]
    assert output["shape"] == [2, h, w, c]
    close(np.reshape(output["data"], (2, h, w, c)), reference.decode(z))


# --- wrong shapes: the message says what the model takes ------------------------------------------


def test_a_channels_first_colour_image_is_refused_with_the_fix(served: TestClient) -> None:
    chw = pictures("color_vae", 1)[0].transpose(2, 0, 1)
    answer = served.post("/encode", json={"model": "color-vae", "images": [chw.tolist()]})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "images[0]: expected 32 rows of 32 pixels of 3 channels (H x W x C" in detail
    assert "x.transpose(1, 2, 0)" in detail
    as_npy = served.post(
        "/encode?model=color-vae", content=npy(chw[None]), headers={"Content-Type": NPY}
    )
    assert as_npy.status_code == 422
    assert "expected (N, 32, 32, 3) or (N, 3072)" in as_npy.json()["detail"]
    assert "x.transpose(0, 2, 3, 1)" in as_npy.json()["detail"]
    body = {
        "inputs": [{"name": "image", "shape": [1, 3, 32, 31], "datatype": "FP32", "data": [0.0]}]
    }
    oip = served.post("/v2/models/color-vae-encoder/infer", json=body)
    assert oip.status_code == 400


def test_large_images_are_bounded_in_values(tmp_path: Path) -> None:
    add_model(tmp_path, "gray64_vae", "big")
    settings = Settings(model_dir=tmp_path, max_request_values=10 * 64 * 64)
    with TestClient(create_app(settings)) as client:
        eleven = np.zeros((11, 64, 64), np.float32)
        for answer in (
            client.post("/encode", content=npy(eleven), headers={"Content-Type": NPY}),
            client.post("/encode", json={"images": eleven.tolist()}),
            client.post("/generate", json={"n": 11}),
            client.post("/decode", json={"z": [[0.0] * LATENT] * 11}),
        ):
            assert answer.status_code == 422, answer.text
            assert "VAE_MAX_REQUEST_VALUES" in answer.json()["detail"]
            assert "send at most 10 images of this model per request" in answer.json()["detail"]
        sampled = client.post(
            "/reconstruct",
            json={"images": eleven[:4].tolist(), "mode": "sampled", "samples": 3, "seed": 1},
        )
        assert sampled.status_code == 422 and "samples:" in sampled.json()["detail"]
        assert client.post("/generate", json={"n": 10}).status_code == 200


# --- the load-time contract -----------------------------------------------------------------------


def _prepend(path: Path, node: Callable[[str, str], Any], elem_type: int = 1) -> None:
    """Put `node(new input name, old input name)` in front of the graph in `path`: the graph's
    input is then the new one, of `elem_type`."""
    model = onnx.load(str(path))
    graph_input = model.graph.input[0]
    original = graph_input.name
    graph_input.name = original + "_raw"
    graph_input.type.tensor_type.elem_type = elem_type
    made = node(graph_input.name, original)
    nodes, initializers = made if isinstance(made, tuple) else ([made], [])
    for i, n in enumerate(nodes):
        model.graph.node.insert(i, n)
    model.graph.initializer.extend(initializers)
    onnx.save(model, str(path))


def _fix_batch(path: Path) -> None:
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))


def _failing_gather(new: str, old: str) -> tuple[list[Any], list[Any]]:
    """x[:, indices] with one index past the end: fine to build, fails when run."""
    indices = np.arange(784, dtype=np.int64)
    indices[0] = 900
    init = numpy_helper.from_array(indices, "bad_indices")
    return [helper.make_node("Gather", [new, "bad_indices"], [old], axis=1)], [init]


def _smaller_decoder(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder of the same style with a latent of 3: latents that do not match."""
    monkeypatch.setattr(foreign_models, "LATENT", 3)
    other = folder.parent / "other"
    export_style("color_vae", other)
    (folder / "decoder.onnx").write_bytes((other / "decoder.onnx").read_bytes())


def _set(path: str, value: Any) -> Edit:
    def edit(manifest: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = manifest
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[last] = value

    return edit


CASES: dict[str, tuple[str, Edit | None, Callable[..., None] | None, str]] = {
    "wrong input layout": (
        "keras_nhwc",
        _set("input.layout", "NCHW"),
        None,
        r"encoder.onnx: 'input_layer' is \[N, 28, 28, 1\], but a NCHW input of 1 x 28 x 28 "
        r"images needs \[batch, 1, 28, 28\]; set input.layout and input.shape",
    ),
    "wrong image shape": (
        "color_vae",
        _set("input.shape", [3, 28, 28]),
        None,
        r"encoder.onnx: 'image' is \[N, 3, 32, 32\], but a NCHW input of 3 x 28 x 28 images "
        r"needs \[batch, 3, 28, 28\]",
    ),
    "flat decoder declared NCHW": (
        "keras_flat",
        _set("output.layout", "NCHW"),
        None,
        r"decoder.onnx: 'dense_3' is \[\w+, 784\], but a NCHW output of the encoder's 1 x 28 x 28 "
        r"images needs \[batch, 1, 28, 28\]; the decoder must give back images",
    ),
    "latent sizes differ": (  # a hand-written manifest that says 4 where the graph has 3
        "color_vae",
        _set("decoder.inputs.0.shape", ["N", 4]),
        _smaller_decoder,
        r"decoder.onnx: 'z' is \[N, 3\], but latent_dim 4 needs \[batch, 4\]; the decoder must "
        r"take the encoder's 4 latent values",
    ),
    "fixed batch of one": (
        "logits_ae",
        None,
        lambda folder, _: _fix_batch(folder / "encoder.onnx"),
        r"encoder.onnx: 'x' has a fixed batch size of 1 \(\[1, 1, 28, 28\]\); export it with a "
        r"dynamic batch axis",
    ),
    "int64 input": (
        "logits_ae",
        None,  # the manifest lists the graph's input as it is now
        lambda folder, _: _prepend(
            folder / "encoder.onnx",
            lambda new, old: helper.make_node("Cast", [new], [old], to=TensorProto.FLOAT),
            TensorProto.INT64,
        ),
        r"encoder.onnx: 'x_raw' is tensor\(int64\); the service feeds and reads float32",
    ),
    "fails when run": (
        "keras_flat",
        None,  # the manifest lists the graph's input as it is now
        lambda folder, _: _prepend(folder / "encoder.onnx", _failing_gather),
        r"encoder.onnx: fails when run on a batch of 1 black images \(input \[1, 784\]\): .*"
        r"the graph must run on any batch size",
    ),
    "NaN on black images": (
        "keras_flat",
        None,  # the manifest lists the graph's input as it is now
        lambda folder, _: _prepend(
            folder / "encoder.onnx", lambda new, old: helper.make_node("Div", [new, new], [old])
        ),
        r"encoder.onnx: 'z_mean' holds NaN or infinity when run on a batch of 1 black images",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_that_does_not_fit_is_refused_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    style, edit, damage, message = CASES[case]
    folder = tmp_path / "models" / "misfit"
    export_style(style, folder)
    if damage is not None:
        damage(folder, monkeypatch)
    write_manifest(folder, style, "misfit", edit)
    with pytest.raises(ModelLoadError) as refused:
        start(tmp_path / "models")
    text = str(refused.value)
    assert text.startswith(f"model 'misfit' cannot be served: {folder}/"), text
    assert re.search(message, text), text
    assert "Traceback" not in text


def test_a_misfit_is_refused_at_a_rescan_and_the_rest_keeps_serving(tmp_path: Path) -> None:
    models = tmp_path / "models"
    add_model(models, "logits_ae", "good")
    with TestClient(create_app(Settings(model_dir=models))) as client:
        add_model(models, "keras_nhwc", "misfit", _set("input.layout", "flat"))
        answer = client.post("/models/reload").json()
        [refused] = answer["refused"]
        assert refused["model"] is None
        assert "model 'misfit' cannot be served" in refused["problem"]
        problem = refused["problem"]
        assert "encoder.onnx: 'input_layer' is [N, 28, 28, 1], but a flat input" in problem
        assert [m["name"] for m in client.get("/models").json()["models"]] == ["good"]


@pytest.fixture(scope="module")
def live(foreign: Path) -> Iterator[str]:
    """The service as a real process on the foreign models (the client speaks httpx)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from reliability import serve

    with serve({}, model_dir=foreign) as running:
        yield running.url


@pytest.mark.parametrize("style", ["color_vae", "gray64_vae"])
def test_the_python_client_sends_and_gets_the_public_shapes(
    live: str, foreign: Path, style: str
) -> None:
    from service.client import Client

    c, h, w = STYLES[style].chw
    reference = Reference.in_folder(foreign / model_of(style), style)
    images = pictures(style, 2, seed=9)
    with Client(live, model=model_of(style)) as client:
        [info] = [m for m in client.models() if m.name == model_of(style)]
        assert info.image_shape == ((h, w) if c == 1 else (h, w, c))
        encoding = client.encode(public(images))
        mu, _ = reference.encode(images)
        close(encoding.mu, mu)
        reconstruction = client.reconstruct(public(images))
        assert reconstruction.images.shape == (2, *info.image_shape)
        close(reconstruction.images, public(reference.decode(mu)))
        assert client.generate(3, seed=1).images.shape == (3, *info.image_shape)
        assert client.decode(np.zeros((1, LATENT))).shape == (1, *info.image_shape)
