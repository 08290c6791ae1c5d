"""No client input reaches a 500, and no client string forges a log line: .npy headers and OIP
shapes checked in Python integers, OIP datatypes checked against the data, strict numbers in
query and form fields, API keys as UTF-8 bytes, HEAD on the probes, CORS for X-Request-ID, a
hang-up counted as 499 on every body-reading path, large OIP bodies parsed off the event loop,
and every log line (the guard's warnings and the access log, text and JSON) one line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.codecs import oip_input
from service.http import oip
from service.http.guard import Guard
from service.observability.access_log import AccessLog
from service.observability.logs import JSONFormatter, TextFormatter
from service.settings import Settings
from tests.test_guard import app_state, call, downstream, http_scope

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import Server, serve  # noqa: E402

NPY = {"Content-Type": "application/x-npy"}
ENCODER = "/v2/models/tiny-vae-encoder/infer"
DECODER = "/v2/models/tiny-vae-decoder/infer"
WAIT_S = 20.0  # the bound on every wait; nothing here should take a second


def npy_head(descr: str, shape: tuple[Any, ...], data: bytes = b"") -> bytes:
    """A .npy body whose header says `descr` and `shape` (written as is), then `data`."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)  # type: ignore[no-untyped-call]
    return buffer.getvalue() + data


def tensor(**fields: Any) -> dict[str, Any]:
    base = {"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.5] * 784}
    return {"inputs": [{**base, **fields}]}


# --- .npy headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (npy_head("<f4", (True, 784), bytes(4 * 784)), 400, "shape (True, 784) is not valid"),
        (npy_head("|u1", (-1, 784)), 400, "shape (-1, 784) is not valid"),
        (npy_head("|u1", (2**62, 0)), 422, "the array holds no images (shape (4611686018427387904"),
        (npy_head("|u1", (2**63, 2**63)), 400, "but 0 bytes of data follow it"),
        (npy_head("|u1", (2**32, 2**32, 2**32)), 400, "but 0 bytes of data follow it"),
        (npy_head("<f4", (10**12, 784), bytes(8)), 400, "but 8 bytes of data follow it"),
        (npy_head("|u1", (0, 784)), 422, "the array holds no images"),
        (npy_head("<f4", (1.5, 784)), 400, "shape is not valid"),
    ],
    ids=[
        "bool-dim",
        "negative",
        "2**62-by-0",
        "overflowing",
        "beyond-memory",
        "3-PB",
        "empty",
        "1.5",
    ],
)
def test_npy_headers_are_checked_before_numpy(
    client: TestClient, body: bytes, status: int, message: str
) -> None:
    response = client.post("/encode", content=body, headers=NPY)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail.startswith("images: ") and message in detail
    if status == 400:
        assert "np.save" in detail  # the fix


def test_an_empty_latent_array_names_its_field(client: TestClient) -> None:
    response = client.post("/decode", content=npy_head("<f4", (0, 2)), headers=NPY)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("z: the array holds no latent vectors")


# --- the Open Inference Protocol ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        # the product taken in Python integers (numpy's int64 product wraps around to 784)
        (
            ENCODER,
            tensor(shape=[1, 2**62 + 1, 784]),
            "holds 3615561838447072117520 values; 64 rows of 784",
        ),
        (ENCODER, tensor(shape=[2**62 + 1, 784]), "4611686018427387905 rows; at most 64"),
        (ENCODER, tensor(shape=[True, 784]), "inputs[0].shape[0]: Input should be a valid integer"),
        (ENCODER, tensor(shape=[1.0, 784]), "inputs[0].shape[0]: Input should be a valid integer"),
        (ENCODER, tensor(data=[True] * 784), "expected numbers for FP32 (found true, a boolean)"),
        (ENCODER, tensor(data=["0.5"] * 784), 'expected numbers for FP32 (found "0.5", a string)'),
        (ENCODER, tensor(data=[None] * 784), "expected numbers for FP32 (found null, null)"),
        (ENCODER, tensor(data=[[0.5] * 783 + [{}]]), "(found {}, an object)"),
        (ENCODER, tensor(data=0.5), "inputs[0].data: Input should be a valid list"),
        (ENCODER, tensor(datatype="INT8"), "'INT8' is not accepted for x; send FP32 or FP64 or"),
        (ENCODER, tensor(datatype="BOOL"), "'BOOL' is not accepted for x"),
        (ENCODER, tensor(datatype="UINT8"), "expected integers for UINT8 (found 0.5, not a whole"),
        (ENCODER, tensor(datatype="UINT8", data=[256] * 784), "256 is out of UINT8's range"),
        (ENCODER, tensor(datatype="UINT8", data=[-1] * 784), "(found -1, below 0)"),
        (DECODER, tensor(name="z", shape=[1, 2], datatype="UINT8", data=[1, 2]), "for z; send"),
        (DECODER, tensor(name="z", shape=[1, 2], data=[1e39, 0]), "1e+39 is out of FP32's range"),
        (DECODER, tensor(name="z", shape=[1, 2], datatype="FP16", data=[7e4, 0]), "FP16's range"),
        (DECODER, tensor(name="z", shape=[1, 2], data=[2**64, 0]), "fit in 64 bits"),
    ],
)
def test_oip_checks_shapes_and_datatypes_against_the_data(
    client: TestClient, path: str, body: dict[str, Any], message: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [b'{"inputs": [{"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [NaN, 0]}]}', b"[1]"],
)
def test_oip_bodies_that_are_not_json_objects(client: TestClient, body: bytes) -> None:
    response = client.post(DECODER, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]


def test_oip_honours_the_declared_datatype(client: TestClient) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, 784)
    as_uint8 = client.post(ENCODER, json=tensor(datatype="UINT8", data=pixels.tolist()))
    as_float = client.post(ENCODER, json=tensor(data=(pixels / 255).tolist()))
    assert as_uint8.status_code == 200, as_uint8.text
    assert as_uint8.json()["outputs"] == as_float.json()["outputs"]
    # FP16 rounds to FP16 first: 0.1 is 0.0999755859375 there
    z = [0.1, -0.3]
    fp16 = client.post(DECODER, json=tensor(name="z", shape=[1, 2], datatype="FP16", data=z))
    exact = np.float16(z).astype(float).tolist()
    fp64 = client.post(DECODER, json=tensor(name="z", shape=[1, 2], datatype="FP64", data=exact))
    assert fp16.status_code == 200 and fp16.json()["outputs"] == fp64.json()["outputs"]


@pytest.mark.parametrize(
    "text",
    [
        b'{"inputs": [{"name": "x", "data": [0.5, 1e-3, -2E2 , \n0]}]}',
        b'{"inputs": [{"data" :[1,2], "name": "x"}], "outputs": []}',
    ],
)
def test_flat_data_is_read_by_numpy(text: bytes) -> None:
    flat = oip_input._flat_data(text)
    assert flat is not None
    skeleton, numbers = flat
    assert json.loads(skeleton)["inputs"][0]["data"] == []
    assert numbers.tolist() == [float(v) for v in json.loads(text)["inputs"][0]["data"]]


@pytest.mark.parametrize(
    "text",
    [
        b'{"inputs": [{"data": [[0.5, 1], [2, 3]]}]}',  # nested: simdjson reads it
        b'{"inputs": [{"data": [0.5, true]}]}',
        b'{"inputs": [{"data": [0.5, "0.5"]}]}',
        b'{"inputs": [{"data": [+1, 2]}]}',
        b'{"inputs": [{"data": [1,, 2]}]}',
        b'{"inputs": [{"data": [1, NaN]}]}',
        b'{"inputs": [{"data": []}]}',
        b'{"inputs": [{"data": [ ]}]}',
        b'{"inputs": [{"data": [1, 2,]}]}',
        b'{"inputs": [{"data": [1, , 2]}]}',
        b'{"inputs": [{"data": [ ,1]}]}',
        b'{"inputs": [{"data": [1]}], "parameters": {"data": [2]}}',  # two: which is which
    ],
)
def test_anything_but_one_flat_list_of_numbers_is_left_to_simdjson(text: bytes) -> None:
    assert oip_input._flat_data(text) is None


def test_large_bodies_read_by_numpy_answer_as_the_others(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.random.default_rng(1).uniform(0, 1, size=(3, 784)).round(4)
    good = tensor(shape=[3, 784], data=images.ravel().tolist())
    bad = tensor(data=[0.5] * 783 + [True])
    expected = client.post(ENCODER, json=good).json()
    refusal = client.post(ENCODER, json=bad).json()
    monkeypatch.setattr(oip_input, "UNLOCKED_PARSE_BYTES", 1)
    seen: list[bytes] = []
    read = oip_input._flat_data
    monkeypatch.setattr(oip_input, "_flat_data", lambda body: seen.append(body) or read(body))
    assert client.post(ENCODER, json=good).json() == expected
    assert client.post(ENCODER, json=bad).json() == refusal  # simdjson names the fault
    assert len(seen) == 2


def test_a_large_oip_body_is_parsed_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse of a large body is held until /healthz has answered: were it on the event loop,
    the probe could not answer at all (it would wait the whole WAIT_S and fail)."""
    parsing, release = threading.Event(), threading.Event()
    read = oip.read_inference_request

    def held_read(body: bytes, check: Any = None, header: int | None = None) -> Any:
        parsing.set()
        release.wait(WAIT_S)
        return read(body, check, header)

    monkeypatch.setattr(oip, "read_inference_request", held_read)
    rows = 64
    big = tensor(shape=[rows, 784], data=[0.123456789] * (rows * 784))
    assert len(json.dumps(big)) > oip.OFF_LOOP_BODY_BYTES  # the size that goes off the loop
    answers: list[httpx.Response] = []
    heavy = threading.Thread(target=lambda: answers.append(client.post(ENCODER, json=big)))
    heavy.start()
    try:
        assert parsing.wait(WAIT_S), "the large body was never parsed"
        probe: list[int] = []
        prober = threading.Thread(target=lambda: probe.append(client.get("/healthz").status_code))
        prober.start()
        prober.join(WAIT_S)
        assert probe == [200] and not answers  # answered while the large body is mid-parse
    finally:
        release.set()
        heavy.join(WAIT_S)
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["outputs"][0]["shape"] == [rows, 2]


# --- query and form fields, keys, HEAD, CORS ----------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("seed=1_000", "seed"),
        ("seed=%205", "seed"),
        ("seed=5%20", "seed"),
        ("seed=%2B5", "seed"),
        ("seed=5.0", "seed"),
        ("seed=1e3", "seed"),
        ("seed=0x10", "seed"),
        ("seed=%D9%A3", "seed"),  # an Arabic-Indic 3, which int() reads
        ("seed=" + "9" * 5000, "seed"),  # int() refuses it with a ValueError of its own
        ("samples=2_0", "samples"),
    ],
)
def test_numbers_in_the_query_are_json_integers(client: TestClient, query: str, field: str) -> None:
    body = io.BytesIO()
    np.save(body, np.zeros((1, 784), np.float32))
    response = client.post(
        f"/reconstruct?mode=sampled&{query}", content=body.getvalue(), headers=NPY
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: expected an integer, got ")


def test_numbers_in_form_fields_are_json_integers(client: TestClient) -> None:
    from tests.test_hostile import small_png

    files = [("images", ("a.png", small_png(), "image/png"))]
    ok = client.post("/reconstruct", files=files, data={"mode": "sampled", "seed": "7"})
    assert ok.status_code == 200, ok.text
    bad = client.post("/reconstruct", files=files, data={"mode": "sampled", "seed": " 7"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("seed: expected an integer")


def test_api_keys_are_compared_as_utf8_bytes() -> None:
    """Through the bare guard: a test client would re-encode the header's bytes."""
    key = "clé-secrète-ñ-0123456789"

    async def done() -> None:
        return None

    guard = Guard(downstream(done), app_state(Settings(api_keys=key)))  # type: ignore[arg-type]

    async def status(name: bytes, value: bytes) -> int:
        return (await call(guard, http_scope(headers=[(name, value)])))[0]

    async def scenario() -> None:
        for name, prefix in ((b"x-api-key", b""), (b"authorization", b"Bearer ")):
            assert await status(name, prefix + key.encode("utf-8")) == 200
            assert await status(name, prefix + key.encode("latin-1")) == 401

    asyncio.run(scenario())


def test_head_on_the_probes_is_get_without_a_body(client: TestClient) -> None:
    for path in ("/healthz", "/readyz"):
        assert client.head(path).status_code == client.get(path).status_code == 200
    schema = client.get("/openapi.json").json()
    assert "head" not in schema["paths"]["/healthz"]  # documented once, as GET


def test_cors_preflight_allows_every_request_header_the_api_reads(model_dir: Path) -> None:
    origin = "https://app.example.com"
    app = create_app(Settings(model_dir=model_dir, cors_origins=origin))  # type: ignore[arg-type]
    asked = "x-request-id, content-type, x-api-key, authorization, accept"
    with TestClient(app) as client:
        response = client.options(
            "/encode",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
        )
    assert response.status_code == 200, response.text
    allowed = response.headers["access-control-allow-headers"].lower()
    assert all(name.strip() in allowed for name in asked.split(","))


# --- log lines ----------------------------------------------------------------------------------

FORGED = "2026-12-02 09:00:00,000 CRITICAL service: FORGED"
# A path as the server hands it on, percent-decoded: %0A, and the separators JSON leaves raw.
FORGING_PATHS = [
    f"/v2/models/x\n{FORGED}\n/infer",
    f"/v2/models/x\r{FORGED}\x85/infer",
    f"/v2/models/x\u2028{FORGED}\u2029/infer",
]


@pytest.fixture
def service_log() -> Iterator[io.StringIO]:
    """What the `service` logger writes, through the formatter the test sets on it."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    logger = logging.getLogger("service")
    logger.addHandler(handler)
    yield written
    logger.removeHandler(handler)


def one_line_per_event(text: str, events: int) -> list[str]:
    lines = text.splitlines()  # splits on every line break a reader might use
    assert not any(line.startswith(FORGED) for line in lines), text
    assert len([line for line in lines if "FORGED" in line]) == events, text
    return lines


@pytest.mark.parametrize("path", FORGING_PATHS)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_guards_warnings_cannot_be_forged(
    service_log: io.StringIO, path: str, log_format: str
) -> None:
    logging.getLogger("service").handlers[-1].setFormatter(
        JSONFormatter() if log_format == "json" else TextFormatter()
    )

    async def hang() -> None:
        await asyncio.sleep(3600)

    async def fail() -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        settings = Settings(request_timeout_s=0.05)
        timeout = Guard(downstream(hang), app_state(settings))
        assert (await call(timeout, http_scope(path)))[0] == 504
        failure = Guard(downstream(fail), app_state(settings))
        assert (await call(failure, http_scope(path)))[0] == 500
        # shutdown: uvicorn cancels a request when the grace runs out
        cut_off = Guard(downstream(hang), app_state(Settings()))
        task = asyncio.create_task(call(cut_off, http_scope(path)))
        while cut_off.in_flight == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    lines = one_line_per_event(service_log.getvalue(), 3)
    messages = [json.loads(line)["message"] for line in lines] if log_format == "json" else lines
    kinds = ["timed out after", "failed", "cut off by shutdown"]
    for kind in kinds:
        assert any(kind in m and "FORGED" in m for m in messages), (kind, messages)


@pytest.mark.parametrize("path", FORGING_PATHS)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_access_log_cannot_be_forged(path: str, log_format: str) -> None:
    written = io.StringIO()
    log = AccessLog(log_format, written)
    log.write(f"POST {path} 404 1.0 ms", {"endpoint": path, "model": path, "status": 404})
    log.flush()
    (line,) = one_line_per_event(written.getvalue(), 1)
    if log_format == "json":
        entry = json.loads(line)
        assert entry["endpoint"] == entry["model"] == path  # escaped, not changed


# --- against the real server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve({"VAE_BODY_TIMEOUT_S": "30"}) as running:
        yield running


BOUNDARY = "hang-up-boundary"
HALF_BODIES = {  # path, content type, the first bytes of a body that never arrives whole
    "json": ("/encode", "application/json", b'{"images": [[0.0, 0.0'),
    "npy": ("/encode", "application/x-npy", b"\x93NUMPY\x01\x00v\x00{'descr'"),
    "multipart": (
        "/reconstruct",
        f"multipart/form-data; boundary={BOUNDARY}",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n\x89PNG".encode(),
    ),
    "oip": ("/v2/models/mnist-vae-encoder/infer", "application/json", b'{"inputs": [{"na'),
    "raw-image": ("/decode", "image/png", b"\x89PNG\r\n\x1a\n"),
}


def requests_by_status(server: Server) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=WAIT_S).text.splitlines():
        if line.startswith("vae_requests_total{"):
            status = line.split('status="')[1].split('"')[0]
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_a_hang_up_is_499_on_every_body_reading_path(server: Server) -> None:
    before = requests_by_status(server)
    for path, content_type, part in HALF_BODIES.values():
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
            sock.sendall(f"{head}Content-Length: 100000\r\n\r\n".encode() + part)

    def counted() -> bool:  # in the metrics, and in the access log (written every 0.25 s)
        gone = requests_by_status(server).get("499", 0) - before.get("499", 0)
        return gone == len(HALF_BODIES) and server.stderr().count(" 499 ") == len(HALF_BODIES)

    deadline = time.monotonic() + WAIT_S
    while not counted():
        assert time.monotonic() < deadline, f"not all counted as 499: {server.stderr()}"
        time.sleep(0.02)
    after = requests_by_status(server)
    assert not any(s.startswith("5") and after[s] > before.get(s, 0) for s in after), after
    assert not any(f" {s} " in server.stderr() for s in ("500", "502", "503"))


def test_head_on_the_probes_of_the_real_server(server: Server) -> None:
    for path in ("/healthz", "/readyz"):
        response = httpx.head(f"{server.url}{path}", timeout=WAIT_S)
        assert response.status_code == 200 and response.content == b""
