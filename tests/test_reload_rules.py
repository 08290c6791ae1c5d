"""The reload endpoints' rules (service.http.state.ReloadGate) and the lifetime of old model
versions (service.models.registry leases): VAE_ALLOW_RELOAD, VAE_RELOAD_MIN_INTERVAL_S, one
reload at a time per model, keys, and an old version closed when its last request ends."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.state import AppState
from service.models.runtime import ModelRuntime
from service.observability.context import RequestInfo, current_request
from service.settings import Settings

from .conftest import digits


@pytest.fixture
def models(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    return folder


def app_with(models: Path, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(model_dir=models, default_model="tiny-vae", **settings)))


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.service  # type: ignore[attr-defined]
    return state


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)  # polling a state, with a deadline


def test_reloads_can_be_turned_off_but_sighup_still_reloads(models: Path) -> None:
    with app_with(models, allow_reload=False) as client:
        for path in ("/models/tiny-vae/reload", "/models/reload"):
            refused = client.post(path)
            assert refused.status_code == 403, refused.text
            assert "VAE_ALLOW_RELOAD=false" in refused.json()["detail"]
            assert "SIGHUP" in refused.json()["detail"]
        old = state_of(client).registry.models["tiny-ae"]  # type: ignore[union-attr]
        (models / "tiny-ae" / "manifest.json").touch()  # a changed folder
        report = client.portal.call(_sighup, client)
        assert report.reloaded == ["tiny-ae"]
        assert state_of(client).registry.models["tiny-ae"] is not old  # type: ignore[union-attr]


async def _sighup(client: TestClient) -> Any:
    return await client.app.state.on_sighup()  # type: ignore[attr-defined]


def test_reloads_are_at_least_the_interval_apart(models: Path) -> None:
    with app_with(models, reload_min_interval_s=60) as client:
        assert client.post("/models/tiny-vae/reload").status_code == 200
        again = client.post("/models/tiny-vae/reload")
        assert again.status_code == 429, again.text
        assert 58 <= int(again.headers["Retry-After"]) <= 60
        detail = again.json()["detail"]
        assert "model 'tiny-vae' was reloaded" in detail and "VAE_RELOAD_MIN_INTERVAL_S" in detail
        # Per model: another model, and the folder, have their own.
        assert client.post("/models/tiny-ae/reload").status_code == 200
        assert client.post("/models/reload").status_code == 200
        folder = client.post("/models/reload")
        assert folder.status_code == 429 and "the model folder" in folder.json()["detail"]
        # Unknown models are 404 before the gate (no entry is kept for them).
        assert client.post("/models/nothing/reload").status_code == 404


def test_a_concurrent_reload_of_the_same_model_gets_429(models: Path) -> None:
    with app_with(models, reload_min_interval_s=0) as client:
        state = state_of(client)
        assert state.registry is not None
        lock = state.registry._reloading  # held here: the first reload waits inside the gate
        client.portal.call(lock.acquire)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/models/tiny-vae/reload")
            wait_for(lambda: "tiny-vae" in state.reload_gate.running, "the first reload")
            second = client.post("/models/tiny-vae/reload")
            assert second.status_code == 429, second.text
            assert second.headers["Retry-After"] == "1"
            assert "a reload of model 'tiny-vae' is under way" in second.json()["detail"]
            client.portal.call(lock.release)
            assert first.result(timeout=30).status_code == 200
        assert state.reload_gate.running == frozenset()
        assert client.post("/models/tiny-vae/reload").status_code == 200


def test_reloads_need_a_key_when_keys_are_set(models: Path) -> None:
    with app_with(models, api_keys="reload-key", reload_min_interval_s=0) as client:
        for path in ("/models/tiny-vae/reload", "/models/reload"):
            assert client.post(path).status_code == 401
            assert client.post(path, headers={"X-API-Key": "wrong"}).status_code == 401
            assert client.post(path, headers={"X-API-Key": "reload-key"}).status_code == 200


def leased(client: TestClient, name: str) -> tuple[ModelRuntime, RequestInfo]:
    """`name`'s version, taken as a request takes it: held until `info.end()`."""
    info = RequestInfo("test")
    token = current_request.set(info)
    try:
        found = state_of(client).registry.lookup(name)  # type: ignore[union-attr]
    finally:
        current_request.reset(token)
    assert found is not None
    return found, info


async def _end(info: RequestInfo) -> None:
    info.end()  # on the event loop, as the guard ends a request


def test_an_old_version_is_closed_when_its_last_request_ends(models: Path) -> None:
    with app_with(models, reload_min_interval_s=0) as client:
        first, one = leased(client, "tiny-vae")
        same, two = leased(client, "tiny-vae")
        assert same is first and first.leases == 2
        assert client.post("/models/tiny-vae/reload").status_code == 200
        assert first.ready and first.leases == 2  # two requests still on it
        # A request that started before the reload finishes on the old version.
        mu, _ = client.portal.call(first.encode_batched, digits(1)[..., None])
        assert mu.shape == (1, 2)
        client.portal.call(_end, one)
        assert first.ready and first.leases == 1
        client.portal.call(_end, two)
        wait_for(lambda: not first.ready, "the old version to close")
        # New requests got the new version all along; a version no request holds closes at once.
        current = state_of(client).registry.models["tiny-vae"]  # type: ignore[union-attr]
        assert current is not first and current.leases == 0
        assert client.post("/encode", json={"images": digits(1).tolist()}).status_code == 200
        assert current.leases == 0  # the request's lease ended with it
        assert client.post("/models/tiny-vae/reload").status_code == 200
        wait_for(lambda: not current.ready, "the unheld version to close")


def test_a_retired_version_is_not_leased_again(models: Path) -> None:
    with app_with(models, reload_min_interval_s=0) as client:
        old = state_of(client).registry.models["tiny-vae"]  # type: ignore[union-attr]
        assert client.post("/models/tiny-vae/reload").status_code == 200
        assert not old.acquire()  # a request that read the old dict takes the new version
        taken, info = leased(client, "tiny-vae")
        assert taken is not old and taken.leases == 1
        client.portal.call(_end, info)
        assert taken.leases == 0 and taken.ready


def test_no_lease_outside_a_request(models: Path) -> None:
    with app_with(models) as client:
        registry = state_of(client).registry
        assert registry is not None
        model = registry.pick(None)
        assert model.leases == 0  # nothing would end it: tools and tests use models unleased
