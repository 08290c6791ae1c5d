"""The playground (`/`) and the docs pages (`/docs`, `/redoc`) in headless Chromium.

Playwright for Python drives the system's Chromium (Debian's `chromium` package, or the one named
by VAE_CHROMIUM): no browser download. The service runs as a real process on 127.0.0.1 with the
bundled models; every request that would leave 127.0.0.1 is blocked and counted, so the pages are
proven to work with the network cut off. Screenshots go to test-artifacts/browser/ (not
committed), with the answer times each interaction measured (timings.json): printed, never
asserted. Skipped, saying why, only where Playwright or Chromium is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import reliability  # noqa: E402

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright missing: pip install -e '.[dev]'"
)

ARTIFACTS = Path(os.environ.get("VAE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
# Chromium's own background traffic (updates, sync, field trials) would leave the machine: off.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]


def chromium_path() -> str | None:
    named = os.environ.get("VAE_CHROMIUM")
    if named:
        return named
    for candidate in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: apt-get install chromium (or set VAE_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server() -> Iterator[reliability.Server]:
    with reliability.serve({"VAE_ACCESS_LOG": "false"}) as server:
        yield server


class Watched:
    """A page with what it logged as errors and every request that tried to leave 127.0.0.1."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.outside: list[str] = []
        page.on(
            "console",
            lambda m: self.console_errors.append(m.text) if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        # Watched, not intercepted: routing every request through Playwright would slow the
        # answers the playground times. Where there is no network, one leaving would also fail.
        page.on("request", self._seen)

    def _seen(self, request: Any) -> None:
        url = request.url
        if url.startswith("data:"):
            return
        # blob:http://127.0.0.1:PORT/... is memory of this page (a dropped file, say).
        if urlsplit(url.removeprefix("blob:")).hostname != "127.0.0.1":
            self.outside.append(url)

    def check_clean(self) -> None:
        assert self.console_errors == []
        assert self.outside == []

    def shot(self, name: str, full_page: bool = True) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield Watched(context.new_page())
    context.close()


def open_playground(watched: Watched, server: reliability.Server, model: str) -> Any:
    page = watched.page
    page.goto(f"{server.url}/?model={model}")
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    return page


def picture(page: Any, canvas_id: str) -> str:
    data: str = page.evaluate("id => document.getElementById(id).toDataURL()", canvas_id)
    return data


def brightness(page: Any, selector: str) -> float:
    """Mean pixel value (0-255) of a canvas: 0 while it is still black."""
    value: float = page.eval_on_selector(
        selector,
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i];
                  return s / (d.length / 4); }""",
    )
    return value


def changes(page: Any, canvas_id: str, before: str) -> None:
    page.wait_for_function(
        "([id, before]) => document.getElementById(id).toDataURL() !== before",
        arg=[canvas_id, before],
        timeout=5_000,
    )


def settle(page: Any) -> None:
    """Wait until the page has no work under way (requests, file decoding): the playground
    counts it in `window.playground.busy`."""
    page.wait_for_function("window.playground.busy === 0", timeout=10_000)


def draw(page: Any, strokes: list[list[tuple[float, float]]]) -> None:
    """Strokes in fractions of the pad's size, as a mouse would draw them."""
    box = page.locator("#draw-canvas").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()
    settle(page)


SEVEN = [[(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)]]
ZERO = [[(0.5, 0.2), (0.7, 0.35), (0.7, 0.65), (0.5, 0.8), (0.3, 0.65), (0.3, 0.35), (0.5, 0.2)]]
ONE = [[(0.5, 0.15), (0.5, 0.85)]]


def save_timings(page: Any, name: str) -> dict[str, dict[str, float]]:
    timings: list[dict[str, Any]] = page.evaluate("window.playground.timings")
    summary: dict[str, dict[str, float]] = {}
    for what in sorted({t["what"] for t in timings}):
        values = [t["ms"] for t in timings if t["what"] == what]
        summary[what] = {
            "count": len(values),
            "median_ms": round(statistics.median(values), 1),
            "max_ms": round(max(values), 1),
        }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}-timings.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{name} answer times: {summary}")
    return summary


def test_playground_draw_resample_map_generate_interpolate(
    watched: Watched, server: reliability.Server
) -> None:
    page = open_playground(watched, server, "mnist-vae-2d")
    info = page.inner_text("#model-info")
    assert "VAE" in info and "latent size 2" in info and "mnist" in info and "NLL" in info
    assert page.input_value("#model-select") == "mnist-vae-2d"
    models = page.eval_on_selector_all("#model-select option", "os => os.map(o => o.value)")
    assert {"mnist-vae", "mnist-vae-2d", "mnist-ae", "fashion-vae"} <= set(models)

    # Draw: the model's input and the reconstruction appear.
    assert brightness(page, "#recon-canvas") == 0
    draw(page, SEVEN)
    assert brightness(page, "#input-canvas") > 10
    assert brightness(page, "#recon-canvas") > 10
    first = picture(page, "recon-canvas")
    # More strokes: the reconstruction follows.
    draw(page, [[(0.35, 0.55), (0.65, 0.55)]])
    changes(page, "recon-canvas", first)

    # Sampled reconstructions: six, reproducible by seed, different between seeds.
    assert page.locator("#samples canvas").count() == 6

    def samples() -> list[str]:
        return list(
            page.eval_on_selector_all("#samples canvas", "cs => cs.map(c => c.toDataURL())")
        )

    page.fill("#seed-input", "1")
    page.dispatch_event("#seed-input", "change")
    settle(page)
    seed_1 = samples()
    assert len(set(seed_1)) > 1  # six different draws of eps
    page.click("#resample-btn")
    settle(page)
    assert page.input_value("#seed-input") == "2"
    seed_2 = samples()
    assert seed_2 != seed_1
    page.fill("#seed-input", "1")
    page.dispatch_event("#seed-input", "change")
    settle(page)
    assert samples() == seed_1

    # The latent map: the test set's points in colour, the drawing as a marker, and a live
    # decoded preview of the point under the pointer.
    assert page.locator("#map-legend li").count() == 10
    colours = page.eval_on_selector(
        "#map-canvas",
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  const seen = new Set();
                  for (let i = 0; i < d.length; i += 4)
                    if (Math.abs(d[i] - d[i + 1]) > 40 || Math.abs(d[i + 1] - d[i + 2]) > 40)
                      seen.add(d[i] >> 5 << 6 | d[i + 1] >> 5 << 3 | d[i + 2] >> 5);
                  return seen.size; }""",
    )
    assert colours >= 8  # ten labels' colours (blended where points overlap)
    box = page.locator("#map-canvas").bounding_box()
    previews = []
    for fx, fy in [(0.3, 0.3), (0.7, 0.7), (0.5, 0.2)]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=4)
        settle(page)
        assert brightness(page, "#map-preview") > 5
        previews.append(picture(page, "map-preview"))
        assert page.inner_text("#map-z").startswith("decode(z = [")
    assert len(set(previews)) == 3
    # The keyboard moves the point too.
    page.focus("#map-canvas")
    before = picture(page, "map-preview")
    for _ in range(6):
        page.keyboard.press("ArrowRight")
    settle(page)
    changes(page, "map-preview", before)

    # Generate: a grid of prior samples, reproducible by seed.
    page.select_option("#gen-n", "16")
    page.fill("#gen-seed", "5")
    page.click("#gen-btn")
    settle(page)
    grid = page.eval_on_selector("#gen-canvas", "c => [c.width, c.height]")
    assert grid == [4 * 28, 4 * 28]
    assert brightness(page, "#gen-canvas") > 10
    generated = picture(page, "gen-canvas")
    page.fill("#gen-seed", "6")
    page.click("#gen-btn")
    settle(page)
    assert picture(page, "gen-canvas") != generated

    # Interpolate between the seven and a zero.
    page.click("#interp-set-a")
    page.click("#clear-btn")
    settle(page)
    assert brightness(page, "#recon-canvas") == 0  # a cleared pad has no reconstruction
    draw(page, ZERO)
    page.click("#interp-set-b")
    settle(page)
    strip = page.eval_on_selector("#interp-canvas", "c => [c.width, c.height]")
    assert strip == [10 * 28, 28]
    assert brightness(page, "#interp-canvas") > 10

    watched.shot("playground-mnist-vae-2d")
    save_timings(page, "playground")
    watched.check_clean()


def test_playground_explains_what_an_ae_cannot_do(
    watched: Watched, server: reliability.Server
) -> None:
    page = open_playground(watched, server, "mnist-ae")
    assert "AE" in page.inner_text("#model-info")
    assert page.is_visible("#ae-note") and not page.is_visible("#sampled-block")
    assert page.is_visible("#generate-note") and page.is_disabled("#gen-btn")
    assert "2-D latent space" in page.inner_text("#map-note")
    assert not page.is_visible("#map-canvas")  # no empty map for a 4-D or 16-D latent space
    draw(page, ONE)
    assert brightness(page, "#recon-canvas") > 10
    assert page.locator("#latent-bars").is_visible()
    # Switching to a VAE brings the sampled row back, and its samples.
    page.select_option("#model-select", "mnist-vae")
    settle(page)
    assert page.is_visible("#sampled-block") and page.locator("#samples canvas").count() == 6
    assert not page.is_disabled("#gen-btn") and brightness(page, "#gen-canvas") > 10
    watched.shot("playground-mnist-ae-then-vae")
    watched.check_clean()


def test_playground_uploads_an_image_file(
    watched: Watched, server: reliability.Server, tmp_path: Path
) -> None:
    from PIL import Image, ImageDraw

    # Dark ink on white paper, off-centre, as a phone photo of a digit would be.
    image = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(image).line([(40, 40), (40, 160)], fill="black", width=14)
    image.save(tmp_path / "one.png")
    page = open_playground(watched, server, "mnist-vae")
    page.set_input_files("#upload-input", str(tmp_path / "one.png"))
    settle(page)
    assert brightness(page, "#input-canvas") > 5  # inverted to bright-on-dark and centred
    assert brightness(page, "#recon-canvas") > 5
    watched.check_clean()


def test_playground_fits_a_phone_and_is_keyboard_reachable(
    browser: Any, server: reliability.Server
) -> None:
    context = browser.new_context(
        viewport={"width": 375, "height": 812}, has_touch=True, is_mobile=True
    )
    watched = Watched(context.new_page())
    page = open_playground(watched, server, "mnist-vae-2d")
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways on a phone: {width} px wide"
    # A finger on the pad draws too.
    box = page.locator("#draw-canvas").bounding_box()
    assert box["width"] <= 375
    page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    settle(page)
    assert brightness(page, "#input-canvas") > 0
    watched.shot("playground-phone")
    context.close()

    # Every control is reachable with Tab.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(context.new_page())
    page = open_playground(watched, server, "mnist-vae-2d")
    reached = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    wanted = {
        "model-select",
        "draw-canvas",
        "clear-btn",
        "upload-input",
        "seed-input",
        "resample-btn",
        "map-canvas",
        "gen-n",
        "gen-seed",
        "gen-temp",
        "gen-btn",
        "interp-set-a",
        "interp-set-b",
    }
    assert wanted <= set(reached), wanted - set(reached)
    watched.check_clean()
    context.close()


def test_playground_asks_for_the_api_key(browser: Any) -> None:
    with reliability.serve({"VAE_ACCESS_LOG": "false", "VAE_API_KEYS": "sesame"}) as server:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(f"{server.url}/?model=mnist-vae")
        page.wait_for_selector("body[data-ready=true]")
        assert "401" in page.inner_text("#status") and "API key" in page.inner_text("#status")
        assert page.evaluate("document.getElementById('key-box').open")
        page.fill("#api-key", "sesame")
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.getElementById('model-select').options.length > 0")
        settle(page)
        assert page.inner_text("#status") == ""
        assert "VAE" in page.inner_text("#model-info")
        context.close()


def test_docs_render_offline(watched: Watched, server: reliability.Server) -> None:
    page = watched.page
    spec = page.request.get(f"{server.url}/openapi.json").json()
    operations = sum(len(methods) for methods in spec["paths"].values())

    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    assert page.locator(".opblock").count() == operations
    assert "Unable to render this definition" not in page.content()
    assert page.locator(".opblock-summary-path[data-path='/encode']").count() == 1
    watched.shot("docs-swagger-ui", full_page=False)

    page.goto(f"{server.url}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", timeout=20_000)
    assert page.locator("[data-section-id^='operation/']").count() == operations
    watched.shot("docs-redoc", full_page=False)
    watched.check_clean()
