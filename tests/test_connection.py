"""What one connection may hold on the receiving side (service.http.connection and the guard's
body reading), against the real server (`python -m service` on 127.0.0.1, the bundled models)
with short limits: request heads bounded in bytes, headers and time (431, 408) before the key
check, idle and never-spoke connections closed, the connection cap, bodies received before a
request takes a slot (and bounded in time and memory), the 503 of a shutdown delivered rather
than reset. Every wait is on the server's state (an answer, a closed connection, a log line),
bounded by a deadline."""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import Server, serve, server_env  # noqa: E402

KEY = "connection-test-key-0123456789"
ENCODE_BODY = json.dumps({"images": [[0.0] * 784]}).encode()
BODY_TIMEOUT_S = 2.0
MAX_BODY = 256 * 1024
LIMITS = {
    "VAE_API_KEYS": KEY,
    "VAE_MAX_CONCURRENT_REQUESTS": "2",
    "VAE_HEAD_TIMEOUT_S": "1",
    "VAE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "VAE_IDLE_TIMEOUT_S": "0.5",
    "VAE_MAX_BODY_BYTES": str(MAX_BODY),
    "VAE_MAX_BUFFERED_BODY_BYTES": str(MAX_BODY),
}
WAIT_S = 20.0  # the bound on every wait here; the server's own limits are a few seconds at most


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve(LIMITS) as running:
        yield running


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed) from a connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "closed before a whole body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def exchange(server: Server, data: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """Send `data` on a new connection; the answer, and what came after it until the close."""
    with connect(server) as sock:
        sock.sendall(data)
        status, headers, body = read_response(sock)
        return status, headers, body, read_to_end(sock)


def post(path: str, body: bytes, extra: bytes = b"", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def keyed(body: bytes, length: int | None = None, extra: bytes = b"") -> bytes:
    return post("/encode", body, f"X-API-Key: {KEY}\r\n".encode() + extra, length)


def detail(body: bytes) -> str:
    text: str = json.loads(body)["detail"]
    return text


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.02)


def encode(server: Server) -> httpx.Response:
    with httpx.Client(timeout=WAIT_S) as client:
        return client.post(
            f"{server.url}/encode",
            content=ENCODE_BODY,
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )


# --- the request head ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"X-Big: " + b"a" * 17000 + b"\r\n", "request head larger than 16384 bytes"),
        (b"".join(b"X-H%d: 1\r\n" % i for i in range(101)), "more than 100 request headers"),
        (b"".join(b"X-H%d: " % i + b"b" * 300 + b"\r\n" for i in range(60)), "16384 bytes"),
    ],
    ids=["one long header", "101 headers", "60 headers of 300 bytes"],
)
def test_a_head_over_the_limits_is_431_before_the_key_check(
    server: Server, head: bytes, message: str
) -> None:
    # No key: the head is refused before the guard would answer 401.
    request = b"POST /encode HTTP/1.1\r\nHost: t\r\n" + head + b"Content-Length: 2\r\n\r\n{}"
    status, headers, body, rest = exchange(server, request)
    assert status == 431 and message in detail(body)
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    assert rest == b""  # and closed


def test_a_head_within_the_limits_is_served(server: Server) -> None:
    # 100 headers (96 here, Host, Content-Type, Content-Length and the key); a 16 KiB head.
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(96))
    assert exchange(server, keyed(ENCODE_BODY, extra=many))[0] == 200
    long = b"X-Long: " + b"l" * 16000 + b"\r\n"
    request = keyed(ENCODE_BODY, extra=long)
    assert len(request.partition(b"\r\n\r\n")[0]) + 4 <= 16384
    assert exchange(server, request)[0] == 200


def test_a_pipelined_head_over_the_limit_is_answered_after_the_one_before(
    server: Server,
) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    second = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(first + second)  # the second head begins inside the first's bytes
        answers = read_to_end(sock)  # both, then the close
    ok, _, refused = answers.partition(b"HTTP/1.1 431 ")
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b'"status":"ok"}')
    assert refused.endswith(
        b'VAE_MAX_HEADER_BYTES): send fewer or shorter headers and a shorter URL"}'
    )


def test_offered_megabytes_of_headers_are_not_buffered(server: Server) -> None:
    before = server.rss_mib()
    refused: list[bool] = []

    def flood() -> None:
        # 16 MiB of one header value, never finishing the head.
        with connect(server) as sock:
            sock.sendall(b"GET /models HTTP/1.1\r\nHost: t\r\nX-Flood: ")
            chunk = b"f" * 65536
            try:
                for _ in range(256):
                    sock.sendall(chunk)
            except OSError:  # closed by the server after its first 16 KiB
                refused.append(True)

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    peak = before
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, server.rss_mib())
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    assert len(refused) == 8  # no connection could send its 16 MiB
    assert peak - before < 20, (before, peak)
    assert encode(server).status_code == 200


def test_a_head_slower_than_the_head_timeout_is_408(server: Server) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /models HTTP/1.1\r\nHost: t\r\n")  # and no end of head
        status, headers, body = read_response(sock)
        assert time.monotonic() - started > 0.5  # answered by the 1 s timer, not at once
        assert status == 408 and "within 1 s (VAE_HEAD_TIMEOUT_S)" in detail(body)
        assert headers["connection"] == "close" and read_to_end(sock) == b""


# --- idle connections ---------------------------------------------------------------------------


def test_a_connection_that_never_speaks_is_closed(server: Server) -> None:
    with connect(server) as sock:
        assert read_to_end(sock) == b""  # closed by the server, no answer owed


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        for _ in range(2):  # kept open between requests sent in time
            sock.sendall(keyed(ENCODE_BODY))
            status, headers, _ = read_response(sock)
            assert status == 200 and headers.get("connection") != "close"
        assert read_to_end(sock) == b""


def test_the_rest_of_a_body_answered_early_is_bounded_in_time(server: Server) -> None:
    # No key: 401 at once, on a connection kept open; the body never ends.
    with connect(server) as sock:
        sock.sendall(post("/encode", b"{", length=100))
        status, _, body = read_response(sock)
        assert status == 401 and "missing API key" in detail(body)
        started = time.monotonic()
        sock.sendall(b" ")  # still sending: the idle timer does not apply, the body's does
        assert read_to_end(sock) == b""
        assert time.monotonic() - started > 1.0  # the body's 2 s, not the idle 0.5 s


# --- bodies ---------------------------------------------------------------------------------------


def test_a_body_slower_than_the_body_timeout_is_408(server: Server) -> None:
    status, headers, body, rest = exchange(server, keyed(b'{"ima', length=len(ENCODE_BODY)))
    assert status == 408 and f"within {BODY_TIMEOUT_S:g} s (VAE_BODY_TIMEOUT_S)" in detail(body)
    assert headers["connection"] == "close" and headers["x-request-id"] and rest == b""
    assert "send it faster" in detail(body)


def test_content_length_with_whitespace_is_refused_early(server: Server) -> None:
    request = (
        f"POST /encode HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\nContent-Length: 17000000 \r\n\r\n"
    ).encode()
    status, headers, body, _ = exchange(server, request)
    assert status == 413 and f"larger than {MAX_BODY} bytes" in detail(body)
    assert headers["connection"] == "close"


def test_slow_senders_hold_no_request_slot(server: Server) -> None:
    # VAE_MAX_CONCURRENT_REQUESTS=2, and 8 clients still sending their bodies.
    slow = [connect(server) for _ in range(8)]
    try:
        for sock in slow:
            sock.sendall(keyed(b"{", length=len(ENCODE_BODY)))
        with httpx.Client(timeout=WAIT_S) as client:
            assert client.get(f"{server.url}/healthz").status_code == 200  # heads read by now
        for _ in range(3):
            assert encode(server).status_code == 200
        # The slow ones were still being received: they get their 408 only now.
        for sock in slow:
            status, _, _ = read_response(sock)
            assert status == 408
    finally:
        for sock in slow:
            sock.close()


def test_bodies_held_in_memory_are_bounded(server: Server) -> None:
    # VAE_MAX_BUFFERED_BODY_BYTES = 256 KiB; each body's first 64 KiB are not counted.
    part = b"[" + b"0," * 95_000  # 190 kB of a 256 KiB body: 124 kB counted

    def barrier() -> None:  # what was sent before this has been read by the server
        with httpx.Client(timeout=WAIT_S) as client:
            assert client.get(f"{server.url}/healthz").status_code == 200

    with connect(server) as first, connect(server) as second:
        first.sendall(keyed(part, length=MAX_BODY))
        second.sendall(keyed(part, length=MAX_BODY))
        barrier()
        second.sendall(b"0," * 10_000)  # 20 kB more: past the 256 KiB together
        status, headers, body = read_response(second)
        assert status == 503 and "VAE_MAX_BUFFERED_BODY_BYTES" in detail(body)
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
        # Small bodies are never refused for want of room, while the first one waits.
        assert encode(server).status_code == 200
        assert read_response(first)[0] == 408  # it was held until its body timed out
    assert encode(server).status_code == 200


# --- the connection cap and shutdown --------------------------------------------------------------


def test_the_connection_cap_refuses_when_all_are_busy_and_replaces_idle_ones() -> None:
    env = {"VAE_MAX_CONNECTIONS": "8", "VAE_IDLE_TIMEOUT_S": "60", "VAE_BODY_TIMEOUT_S": "60"}
    with serve(env) as server:
        # Eight connections busy sending a body: a ninth is refused with 503 at once.
        busy = [connect(server) for _ in range(8)]
        try:
            for sock in busy:
                sock.sendall(post("/encode", b"{", length=len(ENCODE_BODY)))

            def refused() -> bool:
                with connect(server) as extra:
                    return read_to_end(extra).startswith(b"HTTP/1.1 503 ")

            wait_until(refused, "a connection over VAE_MAX_CONNECTIONS refused with 503")
            with connect(server) as extra:
                status, headers, body = read_response(extra)
                assert status == 503 and "(8, VAE_MAX_CONNECTIONS)" in detail(body)
                assert headers["connection"] == "close" and headers["retry-after"] == "1"
            wait_until(lambda: "over VAE_MAX_CONNECTIONS (503)" in server.stderr(), "the log")
            line = next(x for x in server.stderr().splitlines() if "VAE_MAX_CONNECTIONS (503)" in x)
            assert "WARNING" in line and "refused or closed 1 connection in the last 10 s" in line
            busy[0].sendall(ENCODE_BODY[1:])  # a busy one finishes its request: served
            assert read_response(busy[0])[0] == 200
        finally:
            for sock in busy:
                sock.close()

        def served() -> bool:
            try:
                with httpx.Client(timeout=WAIT_S) as client:
                    return client.post(f"{server.url}/encode", content=ENCODE_BODY).is_success
            except httpx.TransportError:
                return False

        wait_until(served, "a request served once the busy connections closed")
        # Eight silent connections: a new one takes the place of the one idle the longest.
        idle = [connect(server) for _ in range(8)]
        try:
            with connect(server) as newcomer:
                newcomer.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                assert read_response(newcomer)[0] == 200
            assert read_to_end(idle[0]) == b""  # the oldest, closed without an answer
        finally:
            for sock in idle:
                sock.close()


def test_new_connections_during_the_shutdown_drain_get_503_not_a_reset() -> None:
    body = json.dumps({"images": [[0.5] * 784] * 400}).encode()  # 1.6 MB: many reads
    with serve({"VAE_SHUTDOWN_DRAIN_S": "30"}) as server:
        server.proc.send_signal(signal.SIGTERM)

        def draining() -> bool:
            return httpx.get(f"{server.url}/readyz", timeout=WAIT_S).status_code == 503

        wait_until(draining, "readiness 503 after SIGTERM")
        answers: list[tuple[int, dict[str, str], bytes, bytes] | str] = []

        def client() -> None:
            try:
                answers.append(exchange(server, post("/encode", body)))
            except OSError as exc:  # a reset, before or after the answer
                answers.append(repr(exc))

        threads = [threading.Thread(target=client) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        assert len(answers) == 10 and not [a for a in answers if isinstance(a, str)], answers
        for answer in answers:
            assert not isinstance(answer, str)
            status, headers, payload, rest = answer
            assert status == 503 and "shutting down" in detail(payload)
            assert headers["connection"] == "close" and rest == b""  # then a clean close
        server.proc.send_signal(signal.SIGTERM)  # a second one ends the drain at once
        assert server.proc.wait(WAIT_S) == 0


# --- the open-file limit --------------------------------------------------------------------------


def run_with_nofile(soft: int, hard: int, args: list[str], env: dict[str, str]) -> str:
    """Exit code and output of `python ARGS` with that open-file limit."""
    current = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if current != resource.RLIM_INFINITY and current < hard:
        pytest.skip(f"this process's hard open-file limit is {current}")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=server_env(ROOT / "models", env),
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return f"{done.returncode}\n{done.stdout}{done.stderr}"


def test_the_open_file_limit_is_raised_or_the_start_refused() -> None:
    check = (
        "import resource; from service.__main__ import ensure_fd_limit; "
        "print(ensure_fd_limit(8)); print(resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    raised = run_with_nofile(64, 4096, ["-c", check], {})
    assert "raised the open-file limit from 64 to 136" in raised and "(136, 4096)" in raised
    refused = run_with_nofile(64, 200, ["-m", "service"], {"VAE_MAX_CONNECTIONS": "500"})
    assert refused.startswith("2\n"), refused
    assert "VAE_MAX_CONNECTIONS (500) needs 628 open files" in refused
    assert "lower VAE_MAX_CONNECTIONS to 72" in refused and "ulimit -n" in refused
