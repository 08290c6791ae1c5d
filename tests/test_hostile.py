"""Hostile inputs, one row each: the exact 4xx, a message naming the field and the problem, and a
service that still answers afterwards (no 5xx, no hang, nothing left broken)."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.codecs.decoding import DecodePool
from service.http.guard import is_open

JSON = {"Content-Type": "application/json"}
NPY = {"Content-Type": "application/x-npy"}
IMAGE = [0.0] * 784
LIMIT = 16 * 2**20  # VAE_MAX_BODY_BYTES, the default

Request = Callable[[], dict[str, Any]]  # -> keyword arguments of TestClient.request


# --- bodies -------------------------------------------------------------------------------------


def raw(body: bytes, headers: dict[str, str] | None = None) -> Request:
    return lambda: {"content": body, "headers": JSON if headers is None else headers}


def as_json(body: Any) -> Request:
    return lambda: {"json": body}


def json_numbers(rows: int, numbers: int) -> Request:
    """`rows` images of `numbers` zeros, written directly (no Python list of 10**6 floats)."""

    def build() -> dict[str, Any]:
        image = b"[" + b",".join([b"0"] * numbers) + b"]"
        return {"content": b'{"images": [' + b",".join([image] * rows) + b"]}", "headers": JSON}

    return build


def nested(depth: int, key: bytes = b"images") -> bytes:
    return b'{"' + key + b'": ' + b"[" * depth + b"0" + b"]" * depth + b"}"


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...]) -> bytes:
    """Only the header of a float32 .npy file: it claims `shape`, no data follows."""
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((1, 784), np.float32))
    return buffer.getvalue()


def binary(body: bytes) -> Request:
    return raw(body, NPY)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height 8-bit grey pixels: a decompression bomb
    (or a lie) that must be refused from the header, before anything is decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def small_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(*files: bytes, name: str = "a.png") -> Request:
    return lambda: {"files": [("images", (name, data, "image/png")) for data in files]}


BOUNDARY = "hostile-boundary"


def multipart(*parts: bytes, closed: bool = True) -> bytes:
    """A hand-written multipart/form-data body of `images` file parts."""
    body = b""
    for i, data in enumerate(parts):
        disposition = f'form-data; name="images"; filename="{i}.png"'
        head = (
            f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n"
        )
        body += head.encode() + data + b"\r\n"
    return body + (f"--{BOUNDARY}--\r\n".encode() if closed else b"")


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def chunked(total: int, headers: dict[str, str] = JSON, chunk: int = 2**20) -> Request:
    """No Content-Length: the body arrives in chunks until it has passed `total` bytes."""

    def chunks() -> Iterator[bytes]:
        if headers is MULTIPART:  # one file part's head; its data is what passes the limit
            yield multipart(b"", closed=False)[:-2]
        for _ in range(total // chunk + 1):
            yield b"[" * chunk

    return lambda: {"content": chunks(), "headers": headers}


# --- the table ----------------------------------------------------------------------------------

CASES = [
    # Huge and deep arrays
    pytest.param(
        "/encode",
        json_numbers(10_000, 784),
        422,
        # counted before the body is parsed: 64 images of the widest model's 784 pixels
        "images: the body holds about 7840000 numbers; 64 images (VAE_MAX_IMAGES) hold at most "
        "50176: send fewer per request",
        id="10000-images",
    ),
    pytest.param(
        "/encode",
        as_json({"images": [[0.0]] * 10_000}),
        422,
        "images: 10000 images; at most 64",
        id="10000-tiny-images",
    ),
    pytest.param(
        "/encode",
        json_numbers(1, 10**6),
        422,
        "images: the body holds about 1000000 numbers; 64 images (VAE_MAX_IMAGES) hold at most",
        id="image-of-a-million-numbers",
    ),
    pytest.param(
        "/encode",
        json_numbers(1, 5000),
        422,
        "images[0]: expected 28 rows of 28 numbers (H x W), or 784 numbers; got 5000 numbers",
        id="image-of-5000-numbers",
    ),
    pytest.param(
        "/decode",
        as_json({"z": [[0.0, 0.0]] * 10_000}),
        422,
        "z: the body holds about 20000 numbers; 64 latent vectors (VAE_MAX_IMAGES) hold at most",
        id="10000-latent-vectors",
    ),
    pytest.param(
        "/encode",
        raw(nested(10_000)),
        422,
        "body: Invalid JSON: recursion limit exceeded",
        id="10000-levels-of-[",
    ),
    pytest.param(
        "/generate",
        raw(b"[" * 10_000),
        422,
        "body: Invalid JSON: recursion limit exceeded",
        id="10000-levels-of-[-unclosed",
    ),
    pytest.param(
        "/encode",
        raw(nested(100)),
        422,
        "images[0][0]: Input should be a valid number",
        id="100-levels-of-[",
    ),
    pytest.param(
        "/decode",
        raw(nested(100, b"z")),
        422,
        "z[0][0]: Input should be a valid number",
        id="100-levels-of-[-in-z",
    ),
    # Strings where numbers go
    pytest.param(
        "/encode",
        as_json({"images": "all of them"}),
        422,
        "images: Input should be a valid array",
        id="images-a-string",
    ),
    pytest.param(
        "/encode",
        as_json({"images": [["0.5"] * 784]}),
        422,
        "images[0][0]: Input should be a valid number",
        id="pixels-strings",
    ),
    pytest.param(
        "/generate", as_json({"n": "5"}), 422, "n: Input should be a valid integer", id="n-a-string"
    ),
    pytest.param(
        "/generate",
        as_json({"temperature": "hot"}),
        422,
        "temperature: Input should be a valid number",
        id="temperature-a-string",
    ),
    pytest.param(
        "/reconstruct",
        as_json({"images": [IMAGE], "mode": "sampled", "seed": "7"}),
        422,
        "seed: Input should be a valid integer",
        id="seed-a-string",
    ),
    pytest.param(
        "/decode",
        as_json({"z": [["a", "b"]]}),
        422,
        "z[0][0]: Input should be a valid number",
        id="latents-strings",
    ),
    pytest.param(
        "/reconstruct?mode=sampled&samples=many",
        binary(npy(np.zeros((1, 784), np.float32))),
        422,
        "samples: expected an integer, got 'many'",
        id="samples-a-string-in-the-query",
    ),
    # NaN and Infinity literals, and numbers too large for float32
    pytest.param(
        "/encode",
        raw(b'{"images": [[NaN' + b", 0" * 783 + b"]]}"),
        422,
        "images[0]: NaN or infinity is not a pixel value",
        id="pixel-NaN",
    ),
    pytest.param(
        "/encode",
        raw(b'{"images": [[-Infinity' + b", 0" * 783 + b"]]}"),
        422,
        "images[0]: NaN or infinity is not a pixel value",
        id="pixel-minus-Infinity",
    ),
    pytest.param(
        "/decode",
        raw(b'{"z": [[0, 0], [Infinity, 0]]}'),
        422,
        "z[1]: NaN or infinity is not a latent value",
        id="latent-Infinity",
    ),
    pytest.param(
        "/generate",
        raw(b'{"temperature": NaN}'),
        422,
        "temperature: Input should be a finite number",
        id="temperature-NaN",
    ),
    pytest.param(
        "/generate",
        raw(b'{"temperature": Infinity}'),
        422,
        "temperature: Input should be a finite number",
        id="temperature-Infinity",
    ),
    pytest.param(
        "/generate", raw(b'{"n": NaN}'), 422, "n: Input should be a valid integer", id="n-NaN"
    ),
    pytest.param(
        "/reconstruct",
        raw(b'{"images": [[0.5]], "mode": "sampled", "seed": -Infinity}'),
        422,
        "seed: Input should be a valid integer",
        id="seed-minus-Infinity",
    ),
    pytest.param(
        "/encode",
        as_json({"images": [[1e300] * 784]}),
        422,
        "images[0]: pixel values must be in [0, 1] (found 1e+300",
        id="pixel-1e300",
    ),
    pytest.param(
        "/decode",
        as_json({"z": [[1e300, 0.0]]}),
        422,
        "z[0]: latent values must be within +-1e+06 (found 1e+300)",
        id="latent-1e300",
    ),
    pytest.param(
        "/decode",
        as_json({"z": [[3e38, -3e38]]}),
        422,
        "z[0]: latent values must be within +-1e+06 (found 3e+38)",
        id="latent-3e38-that-decodes-to-NaN",
    ),
    pytest.param(
        "/reconstruct",
        as_json({"images": [IMAGE], "mode": "sampled", "samples": 10**30}),
        422,
        f"samples: {10**30}; at most 8",
        id="samples-10**30",
    ),
    pytest.param(
        "/reconstruct",
        as_json({"images": [IMAGE], "mode": "sampled", "seed": 10**30}),
        422,
        "seed: Input should be less than or equal to 9223372036854775807",
        id="seed-10**30",
    ),
    # Uploads
    pytest.param(
        "/encode",
        upload(png_claiming(100_000, 100_000), name="bomb.png"),
        413,
        "images[0] (bomb.png): claims far too many pixels; at most 16777216 pixels are accepted",
        id="png-bomb-100000x100000",
    ),
    pytest.param(
        "/encode",
        upload(png_claiming(5000, 5000), name="big.png"),
        413,
        "images[0] (big.png): is 5000x5000 pixels; at most 16777216 pixels are accepted",
        id="png-5000x5000",
    ),
    pytest.param(
        "/encode",
        upload(b"GIF89a not really", name="x.png"),
        422,
        "images[0] (x.png): is not a readable PNG or JPEG image (unknown format)",
        id="upload-not-an-image",
    ),
    pytest.param(
        "/encode",
        raw(multipart(small_png())[:120], MULTIPART),
        400,
        "body: the multipart body ends before its closing boundary",
        id="multipart-truncated-in-a-file",
    ),
    pytest.param(
        "/encode",
        raw(multipart(small_png(), small_png(), closed=False), MULTIPART),
        400,
        "body: the multipart body ends before its closing boundary",
        id="multipart-truncated-after-a-file",
    ),
    pytest.param(
        "/encode",
        raw(b"images", {"Content-Type": "multipart/form-data"}),
        400,
        "body: not a readable multipart/form-data body (Missing boundary",
        id="multipart-without-boundary",
    ),
    pytest.param(
        "/encode",
        upload(*[small_png()] * 65),
        422,
        "images: more than 64 image files; at most 64 per request",
        id="65-files",
    ),
    pytest.param(
        "/encode?model=../../etc/passwd",
        upload(small_png()),
        422,
        "model: String should match pattern",
        id="upload-model-traversal",
    ),
    # Content types
    pytest.param(
        "/encode",
        raw(b"images please", {"Content-Type": "text/plain"}),
        415,
        "content-type: 'text/plain' is not accepted; send application/json, application/x-npy "
        "or multipart/form-data",
        id="text/plain",
    ),
    pytest.param(
        "/decode",
        raw(b"<z>0 0</z>", {"Content-Type": "application/xml"}),
        415,
        "content-type: 'application/xml' is not accepted",
        id="application/xml",
    ),
    pytest.param(
        "/encode",
        raw(npy(np.zeros((1, 784), np.float32)), {}),
        422,
        "Invalid JSON: expected value at line 1 column 1 (the request has no Content-Type",
        id="no-content-type-npy-body",
    ),
    pytest.param(
        "/generate",
        raw(b"", {"Content-Type": "multipart/form-data"}),
        415,
        "content-type: 'multipart/form-data' is not accepted; send application/json",
        id="generate-multipart",
    ),
    pytest.param(
        "/generate",
        binary(npy(np.zeros(1, np.float32))),
        415,
        "content-type: 'application/x-npy' is not accepted; send application/json",
        id="generate-npy",
    ),
    # .npy bodies
    pytest.param(
        "/encode",
        binary(b"GIF89a" + bytes(range(256))),
        400,
        "images: the body is not a readable .npy array (it does not start with \\x93NUMPY)",
        id="npy-not-npy",
    ),
    pytest.param(
        "/encode",
        binary(b""),
        400,
        "images: the body is not a readable .npy array",
        id="npy-empty",
    ),
    pytest.param(
        "/encode",
        binary(npy_header((10**12, 784))),
        400,
        "the header declares float32 (1000000000000, 784) but 0 bytes of data follow it",
        id="npy-header-claiming-3-PB",
    ),
    pytest.param(
        "/encode",
        binary(npy(np.zeros((1, 784), np.float32))[:300]),
        400,
        "the header declares float32 (1, 784) but",
        id="npy-truncated",
    ),
    pytest.param(
        "/encode",
        binary(npz()),
        400,
        "images: send one .npy array, not an .npz archive",
        id="npz",
    ),
    pytest.param(
        "/encode",
        binary(npy(np.array([None], dtype=object), allow_pickle=True)),
        400,
        "object arrays are not accepted",
        id="npy-object-array",
    ),
    pytest.param(
        "/encode",
        binary(npy(np.zeros((1, 784)))),
        422,
        "images: dtype float64: send float32 in [0, 1] or uint8 0-255",
        id="npy-float64",
    ),
    pytest.param(
        "/encode",
        binary(npy(np.zeros((1, 784), np.int64))),
        422,
        "images: dtype int64",
        id="npy-int64",
    ),
    pytest.param(
        "/encode", binary(npy(np.zeros((1, 784), bool))), 422, "images: dtype bool", id="npy-bool"
    ),
    pytest.param(
        "/encode",
        binary(npy(np.array(0.5, np.float32))),
        422,
        "images: array of shape (); expected (N, 28, 28), (N, 784), (N, 28, 28, 1) or "
        "(N, 1, 28, 28)",
        id="npy-scalar",
    ),
    pytest.param(
        "/encode",
        binary(npy(np.zeros((2, 27, 27), np.float32))),
        422,
        "images: array of shape (2, 27, 27)",
        id="npy-27x27",
    ),
    pytest.param(
        "/reconstruct",
        binary(npy(np.zeros((1, 2, 28, 28), np.float32))),
        422,
        "images: array of shape (1, 2, 28, 28)",
        id="npy-two-channels",
    ),
    pytest.param(
        "/encode",
        binary(npy(np.zeros((65, 784), np.uint8))),
        422,
        "images: 65 images; at most 64 per request",
        id="npy-65-images",
    ),
    pytest.param(
        "/decode",
        binary(npy(np.zeros((1, 2), np.uint8))),
        422,
        "z: expected a float32 array (N, latent), got uint8 (1, 2)",
        id="npy-latents-uint8",
    ),
    pytest.param(
        "/decode",
        binary(npy(np.zeros((2, 3), np.float32))),
        422,
        "z[0]: has 3 numbers but this model's latent size is 2",
        id="npy-latents-wrong-size",
    ),
    pytest.param(
        "/decode",
        binary(npy(np.array([[0, np.nan]], np.float32))),
        422,
        "z[0]: NaN or infinity is not a latent value",
        id="npy-latents-NaN",
    ),
    # Model names
    pytest.param(
        "/encode?model=ñ模型",
        as_json({"images": [IMAGE]}),
        422,
        "model: String should match pattern",
        id="unicode-model-in-query",
    ),
    pytest.param(
        "/encode",
        as_json({"images": [IMAGE], "model": "ñ模型"}),
        404,
        "model: no model named 'ñ模型'; available: tiny-ae, tiny-vae",
        id="unicode-model-in-body",
    ),
    pytest.param(
        "/encode?model=../../etc/passwd",
        as_json({"images": [IMAGE]}),
        422,
        "model: String should match pattern",
        id="traversal-in-query",
    ),
    pytest.param(
        "/decode",
        as_json({"z": [[0.0, 0.0]], "model": "../../etc/passwd"}),
        404,
        "model: no model named '../../etc/passwd'",
        id="traversal-in-body",
    ),
    pytest.param(
        "/models/%2e%2e/reload",
        lambda: {},
        404,
        "model: no model named '..'",
        id="reload-dot-dot",
    ),
    pytest.param(
        "/models/..%2F..%2Ftmp/reload",
        lambda: {},
        404,
        "no endpoint at",
        id="reload-traversal",
    ),
    # Limits
    pytest.param(
        "/encode",
        raw(b"{}", {**JSON, "Content-Length": str(10**9)}),
        413,
        f"request body larger than {LIMIT} bytes (16 MiB, VAE_MAX_BODY_BYTES)",
        id="content-length-over-the-limit",
    ),
    pytest.param(
        "/models/tiny-vae/reload",
        raw(b"", {"Content-Length": str(10**9)}),
        413,
        f"request body larger than {LIMIT} bytes (16 MiB, VAE_MAX_BODY_BYTES)",
        id="content-length-over-the-limit-on-reload",
    ),
    pytest.param(
        "/encode",
        chunked(LIMIT),
        413,
        f"request body larger than {LIMIT} bytes (16 MiB, VAE_MAX_BODY_BYTES)",
        id="chunked-body-over-the-limit",
    ),
    pytest.param(
        "/encode",
        chunked(LIMIT, MULTIPART),
        413,
        f"request body larger than {LIMIT} bytes (16 MiB, VAE_MAX_BODY_BYTES)",
        id="chunked-multipart-over-the-limit",
    ),
    pytest.param("/generate", as_json({"n": 33}), 422, "n: 33; at most 32 per request", id="n-33"),
    pytest.param(
        "/generate",
        as_json({"n": 10**9}),
        422,
        "n: 1000000000; at most 32 per request",
        id="n-10**9",
    ),
    pytest.param(
        "/encode",
        as_json({"images": [IMAGE] * 65}),
        422,
        "images: 65 images; at most 64 per request",
        id="65-images",
    ),
    pytest.param(
        "/reconstruct",
        as_json({"images": [IMAGE] * 20, "mode": "sampled", "samples": 4}),
        422,
        "samples: 20 images x 4 samples; at most 64 outputs",
        id="images-times-samples",
    ),
]


def still_serving(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    response = client.post("/decode", json={"z": [[0.0, 0.0]]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("path", "request_kwargs", "status", "message"), CASES)
def test_hostile_post(
    client: TestClient, path: str, request_kwargs: Request, status: int, message: str
) -> None:
    response = client.post(path, **request_kwargs())
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    still_serving(client)


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/models/ñ模型", 404, "model: no model named 'ñ模型'; available: tiny-ae, tiny-vae"),
        ("/models/..%2F..%2Fetc", 404, "no endpoint at"),
        ("/models/%2e%2e", 404, "model: no model named '..'"),
        ("/models/..%2F..%2Fetc%2Fpasswd/reload", 404, "no endpoint at"),
    ],
)
def test_hostile_model_paths(client: TestClient, path: str, status: int, message: str) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    still_serving(client)


def test_large_uploads_do_not_stall_the_service(client: TestClient) -> None:
    """Uploads are decoded off the event loop: while a request of 40 PNGs of 4096 x 4096 pixels
    (16 kB each, seconds of decoding in all) is being served, the service answers others."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4096, 4096)).save(buffer, format="PNG")
    files = upload(*[buffer.getvalue()] * 40)()
    answers: list[Any] = []
    pool: DecodePool = client.app.state.service.decode_pool  # type: ignore[attr-defined]
    decoded_before = pool.started
    heavy = threading.Thread(target=lambda: answers.append(client.post("/encode", **files)))
    heavy.start()
    deadline = time.monotonic() + 30
    while pool.started == decoded_before:  # until the upload's decoding has begun
        assert heavy.is_alive() and time.monotonic() < deadline, "no decode started"
        time.sleep(0.01)
    assert client.get("/healthz").status_code == 200
    assert heavy.is_alive()  # answered while the upload was still being decoded
    heavy.join()
    assert answers[0].status_code == 200, answers[0].text
    still_serving(client)


def test_every_guarded_operation_documents_what_the_guard_answers(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if is_open(path):  # probes and metrics: the guard lets them through untouched
                assert "401" not in operation["responses"], (method, path)
            else:
                assert {"401", "413", "503", "504"} <= set(operation["responses"]), (method, path)
