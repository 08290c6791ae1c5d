"""The Open Inference Protocol's REST path: JSON against the binary tensor data extension, beside
the service's own /encode (JSON and .npy) and in-process onnxruntime on the same encoder.

Starts the service (`python -m service`) on the bundled models, drives each load with wrk (one
thread, keep-alive connections) and prints one markdown table: requests/s, images/s, p50, p99,
errors and the ratio to in-process onnxruntime. Everything runs on 127.0.0.1.

    python benchmarks/oip_bench.py                   # about a minute; needs `wrk`
    python benchmarks/oip_bench.py --seconds 3 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
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
    start,
    test_images,
)

PORT = 8093
ENCODER = f"/v2/models/{MODEL}-encoder/infer"
HEADER = "Inference-Header-Content-Length"


def oip_json(x: np.ndarray) -> bytes:
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


def in_process(x: np.ndarray, seconds: float) -> float:
    """Images/s of the encoder's graph alone, called back to back (onnxruntime's defaults, no
    spinning, as benchmarks/serve_bench.py runs it)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(ROOT / "models" / MODEL / "encoder.onnx"), options, providers=["CPUExecutionProvider"]
    )
    feed = {"x": np.ascontiguousarray(x[:, None])}  # the graph's (N, 1, 28, 28)
    for _ in range(20):
        session.run(None, feed)
    calls, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        session.run(None, feed)
        calls += 1
    return calls * len(x) / (time.perf_counter() - begin)


def loads(images: np.ndarray, batches: list[tuple[int, int]]) -> list[tuple[Load, int | None]]:
    out: list[tuple[Load, int | None]] = []
    for batch, conns in batches:
        x = images[:batch]
        body, header = oip_binary(x)
        own_json = json.dumps({"images": x.reshape(batch, 784).round(4).tolist()}).encode()
        out += [
            (Load(ENCODER, "OIP, JSON", oip_json(x), "application/json", "*/*", batch, conns),
             None),
            (
                Load(ENCODER, "OIP, binary both ways", body, "application/octet-stream", "*/*",
                     batch, conns),
                header,
            ),
            (Load("/encode", "/encode, JSON", own_json, "application/json", "application/json",
                  batch, conns), None),
            (Load("/encode", "/encode, .npy", npy_bytes(x), "application/x-npy",
                  "application/x-npy", batch, conns), None),
        ]  # fmt: skip
    return out


def check(load: Load, header: int | None) -> None:
    """One request first: the load must be answered 200, or its numbers mean nothing."""
    headers = {"Content-Type": load.content_type, "Accept": load.accept}
    if header is not None:
        headers[HEADER] = str(header)
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{load.endpoint}", data=load.body, headers=headers
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200, (load.label, response.status)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per load")
    parser.add_argument("--rounds", type=int, default=3, help="median of this many runs")
    parser.add_argument("--one", action="store_true", help="also one image x 64 connections")
    args = parser.parse_args()
    images = test_images(256)
    batches = [(256, 4), *([(1, 64)] if args.one else [])]
    limits = {batch: in_process(images[:batch], args.seconds) for batch, _ in batches}
    env = {"VAE_PROVIDERS": "CPUExecutionProvider", "VAE_ACCESS_LOG": "false"}
    cmd = [sys.executable, "-m", "service", "--port", str(PORT)]
    proc, _ = start(cmd, PORT, env)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "post.lua").write_text(WRK_SCRIPT)
            for load, header in loads(images, batches):
                check(load, header)
                os.environ["HEADER_LENGTH"] = "" if header is None else str(header)
                results: list[Result] = [
                    run_wrk(PORT, load, args.seconds, workdir) for _ in range(args.rounds)
                ]
                rows.append((load, median_result(results)))
    finally:
        proc.terminate()
        proc.wait(10)
    print(platform_line())
    print(f"\nin-process onnxruntime, {MODEL} encoder: " + ", ".join(
        f"{limits[b]:,.0f} images/s at {b}" for b in limits))  # fmt: skip
    print("\n| load | images x conns | requests/s | images/s | p50 ms | p99 ms | errors | "
          "of in-process |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for load, r in rows:
        per_s = r.requests_s * load.images
        print(
            f"| {load.label} | {load.images} x {load.connections} | {r.requests_s:,.0f} | "
            f"{per_s:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | "
            f"{per_s / limits[load.images]:.0%} |"
        )


if __name__ == "__main__":
    main()
