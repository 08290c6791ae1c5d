"""service.http.transport: a response's head and body leave in one write. The transport on a
recording fake (what reaches the socket, and when); the protocol in the real server, on every kind
of response it sends (JSON, bodyless HEAD, a streamed file, Connection: close, keep-alive).

service.http.sending: the bounds on answers a client leaves unread, on fake connections and a fake
clock, then in real servers with real sockets: a client that never reads is aborted after the
write timeout and holds no slot, its pipelined request never starts, the per-connection bound
aborts at once, and a pipelined reset leaves no traceback in the log. Every wait is on the
server's state (its log, its metrics), bounded by a deadline."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.http.sending import (
    UNSENT_TOO_LARGE,
    UNSENT_TOTAL_TOO_LARGE,
    WRITE_TIMED_OUT,
    SendLimits,
    UnsentAnswers,
)
from service.http.transport import JOIN_MAX_BYTES, CoalescingTransport

from .conftest import digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import Server, serve  # noqa: E402


class RecordingTransport(asyncio.Transport):
    """What the socket would be sent, one entry per call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 10

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000)}.get(name, default)


async def _after_this_step() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _run(steps: Any) -> list[tuple[str, bytes]]:
    async def main() -> list[tuple[str, bytes]]:
        inner = RecordingTransport()
        await steps(CoalescingTransport(inner, asyncio.get_running_loop()), inner)
        return inner.calls

    return asyncio.run(main())


def test_head_and_small_body_leave_in_one_write() -> None:
    async def steps(transport: CoalescingTransport, inner: RecordingTransport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert inner.calls == []  # held for the body
        transport.write(b"{}")
        await _after_this_step()

    assert _run(steps) == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]


def test_a_lone_write_leaves_at_the_end_of_the_step() -> None:
    async def steps(transport: CoalescingTransport, inner: RecordingTransport) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
        transport.write(head)  # a HEAD answer: no body follows
        assert transport.get_write_buffer_size() == 10 + len(head)  # held bytes count as buffered
        await _after_this_step()
        assert inner.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")]
        transport.write(b"next")  # and the next response starts afresh
        await _after_this_step()

    assert [data for _, data in _run(steps)][-1] == b"next"


def test_a_large_body_is_not_copied_onto_its_head() -> None:
    body = b"x" * (JOIN_MAX_BYTES + 1)

    async def steps(transport: CoalescingTransport, inner: RecordingTransport) -> None:
        transport.writelines([b"head", body])
        await _after_this_step()

    assert _run(steps) == [("write", b"head"), ("write", body)]


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def close_steps(transport: CoalescingTransport, inner: RecordingTransport) -> None:
        transport.write(b"last words")
        transport.close()
        await _after_this_step()

    async def abort_steps(transport: CoalescingTransport, inner: RecordingTransport) -> None:
        transport.write(b"never sent")
        transport.abort()
        await _after_this_step()

    assert _run(close_steps) == [("write", b"last words"), ("close", b"")]
    assert _run(abort_steps) == [("abort", b"")]


def test_a_held_write_to_a_connection_closed_meanwhile_is_dropped() -> None:
    async def steps(transport: CoalescingTransport, inner: RecordingTransport) -> None:
        transport.write(b"too late")
        inner.closing = True  # the client went away within the step
        await _after_this_step()

    assert _run(steps) == []


def test_a_write_to_a_closing_connection_is_dropped_not_raised() -> None:
    async def steps(transport: CoalescingTransport, inner: RecordingTransport) -> None:
        transport.write(b"head")
        inner.closing = True  # reset between the head and the body (uvloop would raise)
        transport.write(b"body")
        transport.close()
        transport.write_eof()

    assert _run(steps) == []


def test_everything_else_is_the_socket_transports() -> None:
    async def steps(transport: CoalescingTransport, inner: RecordingTransport) -> None:
        assert transport.get_extra_info("peername") == ("127.0.0.1", 5000)
        assert transport.get_extra_info("nothing", "default") == "default"
        assert not transport.is_closing()

    _run(steps)


# --- the protocol in the real server ---------------------------------------------------------


@pytest.fixture(scope="module")
def url(model_dir: Path) -> Iterator[str]:
    with serve({"VAE_DEFAULT_MODEL": "tiny-vae"}, model_dir=model_dir) as running:
        yield running.url


def test_every_kind_of_response_arrives_whole_on_one_connection(url: str) -> None:
    swagger = (ROOT / "service/static/swagger-ui/swagger-ui-bundle.js").read_bytes()
    icon = "/static/swagger-ui/favicon-32x32.png"
    icon_size = (ROOT / "service" / icon.lstrip("/")).stat().st_size
    assert len(swagger) > JOIN_MAX_BYTES  # streamed, and too large to join
    with httpx.Client(base_url=url, timeout=30) as client:  # one keep-alive connection
        for _ in range(3):
            encoded = client.post("/encode", json={"images": digits(2).tolist()})
            assert encoded.status_code == 200 and np.shape(encoded.json()["mu"]) == (2, 2)
            head = client.head(icon)  # a head, and no body
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == icon_size
            assert client.get("/healthz").json()["status"] == "ok"
            static = client.get("/static/swagger-ui/swagger-ui-bundle.js")
            assert static.status_code == 200 and static.content == swagger
            refused = client.post("/encode", json={"images": [[2.0] * 784]})
            assert refused.status_code == 422 and "images[0]" in refused.json()["detail"]


def test_pipelined_requests_get_their_answers_in_order(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    icon = b"/static/swagger-ui/favicon-32x32.png"
    requests = b"".join(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        if i % 2
        else b"HEAD " + icon + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        for i in range(6)
    )
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(requests + last)
        received = b""
        while chunk := sock.recv(65536):  # the server closes after the last answer
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 7
    assert received.count(b'"status":"ok"') == 4  # the GETs have bodies, the HEADs none
    assert received.rstrip().endswith(b"}")


# --- the bounds on unsent answers, on fakes ----------------------------------------------------


class FakeSender:
    def __init__(self) -> None:
        self.unsent = 0
        self.sent = 0
        self.aborted: str | None = None

    def unsent_bytes(self) -> int:
        return 0 if self.aborted else self.unsent

    def sent_bytes(self) -> int:
        return self.sent

    def abort_sending(self, reason: str) -> None:
        self.aborted = reason


class FakeLoop:
    """The two calls UnsentAnswers makes, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.timers.append((self.now + delay, callback, args))

    def advance(self, seconds: float, each: Callable[[], None] = lambda: None) -> None:
        end = self.now + seconds
        while self.timers and min(t[0] for t in self.timers) <= end:
            timer = min(self.timers, key=lambda t: t[0])
            self.timers.remove(timer)
            self.now = timer[0]
            each()
            timer[1](*timer[2])
        self.now = end


def test_a_stalled_connection_is_aborted_after_the_write_timeout_a_slow_reader_is_not() -> None:
    loop: Any = FakeLoop()
    unsent = UnsentAnswers(SendLimits(write_timeout_s=10.0))
    stalled, slow, drained = FakeSender(), FakeSender(), FakeSender()
    for sender in (stalled, slow, drained):
        sender.unsent = 1000
        unsent.written(sender, loop)
    drained.unsent = 0  # the client read it all: no longer tracked

    def slow_reads() -> None:  # one byte at a time, but always some
        slow.sent += 1

    loop.advance(9.9, slow_reads)
    assert stalled.aborted is None
    loop.advance(2.6, slow_reads)  # the check comes every quarter of the timeout
    assert stalled.aborted == WRITE_TIMED_OUT
    assert slow.aborted is None and drained.aborted is None and len(unsent) == 1


def test_unsent_bytes_past_the_connection_bound_abort_at_once() -> None:
    loop: Any = FakeLoop()
    unsent = UnsentAnswers(SendLimits(max_unsent_bytes=100))
    within, over = FakeSender(), FakeSender()
    within.unsent, over.unsent = 100, 101
    unsent.written(within, loop)
    unsent.written(over, loop)
    assert within.aborted is None and over.aborted == UNSENT_TOO_LARGE


def test_past_the_total_bound_the_connection_stalled_the_longest_goes_first() -> None:
    loop: Any = FakeLoop()
    unsent = UnsentAnswers(SendLimits(max_unsent_bytes=80, max_unsent_total_bytes=100))
    first, second, third = FakeSender(), FakeSender(), FakeSender()
    for sender, size in ((first, 60), (second, 30), (third, 30)):
        sender.unsent = size
        unsent.written(sender, loop)
        loop.now += 1
    assert first.aborted == UNSENT_TOTAL_TOO_LARGE
    assert second.aborted is None and third.aborted is None and unsent.total() == 60


# --- the sending side in real servers ----------------------------------------------------------

WAIT_S = 30.0
WRITE_TIMEOUT_S = 1.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.02)


def generate(n: int, request_id: str) -> bytes:
    body = json.dumps({"n": n, "seed": 1}).encode()
    return (
        f"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def never_reader(server: Server, requests: bytes) -> socket.socket:
    """A connection that sends `requests` and reads nothing (a small receive buffer, so that
    the kernel takes little of the answers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(requests)
    return sock


def received_until_closed(sock: socket.socket) -> int:
    """Bytes read until the server's close or reset."""
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


def in_flight(server: Server) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=WAIT_S).text
    line = next(x for x in metrics.splitlines() if x.startswith("vae_requests_in_flight "))
    return float(line.split()[1])


def served(server: Server, request_id: str = "served") -> int:
    """A real request's status, once its line is in the access log: every request that ended
    before it has its line there too."""
    answer = httpx.post(
        f"{server.url}/encode",
        json={"images": digits(1).tolist()},
        headers={"X-Request-ID": request_id},
        timeout=WAIT_S,
    )
    wait_until(lambda: f"request_id={request_id}" in server.stderr(), "the access log")
    return answer.status_code


@pytest.fixture(scope="module")
def impatient(model_dir: Path) -> Iterator[Server]:
    env = {
        "VAE_DEFAULT_MODEL": "tiny-vae",
        "VAE_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S),
        "VAE_MAX_CONCURRENT_REQUESTS": "1",
    }
    with serve(env, model_dir=model_dir) as running:
        yield running


def test_a_client_that_never_reads_is_aborted_and_its_pipelined_request_never_starts(
    impatient: Server,
) -> None:
    answer = len(generate(1024, "x"))  # far less than the answer: just a floor
    with never_reader(impatient, generate(1024, "never-1") + generate(1024, "never-2")) as sock:
        wait_until(lambda: WRITE_TIMED_OUT in impatient.stderr(), "the write timeout's log line")
        assert received_until_closed(sock) > answer  # what the kernel took, then the reset
    assert in_flight(impatient) == 0 and served(impatient, "after-never") == 200  # slot free
    # The second was deferred while the first answer stayed unread, and dropped unstarted.
    log = impatient.stderr()
    assert "request_id=never-1" in log and "never-2" not in log


def test_a_pipelined_reset_leaves_no_traceback(impatient: Server) -> None:
    for i in range(20):
        with socket.create_connection(("127.0.0.1", impatient.port), timeout=WAIT_S) as sock:
            sock.sendall(b"".join(generate(64, f"reset-{i}-{j}") for j in range(3)))
            assert sock.recv(10).startswith(b"HTTP/1.1")
            # SO_LINGER 0: close sends a reset, with the rest of the answers unread
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_until(
        lambda: all(f"request_id=reset-{i}-0" in impatient.stderr() for i in range(20)),
        "every connection's first request in the access log",
    )
    wait_until(lambda: in_flight(impatient) == 0, "every request finished")
    assert served(impatient) == 200
    log = impatient.stderr()
    assert "Traceback" not in log and "Exception" not in log and "handler is closed" not in log


def test_unsent_bytes_past_the_connection_bound_close_the_connection(model_dir: Path) -> None:
    env = {"VAE_DEFAULT_MODEL": "tiny-vae", "VAE_MAX_UNSENT_BYTES": "65536"}
    with serve(env, model_dir=model_dir) as server:
        with never_reader(server, generate(1024, "big-1") + generate(1024, "big-2")) as sock:
            wait_until(lambda: UNSENT_TOO_LARGE in server.stderr(), "the bound's log line")
            received_until_closed(sock)
        assert in_flight(server) == 0 and served(server) == 200
        assert "request_id=big-1" in server.stderr() and "big-2" not in server.stderr()
        line = next(x for x in server.stderr().splitlines() if UNSENT_TOO_LARGE in x)
        assert "WARNING" in line and "refused or closed 1 connection" in line
