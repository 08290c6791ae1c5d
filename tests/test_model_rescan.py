"""Models come and go without a restart: POST /models/reload and SIGHUP read the model folder
again; new folders are added, removed ones dropped, changed ones reloaded, broken ones refused,
all swapped in at once. Each test serves its own copy of the tiny models of conftest."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.http.guard import endpoint_label
from service.models.runtime import ModelRuntime
from service.observability.context import RequestInfo, current_request
from service.settings import Settings

from .conftest import digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import serve  # noqa: E402

IMAGES = digits(2).tolist()


@pytest.fixture
def models(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    return folder


@pytest.fixture
def settings(models: Path) -> Settings:
    """conftest's app and client, on a model folder of the test's own."""
    return Settings(model_dir=models, default_model="tiny-vae", reload_min_interval_s=0)


def copy_model(models: Path, source: str, name: str, folder: str | None = None) -> Path:
    """A copy of `source`'s folder serving the model `name`."""
    target = models / (folder or name)
    shutil.copytree(models / source, target)
    edit_manifest(target, name=name)
    return target


def edit_manifest(folder: Path, **changes: Any) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def reload(client: TestClient, status: int = 200) -> dict[str, Any]:
    response = client.post("/models/reload")
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


def served(client: TestClient) -> dict[str, str]:
    """Name -> version of every model GET /models lists."""
    return {m["name"]: m["version"] for m in client.get("/models").json()["models"]}


def model_info(client: TestClient | str) -> set[tuple[str, str]]:
    """(model, version) of every vae_model_info series, of the app or of a server's URL."""
    if isinstance(client, str):
        text = httpx.get(f"{client}/metrics").text
    else:
        text = client.get("/metrics").text
    families = text_string_to_metric_families(text)
    return {
        (s.labels["model"], s.labels["version"])
        for family in families
        for s in family.samples
        if s.name == "vae_model_info"
    }


def encode(client: TestClient, model: str | None = None) -> Any:
    query = f"?model={model}" if model else ""
    return client.post(f"/encode{query}", json={"images": IMAGES})


def runtime(client: TestClient, name: str) -> ModelRuntime:
    found: ModelRuntime = client.app.state.service.registry.models[name]  # type: ignore[attr-defined]
    return found


# --- POST /models/reload ------------------------------------------------------------------------


def test_a_new_folder_is_served_after_a_reload(client: TestClient, models: Path) -> None:
    before = encode(client, "tiny-vae").json()["mu"]
    assert "tiny-vae-copy" not in served(client)
    assert encode(client, "tiny-vae-copy").status_code == 404
    copy_model(models, "tiny-vae", "tiny-vae-copy")
    answer = reload(client)
    assert answer == {
        "added": ["tiny-vae-copy"],
        "dropped": [],
        "reloaded": [],
        "unchanged": ["tiny-ae", "tiny-vae"],
        "refused": [],
        "default": "tiny-vae",
    }
    assert served(client) == {"tiny-ae": "1", "tiny-vae": "1", "tiny-vae-copy": "1"}
    response = encode(client, "tiny-vae-copy")
    assert response.status_code == 200 and response.json()["model"] == "tiny-vae-copy"
    assert response.json()["mu"] == before  # the same weights
    assert ("tiny-vae-copy", "1") in model_info(client)
    assert client.get("/readyz").status_code == 200


def leased(client: TestClient, name: str) -> tuple[ModelRuntime, RequestInfo]:
    """`name`'s version, taken as a request takes it (held until `info.end()`)."""
    info = RequestInfo("test")
    token = current_request.set(info)
    try:
        found = client.app.state.service.registry.lookup(name)  # type: ignore[attr-defined]
    finally:
        current_request.reset(token)
    assert found is not None
    return found, info


def test_a_removed_folder_is_dropped(client: TestClient, models: Path) -> None:
    running, request = leased(client, "tiny-ae")  # as a request that started before the reload
    shutil.rmtree(models / "tiny-ae")
    answer = reload(client)
    assert answer["dropped"] == ["tiny-ae"] and answer["unchanged"] == ["tiny-vae"]
    assert answer["added"] == answer["reloaded"] == answer["refused"] == []
    missing = encode(client, "tiny-ae")
    assert missing.status_code == 404 and "no model named 'tiny-ae'" in missing.json()["detail"]
    assert client.get("/models/tiny-ae").status_code == 404
    assert served(client) == {"tiny-vae": "1"}
    assert model_info(client) == {("tiny-vae", "1")}
    # A request already running on the dropped model finishes on it.
    mu, _ = client.portal.call(running.encode_batched, digits(1)[..., None])
    assert mu.shape == (1, 4)
    assert running.ready  # and is closed as soon as that request ends
    client.portal.call(_end, request)
    deadline = time.monotonic() + 10
    while running.ready and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the state, with a deadline
    assert not running.ready


async def _end(request: RequestInfo) -> None:
    request.end()  # on the event loop, as the guard ends a request


def test_a_changed_folder_is_reloaded_and_an_unchanged_one_kept(
    client: TestClient, models: Path
) -> None:
    ae_before = runtime(client, "tiny-ae")
    vae_before = runtime(client, "tiny-vae")
    edit_manifest(models / "tiny-vae", version="7")
    answer = reload(client)
    assert answer["reloaded"] == ["tiny-vae"] and answer["unchanged"] == ["tiny-ae"]
    assert served(client) == {"tiny-ae": "1", "tiny-vae": "7"}
    assert runtime(client, "tiny-ae") is ae_before  # not loaded again
    assert runtime(client, "tiny-vae") is not vae_before
    assert {v for m, v in model_info(client) if m == "tiny-vae"} == {"7"}
    # Nothing changed since: nothing to do.
    again = reload(client)
    assert again["unchanged"] == ["tiny-ae", "tiny-vae"] and again["reloaded"] == []


def test_a_broken_new_folder_is_refused_and_the_rest_goes_ahead(
    client: TestClient, models: Path
) -> None:
    before = {name: encode(client, name).json()["mu"] for name in ("tiny-vae", "tiny-ae")}
    broken = copy_model(models, "tiny-vae", "broken-vae")
    truncate(broken / "encoder.onnx")
    copy_model(models, "tiny-ae", "good-ae")
    edit_manifest(models / "tiny-vae", version="2")
    answer = reload(client, 409)
    assert answer["added"] == ["good-ae"] and answer["reloaded"] == ["tiny-vae"]
    assert answer["unchanged"] == ["tiny-ae"] and answer["dropped"] == []
    [refused] = answer["refused"]
    assert refused["model"] is None and refused["folder"] == str(broken)
    assert "encoder.onnx" in refused["problem"] and "sha256" in refused["problem"]
    assert "broken-vae" in answer["detail"] and "everything else was applied" in answer["detail"]
    assert set(served(client)) == {"tiny-vae", "tiny-ae", "good-ae"}
    assert encode(client, "broken-vae").status_code == 404
    for name, mu in before.items():
        assert encode(client, name).json()["mu"] == mu
    assert ("broken-vae", "1") not in model_info(client)


def test_a_broken_new_version_leaves_the_old_one_serving(client: TestClient, models: Path) -> None:
    before = encode(client, "tiny-ae").json()["mu"]
    truncate(models / "tiny-ae" / "decoder.onnx")
    answer = reload(client, 409)
    [refused] = answer["refused"]
    assert refused["model"] == "tiny-ae" and "decoder.onnx" in refused["problem"]
    assert answer["unchanged"] == ["tiny-vae"] and answer["reloaded"] == []
    assert encode(client, "tiny-ae").json()["mu"] == before
    # Refused again on every reload until the folder is repaired.
    assert reload(client, 409)["refused"][0]["model"] == "tiny-ae"


def test_a_name_already_served_and_a_rename_are_refused(client: TestClient, models: Path) -> None:
    copy_model(models, "tiny-vae", "tiny-ae", folder="zz-another-ae")
    edit_manifest(models / "tiny-vae", name="tiny-vae-renamed")
    answer = reload(client, 409)
    problems = {r["folder"]: r for r in answer["refused"]}
    taken = problems[str(models / "zz-another-ae")]
    assert taken["model"] is None and "names must be unique" in taken["problem"]
    renamed = problems[str(models / "tiny-vae")]
    assert renamed["model"] == "tiny-vae" and "cannot rename" in renamed["problem"]
    assert served(client) == {"tiny-ae": "1", "tiny-vae": "1"}
    assert runtime(client, "tiny-ae").latent_dim == 4  # still the original


def test_a_moved_folder_is_a_reload(client: TestClient, models: Path) -> None:
    (models / "tiny-ae").rename(models / "ae-moved")
    answer = reload(client)
    assert answer["reloaded"] == ["tiny-ae"] and answer["dropped"] == answer["added"] == []
    assert runtime(client, "tiny-ae").folder == models / "ae-moved"


def test_the_configured_default_model_is_never_dropped(client: TestClient, models: Path) -> None:
    shutil.rmtree(models / "tiny-vae")
    answer = reload(client, 409)
    [refused] = answer["refused"]
    assert refused["model"] == "tiny-vae" and "VAE_DEFAULT_MODEL" in refused["problem"]
    assert answer["dropped"] == [] and answer["default"] == "tiny-vae"
    assert encode(client).json()["model"] == "tiny-vae"  # requests naming no model still work
    assert client.get("/models").json()["default"] == "tiny-vae"


def test_without_a_configured_default_it_is_chosen_again_as_at_start_up(
    models: Path,
) -> None:
    with TestClient(create_app(Settings(model_dir=models, reload_min_interval_s=0))) as client:
        assert client.get("/models").json()["default"] == "tiny-ae"  # the first folder
        shutil.rmtree(models / "tiny-ae")
        assert reload(client)["default"] == "tiny-vae"
        assert encode(client).json()["model"] == "tiny-vae"
        copy_model(models, "tiny-vae", "mnist-vae")  # preferred at start-up when present
        assert reload(client)["default"] == "mnist-vae"
        assert client.get("/models").json()["default"] == "mnist-vae"


def test_a_folder_left_without_models_keeps_the_default(client: TestClient, models: Path) -> None:
    for folder in ("tiny-ae", "tiny-vae"):
        shutil.rmtree(models / folder)
    answer = reload(client, 409)
    assert answer["dropped"] == ["tiny-ae"] and answer["refused"][0]["model"] == "tiny-vae"
    assert served(client) == {"tiny-vae": "1"}
    models.rmdir()  # an unmounted volume, say
    answer = reload(client, 409)
    assert answer["detail"].startswith("reload of the model folder refused, nothing was changed")
    assert "is not a folder" in answer["detail"]
    assert answer["unchanged"] == ["tiny-vae"] and answer["refused"] == []
    assert encode(client).status_code == 200


def test_an_empty_folder_without_a_configured_default_changes_nothing(models: Path) -> None:
    with TestClient(create_app(Settings(model_dir=models, reload_min_interval_s=0))) as client:
        for folder in ("tiny-ae", "tiny-vae"):
            shutil.rmtree(models / folder)
        answer = reload(client, 409)
        assert "nothing was changed" in answer["detail"]
        assert "holds no model that can be served" in answer["detail"]
        assert served(client) == {"tiny-ae": "1", "tiny-vae": "1"}
        assert client.get("/readyz").status_code == 200


def test_the_route_does_not_shadow_a_model_named_reload(client: TestClient, models: Path) -> None:
    copy_model(models, "tiny-ae", "reload")
    assert reload(client)["added"] == ["reload"]
    assert client.get("/models/reload").json()["name"] == "reload"
    assert client.post("/models/reload/reload").json()["name"] == "reload"
    assert client.post("/models/reload").json()["unchanged"] == ["reload", "tiny-ae", "tiny-vae"]


def test_the_reload_has_its_own_metrics_label() -> None:
    assert endpoint_label("/models/reload") == "/models/reload"
    assert endpoint_label("/models/tiny-ae/reload") == "/models/{name}/reload"


def test_openapi_documents_the_reload(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/models/reload"]["post"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/RepositoryReload")
    refused = operation["responses"]["409"]["content"]["application/json"]["schema"]
    assert refused["$ref"].endswith("/RepositoryReloadRefused")
    assert "detail" in spec["components"]["schemas"]["RepositoryReloadRefused"]["properties"]


# --- SIGHUP ---------------------------------------------------------------------------------------


def test_the_sighup_handler_rescans(client: TestClient, models: Path) -> None:
    copy_model(models, "tiny-ae", "hup-ae")
    shutil.rmtree(models / "tiny-ae")
    # What the lifespan installs for SIGHUP (no signal reaches TestClient's thread): run it on
    # the app's event loop and wait for the rescan it starts.
    app: Any = client.app

    async def hang_up() -> Any:
        return await app.state.on_sighup()

    report = client.portal.call(hang_up)
    assert report.added == ["hup-ae"] and report.dropped == ["tiny-ae"]
    assert set(served(client)) == {"hup-ae", "tiny-vae"}
    assert encode(client, "hup-ae").status_code == 200


def wait_for(predicate: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not seen within {timeout_s} s: {what}"
        time.sleep(0.05)


def test_sighup_to_a_real_process(models: Path) -> None:
    with serve({"VAE_DEFAULT_MODEL": "tiny-vae"}, model_dir=models) as server:
        url = server.url

        def names() -> set[str]:
            return {m["name"] for m in httpx.get(f"{url}/models").json()["models"]}

        assert names() == {"tiny-ae", "tiny-vae"}
        copy_model(models, "tiny-vae", "added-vae")
        broken = copy_model(models, "tiny-vae", "zz-broken")
        truncate(broken / "encoder.onnx")
        shutil.rmtree(models / "tiny-ae")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: names() == {"added-vae", "tiny-vae"}, "the rescan's swap")
        refusal = f"new model folder {broken} refused, not added"
        wait_for(lambda: refusal in server.stderr(), "the refusal in the log")
        assert "dropped model tiny-ae" in server.stderr()
        assert server.proc.poll() is None
        response = httpx.post(f"{url}/encode?model=added-vae", json={"images": IMAGES})
        assert response.status_code == 200 and response.json()["model"] == "added-vae"
        assert httpx.post(f"{url}/encode?model=tiny-ae", json={"images": IMAGES}).status_code == 404
        assert model_info(url) == {("added-vae", "1"), ("tiny-vae", "1")}


def test_rescans_one_at_a_time(client: TestClient, models: Path) -> None:
    copy_model(models, "tiny-ae", "concurrent-ae")
    registry: Any = client.app.state.service.registry  # type: ignore[attr-defined]

    async def two_at_once() -> list[Any]:
        return list(await asyncio.gather(registry.rescan(), registry.rescan()))

    first, second = client.portal.call(two_at_once)
    assert first.added == ["concurrent-ae"] and second.added == []
    assert "concurrent-ae" in second.unchanged
