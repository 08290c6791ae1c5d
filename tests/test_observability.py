"""Operations: Prometheus metrics, request ids, the per-request log line."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import begin_shutdown, create_app
from service.http.guard import endpoint_label
from service.observability.logs import JSONFormatter
from service.settings import Settings

IMAGES = np.random.default_rng(0).uniform(0, 1, size=(3, 784)).round(3)


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_count_requests_batches_and_models(client: TestClient) -> None:
    before = samples(client)
    assert value(before, "vae_model_info", model="tiny-vae", version="1", kind="vae",
                 providers="CPUExecutionProvider") == 1  # fmt: skip
    assert client.post("/encode", json={"images": IMAGES.tolist()}).status_code == 200
    assert client.post("/encode?model=nope", json={"images": IMAGES.tolist()}).status_code == 404
    assert client.post("/generate", json={"n": 5, "seed": 1}).status_code == 200
    assert client.get("/models/tiny-vae").status_code == 200
    after = samples(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("vae_requests_total", endpoint="/encode", model="tiny-vae", status="200") == 1
    assert grew("vae_requests_total", endpoint="/encode", model="", status="404") == 1
    assert grew("vae_requests_total", endpoint="/generate", model="tiny-vae", status="200") == 1
    assert (
        grew("vae_requests_total", endpoint="/models/{name}", model="tiny-vae", status="200") == 1
    )
    assert grew("vae_request_duration_seconds_count", endpoint="/encode") == 2
    # One onnxruntime call of 3 rows for the encoder, one of 5 for the decoder.
    assert grew("vae_batch_size_count", model="tiny-vae", graph="encoder") == 1
    assert grew("vae_batch_size_sum", model="tiny-vae", graph="encoder") == 3
    assert grew("vae_batch_size_sum", model="tiny-vae", graph="decoder") == 5
    assert grew("vae_inference_duration_seconds_count", model="tiny-vae", graph="decoder") == 1
    assert grew("vae_batch_queue_wait_seconds_count", model="tiny-vae", graph="encoder") == 1
    assert value(after, "vae_requests_in_flight") == 0
    # Probes and the metrics themselves are not counted.
    client.get("/healthz")
    assert not any(
        dict(labels).get("endpoint") in ("/healthz", "/metrics")
        for name, labels in samples(client)
        if name == "vae_requests_total"
    )


def test_metrics_stay_open_with_keys_and_while_shutting_down(model_dir: Path) -> None:
    settings = Settings(model_dir=model_dir, api_keys="a-key-for-metrics-tests")  # type: ignore[arg-type]
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.post("/encode", json={"images": IMAGES.tolist()}).status_code == 401
        begin_shutdown(app)
        found = samples(client)
        assert value(found, "vae_requests_total", endpoint="/encode", model="", status="401") == 1


def test_model_info_follows_a_reload(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    own = tmp_path / "models"
    shutil.copytree(model_dir, own)
    manifest_path = own / "tiny-ae" / "manifest.json"
    with TestClient(create_app(Settings(model_dir=own, request_timeout_s=0.1))) as client:
        manifest = json.loads(manifest_path.read_text())
        manifest["version"] = "2"
        manifest_path.write_text(json.dumps(manifest))
        assert client.post("/models/tiny-ae/reload").status_code == 200
        info = {
            dict(labels)["version"]
            for name, labels in samples(client)
            if name == "vae_model_info" and dict(labels)["model"] == "tiny-ae"
        }
        assert info == {"2"}
        # The new version's batches are recorded too.
        before = samples(client)
        client.post("/encode?model=tiny-ae", json={"images": IMAGES.tolist()})
        after = samples(client)
        key = ("vae_batch_size_count", frozenset({"model": "tiny-ae", "graph": "encoder"}.items()))
        assert after[key] == before[key] + 1


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/encode", "/encode"),
        ("/models/anything", "/models/{name}"),
        ("/models/x/reload", "/models/{name}/reload"),
        ("/models/x/latent-map", "/models/{name}/latent-map"),
        ("/v2/models/m-encoder/infer", "/v2/models/{model}/infer"),
        ("/v2/models/m-encoder/versions/1/infer", "/v2/models/{model}/infer"),
        ("/no/such/path/../x", "other"),
    ],
)
def test_endpoint_labels_are_bounded(path: str, label: str) -> None:
    assert endpoint_label(path) == label


# --- request ids and the log line ---------------------------------------------------------------


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    given = client.post(
        "/encode", json={"images": IMAGES.tolist()}, headers={"X-Request-ID": "req-42"}
    )
    assert given.headers["x-request-id"] == "req-42"
    made = client.post("/encode", json={"images": "bad"})
    assert made.status_code == 422 and len(made.headers["x-request-id"]) == 32
    hostile = client.post("/decode", json={"z": [[0, 0]]}, headers={"X-Request-ID": "a\tb" * 100})
    assert hostile.headers["x-request-id"] != "a\tb" * 100  # not echoed into logs or headers


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_one_log_line_per_request(model_dir: Path, log_format: str) -> None:
    settings = Settings(model_dir=model_dir, default_model="tiny-vae", log_format=log_format)  # type: ignore[arg-type]
    app = create_app(settings)
    written = io.StringIO()
    app.state.service.access_log.stream = written
    with TestClient(app) as client:
        client.post("/encode", json={"images": IMAGES.tolist()}, headers={"X-Request-ID": "log-me"})
        client.get("/healthz")  # probes are not logged
        client.post("/generate?model=tiny-ae", json={"n": 1})
    lines = written.getvalue().splitlines()  # flushed at shutdown at the latest
    assert len(lines) == 2
    if log_format == "text":
        assert "INFO service.access: POST /encode 200" in lines[0]
        assert "request_id=log-me" in lines[0] and "batch_size=3" in lines[0]
        return
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "info" and first["logger"] == "service.access"
    assert first["message"].startswith("POST /encode 200")
    assert first["request_id"] == "log-me" and first["endpoint"] == "/encode"
    assert first["model"] == "tiny-vae" and first["status"] == 200 and first["batch_size"] == 3
    assert first["latency_ms"] > 0 and first["time"].endswith("Z")
    assert second["status"] == 422 and second["model"] == "tiny-ae"
    assert second["batch_size"] is None and len(second["request_id"]) == 32


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_path_cannot_forge_log_lines(model_dir: Path, log_format: str) -> None:
    app = create_app(Settings(model_dir=model_dir, log_format=log_format))  # type: ignore[arg-type]
    written = io.StringIO()
    app.state.service.access_log.stream = written
    with TestClient(app) as client:
        assert client.get("/x%0A2026-01-01 INFO service.access: GET /admin 200").status_code == 404
    (line,) = written.getvalue().splitlines()
    assert "404" in line and "\\n2026" in line  # escaped, still one line


def test_access_log_can_be_turned_off(model_dir: Path) -> None:
    app = create_app(Settings(model_dir=model_dir, access_log=False))
    assert app.service.access_log is None


def test_json_formatter_for_the_other_logs() -> None:
    record = logging.LogRecord("service", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    line = json.loads(JSONFormatter().format(record))
    assert line["level"] == "error" and line["message"] == "boom x" and line["logger"] == "service"


def test_log_format_is_a_setting(model_dir: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "service", "--model-dir", str(model_dir / "nowhere")],
        env={"VAE_LOG_FORMAT": "yaml", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        done.returncode == 2
        and "VAE_LOG_FORMAT" in done.stderr
        and "'text' or 'json'" in done.stderr
    )


def test_dashboard_and_docs_use_only_exported_metrics(client: TestClient) -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    client.post("/encode", json={"images": IMAGES.tolist()})  # labelled series appear on use
    exported = {name for name, _ in samples(client)}
    dashboard = (root / "deploy/grafana/dashboards/vae-serving.json").read_text()
    used = set(re.findall(r"\bvae_[a-z_]+", dashboard))
    assert used and used <= exported, used - exported
    docs = (root / "docs" / "deployment.md").read_text()  # its "Metrics and logs" table
    families = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in exported}
    for family in families:
        assert f"`{family}" in docs, family
