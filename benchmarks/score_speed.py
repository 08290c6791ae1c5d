"""What `/score` costs next to `/encode`: images/s at 256 images per request, by `k`.

Starts the service (`python -m service`) on the bundled models and drives it with wrk (one
thread, 4 keep-alive connections, `.npy` bodies of 256 MNIST test images, or random pixels
without ../shared/data), then prints one markdown table: images/s, p50 and p99 for `/encode`
and for `/score` at k = 1, 8 (the default: the calibration's) and 32, on a VAE and on the AE.

    python benchmarks/score_speed.py               # about 40 s; needs `wrk` (apt install wrk)
    python benchmarks/score_speed.py --seconds 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import serve_bench
from serve_bench import WRK_SCRIPT, Load, npy_bytes, run_wrk, start, test_images

PORT = 8102
BATCH, CONNECTIONS = 256, 4
NPY = "application/x-npy"


def loads(body: bytes) -> list[Load]:
    rows = [Load("/encode?model=mnist-vae", "mnist-vae /encode", body, NPY, NPY, BATCH, 4)]
    for k in (1, 8, 32):
        default = " (default)" if k == 8 else ""
        endpoint = f"/score?model=mnist-vae&k={k}&seed=1"
        rows.append(Load(endpoint, f"mnist-vae /score, k = {k}{default}", body, NPY, NPY, BATCH, 4))
    rows.append(Load("/encode?model=mnist-ae", "mnist-ae /encode", body, NPY, NPY, BATCH, 4))
    rows.append(Load("/score?model=mnist-ae", "mnist-ae /score", body, NPY, NPY, BATCH, 4))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per load")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    print(f"machine: {os.cpu_count()} cores, {serve_bench.platform_line()}", flush=True)
    body = npy_bytes(test_images(BATCH))
    service, _ = start([sys.executable, "-m", "service", "--port", str(PORT)], PORT)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "post.lua").write_text(WRK_SCRIPT)
            results = [(load, run_wrk(PORT, load, args.seconds, workdir)) for load in loads(body)]
    finally:
        service.terminate()
        service.wait(timeout=30)
    encode = {load.label.split()[0]: r.requests_s for load, r in results if "/encode" in load.label}
    print(f"\n{BATCH} images per .npy request, {CONNECTIONS} connections:\n")
    print("| request | images/s | of /encode | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for load, r in results:
        share = r.requests_s / encode[load.label.split()[0]]
        print(
            f"| {load.label} | {r.requests_s * BATCH:,.0f} | {share:.1%} | {r.p50_ms:.1f} "
            f"| {r.p99_ms:.1f} | {r.errors} |"
        )


if __name__ == "__main__":
    main()
