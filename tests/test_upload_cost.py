"""service.codecs.image_cost and service.codecs.decoding: an upload's decoding cost is measured
from its bytes (JPEG scans counted from the marker segments) and refused past
VAE_MAX_UPLOAD_PIXEL_SCANS; decodes run in a bounded pool, and one still queued when its request
ends (504, or a client gone) never starts."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.requests import ClientDisconnect
from starlette.types import Message

from service.app import create_app
from service.codecs.decoding import DecodePool, decode_thread_count, unless_client_leaves
from service.codecs.image_cost import MAX_JPEG_SEGMENTS, check_upload
from service.errors import InvalidInput, TooLarge, UnsupportedMediaType
from service.settings import Settings

BUDGET = 24 * 4096 * 4096  # the default


def encoded(size: int, fmt: str = "JPEG", mode: str = "L", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 128).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def many_scan_jpeg(size: int, repeats: int) -> bytes:
    """A progressive JPEG whose last scan (a few bytes of entropy-coded data over a flat
    picture) is repeated `repeats` more times: libjpeg decodes every one over every pixel."""
    data = encoded(size, progressive=True)
    end = data.rindex(b"\xff\xd9")
    last_scan = data[data.rindex(b"\xff\xda", 0, end) : end]
    return data[:end] + last_scan * repeats + b"\xff\xd9"


def upload(data: bytes, name: str = "x.jpg") -> dict[str, object]:
    return {"files": [("images", (name, data, "application/octet-stream"))]}


def wait_for(condition: object, what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)  # polling a state, with a deadline


# --- counting -----------------------------------------------------------------------------------


def test_scans_are_counted_as_libjpeg_decodes_them() -> None:
    baseline = check_upload(encoded(64), "f", BUDGET)
    assert (baseline.format, baseline.width, baseline.height, baseline.scans) == ("JPEG", 64, 64, 1)
    gray = check_upload(encoded(64, progressive=True), "f", BUDGET)
    color = check_upload(encoded(64, mode="RGB", progressive=True), "f", BUDGET)
    assert gray.scans == 6 and color.scans == 10  # libjpeg's default progressions
    assert check_upload(many_scan_jpeg(64, 100), "f", BUDGET).scans == 106
    png = check_upload(encoded(40, "PNG"), "f", BUDGET)
    assert (png.format, png.width, png.height, png.scans) == ("PNG", 40, 40, 1)
    # Fill bytes and garbage between segments are skipped as libjpeg skips them.
    data = encoded(64, progressive=True)
    tables = data.index(b"\xff\xdb")
    padded = data[:2] + b"\xff" * 100_000 + data[2:tables] + b"junk" + data[tables:]
    assert check_upload(padded, "f", BUDGET).scans == 6


def test_the_budget_is_width_times_height_times_scans() -> None:
    data = encoded(64, progressive=True)  # 64 * 64 * 6
    assert check_upload(data, "f", 64 * 64 * 6).scans == 6
    with pytest.raises(TooLarge, match=r"f: would cost 64x64 pixels x at least 6 scans"):
        check_upload(data, "f", 64 * 64 * 6 - 1)
    with pytest.raises(TooLarge, match=r"VAE_MAX_UPLOAD_PIXEL_SCANS \(4095\)"):
        check_upload(encoded(64, "PNG"), "f", 64 * 64 - 1)


def test_a_segment_flood_is_refused() -> None:
    flood = b"\xff\xd8" + b"\xff\xfe\x00\x02" * (MAX_JPEG_SEGMENTS + 1) + b"\xff\xd9"
    with pytest.raises(TooLarge, match=f"more than {MAX_JPEG_SEGMENTS} JPEG marker segments"):
        check_upload(flood, "f", BUDGET)


def test_other_formats_are_named() -> None:
    with pytest.raises(UnsupportedMediaType, match="f: is a GIF file; send PNG or JPEG"):
        check_upload(encoded(8, "GIF"), "f", BUDGET)
    with pytest.raises(UnsupportedMediaType, match="f: is a BMP file; send PNG or JPEG"):
        check_upload(encoded(8, "BMP"), "f", BUDGET)
    with pytest.raises(InvalidInput, match="not a readable PNG or JPEG image"):
        check_upload(b"not an image at all", "f", BUDGET)


# --- through the service ------------------------------------------------------------------------


def test_the_scan_bomb_is_refused_before_decoding(model_dir: Path) -> None:
    bomb = many_scan_jpeg(4096, 5000)  # decoding it: 31 s and more of CPU
    settings = Settings(model_dir=model_dir, default_model="tiny-vae")
    with TestClient(create_app(settings)) as client:
        response = client.post("/encode", **upload(bomb, "bomb.jpg"))  # type: ignore[arg-type]
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert detail.startswith("images[0] (bomb.jpg): would cost 4096x4096 pixels x at least")
        assert "VAE_MAX_UPLOAD_PIXEL_SCANS (402653184)" in detail
        gif = client.post("/encode", **upload(encoded(28, "GIF"), "a.gif"))  # type: ignore[arg-type]
        assert gif.status_code == 415 and "send PNG or JPEG" in gif.json()["detail"]
        fine = client.post("/encode", **upload(encoded(28, progressive=True)))  # type: ignore[arg-type]
        assert fine.status_code == 200, fine.text


def test_the_budget_is_a_setting(model_dir: Path) -> None:
    settings = Settings(
        model_dir=model_dir, default_model="tiny-vae", max_upload_pixel_scans=28 * 28 * 5
    )
    with TestClient(create_app(settings)) as client:
        progressive = client.post("/encode", **upload(encoded(28, progressive=True)))  # type: ignore[arg-type]
        assert progressive.status_code == 413
        assert "VAE_MAX_UPLOAD_PIXEL_SCANS (3920)" in progressive.json()["detail"]
        assert client.post("/encode", **upload(encoded(28))).status_code == 200  # type: ignore[arg-type]


def test_a_queued_decode_is_cancelled_when_its_request_times_out(model_dir: Path) -> None:
    settings = Settings(
        model_dir=model_dir, default_model="tiny-vae", decode_threads=1, request_timeout_s=0.3
    )
    release = threading.Event()
    with TestClient(create_app(settings)) as client:
        pool: DecodePool = client.app.state.service.decode_pool  # type: ignore[attr-defined]
        assert pool.threads == 1
        # The pool's one thread is busy: the upload's decode queues behind it.
        busy = client.portal.start_task_soon(pool.run, release.wait)
        wait_for(lambda: pool.started == 1, "the blocking job to start")
        response = client.post("/encode", **upload(encoded(28)))  # type: ignore[arg-type]
        assert response.status_code == 504, response.text
        assert "VAE_REQUEST_TIMEOUT_S" in response.json()["detail"]
        release.set()
        assert busy.result(timeout=10) is True
        # A job queued after it has run: the upload's decode was dropped, not run.
        client.portal.call(pool.run, lambda: None)
        assert pool.started == 2
        # The pool serves uploads again.
        assert client.post("/encode", **upload(encoded(28))).status_code == 200  # type: ignore[arg-type]
        assert pool.started == 3


def test_a_queued_decode_is_cancelled_when_the_client_leaves() -> None:
    async def scenario() -> tuple[bool, int]:
        pool = DecodePool(1)
        release = threading.Event()
        gone = asyncio.Event()

        async def receive() -> Message:
            await gone.wait()
            return {"type": "http.disconnect"}

        busy = asyncio.ensure_future(pool.run(release.wait))
        while pool.started == 0:
            await asyncio.sleep(0.001)  # polling a state
        queued = asyncio.ensure_future(unless_client_leaves(receive, pool.run(lambda: None)))
        await asyncio.sleep(0)
        gone.set()
        left = False
        try:
            await queued
        except ClientDisconnect:
            left = True
        release.set()
        await busy
        await pool.run(lambda: None)  # queued after the abandoned one: it has been dropped
        pool.close()
        return left, pool.started

    assert asyncio.run(scenario()) == (True, 2)


def test_decode_threads_default_to_half_the_cores() -> None:
    assert decode_thread_count(3) == 3
    assert decode_thread_count(0) >= 1
