"""The Open Inference Protocol's REST path: JSON against the binary tensor data extension, beside
its gRPC path (raw contents, driven with h2load by benchmarks/grpc_bench.py's runner; skipped,
saying so, without h2load), the service's own /encode (JSON and .npy), in-process onnxruntime on
the same encoder and, when given, MLServer as a peer (benchmarks/mlserver/: a custom runtime over
the same encoder, adaptive batching on) driven with the byte-identical OIP JSON request.

Starts every server it uses (`python -m service`, and `mlserver start benchmarks/mlserver` in
MLServer's own venv) on free ports of 127.0.0.1, waits until each is ready, checks that both
answer the same request with the same numbers, drives each load with wrk (one thread, keep-alive
connections), stops them, and prints one markdown table (requests/s, images/s, p50, p99, errors,
share of in-process onnxruntime) and the ratios issue 19 names.

    python benchmarks/oip_bench.py                  # about 4 minutes; needs `wrk`
    python benchmarks/oip_bench.py --mlserver /work/mlserver-venv/bin/mlserver
    python benchmarks/oip_bench.py --seconds 3 --rounds 1 --loads 256x4

MLServer's venv: benchmarks/mlserver/requirements.txt. Without --mlserver (or VAE_BENCH_MLSERVER)
its rows are skipped, saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import (
    MODEL,
    ROOT,
    WRK_SCRIPT,
    Load,
    Result,
    median_result,
    npy_bytes,
    platform_line,
    run_wrk,
    test_images,
)

ENCODER = f"/v2/models/{MODEL}-encoder/infer"
HEADER = "Inference-Header-Content-Length"
MLSERVER_REPOSITORY = ROOT / "benchmarks" / "mlserver"
# MLServer's model: the name in model-settings.json is the service's, so the URL is the same too.
MLSERVER_MODEL = f"{MODEL}-encoder"
MLSERVER_ENCODER = f"/v2/models/{MLSERVER_MODEL}/infer"
SERVICE, MLSERVER = "service", "MLServer"


def oip_json(x: np.ndarray) -> bytes:
    """The OIP JSON request both servers get, byte for byte: one FP32 tensor `x` (N, 28, 28, 1)."""
    tensor = {
        "name": "x",
        "shape": [len(x), 28, 28, 1],
        "datatype": "FP32",
        "data": x.reshape(-1).round(4).tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def oip_binary(x: np.ndarray) -> tuple[bytes, int]:
    """The body as tritonclient.http sends it with binary_data=True both ways, and the JSON
    header's length."""
    data = np.ascontiguousarray(x, dtype="<f4").tobytes()
    request = {
        "inputs": [
            {
                "name": "x",
                "shape": [len(x), 28, 28, 1],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [
            {"name": "mu", "parameters": {"binary_data": True}},
            {"name": "logvar", "parameters": {"binary_data": True}},
        ],
    }
    head = json.dumps(request).encode()
    return head + data, len(head)


# --- the loads ----------------------------------------------------------------------------------

JSON_LABEL = "OIP, JSON"
BINARY_LABEL = "OIP, binary both ways"


def service_loads(x: np.ndarray, conns: int) -> list[tuple[Load, int | None]]:
    """The service's loads at one batch size, each with its binary header length (or None)."""
    batch = len(x)
    body, header = oip_binary(x)
    own_json = json.dumps({"images": x.reshape(batch, 784).round(4).tolist()}).encode()
    return [
        (Load(ENCODER, JSON_LABEL, oip_json(x), "application/json", "*/*", batch, conns), None),
        (
            Load(ENCODER, BINARY_LABEL, body, "application/octet-stream", "*/*", batch, conns),
            header,
        ),
        (Load("/encode", "/encode, JSON", own_json, "application/json", "application/json",
              batch, conns), None),
        (Load("/encode", "/encode, .npy", npy_bytes(x), "application/x-npy",
              "application/x-npy", batch, conns), None),
    ]  # fmt: skip


def mlserver_load(x: np.ndarray, conns: int) -> Load:
    """MLServer's load: the service's OIP JSON load with MLServer's URL (tests check that the
    bodies stay the same)."""
    own = service_loads(x, conns)[0][0]
    return Load(MLSERVER_ENCODER, JSON_LABEL, own.body, own.content_type, own.accept,
                own.images, own.connections)  # fmt: skip


# --- paths: one table row each ------------------------------------------------------------------


@dataclass
class BenchPath:
    """One row of the table: a server, a load, and how to drive it. `check` sends one request
    first (the numbers of a load that is not answered 200 mean nothing); `run` drives the load
    for that many seconds. A gRPC row brings its own load generator as `run`."""

    server: str
    label: str
    images: int
    connections: int
    check: Callable[[], None]
    run: Callable[[float], Result]
    results: list[Result] = field(default_factory=list)


IN_PROCESS = "in-process"


def in_process_path(x: np.ndarray) -> BenchPath:
    """The encoder's graph alone in this process, called back to back by one caller
    (onnxruntime's defaults, no spinning, as benchmarks/serve_bench.py runs it): the limit. A
    path like the others, so that it runs in every round and a drift of the machine hits it too."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(ROOT / "models" / MODEL / "encoder.onnx"), options, providers=["CPUExecutionProvider"]
    )
    feed = {"x": np.ascontiguousarray(x[:, None])}  # the graph's (N, 1, 28, 28)

    def check() -> None:
        for _ in range(20):
            session.run(None, feed)

    def run(seconds: float) -> Result:
        latencies, begin = [], time.perf_counter()
        while time.perf_counter() - begin < seconds:
            start = time.perf_counter()
            session.run(None, feed)
            latencies.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - begin
        p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
        return Result(len(latencies) / elapsed, float(p50), float(p99), 0)

    return BenchPath(IN_PROCESS, "onnxruntime, encoder graph", len(x), 1, check, run)


def post(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
        answer: bytes = response.read()
        return answer


def wrk_path(server: str, port: int, load: Load, header: int | None, workdir: Path) -> BenchPath:
    headers = {"Content-Type": load.content_type, "Accept": load.accept}
    if header is not None:
        headers[HEADER] = str(header)

    def check() -> None:
        post(f"http://127.0.0.1:{port}{load.endpoint}", load.body, headers)

    def run(seconds: float) -> Result:
        os.environ["HEADER_LENGTH"] = "" if header is None else str(header)  # read by WRK_SCRIPT
        return run_wrk(port, load, seconds, workdir)

    return BenchPath(server, load.label, load.images, load.connections, check, run)


GRPC_LABEL = "OIP gRPC, raw_input_contents"


def grpc_missing() -> str | None:
    """Why the gRPC rows cannot run here, if they cannot."""
    if shutil.which("h2load") is None:
        return "gRPC rows skipped: h2load is not installed (apt install nghttp2-client)"
    return None


def grpc_paths(
    images: np.ndarray,
    batches: list[tuple[int, int]],
    grpc_port: int,
    http_port: int,
    workdir: Path,
) -> list[BenchPath]:
    """The service's gRPC rows (VAE_GRPC_PORT, on `grpc_port` here): `ModelInfer` with raw
    contents as tritonclient.grpc sends it, driven by benchmarks/grpc_bench.py's h2load runner
    (one stream per connection, as wrk's one request per connection), its failures counted from
    the service's /metrics on `http_port`. None when h2load is missing (`grpc_missing`)."""
    if grpc_missing() is not None:
        return []
    from grpc_bench import grpc_body, run_h2load

    paths = []
    for batch, conns in batches:
        body = workdir / f"grpc-{batch}.bin"
        body.write_bytes(grpc_body(images[:batch]))

        def check(body: Path = body) -> None:
            grpc_check(grpc_port, body.read_bytes())

        def run(seconds: float, body: Path = body, conns: int = conns) -> Result:
            done = run_h2load(body, conns, seconds, workdir, grpc_port, http_port)
            return Result(done.requests_s, done.p50_ms, done.p99_ms, done.failed)

        paths.append(BenchPath(SERVICE, GRPC_LABEL, batch, conns, check, run))
    return paths


def grpc_check(port: int, framed: bytes) -> None:
    """One ModelInfer call with the body h2load sends (its 5-byte gRPC frame header dropped),
    answered OK with mu and logvar."""
    import grpc

    from service.grpc import oip_pb2 as pb

    request = pb.ModelInferRequest.FromString(framed[5:])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = infer(request, timeout=60)
    names = [output.name for output in answer.outputs]
    if names != ["mu", "logvar"]:
        raise RuntimeError(f"gRPC ModelInfer answered outputs {names}, not mu and logvar")


# --- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running(
    name: str, cmd: list[str], ready_url: str, env: dict[str, str], cwd: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server in its own process group, wait until `ready_url` answers 200 (or the
    process exits: then its log's tail is the error), and stop it and its workers at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(name, proc, ready_url, log)
        yield proc
    finally:
        stop(proc)


def wait_ready(name: str, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 180  # a guard against a hung start, not a wait
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{name} did not get ready ({url}); its log ends:\n{tail}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (MLServer then stops its inference workers itself); the group if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
    proc.wait(10)


def mlserver_command(mlserver: str) -> list[str]:
    return [mlserver, "start", str(MLSERVER_REPOSITORY)]


def same_answer(service_port: int, mlserver_port: int, x: np.ndarray) -> float:
    """Both servers answer the same body; the largest |difference| over mu and logvar."""
    body = oip_json(x)
    headers = {"Content-Type": "application/json"}
    answers = [
        json.loads(post(f"http://127.0.0.1:{port}{path}", body, headers))
        for port, path in ((service_port, ENCODER), (mlserver_port, MLSERVER_ENCODER))
    ]
    tensors = [
        {out["name"]: np.asarray(out["data"], np.float64).reshape(out["shape"])
         for out in answer["outputs"]}
        for answer in answers
    ]  # fmt: skip
    return max(float(np.abs(tensors[0][k] - tensors[1][k]).max()) for k in ("mu", "logvar"))


# --- the run ------------------------------------------------------------------------------------


def parse_loads(text: str) -> list[tuple[int, int]]:
    """'256x4,1x64' -> [(256, 4), (1, 64)]: images per request x connections."""
    loads = []
    for item in text.split(","):
        images, _, conns = item.strip().partition("x")
        loads.append((int(images), int(conns)))
    return loads


def build_paths(
    images: np.ndarray,
    batches: list[tuple[int, int]],
    ports: dict[str, int],
    workdir: Path,
) -> list[BenchPath]:
    paths = [in_process_path(images[:batch]) for batch in sorted({b for b, _ in batches})]
    for batch, conns in batches:
        x = images[:batch]
        rest = [wrk_path(SERVICE, ports[SERVICE], load, header, workdir)
                for load, header in service_loads(x, conns)]  # fmt: skip
        # the protocol's rows together (JSON, binary, gRPC), then /encode's
        grpc = grpc_paths(images, [(batch, conns)], ports["grpc"], ports[SERVICE], workdir)
        paths += rest[:2] + grpc + rest[2:]
        if MLSERVER in ports:
            paths.append(
                wrk_path(MLSERVER, ports[MLSERVER], mlserver_load(x, conns), None, workdir)
            )
    return paths


def measure(paths: list[BenchPath], seconds: float, rounds: int) -> None:
    """Every path once per round, in turn, so a drift of this machine's speed hits them all."""
    for path in paths:
        path.check()
    for _ in range(rounds):
        for path in paths:
            path.results.append(path.run(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per load")
    parser.add_argument("--rounds", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--loads", default="256x4,1x64", help="images x connections, comma-separated"
    )
    parser.add_argument(
        "--mlserver",
        default=os.environ.get("VAE_BENCH_MLSERVER"),
        help="the `mlserver` executable of MLServer's venv (or VAE_BENCH_MLSERVER); "
        "without it MLServer's rows are skipped",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    images = test_images(256)
    batches = parse_loads(args.loads)
    ports = {SERVICE: free_port(), "grpc": free_port()}
    skipped = [reason for reason in [grpc_missing()] if reason]
    if args.mlserver and not Path(args.mlserver).is_file():
        sys.exit(f"--mlserver {args.mlserver}: no such file (create MLServer's venv as "
                 "benchmarks/mlserver/requirements.txt says)")  # fmt: skip
    if not args.mlserver:
        skipped.append("MLServer skipped: no --mlserver PATH (or VAE_BENCH_MLSERVER) given")
    difference = None
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "post.lua").write_text(WRK_SCRIPT)
        env = {
            "VAE_PROVIDERS": "CPUExecutionProvider",
            "VAE_ACCESS_LOG": "false",
            "VAE_GRPC_PORT": str(ports["grpc"]),
        }
        cmd = [sys.executable, "-m", "service", "--port", str(ports[SERVICE])]
        ready = f"http://127.0.0.1:{ports[SERVICE]}/readyz"
        stack.enter_context(running(SERVICE, cmd, ready, env, ROOT, workdir / "service.log"))
        if args.mlserver:
            ports[MLSERVER] = free_port()
            env = {f"MLSERVER_{key}_PORT": str(free_port()) for key in ("GRPC", "METRICS")}
            env["MLSERVER_HTTP_PORT"] = str(ports[MLSERVER])
            ready = f"http://127.0.0.1:{ports[MLSERVER]}/v2/models/{MLSERVER_MODEL}/ready"
            # Its working folder is a scratch one: MLServer writes .metrics/ and .envs/ there.
            cwd = workdir / "mlserver"
            cwd.mkdir()
            stack.enter_context(running(MLSERVER, mlserver_command(args.mlserver), ready, env,
                                        cwd, workdir / "mlserver.log"))  # fmt: skip
            difference = same_answer(ports[SERVICE], ports[MLSERVER], images)
            if difference > 1e-5:
                sys.exit(
                    f"MLServer and the service disagree by {difference:.2e} (> 1e-5) in mu or "
                    "logvar: no numbers compare different answers"
                )
        paths = build_paths(images, batches, ports, workdir)
        measure(paths, args.seconds, args.rounds)
    report(paths, args.rounds, skipped, difference, args.mlserver)


def report(
    paths: list[BenchPath],
    rounds: int,
    skipped: list[str],
    difference: float | None,
    mlserver: str | None,
) -> None:
    rows = {(p.server, p.label, p.images, p.connections): median_result(p.results) for p in paths}
    limits = {p.images: rows[(p.server, p.label, p.images, p.connections)].requests_s * p.images
              for p in paths if p.server == IN_PROCESS}  # fmt: skip
    print(f"{os.cpu_count()} cores, {platform_line()}; onnxruntime {ort.__version__}; {MODEL}")
    if mlserver:
        print(f"MLServer: {mlserver_version(mlserver)}, benchmarks/mlserver/; same request, "
              f"largest |difference| in mu and logvar {difference:.1e}")  # fmt: skip
    print(f"medians of {rounds} round(s), each path in turn\n")
    print("| server | path | images x conns | requests/s | images/s | p50 ms | p99 ms | errors "
          "| of in-process |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for (server, label, images, conns), r in rows.items():
        per_s = r.requests_s * images
        share = f"{per_s / limits[images]:.0%}" if images in limits else "n/a"
        print(
            f"| {server} | {label} | {images} x {conns} | {r.requests_s:,.0f} | {per_s:,.0f} | "
            f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {share} |"
        )
    print()
    for line in ratios(rows, limits):
        print(line)
    for reason in skipped:
        print(reason)


def ratios(rows: dict[tuple[str, str, int, int], Result], limits: dict[int, float]) -> list[str]:
    """Issue 19's targets, from the rows this run has."""
    lines = []
    for (images, conns), unit, target in (
        ((256, 4), "images/s", "3x"),
        ((1, 64), "requests/s", "2x"),
    ):
        ours = rows.get((SERVICE, JSON_LABEL, images, conns))
        peer = rows.get((MLSERVER, JSON_LABEL, images, conns))
        if ours and peer:
            lines.append(
                f"OIP JSON / MLServer, {images} x {conns}, {unit}: "
                f"{ours.requests_s / peer.requests_s:.2f}x (target {target}); "
                f"p99 {ours.p99_ms:.1f} against {peer.p99_ms:.1f} ms (target lower)"
            )
    for images, conns in ((256, 4), (1, 64)):
        grpc = rows.get((SERVICE, GRPC_LABEL, images, conns))
        binary = rows.get((SERVICE, BINARY_LABEL, images, conns))
        if grpc and binary:
            lines.append(
                f"OIP gRPC raw / REST binary, {images} x {conns}: "
                f"{grpc.requests_s / binary.requests_s:.2f}x requests/s; "
                f"p99 {grpc.p99_ms:.1f} against {binary.p99_ms:.1f} ms"
            )
    binary = rows.get((SERVICE, BINARY_LABEL, 256, 4))
    if binary and 256 in limits:
        share = binary.requests_s * 256 / limits[256]
        lines.append(f"OIP binary / in-process onnxruntime, 256 images: {share:.0%} (target 50 %)")
    return lines


def mlserver_version(mlserver: str) -> str:
    found = subprocess.run([mlserver, "--version"], capture_output=True, text=True, timeout=60)
    return (found.stdout or found.stderr).strip() or "mlserver (version unknown)"


if __name__ == "__main__":
    main()
