"""service.http.transport: a response's head and body leave in one write. The transport on a
recording fake (what reaches the socket, and when); the protocol in the real server, on every kind
of response it sends (JSON, bodyless HEAD, a streamed file, Connection: close, keep-alive)."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.http.transport import JOIN_MAX_BYTES, CoalescingTransport

from .conftest import digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reliability import serve  # noqa: E402


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
