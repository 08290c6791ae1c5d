"""The guard in front of the service (keys, capacity, body size, timeouts, crashes), model
reloads, shutdown and CORS: through the app where the behaviour is the app's, and on the bare
middleware where a test needs a downstream that hangs or fails on purpose."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.types import Message, Receive, Scope, Send

from service.app import begin_shutdown, create_app
from service.http.guard import Guard, KeyCheck, presented_key
from service.http.state import AppState
from service.observability.metrics import Metrics
from service.settings import Settings

KEY = "k3y-for-tests-0123456789"
IMAGE = np.zeros((1, 784)).tolist()


@pytest.fixture
def keyed_client(model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(model_dir=model_dir, default_model="tiny-vae", api_keys=KEY)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        yield client


# --- API keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({}, 401, "missing API key"),
        ({"Authorization": "Bearer wrong"}, 401, "invalid API key"),
        ({"X-API-Key": KEY[:-1]}, 401, "invalid API key"),
        ({"Authorization": "Basic " + KEY}, 401, "missing API key"),
        ({"Authorization": f"Bearer {KEY}"}, 200, None),
        ({"authorization": f"bearer {KEY}"}, 200, None),
        ({"X-API-Key": KEY}, 200, None),
    ],
)
def test_api_keys_guard_inference(
    keyed_client: TestClient, headers: dict[str, str], status: int, message: str | None
) -> None:
    response = keyed_client.post("/encode", json={"images": IMAGE}, headers=headers)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["detail"]
        assert "Authorization: Bearer" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"


def test_api_keys_guard_metadata_but_not_probes_or_docs(keyed_client: TestClient) -> None:
    for path in ("/models", "/models/tiny-vae"):
        assert keyed_client.get(path).status_code == 401
        assert keyed_client.get(path, headers={"X-API-Key": KEY}).status_code == 200
    assert keyed_client.post("/models/tiny-vae/reload").status_code == 401
    # The multipart route (FastAPI, not the fast lane) is behind the same check.
    files = {"images": ("a.png", b"\x89PNG", "image/png")}
    assert keyed_client.post("/encode", files=files).status_code == 401
    for path in ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json"):
        assert keyed_client.get(path).status_code == 200, path


def test_keys_never_reach_logs_or_answers(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(model_dir=model_dir, api_keys=f"{KEY},second-key-abcdef")  # type: ignore[arg-type]
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings)) as client:
        response = client.post("/encode", json={"images": IMAGE}, headers={"X-API-Key": "guess"})
        assert "guess" not in response.text
        ok = client.post("/encode", json={"images": IMAGE}, headers={"X-API-Key": KEY})
        assert ok.status_code == 200
        second = {"Authorization": "Bearer second-key-abcdef"}
        assert client.get("/models", headers=second).status_code == 200
    assert KEY not in caplog.text and "guess" not in caplog.text


def test_keys_from_a_file(model_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated 2026-11\nfirst-key-from-file\n\n  second-key-from-file  \n")
    settings = Settings(model_dir=model_dir, api_keys_file=key_file)
    assert settings.api_key_list() == ["first-key-from-file", "second-key-from-file"]
    with TestClient(create_app(settings)) as client:
        for key in ("first-key-from-file", "second-key-from-file"):
            assert client.get("/models", headers={"X-API-Key": key}).status_code == 200
        assert client.get("/models", headers={"X-API-Key": "# rotated 2026-11"}).status_code == 401


def test_key_check_compares_every_key() -> None:
    check = KeyCheck(["a" * 20, "b" * 20])
    assert check.enabled and check.matches(b"b" * 20) and not check.matches(b"b" * 19)
    assert not KeyCheck([]).enabled
    assert presented_key({b"authorization": b"Bearer  xyz "}) == b"xyz"
    assert presented_key({b"x-api-key": b"  "}) is None


def test_bad_key_settings_fail_at_start_without_showing_keys(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        env={"VAE_API_KEYS_FILE": str(missing), "VAE_API_KEYS": KEY, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "VAE_API_KEYS_FILE" in done.stderr and "holding at least one key" in done.stderr
    assert KEY not in done.stderr


def test_timeout_longer_than_the_shutdown_grace_is_refused() -> None:
    with pytest.raises(ValueError, match=r"VAE_REQUEST_TIMEOUT_S .* longer than VAE_SHUTDOWN"):
        Settings(request_timeout_s=30, shutdown_grace_s=10)


# --- body size ------------------------------------------------------------------------------------


def test_body_over_the_limit_is_413_with_the_limit(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, max_body_bytes=64 * 1024)
    body = json.dumps({"images": np.full((30, 784), 0.5).tolist()}).encode()
    assert len(body) > 64 * 1024
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/encode", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert "65536 bytes (64 KiB, VAE_MAX_BODY_BYTES)" in response.json()["detail"]
        assert response.headers["connection"] == "close"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the guard counts what it reads
            for start in range(0, len(body), 4096):
                yield body[start : start + 4096]

        chunked = client.post(
            "/encode", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        small = client.post("/encode", json={"images": IMAGE})
        assert small.status_code == 200


# --- the bare guard: capacity, timeouts, crashes --------------------------------------------------


def app_state(settings: Settings) -> AppState:
    """What the guard reads: settings, draining, metrics, access log."""
    return AppState(settings, Metrics(), access_log=None)


def http_scope(path: str = "/encode", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": headers or [],
        "query_string": b"",
    }


async def call(guard: Guard, scope: Scope, body: bytes = b"{}") -> tuple[int, dict[str, str], Any]:
    """One request through the guard -> (status, headers, parsed JSON body or None)."""
    messages: list[Message] = []
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await guard(scope, receive, send)
    start = messages[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    payload = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], headers, json.loads(payload) if payload.startswith(b"{") else None


def downstream(
    behaviour: Callable[[], Awaitable[None]],
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await behaviour()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    return app


def test_capacity_is_bounded_and_probes_always_pass() -> None:
    release = asyncio.Event()

    async def wait() -> None:
        await release.wait()

    guard = Guard(downstream(wait), app_state(Settings(max_concurrent_requests=2, retry_after_s=3)))

    async def scenario() -> None:
        held = [asyncio.create_task(call(guard, http_scope())) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert guard.in_flight == 2
        status, headers, body = await call(guard, http_scope())
        assert status == 503 and headers["retry-after"] == "3"
        assert "at capacity (2 requests in flight, VAE_MAX_CONCURRENT_REQUESTS)" in body["detail"]
        # Probes are never refused, however full the service is (they reach the downstream).
        probe = asyncio.create_task(call(guard, http_scope("/readyz")))
        await asyncio.sleep(0.01)
        assert not probe.done() and guard.in_flight == 2  # waiting downstream, not counted
        release.set()
        assert [(await t)[0] for t in held] == [200, 200]
        assert (await probe)[0] == 200
        assert guard.in_flight == 0
        assert (await call(guard, http_scope()))[0] == 200  # recovered

    asyncio.run(scenario())


def test_timeout_answers_504_and_frees_the_slot() -> None:
    async def hang() -> None:
        await asyncio.sleep(3600)

    settings = Settings(request_timeout_s=0.05, max_concurrent_requests=1)
    guard = Guard(downstream(hang), app_state(settings))

    async def scenario() -> None:
        for _ in range(2):  # the second would be refused if the first kept its slot
            status, _, body = await call(guard, http_scope())
            assert status == 504 and "within 0.05 s of receiving it" in body["detail"]
        assert guard.in_flight == 0

    asyncio.run(scenario())


def test_a_body_still_arriving_holds_no_slot_and_a_hang_up_is_499() -> None:
    async def done() -> None:
        return None

    state = app_state(Settings(max_concurrent_requests=1))
    guard = Guard(downstream(done), state)

    async def scenario() -> None:
        hang_up = asyncio.Event()
        sent: list[Message] = []

        async def slow_receive() -> Message:  # the body never comes; then the client leaves
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        slow = asyncio.create_task(guard(http_scope(), slow_receive, send))
        await asyncio.sleep(0.01)
        assert guard.in_flight == 0  # still receiving: no slot taken
        assert (await call(guard, http_scope()))[0] == 200  # the one slot is free
        hang_up.set()
        await slow
        assert sent == [] and guard.in_flight == 0 and guard.buffered == 0

    asyncio.run(scenario())
    statuses = {
        sample.labels["status"]
        for sample in state.metrics.requests.collect()[0].samples
        if sample.name == "vae_requests_total"
    }
    assert statuses == {"200", "499"}


def test_a_body_too_slow_is_408_and_takes_no_slot() -> None:
    async def never() -> Message:
        await asyncio.sleep(3600)
        raise AssertionError

    settings = Settings(body_timeout_s=0.05, max_concurrent_requests=1)
    guard = Guard(downstream(lambda: asyncio.sleep(0)), app_state(settings))
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    asyncio.run(guard(http_scope(), never, send))
    assert messages[0]["status"] == 408 and guard.in_flight == 0
    assert (b"connection", b"close") in messages[0]["headers"]
    assert b"within 0.05 s (VAE_BODY_TIMEOUT_S)" in messages[1]["body"]


def test_a_crash_fails_only_its_own_request(caplog: pytest.LogCaptureFixture) -> None:
    async def crash_on_demand() -> None:
        if crash.pop():
            raise RuntimeError("onnxruntime exploded")

    crash = [False, True]  # popped from the end: the first request crashes
    guard = Guard(downstream(crash_on_demand), app_state(Settings()))

    async def scenario() -> None:
        status, _, body = await call(guard, http_scope())
        assert status == 500 and "other requests are unaffected" in body["detail"]
        assert (await call(guard, http_scope()))[0] == 200
        assert guard.in_flight == 0

    asyncio.run(scenario())
    assert "onnxruntime exploded" in caplog.text


def test_a_failing_graph_fails_its_batch_and_the_service_goes_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.service.registry.models["tiny-vae"]  # type: ignore[attr-defined]
        healthy = runtime._encode_rows

        def broken(images: np.ndarray) -> tuple[np.ndarray, ...]:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION")

        monkeypatch.setattr(runtime._encode_batcher, "fn", broken)
        failed = client.post("/encode", json={"images": IMAGE})
        assert failed.status_code == 500 and "internal error" in failed.json()["detail"]
        # an upload goes through FastAPI's routes rather than the fast lane: the same answer
        png = io.BytesIO()
        Image.new("L", (28, 28)).save(png, format="PNG")
        upload = client.post("/encode", files={"images": ("zero.png", png.getvalue())})
        assert upload.status_code == 500 and "internal error" in upload.json()["detail"]
        assert upload.headers["x-request-id"]
        assert client.get("/healthz").status_code == 200
        monkeypatch.setattr(runtime._encode_batcher, "fn", healthy)
        assert client.post("/encode", json={"images": IMAGE}).status_code == 200


# --- shutdown -------------------------------------------------------------------------------------


def test_shutdown_turns_readiness_off_and_refuses_new_requests(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    begin_shutdown(client.app)  # type: ignore[arg-type]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"status": "shutting down"}
    refused = client.post("/encode", json={"images": IMAGE})
    assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200  # alive: let it finish its requests


# --- reload ---------------------------------------------------------------------------------------


@pytest.fixture
def own_models(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    return folder


def test_reload_swaps_in_a_new_version_and_refuses_a_broken_one(own_models: Path) -> None:
    settings = Settings(
        model_dir=own_models,
        default_model="tiny-vae",
        request_timeout_s=0.1,
        reload_min_interval_s=0,  # reloads back to back: the rate limit is tests/test_reload_rules
    )
    with TestClient(create_app(settings)) as client:
        before = client.post("/encode", json={"images": IMAGE}).json()

        manifest_path = own_models / "tiny-vae" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["version"] = "7"
        manifest_path.write_text(json.dumps(manifest))
        reloaded = client.post("/models/tiny-vae/reload")
        assert reloaded.status_code == 200 and reloaded.json()["version"] == "7"
        assert client.get("/models/tiny-vae").json()["version"] == "7"
        assert client.post("/encode", json={"images": IMAGE}).json() == before

        encoder = own_models / "tiny-vae" / "encoder.onnx"
        intact = encoder.read_bytes()
        encoder.write_bytes(intact[:-100])
        refused = client.post("/models/tiny-vae/reload")
        assert refused.status_code == 409
        detail = refused.json()["detail"]
        assert "previous version keeps serving" in detail and "encoder.onnx" in detail
        assert client.get("/models/tiny-vae").json()["version"] == "7"
        assert client.post("/encode", json={"images": IMAGE}).json() == before

        encoder.unlink()
        assert client.post("/models/tiny-vae/reload").status_code == 409
        encoder.write_bytes(intact)
        assert client.post("/models/tiny-vae/reload").status_code == 200

        manifest["name"] = "renamed"
        manifest_path.write_text(json.dumps(manifest))
        renamed = client.post("/models/tiny-vae/reload")
        assert renamed.status_code == 409 and "cannot rename" in renamed.json()["detail"]

        assert client.post("/models/no-such-model/reload").status_code == 404
        assert client.post("/encode", json={"images": IMAGE}).json() == before


# --- CORS -----------------------------------------------------------------------------------------


def preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        "/encode",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_is_off_by_default(client: TestClient) -> None:
    response = client.post(
        "/encode", json={"images": IMAGE}, headers={"Origin": "https://x.example"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_the_configured_origins(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, cors_origins="https://app.example", api_keys=KEY)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        allowed = preflight(client, "https://app.example")  # preflights carry no key
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert preflight(client, "https://evil.example").status_code == 400
        response = client.post(
            "/encode",
            json={"images": IMAGE},
            headers={"Origin": "https://app.example", "X-API-Key": KEY},
        )
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert "X-Seed" in response.headers["access-control-expose-headers"]
