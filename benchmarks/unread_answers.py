"""Clients that ask for large answers and never read them: the service's memory, its probes'
latency and its request slots while they hold on, and after they leave.

    python benchmarks/unread_answers.py                      # 300 connections, one /generate each
    python benchmarks/unread_answers.py --connections 135 --pipelined 2
    python benchmarks/unread_answers.py --root /path/to/other/checkout   # another build

Each connection (a small receive buffer) sends `--pipelined` requests `POST /generate` n=1024
(an 8.6 MB JSON answer each) and reads nothing for `--seconds`; then all close. A separate
process probes /healthz and /readyz meanwhile. Prints RSS (before, peak, at the end, 5 s after
the clients left), the probes' p50/p99/max, the peak of `vae_requests_in_flight` and how long it
sat at its cap, and the tracebacks in the server's log.
"""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def generate(n: int) -> bytes:
    body = json.dumps({"n": n, "seed": 1}).encode()
    return (
        b"POST /generate HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


def in_flight(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("vae_requests_in_flight "):
            return float(line.split()[1])
    return float("nan")


def attack(rel: Any, connections: int, pipelined: int, seconds: float) -> dict[str, Any]:
    with rel.serve({}) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        before = server.rss_mib()
        socks: list[socket.socket] = []
        peak, flights, at_cap = before, [], 0.0
        with rel.prober(server.url) as probes:
            for _ in range(connections):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", server.port))
                sock.sendall(generate(1024) * pipelined)
                socks.append(sock)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                peak = max(peak, server.rss_mib())
                flights.append(in_flight(client))
                if flights[-1] >= 128:
                    at_cap += 0.25
                time.sleep(0.25)
            during = server.rss_mib()
        for sock in socks:
            sock.close()
        time.sleep(5.0)  # the benchmark measures what is left after a while: sleeping is the point
        after = server.rss_mib()
        log = server.stderr()
    latencies = probes.latencies_ms
    return {
        "rss_before_mib": round(before),
        "rss_peak_mib": round(peak),
        "rss_end_mib": round(during),
        "rss_after_mib": round(after),
        "probe_p50_ms": round(rel.percentile(latencies, 50), 1),
        "probe_p99_ms": round(rel.percentile(latencies, 99), 1),
        "probe_max_ms": round(max(latencies, default=float("nan")), 1),
        "probes": dict(probes.statuses),
        "in_flight_peak": max(flights, default=0),
        "in_flight_at_cap_s": at_cap,
        "tracebacks": log.count("Traceback"),
        "closed_logged": [x.split("s: ", 1)[-1] for x in log.splitlines() if "closed" in x][:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--pipelined", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve() / "benchmarks"))
    rel = importlib.import_module("reliability")  # that checkout's: it runs that service
    result = attack(rel, args.connections, args.pipelined, args.seconds)
    print(f"root={args.root} connections={args.connections} pipelined={args.pipelined}")
    for key, value in result.items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
