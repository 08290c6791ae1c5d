"""Serving benchmark: in-process onnxruntime (the limit), the service, and a hand-written baseline.

Starts the service (`python -m service`) on the default models and the baseline server
(benchmarks/baseline_server.py), drives both with wrk (one thread, keep-alive connections) and
prints one markdown table: requests/s, images/s, p50, p99, errors, ratio to the limit and to the
baseline; then start-to-ready time and RSS after load. Everything runs on 127.0.0.1.

    python benchmarks/serve_bench.py            # about 4 minutes; needs `wrk` (apt install wrk)
    python benchmarks/serve_bench.py --seconds 3 --only encode
    python benchmarks/serve_bench.py --model-dir OTHER/models --port 18100   # other models
    python benchmarks/serve_bench.py --workers 1,2 --rounds 3   # worker processes compared

With `--workers`, only the service runs, once per worker count (all at once, on --port and
up, the loads alternating between them): /encode and deterministic /reconstruct at 256 images x
4 connections in JSON and .npy and at 1 image x 64 connections, with the ratio to the first
count, the CPU each used (cores, and CPU ms per request summed over its processes) beside what
the rest of the machine used meanwhile (on a shared machine, the service's images/s only follow
the cores it was given), and each one's memory (RSS and PSS of all its processes).

Images come from the MNIST test set when VAE_DATA_DIR (or ../shared/data) holds it, otherwise
from random pixels (the models' speed does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mnist-vae"
WRK_SCRIPT = """
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE")
wrk.headers["Accept"] = os.getenv("ACCEPT")
-- OIP bodies with binary tensors (benchmarks/oip_bench.py): the JSON header's length
local header = os.getenv("HEADER_LENGTH")
if header ~= nil and header ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = header
end
"""


def test_images(n: int) -> np.ndarray:
    for folder in (os.environ.get("VAE_DATA_DIR"), ROOT.parent / "shared" / "data"):
        path = Path(folder or "") / "mnist" / "t10k-images-idx3-ubyte.gz"
        if folder and path.exists():
            raw = gzip.decompress(path.read_bytes())
            return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:n] / np.float32(255)
    return np.random.default_rng(0).random((n, 28, 28), dtype=np.float32)


# --- the limit: onnxruntime in this process ---------------------------------------------------


def _sessions(folder: Path, threads: int) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    """The encoder and decoder with `threads` intra-op threads (0: onnxruntime's thread per core),
    not spinning: with it on, the encoder's idle threads spin while the decoder runs and the two
    sessions fight over the cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    cpu = ["CPUExecutionProvider"]
    enc = ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=cpu)
    dec = ort.InferenceSession(str(folder / "decoder.onnx"), options, providers=cpu)
    return enc, dec


def in_process(
    images: np.ndarray, seconds: float, model_dir: Path = ROOT / "models", service_threads: int = 1
) -> dict[tuple[str, int], float]:
    """Images/s of each endpoint's graph work, called back to back, at batch 1 and 256, with a
    thread per core (the ceiling); and the median seconds of one image's encode and of its encode
    + decode (`reconstruct-latency`) with the service's `service_threads` intra-op threads, so
    that the service's overhead is measured against the same graph work it does."""
    folder = model_dir / MODEL
    rng = np.random.default_rng(0)

    def calls(
        enc: ort.InferenceSession, dec: ort.InferenceSession
    ) -> dict[str, Callable[[np.ndarray], None]]:
        latent = dec.get_inputs()[0].shape[1]

        def encode(x: np.ndarray) -> None:
            enc.run(None, {"x": x})

        def reconstruct(x: np.ndarray) -> None:
            mu, logvar = enc.run(None, {"x": x})
            noise = rng.standard_normal(mu.shape, np.float32)
            dec.run(None, {"z": mu + np.exp(0.5 * logvar) * noise})

        def generate(x: np.ndarray) -> None:
            dec.run(None, {"z": rng.standard_normal((len(x), latent), np.float32)})

        return {"encode": encode, "reconstruct": reconstruct, "generate": generate}

    results = {}
    for name, fn in calls(*_sessions(folder, 0)).items():
        for batch in (1, 256):
            x = np.ascontiguousarray(images[:batch, None])
            for _ in range(20):
                fn(x)
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 6:
                fn(x)
                count += 1
            results[(name, batch)] = count * batch / (time.perf_counter() - start)
    x1 = np.ascontiguousarray(images[:1, None])
    as_served = calls(*_sessions(folder, service_threads))
    for name in ("encode", "reconstruct"):
        latencies = []
        for _ in range(2000):
            t = time.perf_counter()
            as_served[name](x1)
            latencies.append(time.perf_counter() - t)
        results[(f"{name}-latency", 1)] = statistics.median(latencies)
    return results


def service_intra_op_threads(service_env: dict[str, str]) -> int:
    """The intra-op threads the service will run each call with: VAE_INTRA_OP_THREADS as given
    to it, else the service's default."""
    default: int = Settings.model_fields["intra_op_threads"].default
    return int(service_env.get("VAE_INTRA_OP_THREADS", default))


# --- servers ------------------------------------------------------------------------------------


def wait_ready(url: str, timeout: float = 180.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def start(
    cmd: list[str], port: int, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        # gRPC off unless asked for: servers started side by side would all bind 8081.
        env={**os.environ, "VAE_GRPC_PORT": "0", **(env or {})},
        stdout=subprocess.DEVNULL,
        # Not a pipe: nobody reads it while the load runs, and a full pipe would block the
        # server's log writes (one line per request with VAE_ACCESS_LOG on).
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/readyz")
    return proc, time.perf_counter() - started


def time_start_ups(cmd: list[str], port: int, env: dict[str, str], samples: int) -> list[float]:
    """Seconds from process start to /readyz 200, `samples` times."""
    times = []
    for _ in range(samples):
        proc, seconds = start(cmd, port, env)
        times.append(seconds)
        proc.terminate()
        proc.wait(10)
    return times


def median_result(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.requests_s for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.errors for r in results),
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Load:
    endpoint: str
    label: str
    body: bytes
    content_type: str
    accept: str
    images: int
    connections: int


@dataclass
class Result:
    requests_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"wrk printed a latency I cannot read: {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(port: int, load: Load, seconds: float, workdir: Path) -> Result:
    body_file = workdir / "body"
    body_file.write_bytes(load.body)
    env = {
        **os.environ,
        "BODY_FILE": str(body_file),
        "CONTENT_TYPE": load.content_type,
        "ACCEPT": load.accept,
    }
    cmd = [
        "wrk",
        "-t1",
        f"-c{load.connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(workdir / "post.lua"),
        f"http://127.0.0.1:{port}{load.endpoint}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return Result(rps, p50, p99, errors)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def loads_for(images: np.ndarray, binary: bool) -> list[Load]:
    """Every load of the matrix; binary=False gives the JSON ones (all the baseline serves)."""
    out = []
    for batch, conns in ((1, 64), (256, 4)):
        x = images[:batch]
        json_images = json.dumps({"images": x.reshape(batch, 784).round(4).tolist()}).encode()
        bodies = {
            "/encode": (json_images, "json"),
            "/reconstruct det": (json_images, "json"),
            "/reconstruct sampled": (
                json.dumps(
                    {
                        "images": x.reshape(batch, 784).round(4).tolist(),
                        "mode": "sampled",
                        "seed": 1,
                    }
                ).encode(),
                "json",
            ),
            "/generate": (json.dumps({"n": batch, "seed": 1}).encode(), "json"),
        }
        for name, (body, _) in bodies.items():
            path = name.split()[0]
            out.append(
                Load(
                    path,
                    f"{name}, JSON",
                    body,
                    "application/json",
                    "application/json",
                    batch,
                    conns,
                )
            )
            if not binary:
                continue
            if path == "/generate":
                out.append(
                    Load(
                        path,
                        f"{name}, binary",
                        body,
                        "application/json",
                        "application/x-npy",
                        batch,
                        conns,
                    )
                )
            else:
                query = "?mode=sampled&seed=1" if "sampled" in name else ""
                out.append(
                    Load(
                        path + query,
                        f"{name}, binary",
                        npy_bytes(x),
                        "application/x-npy",
                        "application/x-npy",
                        batch,
                        conns,
                    )
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per load")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every load, baseline and service "
        "alternating, and report medians (the machine's speed drifts)",
    )
    parser.add_argument("--ready-samples", type=int, default=3, help="start-ups timed")
    parser.add_argument(
        "--port", type=int, default=8100, help="the service's port; the baseline's is the next"
    )
    parser.add_argument("--only", help="only loads whose label contains this text")
    parser.add_argument(
        "--service-env", default="", help="extra VAE_ settings, e.g. VAE_MAX_BATCH_SIZE=1"
    )
    parser.add_argument(
        "--workers",
        help="compare the service with these worker counts (e.g. 1,2) instead of the baseline",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=ROOT / "models",
        help="the models to serve (mnist-vae is the one measured; default ./models)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    if args.workers:
        service_env = dict(kv.split("=", 1) for kv in args.service_env.split() if kv)
        compare_workers([int(n) for n in args.workers.split(",")], args, service_env)
        return

    images = test_images(256)
    print(
        f"machine: {os.cpu_count()} cores, {platform_line()}; onnxruntime {ort.__version__}",
        flush=True,
    )
    service_env = {
        "VAE_MODEL_DIR": str(args.model_dir.resolve()),
        **dict(kv.split("=", 1) for kv in args.service_env.split() if kv),
    }
    threads = service_intra_op_threads(service_env)
    limit = in_process(images, args.seconds, args.model_dir, threads)
    port, base_port = args.port, args.port + 1
    service_cmd = [sys.executable, "-m", "service", "--port", str(port)]
    baseline_cmd = [
        *(sys.executable, "benchmarks/baseline_server.py", "--port", str(base_port)),
        *("--model-dir", str((args.model_dir / MODEL).resolve())),
    ]
    # Bytecode compiled up front, as an installed wheel has it: where PYTHONDONTWRITEBYTECODE
    # is set, each start would otherwise compile the modules again.
    compileall.compile_dir(ROOT / "service", quiet=1)
    service_ready, baseline_ready = [], []
    for _ in range(args.ready_samples):  # alternating, so a drift of the machine hits both
        service_ready += time_start_ups(service_cmd, port, service_env, 1)
        baseline_ready += time_start_ups(baseline_cmd, base_port, {}, 1)
    service, _ = start(service_cmd, port, service_env)
    baseline, _ = start(baseline_cmd, base_port)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "post.lua").write_text(WRK_SCRIPT)
            json_loads = {(load.label, load.images) for load in loads_for(images, binary=False)}
            loads = [
                load
                for load in loads_for(images, binary=True)
                if not args.only or args.only in load.label
            ]
            samples: dict[tuple[str, int], list[Result]] = {}
            base_samples: dict[tuple[str, int], list[Result]] = {}
            for _ in range(args.rounds):
                for load in loads:
                    key = (load.label, load.images)
                    if key in json_loads:
                        base_samples.setdefault(key, []).append(
                            run_wrk(base_port, load, args.seconds, workdir)
                        )
                    samples.setdefault(key, []).append(run_wrk(port, load, args.seconds, workdir))
            for load in loads:
                key = (load.label, load.images)
                base = median_result(base_samples[key]) if key in base_samples else None
                op = load.endpoint.split("?")[0].strip("/")
                rows.append((load, median_result(samples[key]), base, limit[(op, load.images)]))
            singles = {}
            for path in ("/encode", "/reconstruct"):
                one = Load(
                    path,
                    f"{path}, JSON, 1 connection",
                    loads_for(images, False)[0].body,
                    "application/json",
                    "application/json",
                    1,
                    1,
                )
                singles[path] = tuple(
                    median_result(
                        [run_wrk(p, one, args.seconds, workdir) for _ in range(args.rounds)]
                    )
                    for p in (port, base_port)
                )
        service_rss, baseline_rss = rss_mib(service.pid), rss_mib(baseline.pid)
    finally:
        for proc in (service, baseline):
            proc.terminate()
            proc.wait(10)

    header = (
        "load",
        "images/request x connections",
        "service req/s",
        "service images/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "vs limit",
        "baseline req/s",
        "baseline p99 ms",
        "vs baseline",
    )
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for load, r, base, lim in rows:
        images_s = r.requests_s * load.images
        cells = [
            load.label,
            f"{load.images} x {load.connections}",
            f"{r.requests_s:,.0f}",
            f"{images_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.1f}",
            str(r.errors),
            f"{images_s / lim:.1%}",
        ]
        if base:
            ratio = r.requests_s / base.requests_s
            cells += [f"{base.requests_s:,.0f}", f"{base.p99_ms:.1f}", f"**{ratio:.1f}x**"]
        else:
            cells += ["n/a", "n/a", "n/a"]
        print("| " + " | ".join(cells) + " |")
    limits = (f"{op} batch {b}: {v:,.0f}" for (op, b), v in limit.items() if "latency" not in op)
    print("\nin-process onnxruntime (images/s): " + ", ".join(limits))
    for path, (single, single_base) in singles.items():
        lat = limit[(f"{path.strip('/')}-latency", 1)] * 1e3
        print(
            f"one connection, {path} JSON 1 image: service p50 {single.p50_ms:.3f} ms, "
            f"baseline p50 {single_base.p50_ms:.3f} ms, in-process {lat:.3f} ms "
            f"({threads or 'a'} intra-op thread{'s' if threads != 1 else ''} per call, as served) "
            f"-> service overhead {single.p50_ms - lat:.3f} ms"
        )
    print(
        f"start to ready, median (max) of {args.ready_samples}: service "
        f"{statistics.median(service_ready):.2f} s ({max(service_ready):.2f}) with 4 models, "
        f"baseline {statistics.median(baseline_ready):.2f} s ({max(baseline_ready):.2f}) with 1"
    )
    if args.rounds > 1:
        print(f"each load ran {args.rounds} times, alternating servers; medians shown")
    print(f"RSS after load: service {service_rss:.0f} MiB, baseline {baseline_rss:.0f} MiB")


WORKER_LOADS = (
    ("/encode, JSON", 256),
    ("/encode, binary", 256),
    ("/encode, JSON", 1),
    ("/reconstruct det, JSON", 256),
    ("/reconstruct det, binary", 256),
    ("/reconstruct det, JSON", 1),
)


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) summed over a process and its children (a supervisor and its workers)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    rss = pss = 0.0
    for one in pids:
        rss += rss_mib(one)
        for line in Path(f"/proc/{one}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1]) / 1024
    return rss, pss


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) used so far by a process and its children."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    ticks = 0
    for one in pids:
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has been busy (not idle, not waiting on I/O)."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuShare:
    server_cores: float  # the service's processes, on average over the run
    rest_cores: float  # everything else on the machine but wrk
    ms_per_request: float  # the service's CPU per request, all its processes


def measured_wrk(
    pid: int, port: int, load: Load, seconds: float, workdir: Path
) -> tuple[Result, CpuShare]:
    """run_wrk, and the CPU the service (the process tree of `pid`), wrk and the rest of the
    machine used meanwhile."""
    server0, busy0, wrk0, start = tree_cpu_s(pid), machine_busy_s(), os.times(), time.monotonic()
    result = run_wrk(port, load, seconds, workdir)
    wall = time.monotonic() - start
    wrk1 = os.times()
    server = tree_cpu_s(pid) - server0
    wrk = wrk1.children_user + wrk1.children_system - wrk0.children_user - wrk0.children_system
    rest = max(0.0, machine_busy_s() - busy0 - server - wrk)
    requests = max(result.requests_s * seconds, 1.0)
    return result, CpuShare(server / wall, rest / wall, 1000 * server / requests)


def compare_workers(counts: list[int], args: argparse.Namespace, env: dict[str, str]) -> None:
    """The service with each worker count in `counts`, under the same loads (see the module
    docstring)."""
    images = test_images(256)
    print(f"machine: {os.cpu_count()} cores, {platform_line()}; wrk -t1 on the same cores")
    wanted = [
        load
        for load in loads_for(images, binary=True)
        if (load.label, load.images) in WORKER_LOADS and (not args.only or args.only in load.label)
    ]
    servers = {}
    ports = {count: args.port + i for i, count in enumerate(counts)}
    try:
        for count in counts:
            cmd = [sys.executable, "-m", "service", "--port", str(ports[count])]
            servers[count] = start(cmd, ports[count], {**env, "VAE_WORKERS": str(count)})[0]
        samples: dict[tuple[str, int, int], list[Result]] = {}
        shares: dict[tuple[str, int, int], list[CpuShare]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "post.lua").write_text(WRK_SCRIPT)
            for _ in range(args.rounds):
                for load in wanted:
                    for count in counts:
                        pid, port = servers[count].pid, ports[count]
                        result, share = measured_wrk(pid, port, load, args.seconds, workdir)
                        samples.setdefault((load.label, load.images, count), []).append(result)
                        shares.setdefault((load.label, load.images, count), []).append(share)
        memory = {count: tree_memory_mib(proc.pid) for count, proc in servers.items()}
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(60)
    print(
        "\n| load | images x connections | workers | req/s | images/s | p50 ms | p99 ms | errors "
        f"| vs {counts[0]} worker(s) | service cores | images/s per service core "
        "| CPU ms/request | rest of machine, cores |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for load in wanted:
        first = median_result(samples[(load.label, load.images, counts[0])]).requests_s
        for count in counts:
            r = median_result(samples[(load.label, load.images, count)])
            cpu = shares[(load.label, load.images, count)]
            cores = statistics.median(c.server_cores for c in cpu)
            print(
                f"| {load.label} | {load.images} x {load.connections} | {count} | "
                f"{r.requests_s:,.0f} | {r.requests_s * load.images:,.0f} | {r.p50_ms:.2f} | "
                f"{r.p99_ms:.1f} | {r.errors} | {r.requests_s / first:.2f}x | "
                f"{cores:.2f} | {r.requests_s * load.images / max(cores, 1e-9):,.0f} | "
                f"{statistics.median(c.ms_per_request for c in cpu):.2f} | "
                f"{statistics.median(c.rest_cores for c in cpu):.2f} |"
            )
    for count, (rss, pss) in memory.items():
        print(f"memory after load, {count} worker(s): RSS {rss:.0f} MiB, PSS {pss:.0f} MiB")
    if args.rounds > 1:
        print(f"each load ran {args.rounds} times, alternating servers; medians shown")
    print(
        "service cores: the CPU the service got; where they stay below the worker count while "
        "the rest of the machine is busy, images/s show the share it got, not what workers give"
    )


def platform_line() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "unknown CPU"
    return model


if __name__ == "__main__":
    main()
