"""Reliability proof: real `python -m service` processes under load, shutdown and faults.

Every scenario starts the service as a subprocess on a free port of 127.0.0.1 (models from
`models/`, or a temporary copy of it), drives it with httpx clients (one client, hence one TCP
connection, per simulated user) and prints what it saw:

a. below capacity: 64 connections, mixed endpoints, VAE_MAX_CONCURRENT_REQUESTS=256: every
   response must be 200;
b. above capacity: the same load with VAE_MAX_CONCURRENT_REQUESTS=8: only 200 and 503 with
   Retry-After, while a prober polls /healthz and /readyz (always 200); then a normal request
   gets 200 again;
c. memory: RSS of the server after /encode and /decode of every batch size from 1 to 1024, and
   after a second identical pass (it must not keep growing);
d. SIGTERM during load: in-flight requests finish (200), later ones get 503 or are refused, the
   process exits 0 within VAE_SHUTDOWN_GRACE_S and logs no "cut off by shutdown";
e. faults: a corrupted model stops the start with a message naming the file; a corrupted new
   version is refused by `POST /models/{name}/reload` (409) and by SIGHUP, the previous version
   keeps serving.

    python benchmarks/reliability.py             # about a minute on 2 cores
    python benchmarks/reliability.py --seconds 3 --max-batch 256

tests/test_reliability.py runs the same scenarios, shorter, with assertions. VAE_ variables of
the calling environment are not passed on: each scenario sets the ones it tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import uvloop

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MODEL = "mnist-vae"  # the default model of the bundled models/
VAES = ("mnist-vae", "mnist-vae-2d", "fashion-vae")  # sampled /reconstruct needs a VAE
NPY = "application/x-npy"
CUT_OFF = "cut off by shutdown"  # what service.http.guard logs for an abandoned accepted request

# Transport errors, by what they mean for the request.
REFUSED = "refused"  # connect() failed: the server no longer listens
NO_RESPONSE = "no response"  # the connection closed before any byte of a response came back
TRUNCATED = "truncated"  # the response started, then the connection broke: a loss
TIMEOUT = "timeout"  # no answer within the client's timeout: a loss
NEVER_ACCEPTED = frozenset({REFUSED, NO_RESPONSE})

T = TypeVar("T")


# --- server processes ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(model_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its VAE_ variables, plus the scenario's (gRPC off
    unless the scenario gives it a port: servers started side by side would share one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env.update(
        {
            "VAE_MODEL_DIR": str(model_dir),
            "VAE_PROVIDERS": "CPUExecutionProvider",
            "VAE_GRPC_PORT": "0",
        }
    )
    env.update(extra or {})
    return env


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS of /proc/PID/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@dataclass
class Server:
    """One `python -m service` subprocess; its stderr goes to a file (a pipe could fill up)."""

    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    started_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def stop(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def launch(model_dir: Path, env: dict[str, str] | None, workdir: Path) -> Server:
    """Start the service; returns at once (see `wait_ready`)."""
    port = free_port()
    stderr_path = workdir / f"server-{port}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)],
            cwd=ROOT,
            env=server_env(model_dir, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    return Server(proc, port, stderr_path, time.monotonic())


def wait_ready(server: Server, timeout_s: float = 60.0) -> float:
    """Seconds from start to /readyz 200; raises if the process exits or never gets ready."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {server.proc.returncode} before it was ready:\n"
                    + server.stderr()
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{server.url}/readyz").status_code == 200:
                    return time.monotonic() - server.started_at
            time.sleep(0.05)
    raise RuntimeError(f"{server.url} not ready after {timeout_s} s:\n{server.stderr()}")


@contextlib.contextmanager
def serve(
    env: dict[str, str] | None = None, model_dir: Path = MODELS, ready: bool = True
) -> Iterator[Server]:
    """A running service (ready unless `ready=False`), killed on the way out whatever happens."""
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        server = launch(model_dir, env, Path(tmp))
        try:
            if ready:
                wait_ready(server)
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def model_copy() -> Iterator[Path]:
    """A temporary copy of models/ that a scenario may damage."""
    with tempfile.TemporaryDirectory(prefix="reliability-models-") as tmp:
        target = Path(tmp) / "models"
        shutil.copytree(MODELS, target)
        yield target


def truncate(path: Path) -> bytes:
    """Cut a file to half its size; returns the original bytes (to restore it)."""
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    return original


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    label: str
    method: str
    path: str
    body: bytes | None = None
    content_type: str = "application/json"
    accept: str = "application/json"


def latent_dim(model: str) -> int:
    manifest = json.loads((MODELS / model / "manifest.json").read_text())
    return int(manifest["latent_dim"])


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def random_images(rng: np.random.Generator, n: int) -> list[list[float]]:
    """n MNIST-shaped images (flat 784) of random pixels in [0, 1], rounded to shorten JSON."""
    images: list[list[float]] = np.round(rng.random((n, 784)), 3).tolist()
    return images


def npy_body(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def mixed_requests(count: int = 240, seed: int = 0) -> list[Req]:
    """A pool of requests over every endpoint, 1-16 images (or latents) each, bodies built once
    so that the clients spend their CPU on HTTP, not on JSON encoding."""
    rng = np.random.default_rng(seed)
    dims = {m: latent_dim(m) for m in VAES}
    pool: list[Req] = []
    body: dict[str, Any]
    for i in range(count):
        model = VAES[i % len(VAES)]
        n = int(rng.integers(1, 17))
        kind = i % 6
        if kind == 0:
            body = {"model": model, "images": random_images(rng, n)}
            pool.append(Req("encode", "POST", "/encode", _json(body)))
        elif kind == 1:
            body = {"model": model, "images": random_images(rng, n), "mode": "deterministic"}
            pool.append(Req("reconstruct det", "POST", "/reconstruct", _json(body)))
        elif kind == 2:
            body = {
                "model": model,
                "images": random_images(rng, n),
                "mode": "sampled",
                "seed": i,
                "samples": int(rng.integers(1, 5)),
            }
            pool.append(Req("reconstruct sampled", "POST", "/reconstruct", _json(body)))
        elif kind == 3:
            body = {"model": model, "n": n, "seed": i}
            pool.append(Req("generate", "POST", "/generate", _json(body)))
        elif kind == 4:
            z = rng.standard_normal((n, dims[model])).round(4).tolist()
            pool.append(Req("decode", "POST", "/decode", _json({"model": model, "z": z})))
        else:
            pool.append(Req("models", "GET", "/models"))
    return pool


def heavy_requests(count: int = 64, images: int = 16, samples: int = 16) -> list[Req]:
    """Sampled /reconstruct of `images` images x `samples` samples (.npy answers)."""
    rng = np.random.default_rng(1)
    return [
        Req(
            "reconstruct sampled heavy",
            "POST",
            "/reconstruct",
            _json(
                {
                    "model": MODEL,
                    "images": random_images(rng, images),
                    "mode": "sampled",
                    "seed": i,
                    "samples": samples,
                }
            ),
            accept=NPY,
        )
        for i in range(count)
    ]


# --- load generator -----------------------------------------------------------------------------


@dataclass
class Outcome:
    label: str
    sent_at: float  # time.monotonic()
    done_at: float
    status: int | None = None  # None: no complete response (see `error`)
    retry_after: bool = False
    error: str | None = None  # REFUSED, NO_RESPONSE, TRUNCATED, TIMEOUT, or another kind
    detail: str = ""

    @property
    def latency_ms(self) -> float:
        return (self.done_at - self.sent_at) * 1000


def client_for(url: str, timeout_s: float = 30.0) -> httpx.AsyncClient:
    """One client holding one keep-alive connection: N clients are N concurrent connections.
    Plain HTTP only: verify=False spares loading the CA bundle (30 ms per client)."""
    return httpx.AsyncClient(
        base_url=url,
        verify=False,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=httpx.Timeout(timeout_s),
    )


async def send(client: httpx.AsyncClient, req: Req) -> Outcome:
    """Send one request and read its whole answer; transport errors are classified, not raised:
    an error before the response headers means the server never answered it, one after them a
    truncated response."""
    headers = {"Accept": req.accept}
    if req.body is not None:
        headers["Content-Type"] = req.content_type
    sent = time.monotonic()
    started = False
    try:
        async with client.stream(req.method, req.path, content=req.body, headers=headers) as r:
            started = True
            await r.aread()
            return Outcome(
                req.label, sent, time.monotonic(), r.status_code, "retry-after" in r.headers
            )
    except httpx.TimeoutException as exc:
        error, detail = TIMEOUT, repr(exc)
    except httpx.ConnectError as exc:
        error, detail = REFUSED, repr(exc)
    except httpx.TransportError as exc:  # RemoteProtocolError, ReadError, WriteError
        error, detail = (TRUNCATED if started else NO_RESPONSE), repr(exc)
    except AttributeError as exc:
        # A server closing a connection it has just accepted (as at SIGTERM) can leave uvloop's
        # transport without a socket before httpcore asks it for TLS details; anyio 4.16 then
        # calls getpeername on None. No request went out on that connection.
        if started or "getpeername" not in str(exc):
            raise
        error, detail = NO_RESPONSE, repr(exc)
    return Outcome(req.label, sent, time.monotonic(), error=error, detail=detail)


@dataclass
class Load:
    outcomes: list[Outcome]
    connections: int
    seconds: float
    max_in_flight: int  # requests sent and not yet answered, at most (client side)
    max_established: int  # TCP connections the server held at once, at most (server side)

    def labels(self) -> Counter[str]:
        return Counter(o.label for o in self.outcomes)

    def statuses(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes if o.status is not None)

    def errors(self) -> Counter[str]:
        return Counter(o.error for o in self.outcomes if o.error is not None)

    def latencies_ms(self, status: int | None = None) -> list[float]:
        return [
            o.latency_ms
            for o in self.outcomes
            if o.status is not None and (status is None or o.status == status)
        ]


def established(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local end is 127.0.0.1:`port` (the server's
    ends of its client connections), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _, state = line.split()[1:4]
        if state == "01" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


async def drive(
    url: str,
    requests: Sequence[Req],
    connections: int,
    seconds: float,
    until_refused: bool = False,
    timeout_s: float = 30.0,
    watch_port: int | None = None,
) -> Load:
    """`connections` clients, each sending requests from the pool back to back for `seconds`
    (or, with `until_refused`, until a connection attempt is refused, `seconds` at most).
    With `watch_port`, the server's established connections are counted every 0.1 s."""
    outcomes: list[Outcome] = []
    in_flight = 0
    peak = 0
    peak_established = 0
    start = time.monotonic()
    deadline = start + seconds
    done = asyncio.Event()

    async def watch(port: int) -> None:
        nonlocal peak_established
        while not done.is_set():
            peak_established = max(peak_established, established(port))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.1)

    async def user(index: int) -> None:
        nonlocal in_flight, peak
        async with client_for(url, timeout_s) as client:
            i = index
            while time.monotonic() < deadline:
                in_flight += 1
                peak = max(peak, in_flight)
                outcome = await send(client, requests[i % len(requests)])
                in_flight -= 1
                outcomes.append(outcome)
                i += connections
                if until_refused and outcome.error == REFUSED:
                    return

    watcher = asyncio.create_task(watch(watch_port)) if watch_port is not None else None
    try:
        await asyncio.gather(*(user(i) for i in range(connections)))
    finally:
        done.set()
        if watcher is not None:
            await watcher
    return Load(outcomes, connections, time.monotonic() - start, peak, peak_established)


@dataclass
class Probes:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms, default=float("nan"))


def probe_forever(url: str, interval_s: float = 0.1) -> None:
    """The prober process: GET /healthz and /readyz every `interval_s` until stdin closes, then
    print what it saw as one JSON line. A process of its own, so that its latencies are the
    server's and not those of the load generator's busy event loop."""
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=30.0, verify=False) as client:
        print("probing", flush=True)
        while not stop.is_set():
            for path in ("/healthz", "/readyz"):
                started = time.monotonic()
                try:
                    status = str(client.get(path).status_code)
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                latencies.append((time.monotonic() - started) * 1000)
                statuses[status] += 1
            stop.wait(interval_s)
    print(json.dumps({"statuses": statuses, "latencies_ms": latencies}), flush=True)


@contextlib.contextmanager
def prober(url: str) -> Iterator[Probes]:
    """Probe `url` from another process while the block runs; the Probes fill in on exit."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--probe", url],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    probes = Probes()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "probing":
            raise RuntimeError("the prober did not start")
        yield probes
        out, _ = proc.communicate(timeout=60)
        seen = json.loads(out)
        probes.statuses.update(seen["statuses"])
        probes.latencies_ms.extend(seen["latencies_ms"])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop (the cheaper loop: the clients share the cores with the server)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def encode_mu(url: str, model: str = MODEL, n: int = 4) -> tuple[int, np.ndarray | None, str]:
    """(status, mu, body text) of /encode on `n` fixed images."""
    images = random_images(np.random.default_rng(123), n)
    response = httpx.post(f"{url}/encode", json={"model": model, "images": images}, timeout=30)
    if response.status_code != 200:
        return response.status_code, None, response.text
    return 200, np.asarray(response.json()["mu"], dtype=np.float32), ""


# --- scenarios ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """Scenarios a and b."""

    name: str
    max_concurrent: int
    load: Load
    rss_before_mib: float
    rss_after_mib: float
    probes: Probes | None = None
    recovery_status: int | None = None  # a normal request after the load

    @property
    def bad_503(self) -> int:
        """503s without Retry-After."""
        return sum(1 for o in self.load.outcomes if o.status == 503 and not o.retry_after)

    def row(self) -> list[str]:
        statuses = self.load.statuses()
        other = {s: n for s, n in statuses.items() if s not in (200, 503)}
        lat = self.load.latencies_ms(200)
        return [
            self.name,
            str(self.load.connections),
            str(self.max_concurrent),
            str(len(self.load.outcomes)),
            str(statuses[200]),
            str(statuses[503]),
            format_counter(other),
            format_counter(self.load.errors()),
            f"{percentile(lat, 50):.1f}",
            f"{percentile(lat, 99):.1f}",
            f"{self.rss_before_mib:.0f} -> {self.rss_after_mib:.0f}",
        ]

    def lines(self) -> list[str]:
        load = self.load
        out = [
            f"{self.name}: {len(load.outcomes)} requests in {load.seconds:.1f} s "
            f"({len(load.outcomes) / load.seconds:.0f} req/s) over {load.connections} "
            f"connections ({load.max_established} established at once on the server side, "
            f"{load.max_in_flight} requests in flight at most); by endpoint "
            f"{format_counter(load.labels())}; "
            f"statuses {format_counter(load.statuses())}; transport errors "
            f"{format_counter(load.errors())}; p50/p99 of all responses "
            f"{percentile(load.latencies_ms(), 50):.1f}/{percentile(load.latencies_ms(), 99):.1f}"
            f" ms; RSS {self.rss_before_mib:.1f} -> {self.rss_after_mib:.1f} MiB"
        ]
        probed = (
            f"prober: {self.probes.count} probes of /healthz and /readyz, statuses "
            f"{format_counter(self.probes.statuses)}, max latency {self.probes.max_ms:.1f} ms; "
            if self.probes is not None
            else ""
        )
        out.append(
            f"{self.name}: 503 without Retry-After: {self.bad_503}; {probed}"
            f"a request after the load: {self.recovery_status}"
        )
        return out


def run_load(
    name: str, max_concurrent: int, connections: int, seconds: float, with_probe: bool
) -> LoadResult:
    env = {"VAE_MAX_CONCURRENT_REQUESTS": str(max_concurrent)}
    with serve(env) as server:
        before = server.rss_mib()

        requests = mixed_requests()
        probes: Probes | None = None
        load_coro = drive(server.url, requests, connections, seconds, watch_port=server.port)
        if with_probe:
            with prober(server.url) as probes:
                load = run_async(load_coro)
        else:
            load = run_async(load_coro)
        after = server.rss_mib()
        recovery = encode_mu(server.url)[0]
        return LoadResult(name, max_concurrent, load, before, after, probes, recovery)


def scenario_below_capacity(seconds: float = 10.0, connections: int = 64) -> LoadResult:
    """a. VAE_MAX_CONCURRENT_REQUESTS=256 and 64 connections: nothing may fail."""
    return run_load("a. below capacity", 256, connections, seconds, with_probe=False)


def scenario_above_capacity(
    seconds: float = 10.0, connections: int = 64, max_concurrent: int = 8
) -> LoadResult:
    """b. VAE_MAX_CONCURRENT_REQUESTS=8 and 64 connections, probed meanwhile."""
    return run_load("b. above capacity", max_concurrent, connections, seconds, with_probe=True)


@dataclass
class MemoryResult:
    sizes: list[int]
    requests: int
    statuses: Counter[int]
    rss_start_mib: float
    rss_after_mib: list[float]  # after each pass
    seconds: float

    @property
    def last_pass_growth_mib(self) -> float:
        """RSS the last pass added above the highest reading of the passes before it (the
        first pass left out: it fills the allocator's pools and onnxruntime's per-shape
        buffers). Once warm, RSS wanders by a few MiB as threads take memory from different
        malloc arenas, and may step up once; a leak grows it again on every pass."""
        return self.rss_after_mib[-1] - max(self.rss_after_mib[1:-1])

    def lines(self) -> list[str]:
        passes = ", ".join(
            f"after pass {i} {rss:.1f} MiB" for i, rss in enumerate(self.rss_after_mib, 1)
        )
        return [
            f"c. memory: /encode and /decode (.npy bodies) of {len(self.sizes)} batch sizes "
            f"{self.sizes[0]}..{self.sizes[-1]}, {len(self.rss_after_mib)} passes: "
            f"{self.requests} requests in {self.seconds:.1f} s, statuses "
            f"{format_counter(self.statuses)}; RSS at start {self.rss_start_mib:.1f} MiB, "
            f"{passes} (last pass above the earlier high: {self.last_pass_growth_mib:+.1f} MiB)"
        ]


def scenario_memory(sizes: Sequence[int] = range(1, 1025), passes: int = 4) -> MemoryResult:
    """c. RSS after every batch size through /encode and /decode, `passes` times."""
    sizes = list(sizes)
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(max(sizes), 784), dtype=np.uint8)
    z = rng.standard_normal((max(sizes), latent_dim(MODEL))).astype(np.float32)
    statuses: Counter[int] = Counter()
    started = time.monotonic()
    # The periodic malloc_trim off: it fires on a timer, so where it falls between the two
    # readings (earlier on a busy machine, later on an idle one) would decide the growth seen.
    # Without it, what pass 1 freed is what pass 2 reuses, and only a leak grows.
    no_trim = {"VAE_MEMORY_TRIM_INTERVAL_S": "0"}
    with serve(no_trim) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        start_rss = server.rss_mib()
        after: list[float] = []
        for _ in range(passes):
            for n in sizes:
                for path, array in (("/encode", pixels[:n]), ("/decode", z[:n])):
                    response = client.post(
                        f"{path}?model={MODEL}",
                        content=npy_body(array),
                        headers={"Content-Type": NPY, "Accept": NPY},
                    )
                    statuses[response.status_code] += 1
            after.append(server.rss_mib())
    return MemoryResult(
        sizes,
        sum(statuses.values()),
        statuses,
        start_rss,
        after,
        time.monotonic() - started,
    )


@dataclass
class SigtermResult:
    grace_s: int
    load: Load
    sigterm_at: float
    exit_code: int | None
    exit_s: float | None  # seconds from SIGTERM to exit
    stderr: str

    @property
    def after_sigterm(self) -> list[Outcome]:
        """Complete responses received after SIGTERM was sent."""
        return [
            o for o in self.load.outcomes if o.status is not None and o.done_at > self.sigterm_at
        ]

    @property
    def finished_in_flight(self) -> int:
        """200s for requests sent before SIGTERM and answered after it."""
        return sum(1 for o in self.after_sigterm if o.status == 200 and o.sent_at < self.sigterm_at)

    @property
    def losses(self) -> list[Outcome]:
        """Requests the server accepted and did not answer in full, or answered with an error."""
        return [
            o
            for o in self.load.outcomes
            if (o.error is not None and o.error not in NEVER_ACCEPTED)
            or (o.status is not None and o.status not in (200, 503))
        ]

    @property
    def cut_off(self) -> int:
        return self.stderr.count(CUT_OFF)

    def row(self) -> list[str]:
        statuses = self.load.statuses()
        other = {s: n for s, n in statuses.items() if s not in (200, 503)}
        lat = self.load.latencies_ms(200)
        errors = self.load.errors()
        lost = {k: n for k, n in errors.items() if k not in NEVER_ACCEPTED}
        return [
            "d. SIGTERM during load",
            str(self.load.connections),
            "256",
            str(len(self.load.outcomes)),
            str(statuses[200]),
            str(statuses[503]),
            format_counter(other),
            format_counter(lost),
            f"{percentile(lat, 50):.1f}",
            f"{percentile(lat, 99):.1f}",
            "-",
        ]

    def lines(self) -> list[str]:
        after = self.after_sigterm
        errors = self.load.errors()
        return [
            f"d. SIGTERM during load: exit code {self.exit_code} {self.exit_s:.2f} s after "
            f"SIGTERM (VAE_SHUTDOWN_GRACE_S={self.grace_s}); {len(self.load.outcomes)} requests, "
            f"statuses {format_counter(self.load.statuses())}; responses received after "
            f"SIGTERM: {len(after)} ({format_counter(Counter(o.status or 0 for o in after))}), "
            f"of which {self.finished_in_flight} were 200s for requests sent before it; "
            f"never accepted: {errors[REFUSED]} refused, {errors[NO_RESPONSE]} closed before "
            f"any response; lost (truncated, timed out, other errors, non-200/503): "
            f"{len(self.losses)}; '{CUT_OFF}' in stderr: {self.cut_off} times"
        ]


async def wait_in_flight(url: str, at_least: int, timeout_s: float = 60.0) -> int:
    """Poll /metrics until the server reports `at_least` requests in flight (or time runs out);
    returns the last count seen."""
    seen = 0
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                text = (await client.get("/metrics")).text
                for line in text.splitlines():
                    if line.startswith("vae_requests_in_flight "):
                        seen = int(float(line.split()[1]))
                if seen >= at_least:
                    return seen
            await asyncio.sleep(0.01)
    return seen


def scenario_sigterm(
    connections: int = 64, before_s: float = 1.0, grace_s: int = 10, images: int = 16
) -> SigtermResult:
    """d. SIGTERM after `before_s` of heavy load; clients go on until they are refused."""
    env = {
        "VAE_MAX_CONCURRENT_REQUESTS": "256",
        "VAE_SHUTDOWN_GRACE_S": str(grace_s),
        "VAE_REQUEST_TIMEOUT_S": str(grace_s),
    }
    with serve(env) as server:

        async def main() -> tuple[Load, float, float | None]:
            load_task = asyncio.create_task(
                drive(
                    server.url,
                    heavy_requests(images=images, samples=16),
                    connections,
                    seconds=before_s + grace_s + 15,
                    until_refused=True,
                    timeout_s=grace_s + 10,
                    watch_port=server.port,
                )
            )
            await asyncio.sleep(before_s)
            # On a busy machine the load may not have reached the server yet after before_s:
            # wait until the server itself counts requests in flight, so that SIGTERM lands
            # while it is serving some (which the scenario is about).
            await wait_in_flight(server.url, at_least=connections // 4)
            sigterm_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            exit_s = None
            while time.monotonic() - sigterm_at < grace_s + 10:
                if server.proc.poll() is not None:
                    exit_s = time.monotonic() - sigterm_at
                    break
                await asyncio.sleep(0.02)
            return await load_task, sigterm_at, exit_s

        load, sigterm_at, exit_s = run_async(main())
        exit_code = server.proc.poll()
        stderr = server.stderr()
    return SigtermResult(grace_s, load, sigterm_at, exit_code, exit_s, stderr)


@dataclass
class BadStartResult:
    corrupted: str  # the truncated file, relative to the model folder
    exit_code: int | None  # None: still running after the timeout
    exit_s: float
    stderr: str

    def lines(self) -> list[str]:
        text = self.stderr.strip()
        last = text.splitlines()[-1] if text else ""
        return [
            f"e1. start with a truncated {self.corrupted}: exit code {self.exit_code} after "
            f"{self.exit_s:.1f} s; stderr: {last}"
        ]


def scenario_bad_start(timeout_s: float = 30.0) -> BadStartResult:
    """e1. Start on a copy of models/ whose mnist-vae-2d/encoder.onnx is cut in half."""
    corrupted = "mnist-vae-2d/encoder.onnx"
    with model_copy() as models:
        truncate(models / corrupted)
        with serve(model_dir=models, ready=False) as server:
            try:
                code: int | None = server.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            return BadStartResult(
                corrupted, code, time.monotonic() - server.started_at, server.stderr()
            )


RELOAD_BAD = "POST reload, truncated encoder"
HUP_BAD = "SIGHUP, truncated encoder"
RELOAD_GOOD = "POST reload, encoder restored"


@dataclass
class Step:
    """One step of scenario e2: what the reload (or SIGHUP) gave, then /encode after it."""

    action: str
    status: int | str  # HTTP status of the reload; for SIGHUP: "alive" or "exited <code>"
    detail: str
    encode_status: int
    same_mu: bool
    logged: bool | None = None  # SIGHUP: whether the refusal reached the log


@dataclass
class BadReloadResult:
    encode_status: int  # /encode before anything changed
    steps: dict[str, Step]

    def lines(self) -> list[str]:
        return [
            f"e2. {s.action}: {s.status}"
            + (f" (refusal logged: {s.logged})" if s.logged is not None else "")
            + (f" ({s.detail})" if s.detail else "")
            + f"; then /encode -> {s.encode_status}, mu as before: {s.same_mu}"
            for s in self.steps.values()
        ]


def scenario_bad_reload() -> BadReloadResult:
    """e2. Serve a copy of models/, then put a truncated mnist-vae/encoder.onnx there: a reload
    (POST and SIGHUP) must be refused while the loaded version keeps serving; restored, the file
    reloads."""
    # Two reloads a moment apart: no VAE_RELOAD_MIN_INTERVAL_S between them.
    no_interval = {"VAE_RELOAD_MIN_INTERVAL_S": "0"}
    with model_copy() as models, serve(no_interval, model_dir=models) as server:
        url = server.url
        status, mu, _ = encode_mu(url)
        steps: dict[str, Step] = {}

        def encode_step(action: str, step_status: int | str, detail: str, **kw: Any) -> None:
            encode_status, now, _ = encode_mu(url)
            steps[action] = Step(
                action, step_status, detail, encode_status, same(mu, now), kw.get("logged")
            )

        encoder = models / MODEL / "encoder.onnx"
        original = truncate(encoder)
        response = httpx.post(f"{url}/models/{MODEL}/reload", timeout=30)
        encode_step(RELOAD_BAD, response.status_code, detail_of(response))

        server.proc.send_signal(signal.SIGHUP)
        refusal = f"reload of {MODEL} refused"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and server.proc.poll() is None:
            if refusal in server.stderr():
                break
            time.sleep(0.05)
        code = server.proc.poll()
        hup_status = "alive" if code is None else f"exited {code}"
        logged = refusal in server.stderr()
        line = next((x for x in server.stderr().splitlines() if refusal in x), "")
        detail = line[line.index(refusal) :] if line else ""
        if code is None:
            encode_step(HUP_BAD, hup_status, detail, logged=logged)
        else:
            steps[HUP_BAD] = Step(HUP_BAD, hup_status, detail, 0, False, logged)
            return BadReloadResult(status, steps)

        encoder.write_bytes(original)
        response = httpx.post(f"{url}/models/{MODEL}/reload", timeout=30)
        encode_step(RELOAD_GOOD, response.status_code, "")
        return BadReloadResult(status, steps)


def detail_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", ""))
    except ValueError:
        return response.text


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and np.array_equal(a, b)


# --- report -------------------------------------------------------------------------------------


def format_counter(counter: Any) -> str:
    items = sorted(dict(counter).items(), key=lambda kv: str(kv[0]))
    return ", ".join(f"{k}: {v}" for k, v in items) if items else "-"


HEADER = [
    "scenario",
    "connections",
    "max concurrent",
    "requests",
    "200",
    "503",
    "other statuses",
    "failures",
    "p50 ms (200)",
    "p99 ms (200)",
    "RSS MiB",
]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load of a and b (s)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=1024, help="largest batch of c")
    parser.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)  # the prober process
    args = parser.parse_args(argv)
    if args.probe:
        probe_forever(args.probe)
        return 0

    rows: list[list[str]] = []
    lines: list[str] = []

    def report(
        result: LoadResult | SigtermResult | MemoryResult | BadStartResult | BadReloadResult,
    ) -> None:
        for line in result.lines():
            print(line, flush=True)
            lines.append(line)
        if isinstance(result, LoadResult | SigtermResult):
            rows.append(result.row())

    report(scenario_below_capacity(args.seconds, args.connections))
    report(scenario_above_capacity(args.seconds, args.connections))
    report(scenario_memory(range(1, args.max_batch + 1)))
    report(scenario_sigterm(args.connections))
    report(scenario_bad_start())
    report(scenario_bad_reload())
    print()
    print(table(rows))
    print()
    print(
        "failures: a and b count every transport error; d counts only requests the server "
        "accepted and did not answer in full (refused connections and connections closed before "
        "any response are listed apart, as never accepted)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
