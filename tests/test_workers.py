"""Worker processes (service.workers): `python -m service --workers 2` on the tiny models, seen
from outside as one service: connections spread over both workers, /metrics summed exactly,
/readyz only when both are ready, SIGTERM drained by both with nothing accepted lost, reloads in
both or in neither, a killed worker started again. Then the thread budget and the cgroup quota,
without processes. Every wait is on a state, with a deadline only to fail a stuck test."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from service.workers.cores import ThreadBudget, cgroup_cpu_limit

from .conftest import digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import (  # noqa: E402
    NEVER_ACCEPTED,
    REFUSED,
    Req,
    Server,
    drive,
    free_port,
    server_env,
    wait_in_flight,
    wait_ready,
)

IMAGES = digits(2).tolist()
TWO_WORKERS = {"VAE_WORKERS": "2", "VAE_DEFAULT_MODEL": "tiny-vae"}


def launch(model_dir: Path, tmp_path: Path, env: dict[str, str] | None = None) -> Server:
    """`python -m service` with two workers, in a process group of its own (so that a test can
    signal the whole group, as systemd does); returns once /readyz says 200."""
    port = free_port()
    stderr_path = tmp_path / f"server-{port}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)],
            cwd=ROOT,
            env=server_env(model_dir, {**TWO_WORKERS, **(env or {})}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    server = Server(proc, port, stderr_path, time.monotonic())
    wait_ready(server, timeout_s=180)
    return server


@pytest.fixture
def models(model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    return folder


@pytest.fixture
def server(models: Path, tmp_path: Path) -> Iterator[Server]:
    running = launch(models, tmp_path, {"VAE_RELOAD_MIN_INTERVAL_S": "0"})
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait(30)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not seen within {timeout_s} s: {what}"
        time.sleep(0.05)  # polling a state; the deadline only fails a stuck test


def fresh(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request on a connection of its own: the supervisor hands each to the next worker."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.request(method, path, **kwargs)


def status(url: str, path: str) -> int | None:
    """The status of GET `path`, None when the connection broke (one handed to a worker just
    as it was killed)."""
    try:
        return fresh(url, "GET", path).status_code
    except httpx.TransportError:
        return None


def worker_pids(server: Server) -> dict[int, int]:
    """Worker number -> pid of the process serving in that place now, from the log."""
    found = re.findall(r"worker (\d+) started \(pid (\d+)\)", server.stderr())
    return {int(index): int(pid) for index, pid in found}


def answered_by(server: Server, request_ids: list[str]) -> dict[str, int]:
    """Request id -> the worker whose access log line names it (waits for every line)."""
    lines: dict[str, int] = {}

    def logged() -> bool:
        for match in re.finditer(r"request_id=(\S+) .*worker=(\d+)", server.stderr()):
            lines[match.group(1)] = int(match.group(2))
        return all(request_id in lines for request_id in request_ids)

    wait_for(logged, "every request's access log line")
    return {request_id: lines[request_id] for request_id in request_ids}


def metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def versions_seen(server: Server, times: int = 8) -> dict[int, set[str]]:
    """Worker -> the tiny-vae versions its GET /models/tiny-vae answers gave."""
    seen: dict[str, str] = {}
    for _ in range(times):
        request_id = uuid.uuid4().hex
        answer = fresh(server.url, "GET", "/models/tiny-vae", headers={"X-Request-ID": request_id})
        assert answer.status_code == 200, answer.text
        seen[request_id] = answer.json()["version"]
    by_worker: dict[int, set[str]] = {}
    for request_id, worker in answered_by(server, list(seen)).items():
        by_worker.setdefault(worker, set()).add(seen[request_id])
    assert set(by_worker) == {1, 2}, f"both workers should have answered: {by_worker}"
    return by_worker


def edit_manifest(folder: Path, **changes: Any) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


# --- one service from outside -------------------------------------------------------------------


def test_two_workers_serve_one_port_and_their_metrics_add_up(server: Server) -> None:
    log = server.stderr()
    assert re.search(r"supervisor \(pid \d+\) on http://127.0.0.1:\d+: 2 workers", log)
    assert re.search(r"ready: 2 workers; memory: supervisor RSS \d+ MiB \(PSS \d+\), worker 1", log)
    assert len(worker_pids(server)) == 2
    request_ids = [uuid.uuid4().hex for _ in range(10)]
    for request_id in request_ids:
        answer = fresh(
            server.url,
            "POST",
            "/encode",
            json={"images": IMAGES},
            headers={"X-Request-ID": request_id},
        )
        assert answer.status_code == 200 and answer.headers["x-request-id"] == request_id
    workers = answered_by(server, request_ids)
    assert sorted(workers.values()).count(1) == 5 and sorted(workers.values()).count(2) == 5
    # Counted by both, summed by whichever answers the scrape: exactly 10, on every scrape.
    labels = {"endpoint": "/encode", "model": "tiny-vae", "status": "200"}
    wait_for(lambda: metric(server.url, "vae_requests_total", **labels) == 10, "10 requests")
    for _ in range(4):
        with httpx.Client() as scraper:  # a new connection each: both workers answer scrapes
            text = scraper.get(f"{server.url}/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        requests = families["vae_requests"].samples
        assert [s.value for s in requests if s.labels == labels] == [10.0]
        count = [
            s.value
            for s in families["vae_request_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels["endpoint"] == "/encode"
        ]
        assert count == [10.0]
        assert [s.value for s in families["vae_requests_in_flight"].samples] == [0.0]
        info = [
            (s.labels["model"], s.labels["version"]) for s in families["vae_model_info"].samples
        ]
        assert sorted(info) == [("tiny-ae", "1"), ("tiny-vae", "1")]  # once, not per worker
        assert all("pid" not in s.labels for s in families["vae_model_info"].samples)


SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture


def connection_options(pids: list[int], client: socket.socket) -> dict[str, int]:
    """The socket options of the server's end of `client`'s connection, read from whichever of
    `pids` holds it (a copy of its descriptor, taken with pidfd_getfd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in pids:
        pidfd = os.pidfd_open(pid)
        try:
            for name in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):  # closed meanwhile
                    if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                        continue
                copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
                if copy < 0:
                    pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
                sock = socket.socket(fileno=copy)
                try:
                    if sock.type != socket.SOCK_STREAM or sock.family != socket.AF_INET:
                        continue
                    with contextlib.suppress(OSError):  # a listening socket has no peer
                        if sock.getpeername() == client.getsockname():
                            return {
                                "TCP_NODELAY": sock.getsockopt(
                                    socket.IPPROTO_TCP, socket.TCP_NODELAY
                                ),
                                "SO_KEEPALIVE": sock.getsockopt(
                                    socket.SOL_SOCKET, socket.SO_KEEPALIVE
                                ),
                                "O_NONBLOCK": int(not os.get_blocking(sock.fileno())),
                            }
                finally:
                    sock.close()
        finally:
            os.close(pidfd)
    raise AssertionError(f"no process of {pids} holds the connection")


def kept_alive(port: int, requests: int) -> tuple[socket.socket, list[str]]:
    """`requests` requests on one keep-alive connection (left open): their request ids."""
    client = socket.create_connection(("127.0.0.1", port))
    request_ids = []
    for _ in range(requests):
        request_ids.append(uuid.uuid4().hex)
        head = f"GET /models/tiny-vae HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_ids[-1]}"
        client.sendall(f"{head}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += client.recv(65536)
        head, body = answer.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += client.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head
    return client, request_ids


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux only")
def test_a_handed_over_connection_is_served_as_one_accepted_by_one_process(
    server: Server, models: Path, tmp_path: Path
) -> None:
    """The hand-over costs nothing on the wire: a keep-alive connection stays with the worker
    it was handed to, and has the socket options (Nagle off) of one uvicorn accepted itself."""
    client, request_ids = kept_alive(server.port, 5)
    with client:
        assert len(set(answered_by(server, request_ids).values())) == 1
        handed_over = connection_options(list(worker_pids(server).values()), client)
    one = launch(models, tmp_path, {"VAE_WORKERS": "1"})
    try:
        client, _ = kept_alive(one.port, 1)
        with client:
            accepted = connection_options([one.pid], client)
    finally:
        one.stop()
    assert handed_over == accepted == {"TCP_NODELAY": 1, "SO_KEEPALIVE": 0, "O_NONBLOCK": 1}


def test_a_killed_worker_is_started_again_and_readiness_waits_for_it(server: Server) -> None:
    labels = {"endpoint": "/encode", "model": "tiny-vae", "status": "200"}
    for _ in range(4):
        assert fresh(server.url, "POST", "/encode", json={"images": IMAGES}).status_code == 200
    wait_for(lambda: metric(server.url, "vae_requests_total", **labels) == 4, "4 requests")
    victim = worker_pids(server)[2]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: status(server.url, "/readyz") == 503, "readiness 503")
    wait_for(lambda: worker_pids(server)[2] != victim, "a new worker 2")
    wait_for(lambda: status(server.url, "/readyz") == 200, "readiness again")
    assert f"worker 2 (pid {victim}) was killed by SIGKILL" in server.stderr()
    # The dead worker's counts stay in the sum: counters never go back.
    assert metric(server.url, "vae_requests_total", **labels) == 4
    assert server.proc.poll() is None


# --- reloads: in every worker, or in none -------------------------------------------------------


def test_a_reload_through_one_worker_is_served_by_all(server: Server, models: Path) -> None:
    edit_manifest(models / "tiny-vae", version="2")
    answer = fresh(server.url, "POST", "/models/tiny-vae/reload")
    assert answer.status_code == 200 and answer.json()["version"] == "2"
    assert versions_seen(server) == {1: {"2"}, 2: {"2"}}
    assert metric(server.url, "vae_model_info", model="tiny-vae", version="2") == 1
    assert metric(server.url, "vae_model_info", model="tiny-vae", version="1") is None
    # A broken new version: refused by every worker, the old one kept by every worker.
    edit_manifest(models / "tiny-vae", version="3")
    encoder = models / "tiny-vae" / "encoder.onnx"
    encoder.write_bytes(encoder.read_bytes()[:-100])
    refused = fresh(server.url, "POST", "/models/tiny-vae/reload")
    assert refused.status_code == 409
    assert "reload refused, the previous version keeps serving" in refused.json()["detail"]
    assert "encoder.onnx" in refused.json()["detail"]
    assert versions_seen(server) == {1: {"2"}, 2: {"2"}}
    folder = fresh(server.url, "POST", "/models/reload")  # the folder: refused alike
    assert folder.status_code == 409 and folder.json()["refused"][0]["model"] == "tiny-vae"
    assert versions_seen(server) == {1: {"2"}, 2: {"2"}}


def test_sighup_to_the_supervisor_reloads_every_worker(server: Server, models: Path) -> None:
    shutil.copytree(models / "tiny-vae", models / "added-vae")
    edit_manifest(models / "added-vae", name="added-vae")
    server.proc.send_signal(signal.SIGHUP)

    def listed() -> bool:
        names = {m["name"] for m in fresh(server.url, "GET", "/models").json()["models"]}
        return "added-vae" in names

    wait_for(listed, "the new model")
    request_ids = [uuid.uuid4().hex for _ in range(6)]
    for request_id in request_ids:
        answer = fresh(
            server.url,
            "POST",
            "/encode?model=added-vae",
            json={"images": IMAGES},
            headers={"X-Request-ID": request_id},
        )
        assert answer.status_code == 200, answer.text
    assert set(answered_by(server, request_ids).values()) == {1, 2}


def test_reload_rules_hold_across_workers(models: Path, tmp_path: Path) -> None:
    running = launch(models, tmp_path, {"VAE_RELOAD_MIN_INTERVAL_S": "300"})
    try:
        assert fresh(running.url, "POST", "/models/tiny-ae/reload").status_code == 200
        # The next connection goes to the other worker, whose own gate has seen no reload.
        again = fresh(running.url, "POST", "/models/tiny-ae/reload")
        assert again.status_code == 429, again.text
        assert "VAE_RELOAD_MIN_INTERVAL_S" in again.json()["detail"]
        assert int(again.headers["retry-after"]) > 200
    finally:
        os.killpg(running.proc.pid, signal.SIGKILL)
        running.proc.wait(30)


# --- gRPC ---------------------------------------------------------------------------------------

GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def test_grpc_is_served_by_every_worker_and_counted_once(models: Path, tmp_path: Path) -> None:
    """Each worker binds VAE_GRPC_PORT (SO_REUSEPORT): the kernel hands each new connection to
    one of them, so calls on several channels reach both; one channel stays on one worker."""
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="pip install 'tritonclient[grpc]'")
    grpc_port = free_port()
    running = launch(models, tmp_path, {"VAE_GRPC_PORT": str(grpc_port)})
    x = np.asarray(IMAGES, dtype=np.float32)[..., None]
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    # A channel of its own per call: no subchannel shared with the channels before it.
    own_connection = [("grpc.use_local_subchannel_pool", 1)]

    def call_on_a_new_channel() -> str:
        request_id = uuid.uuid4().hex
        client = grpcclient.InferenceServerClient(
            f"127.0.0.1:{grpc_port}", channel_args=own_connection
        )
        try:
            result = client.infer(
                "tiny-vae-encoder", [tensor], headers={"x-request-id": request_id}
            )
            assert result.as_numpy("mu").shape == (2, 2)
        finally:
            client.close()
        return request_id

    try:
        seen = answered_by(running, [call_on_a_new_channel() for _ in range(6)])
        # Until both workers answered: the kernel's hash of each connection picks the worker,
        # so a few more calls may be needed (64 channels all on one worker: 2**-63).
        while len(set(seen.values())) < 2:
            assert len(seen) < 64, f"every gRPC connection went to one worker: {seen}"
            seen.update(answered_by(running, [call_on_a_new_channel()]))
        calls = len(seen)
        # One channel, many calls: one connection, so one worker answers them all.
        client = grpcclient.InferenceServerClient(
            f"127.0.0.1:{grpc_port}", channel_args=own_connection
        )
        same = [uuid.uuid4().hex for _ in range(4)]
        for request_id in same:
            client.infer("tiny-vae-encoder", [tensor], headers={"x-request-id": request_id})
        client.close()
        assert len(set(answered_by(running, same).values())) == 1
        calls += len(same)
        labels = {"endpoint": GRPC_INFER, "model": "tiny-vae", "status": "200"}
        wait_for(
            lambda: metric(running.url, "vae_requests_total", **labels) == calls,
            f"{calls} gRPC calls counted",
        )
        for _ in range(4):  # whichever worker answers the scrape sums both
            assert metric(running.url, "vae_requests_total", **labels) == calls
    finally:
        os.killpg(running.proc.pid, signal.SIGTERM)
        assert running.proc.wait(60) == 0, running.stderr()


def test_a_busy_grpc_port_stops_the_start_before_any_worker(models: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        busy = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "service", "--workers", "2", "--port", str(free_port())],
            cwd=ROOT,
            env=server_env(models, {"VAE_GRPC_PORT": str(busy)}),
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 1
    assert f"error: cannot start: 127.0.0.1:{busy} (VAE_GRPC_PORT): " in done.stderr
    assert "set another VAE_GRPC_PORT, or 0 to turn gRPC off" in done.stderr
    assert "worker 1 started" not in done.stderr


# --- start and stop -----------------------------------------------------------------------------


def test_a_broken_model_stops_the_start_before_any_worker(models: Path) -> None:
    encoder = models / "tiny-ae" / "encoder.onnx"
    encoder.write_bytes(encoder.read_bytes()[:-100])
    done = subprocess.run(
        [sys.executable, "-m", "service", "--workers", "2", "--port", str(free_port())],
        cwd=ROOT,
        env=server_env(models),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1
    assert f"error: cannot start: model 'tiny-ae': {encoder}" in done.stderr
    assert "worker 1 started" not in done.stderr


@pytest.mark.parametrize("group", [False, True], ids=["to the supervisor", "to every process"])
def test_sigterm_drains_every_worker(models: Path, tmp_path: Path, group: bool) -> None:
    env = {"VAE_SHUTDOWN_GRACE_S": "20", "VAE_MAX_CONCURRENT_REQUESTS": "256"}
    running = launch(models, tmp_path, env)
    body = json.dumps(
        {"images": digits(8).tolist(), "mode": "sampled", "samples": 8, "seed": 1}
    ).encode()
    requests = [Req("reconstruct", "POST", "/reconstruct", body)]

    async def load_through_sigterm() -> tuple[list[Any], float]:
        load = asyncio.create_task(
            drive(running.url, requests, 16, seconds=120, until_refused=True, timeout_s=60)
        )
        # SIGTERM while both workers hold accepted requests (the sum of their gauges says so).
        assert await wait_in_flight(running.url, at_least=4) >= 4
        sigterm_at = time.monotonic()
        if group:  # as systemd does: every process of the unit at once
            os.killpg(running.proc.pid, signal.SIGTERM)
        else:
            running.proc.send_signal(signal.SIGTERM)
        return (await load).outcomes, sigterm_at

    try:
        outcomes, sigterm_at = asyncio.run(load_through_sigterm())
        assert running.proc.wait(120) == 0
    finally:
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGKILL)
    lost = [
        o
        for o in outcomes
        if (o.error is not None and o.error not in NEVER_ACCEPTED)
        or (o.status is not None and o.status not in (200, 503))
    ]
    assert not lost, lost[:3]
    finished = [o for o in outcomes if o.status == 200 and o.sent_at < sigterm_at < o.done_at]
    assert finished, "requests in flight at SIGTERM should have been answered"
    assert any(o.error == REFUSED for o in outcomes)  # the port closed at the end
    log = running.stderr()
    for pid in worker_pids(running).values():
        assert f"(pid {pid}) exited with code 0" in log
    assert "every worker has stopped" in log
    assert "cut off by shutdown" not in log


# --- the thread budget and the CPU quota --------------------------------------------------------


def test_the_thread_budget_shares_the_cores() -> None:
    one = ThreadBudget.of(Settings(), cores=16)
    assert (one.workers, one.intra_op_threads, one.inference_threads, one.decode_threads) == (
        1,
        1,
        16,
        8,
    )
    four = ThreadBudget.of(Settings(workers=4, intra_op_threads=0), cores=16)
    assert (four.intra_op_threads, four.inference_threads, four.decode_threads) == (4, 1, 2)
    auto = ThreadBudget.of(Settings(workers="auto"), cores=6)
    assert auto.workers == 6 and auto.inference_threads == 1 and auto.decode_threads == 1
    assert ThreadBudget.of(Settings(workers=2), cores=16).oversubscribed(Settings()) == []


def test_oversubscribing_settings_are_named_with_their_numbers() -> None:
    settings = Settings(workers=4, intra_op_threads=2, decode_threads=3)
    warnings = ThreadBudget.of(settings, cores=2).oversubscribed(settings)
    assert warnings[0].startswith("VAE_WORKERS=4 on 2 available cores")
    assert "4 workers x VAE_INTRA_OP_THREADS=2 = 8 threads on 2 available cores" in warnings[1]
    assert "4 workers x VAE_DECODE_THREADS=3 = 12 threads" in warnings[2]
    fits = Settings(workers=2, intra_op_threads=4)
    assert ThreadBudget.of(fits, cores=8).oversubscribed(fits) == []


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_a_bad_worker_count_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="a number of worker processes"):
        Settings(workers=value)


def test_the_cgroup_cpu_quota_caps_the_cores(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    (v2 / "app" / "worker").mkdir(parents=True)
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "app" / "cpu.max").write_text("250000 100000\n")
    (v2 / "app" / "worker" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, "0::/app/worker\n") == 2.5
    assert cgroup_cpu_limit(v2, "0::/\n") is None
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "v1", "4:cpu,cpuacct:/\n1:memory:/x\n") == 1.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "v1", "4:cpu,cpuacct:/\n") is None
