"""The Open Inference Protocol over gRPC: `ModelInfer` on the encoder with raw_input_contents, as
tritonclient.grpc sends it, at 256 images x 4 concurrent streams and 1 image x 64.

Starts the service (`python -m service`, gRPC on), drives it with h2load (nghttp2's HTTP/2 load
generator, in C: `apt install nghttp2-client`), which sends gRPC as it is on the wire: a POST of
a prebuilt length-prefixed protobuf body with `content-type: application/grpc` and
`te: trailers`, one stream per client connection at a time. h2load counts HTTP statuses, not
gRPC ones (a refused call is HTTP 200 with a grpc-status trailer), so every run is checked
against the service's own count of successful calls in /metrics. Prints a markdown table:
requests/s, images/s, p50 and p99 (from h2load's per-request log), failures.

    python benchmarks/grpc_bench.py                  # about a minute
    python benchmarks/grpc_bench.py --seconds 5 --rounds 1

Separate from oip_bench.py so that it runs alone; oip_bench.py's table has the same gRPC rows
beside REST's (it imports `grpc_body` and `run_h2load` from here).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_bench import MODEL, ROOT, platform_line, start, test_images

sys.path.insert(0, str(ROOT))

from service.grpc import oip_pb2 as pb

HTTP_PORT, GRPC_PORT = 18560, 18561
METHOD = "/inference.GRPCInferenceService/ModelInfer"
LOADS = ((256, 4), (1, 64))  # images per request, concurrent streams


def grpc_body(x: np.ndarray) -> bytes:
    """One gRPC message on the wire: not compressed (0), its length (big-endian), the bytes."""
    request = pb.ModelInferRequest(model_name=f"{MODEL}-encoder")
    request.inputs.add(name="x", datatype="FP32", shape=[len(x), 28, 28, 1])
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    message = request.SerializeToString()
    return struct.pack(">BI", 0, len(message)) + message


@dataclass
class Result:
    requests_s: float
    p50_ms: float
    p99_ms: float
    failed: int


def succeeded_calls(http_port: int = HTTP_PORT) -> int:
    """Calls of ModelInfer the service answered OK, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics") as answer:
        text = answer.read().decode()
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vae_requests_total{")
            and f'endpoint="{METHOD}"' in line
            and 'status="200"' in line
        )
    )


def run_h2load(
    body: Path,
    streams: int,
    seconds: float,
    workdir: Path,
    grpc_port: int = GRPC_PORT,
    http_port: int = HTTP_PORT,
) -> Result:
    """h2load on the service's gRPC port for `seconds`, its failures checked against the
    service's /metrics on `http_port` (benchmarks/oip_bench.py runs it on ports of its own)."""
    log = workdir / "h2load.log"
    before = succeeded_calls(http_port)
    command = [
        "h2load",
        f"http://127.0.0.1:{grpc_port}{METHOD}",
        "-c", str(streams),
        "-m", "1",
        "-t", "1",
        "-D", str(round(seconds)),
        "--warm-up-time", "1",
        "-d", str(body),
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        "--log-file", str(log),
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", output)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    if done is None or rate is None:
        raise RuntimeError(f"h2load printed what this script cannot read:\n{output}")
    latencies = sorted(int(line.split()[2]) / 1000 for line in log.read_text().splitlines())
    answered = succeeded_calls(http_port) - before  # warm-up calls included: at least `done`
    failed = max(int(done.group(2)) - answered, 0) + int(done.group(2)) - int(done.group(3))
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return Result(float(rate.group(1)), statistics.median(latencies), p99, failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs per load; the median shown")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("error: needs h2load (apt install nghttp2-client)", file=sys.stderr)
        return 2
    env = {
        "VAE_PORT": str(HTTP_PORT),
        "VAE_GRPC_PORT": str(GRPC_PORT),
        "VAE_ACCESS_LOG": "false",
        "VAE_PROVIDERS": "CPUExecutionProvider",
        "PYTHONPATH": str(ROOT),
    }
    images = test_images(256)
    service, _ = start([sys.executable, "-m", "service"], HTTP_PORT, env)
    print(platform_line())
    print("| load | requests/s | images/s | p50 ms | p99 ms | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            for count, streams in LOADS:
                body = workdir / f"body-{count}.bin"
                body.write_bytes(grpc_body(images[:count]))
                runs = [
                    run_h2load(body, streams, args.seconds, workdir) for _ in range(args.rounds)
                ]
                rate = statistics.median(r.requests_s for r in runs)
                p50 = statistics.median(r.p50_ms for r in runs)
                p99 = statistics.median(r.p99_ms for r in runs)
                failed = sum(r.failed for r in runs)
                print(
                    f"| gRPC raw, {count} image(s) x {streams} streams | {rate:,.0f} | "
                    f"{rate * count:,.0f} | {p50:.2f} | {p99:.2f} | {failed} |"
                )
    finally:
        service.terminate()
        service.wait(30)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
