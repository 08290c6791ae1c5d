"""Work that stops with its request: what a scan-bomb upload and a reload loop cost the service.

1. The bomb: a progressive JPEG whose last scan is repeated 5,000 times at 4096 x 4096 (about
   230 kB). Prints what decoding it costs (CPU seconds, Pillow, as the service did per upload
   before the budget), what measuring it costs now (`check_upload`, ms), and what a real service
   process answers to it (status, ms, the process's CPU seconds).
2. The reload loop: `POST /models/mnist-vae/reload` back to back for `--seconds`, against a
   service started from `--checkout` (this one by default; give another checkout to measure a
   build from before). Prints reloads done, their answers, the peak RSS and the CPU seconds.
   The rate limit is turned off (VAE_RELOAD_MIN_INTERVAL_S=0) to show what each reload keeps.

    python benchmarks/decode_budget.py [--seconds 20] [--checkout PATH] [--skip-decode]
"""

from __future__ import annotations

import argparse
import collections
import io
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reliability

from service.codecs.image_cost import check_upload

BUDGET = 24 * 4096 * 4096


def many_scan_jpeg(size: int, repeats: int) -> bytes:
    """A flat progressive JPEG with its last scan repeated `repeats` more times."""
    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    end = data.rindex(b"\xff\xd9")
    last_scan = data[data.rindex(b"\xff\xda", 0, end) : end]
    return data[:end] + last_scan * repeats + b"\xff\xd9"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


def bomb(skip_decode: bool) -> None:
    data = many_scan_jpeg(4096, 5000)
    print(f"bomb: {len(data) / 1000:.0f} kB, 4096x4096, {5000 + 6} scans")
    if not skip_decode:
        start = time.process_time()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        spent = time.process_time() - start
        print(f"  decoding it (Pillow, as each upload did before): {spent:.1f} CPU s")
    start = time.perf_counter()
    try:
        check_upload(data, "images[0]", BUDGET)
    except Exception as exc:  # the refusal is the point
        print(f"  measuring it now: {(time.perf_counter() - start) * 1000:.2f} ms -> {exc}")
    with reliability.serve() as server:
        cpu = cpu_seconds(server.pid)
        start = time.perf_counter()
        files = [("images", ("bomb.jpg", data, "image/jpeg"))]
        response = httpx.post(f"{server.url}/encode", files=files, timeout=60)
        took = (time.perf_counter() - start) * 1000
        print(
            f"  the service: {response.status_code} in {took:.1f} ms, "
            f"{cpu_seconds(server.pid) - cpu:.2f} CPU s of the service process"
        )


def reload_loop(seconds: float, checkout: Path) -> None:
    reliability.ROOT = checkout  # `launch` starts `python -m service` there
    env = {"VAE_RELOAD_MIN_INTERVAL_S": "0"}
    with reliability.serve(env) as server:
        cpu, peak, answers = cpu_seconds(server.pid), server.rss_mib(), collections.Counter[int]()
        deadline = time.monotonic() + seconds
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                answers[client.post(f"{server.url}/models/mnist-vae/reload").status_code] += 1
                peak = max(peak, server.rss_mib())
        print(
            f"reload loop ({checkout}, {seconds:g} s): {sum(answers.values())} reloads "
            f"{dict(answers)}, RSS peak {peak:.0f} MiB, now {server.rss_mib():.0f} MiB, "
            f"{cpu_seconds(server.pid) - cpu:.1f} CPU s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--checkout", type=Path, default=reliability.ROOT)
    parser.add_argument("--skip-decode", action="store_true", help="skip the 30 s+ decode")
    args = parser.parse_args()
    bomb(args.skip_decode)
    reload_loop(args.seconds, args.checkout.resolve())


if __name__ == "__main__":
    main()
