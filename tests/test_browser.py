"""The playground (`/`) and the docs pages (`/docs`, `/redoc`) in headless Chromium.

Playwright for Python drives the system's Chromium (Debian's `chromium` package, or the one named
by VAE_CHROMIUM): no browser download. The service runs as a real process on 127.0.0.1 with the
bundled models; every request that would leave 127.0.0.1 is blocked and counted, so the pages are
proven to work with the network cut off. Screenshots go to test-artifacts/browser/ (not
committed), with the answer times each interaction measured (timings.json): printed, never
asserted. Skipped, saying why, only where Playwright or Chromium is missing.

The tests wait on the page's own state, never on time, so a busy machine only makes them slower:
`window.playground` counts the work under way (`busy`), the strokes and taps finished on the
drawing pad (`strokes`) and the service's answers painted (`answers`). Every action waits for
its effect: an answer painted after it, a stroke counted, a canvas changed, the focus moved.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
from collections.abc import Callable, Iterator
from functools import partial
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
# How long any wait may last before the test fails: a bound for a page that is stuck, not a
# synchronisation (every wait ends as soon as the page's state says so). Generous, for machines
# whose cores are all taken by other work.
PATIENCE_MS = 90_000


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
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, timeout=PATIENCE_MS
        )
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


def new_context(browser: Any, **options: Any) -> Any:
    """A browser context (a desktop window unless told otherwise) whose waits give up only
    after PATIENCE_MS."""
    options.setdefault("viewport", {"width": 1280, "height": 900})
    context = browser.new_context(**options)
    context.set_default_timeout(PATIENCE_MS)
    return context


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    context = new_context(browser)
    yield Watched(context.new_page())
    context.close()


def open_playground(watched: Watched, server: reliability.Server, model: str) -> Any:
    page = watched.page
    page.goto(f"{server.url}/?model={model}")
    page.wait_for_selector("body[data-ready=true]")
    settle(page)
    return page


def picture(page: Any, canvas_id: str) -> str:
    data: str = page.evaluate("id => document.getElementById(id).toDataURL()", canvas_id)
    return data


# Mean red value (0-255) of a canvas: 0 while it is black. The canvases are grey, red is enough.
MEAN = """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                 let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i];
                 return s / (d.length / 4); }"""


def brightness(page: Any, selector: str) -> float:
    """Mean pixel value (0-255) of a canvas: 0 while it is still black."""
    value: float = page.eval_on_selector(selector, MEAN)
    return value


def settle(page: Any) -> None:
    """Wait until the page has no work under way (requests, file decoding)."""
    page.wait_for_selector("body[data-state=idle]", state="attached")


def answered(page: Any, action: Callable[[], object]) -> None:
    """Do `action` on an idle page, then wait until an answer of the service to it has been
    painted and nothing else is under way. An answer counted after an idle start can only come
    from the action, so this holds however late the browser handles the action's events."""
    settle(page)
    before = page.evaluate("window.playground.answers")
    action()
    page.wait_for_function(
        "n => window.playground.answers > n && window.playground.busy === 0", arg=before
    )


def stroked(page: Any, action: Callable[[], object], strokes: int = 1) -> None:
    """Do `action` (pointer input on the drawing pad), then wait until the pad has counted its
    `strokes` strokes or taps as finished and the answer to the drawing has been painted."""
    settle(page)
    wanted = page.evaluate("window.playground.strokes") + strokes
    action()
    page.wait_for_function(
        "n => window.playground.strokes === n && window.playground.busy === 0", arg=wanted
    )


def draw(page: Any, strokes: list[list[tuple[float, float]]]) -> None:
    """Strokes in fractions of the pad's size, as a mouse would draw them."""
    box = page.locator("#draw-canvas").bounding_box()

    def move_mouse() -> None:
        for stroke in strokes:
            x, y = stroke[0]
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
            page.mouse.up()

    stroked(page, move_mouse, strokes=len(strokes))


def wait_brightness(page: Any, selector: str, test: str) -> None:
    """Wait until a canvas's mean brightness `b` passes `test` (JavaScript, say "b > 0")."""
    page.wait_for_function(
        f"s => {{ const b = ({MEAN})(document.querySelector(s)); return {test}; }}",
        arg=selector,
    )


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
    assert picture(page, "recon-canvas") != first

    # Sampled reconstructions: six, reproducible by seed, different between seeds.
    assert page.locator("#samples canvas").count() == 6

    def samples() -> list[str]:
        return list(
            page.eval_on_selector_all("#samples canvas", "cs => cs.map(c => c.toDataURL())")
        )

    def pick_seed(seed: str) -> None:
        page.fill("#seed-input", seed)
        page.dispatch_event("#seed-input", "change")

    answered(page, lambda: pick_seed("1"))
    seed_1 = samples()
    assert len(set(seed_1)) > 1  # six different draws of eps
    answered(page, lambda: page.click("#resample-btn"))
    assert page.input_value("#seed-input") == "2"
    seed_2 = samples()
    assert seed_2 != seed_1
    answered(page, lambda: pick_seed("1"))
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
        # One pointer event, straight onto the point: its decoded answer is the one painted.
        x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
        answered(page, partial(page.mouse.move, x, y))
        assert brightness(page, "#map-preview") > 5
        previews.append(picture(page, "map-preview"))
        assert page.inner_text("#map-z").startswith("decode(z = [")
    assert len(set(previews)) == 3
    # The keyboard moves the point too: each press is decoded.
    page.focus("#map-canvas")
    before = picture(page, "map-preview")
    for _ in range(6):
        answered(page, lambda: page.keyboard.press("ArrowRight"))
    assert picture(page, "map-preview") != before

    # Generate: a grid of prior samples, reproducible by seed.
    answered(page, lambda: page.select_option("#gen-n", "16"))
    page.fill("#gen-seed", "5")
    answered(page, lambda: page.click("#gen-btn"))
    grid = page.eval_on_selector("#gen-canvas", "c => [c.width, c.height]")
    assert grid == [4 * 28, 4 * 28]
    assert brightness(page, "#gen-canvas") > 10
    generated = picture(page, "gen-canvas")
    page.fill("#gen-seed", "6")
    answered(page, lambda: page.click("#gen-btn"))
    assert picture(page, "gen-canvas") != generated

    # Interpolate between the seven and a zero.
    page.click("#interp-set-a")
    wait_brightness(page, "#interp-a", "b > 10")
    page.click("#clear-btn")
    wait_brightness(page, "#input-canvas", "b === 0")
    settle(page)
    assert brightness(page, "#recon-canvas") == 0  # a cleared pad has no reconstruction
    draw(page, ZERO)
    answered(page, lambda: page.click("#interp-set-b"))
    strip = page.eval_on_selector("#interp-canvas", "c => [c.width, c.height]")
    assert strip == [10 * 28, 28]
    assert brightness(page, "#interp-canvas") > 10

    watched.shot("playground-mnist-vae-2d")
    save_timings(page, "playground")
    watched.check_clean()


# --- how unusual is it: the score panel and the heat map (/score) ---------------------------------

# Strokes from corner to corner and across: nothing like a digit.
SCRIBBLE = [
    [(0.1, 0.1), (0.9, 0.9)],
    [(0.9, 0.1), (0.1, 0.9)],
    [(0.1, 0.5), (0.9, 0.5)],
    [(0.5, 0.1), (0.5, 0.9)],
]


def score_panel(page: Any) -> dict[str, Any]:
    """What the score panel shows: the verdict, whether it calls the drawing an outlier
    (`outlier`: "true", "false", "unknown", or "" on a blank pad), the meter's percentile
    (None while hidden), the score line, the note (None while hidden) and the small print."""
    shown: dict[str, Any] = page.evaluate(
        """() => { const $ = (id) => document.getElementById(id);
                   const visible = (id) => !$(id).hidden;
                   return {outlier: $('score-panel').dataset.outlier,
                           verdict: $('score-verdict').textContent,
                           percentile: visible('score-meter-box')
                             ? Number($('score-meter').getAttribute('aria-valuenow')) : null,
                           threshold_at: $('score-threshold').style.left,
                           line: $('score-line').textContent,
                           note: visible('score-note') ? $('score-note').textContent : null,
                           parts: $('score-parts').textContent}; }"""
    )
    return shown


# How many pixels of a canvas are not black.
LIT = """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] || d[i + 1] || d[i + 2]) n++;
                return n; }"""


def test_playground_scores_the_drawing_and_maps_its_error(
    watched: Watched, server: reliability.Server
) -> None:
    page = open_playground(watched, server, "mnist-vae")
    # A blank pad: nothing to score, a black heat map.
    blank = score_panel(page)
    assert blank["outlier"] == "" and blank["verdict"].startswith("Draw something")
    assert blank["percentile"] is None and blank["parts"] == ""
    assert page.eval_on_selector("#heat-canvas", LIT) == 0

    # A seven: typical of MNIST, with its percentile among the held-out images, the threshold
    # marked where 1 % of them score above it, and the parts in small print.
    draw(page, SEVEN)
    seven = score_panel(page)
    assert seven["outlier"] == "false", seven
    assert seven["verdict"].startswith("Looks like what the model was trained on"), seven
    assert "held-out mnist images" in seven["verdict"]
    assert 0 <= seven["percentile"] < 99, seven
    assert f"{seven['percentile']:.1f}\N{NO-BREAK SPACE}%" in seven["verdict"]
    assert seven["threshold_at"] == "99%"
    manifest = json.loads((ROOT / "models" / "mnist-vae" / "manifest.json").read_text())
    threshold = manifest["score_calibration"]["threshold"]
    assert "complexity_residual" in seven["line"]
    assert f"outlier above {threshold:.1f}" in seven["line"]
    assert seven["note"] is None
    for part in ("nll, k = 8, seed 0", "ELBO", "KL", "reconstruction error"):
        assert part in seven["parts"], (part, seven["parts"])
    # The heat map is lit where the drawing is, and black far from it.
    assert page.eval_on_selector("#heat-canvas", LIT) > 0
    ink = ink_box(page, "#input-canvas")
    heat = ink_box(page, "#heat-canvas")  # red, yellow and white all have red over half
    assert heat["right"] >= 0, heat
    assert heat["left"] >= ink["left"] - 2 and heat["right"] <= ink["right"] + 2, (heat, ink)
    assert heat["top"] >= ink["top"] - 2 and heat["bottom"] <= ink["bottom"] + 2, (heat, ink)
    assert rgb(page, "#heat-canvas", 0, 0) == [0, 0, 0]
    # In the colours of the service's own PNG heat map of the same image, pixel for pixel.
    difference = page.evaluate(
        """async () => {
             const response = await fetch('/score', {method: 'POST',
               headers: {'Content-Type': 'application/json', 'Accept': 'image/png'},
               body: JSON.stringify({model: 'mnist-vae', images: [Array.from(state.input)],
                                     per_pixel: true, seed: 0})});
             const bitmap = await createImageBitmap(await response.blob());
             const c = document.createElement('canvas');
             c.width = bitmap.width; c.height = bitmap.height;
             c.getContext('2d').drawImage(bitmap, 0, 0);
             const theirs = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             const heat = document.getElementById('heat-canvas');
             const ours = heat.getContext('2d').getImageData(0, 0, heat.width, heat.height).data;
             if (theirs.length !== ours.length) return -1;
             let most = 0;
             for (let i = 0; i < ours.length; i++)
               most = Math.max(most, Math.abs(ours[i] - theirs[i]));
             return most; }"""
    )
    assert 0 <= difference <= 1, difference
    watched.shot("playground-score-seven")

    # The seed is fixed: the same drawing again gives the same numbers.
    page.click("#clear-btn")
    wait_brightness(page, "#input-canvas", "b === 0")
    settle(page)
    cleared = score_panel(page)
    assert {k: cleared[k] for k in ("outlier", "verdict", "percentile", "parts", "note")} == {
        k: blank[k] for k in ("outlier", "verdict", "percentile", "parts", "note")
    }
    assert page.eval_on_selector("#heat-canvas", LIT) == 0
    draw(page, SEVEN)
    assert score_panel(page) == seven

    # A scribble is an outlier, beyond every held-out image.
    draw(page, SCRIBBLE)
    scribble = score_panel(page)
    assert scribble["outlier"] == "true", scribble
    assert scribble["verdict"].startswith("Unusual: an outlier"), scribble
    assert "than all of the model's 5,000 held-out mnist images" in scribble["verdict"]
    assert scribble["percentile"] == 100
    assert page.eval_on_selector("#heat-canvas", LIT) > 0
    watched.shot("playground-score-scribble")
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
    # An AE is scored by its reconstruction error alone: no likelihood, no seed.
    shown = score_panel(page)
    assert shown["outlier"] in ("true", "false") and shown["percentile"] is not None, shown
    assert "reconstruction_error" in shown["line"], shown
    assert shown["parts"].startswith("reconstruction error ") and "nll" not in shown["parts"]
    assert "ELBO" not in shown["parts"] and "seed" not in shown["parts"], shown
    assert page.eval_on_selector("#heat-canvas", LIT) > 0
    # Switching to a VAE brings the sampled row back, and its samples.
    answered(page, lambda: page.select_option("#model-select", "mnist-vae"))
    assert page.is_visible("#sampled-block") and page.locator("#samples canvas").count() == 6
    assert not page.is_disabled("#gen-btn") and brightness(page, "#gen-canvas") > 10
    watched.shot("playground-mnist-ae-then-vae")
    watched.check_clean()


def test_playground_uploads_an_image_file(
    watched: Watched, server: reliability.Server, tmp_path: Path
) -> None:
    from PIL import Image, ImageDraw, ImageStat

    # Dark ink on white paper, off-centre, as a phone photo of a digit would be.
    image = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(image).line([(40, 40), (40, 160)], fill="black", width=14)
    image.save(tmp_path / "one.png")
    page = open_playground(watched, server, "mnist-vae")
    answered(page, lambda: page.set_input_files("#upload-input", str(tmp_path / "one.png")))
    assert brightness(page, "#input-canvas") > 5  # inverted to bright-on-dark and centred
    assert brightness(page, "#recon-canvas") > 5
    # On the pad (280 x 280, the picture fitted as 280 x 187): the paper inverted to black, the
    # stroke bright, and the letterbox above and below left black, not inverted to white.
    assert pixel(page, "#draw-canvas", 140, 10) == 0
    assert pixel(page, "#draw-canvas", 250, 140) == 0
    assert pixel(page, "#draw-canvas", 37, 140) > 200
    # A bright garment filling a dark frame (brighter than mid-grey on the whole) is already
    # bright-on-dark: its border is dark, so it is drawn as it is.
    garment = Image.new("RGB", (280, 280), "black")
    ImageDraw.Draw(garment).rectangle([(50, 0), (229, 279)], fill=(230, 230, 230))
    assert ImageStat.Stat(garment.convert("L")).mean[0] > 127
    garment.save(tmp_path / "trousers.png")
    answered(page, lambda: page.set_input_files("#upload-input", str(tmp_path / "trousers.png")))
    assert pixel(page, "#draw-canvas", 140, 140) == 230
    assert pixel(page, "#draw-canvas", 20, 140) == 0
    watched.check_clean()


def pixel(page: Any, selector: str, x: int, y: int) -> int:
    """The red value (0-255) of one pixel of a canvas."""
    value: int = page.eval_on_selector(
        selector, "(c, [x, y]) => c.getContext('2d').getImageData(x, y, 1, 1).data[0]", [x, y]
    )
    return value


PAD = 280  # the drawing pad's own pixels, square
BRUSH = 22  # the pad's brush, in its pixels: a tap leaves a disc this wide
DOT = math.pi * (BRUSH / 2) ** 2  # a dot's area, pixels


def tap_pad(page: Any, kind: str, fx: float, fy: float) -> tuple[float, float]:
    """Press and lift a `kind` pointer ("mouse", "pen" or "touch") at one point of the drawing
    pad, given in fractions of its size, with no move between; wait until the pad has counted
    the tap and the answer to the drawing is painted. Returns the point in the pad's pixels."""
    box = page.locator("#draw-canvas").bounding_box()
    x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    def tap() -> None:
        if kind == "touch":
            page.touchscreen.tap(x, y)
        elif kind == "mouse":
            page.mouse.click(x, y)
        else:
            # Playwright has no pen; Chromium's DevTools protocol sends one as a mouse event
            # with pointerType "pen".
            session = page.context.new_cdp_session(page)
            for event, buttons in (("mousePressed", 1), ("mouseReleased", 0)):
                pen = {"pointerType": "pen", "button": "left", "buttons": buttons, "clickCount": 1}
                session.send("Input.dispatchMouseEvent", {"type": event, "x": x, "y": y, **pen})
            session.detach()

    stroked(page, tap)
    return fx * PAD, fy * PAD


def pad_ink(page: Any) -> dict[str, float]:
    """What is drawn on the pad: `lit` pixels (over half bright), their bounding box
    (`left`, `top`, `right`, `bottom`) and its centre (`x`, `y`), in the pad's pixels."""
    ink: dict[str, float] = page.eval_on_selector(
        "#draw-canvas",
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let lit = 0, left = c.width, top = c.height, right = -1, bottom = -1;
                  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
                    if (d[4 * (y * c.width + x)] <= 127) continue;
                    lit++; left = Math.min(left, x); right = Math.max(right, x);
                    top = Math.min(top, y); bottom = Math.max(bottom, y); }
                  return {lit, left, top, right, bottom,
                          x: (left + right + 1) / 2, y: (top + bottom + 1) / 2}; }""",
    )
    return ink


def assert_one_dot(page: Any, at: tuple[float, float]) -> None:
    """The pad holds one dot, BRUSH wide, centred on `at`, as a pen tapped on paper leaves."""
    ink = pad_ink(page)
    assert 0.8 * DOT < ink["lit"] < 1.2 * DOT, ink
    assert BRUSH - 3 <= ink["right"] - ink["left"] + 1 <= BRUSH + 1, ink
    assert BRUSH - 3 <= ink["bottom"] - ink["top"] + 1 <= BRUSH + 1, ink
    assert abs(ink["x"] - at[0]) <= 1.5 and abs(ink["y"] - at[1]) <= 1.5, (ink, at)


@pytest.mark.parametrize("kind", ["mouse", "pen", "touch"])
def test_a_tap_on_the_pad_draws_a_dot_that_is_reconstructed(
    browser: Any, server: reliability.Server, kind: str
) -> None:
    context = new_context(browser, has_touch=True)
    watched = Watched(context.new_page())
    page = open_playground(watched, server, "mnist-vae")
    page.eval_on_selector(
        "#draw-canvas",
        "c => { window.pointerKinds = [];"
        " c.addEventListener('pointerdown', e => window.pointerKinds.push(e.pointerType)); }",
    )
    answers = page.evaluate("window.playground.answers")
    at = tap_pad(page, kind, 0.3, 0.6)
    assert page.evaluate("window.pointerKinds") == [kind]  # the pointer the test meant
    assert_one_dot(page, at)
    # Encoded and reconstructed like any stroke.
    assert page.evaluate("window.playground.answers") > answers
    assert brightness(page, "#input-canvas") > 10
    assert brightness(page, "#recon-canvas") > 0
    assert page.locator("#samples canvas").count() == 6
    # A second tap elsewhere is a second dot, not a line from the first.
    tap_pad(page, kind, 0.7, 0.3)
    assert page.evaluate("window.playground.strokes") == 2
    assert 1.6 * DOT < pad_ink(page)["lit"] < 2.4 * DOT
    watched.shot(f"playground-tap-{kind}")
    watched.check_clean()
    context.close()


def test_playground_fits_a_phone_and_is_keyboard_reachable(
    browser: Any, server: reliability.Server
) -> None:
    context = new_context(
        browser, viewport={"width": 375, "height": 812}, has_touch=True, is_mobile=True
    )
    watched = Watched(context.new_page())
    page = open_playground(watched, server, "mnist-vae-2d")
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways on a phone: {width} px wide"
    # A finger tapping the pad leaves a dot, and the dot is reconstructed.
    box = page.locator("#draw-canvas").bounding_box()
    assert box["width"] <= 375
    at = tap_pad(page, "touch", 0.5, 0.5)
    assert_one_dot(page, at)
    assert brightness(page, "#input-canvas") > 0
    assert brightness(page, "#recon-canvas") > 0
    # The page did not scroll or zoom under the finger.
    assert page.evaluate("[window.scrollX, window.visualViewport.scale]") == [0, 1]
    watched.shot("playground-phone")
    watched.check_clean()
    context.close()

    # Every control is reachable with Tab.
    context = new_context(browser)
    watched = Watched(context.new_page())
    page = open_playground(watched, server, "mnist-vae-2d")
    reached = []
    for _ in range(40):
        focused = page.evaluate_handle("document.activeElement")
        page.keyboard.press("Tab")
        page.wait_for_function("before => document.activeElement !== before", arg=focused)
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
        context = new_context(browser)
        page = context.new_page()
        page.goto(f"{server.url}/?model=mnist-vae")
        page.wait_for_selector("body[data-ready=true]")
        settle(page)
        assert "401" in page.inner_text("#status") and "API key" in page.inner_text("#status")
        assert page.evaluate("document.getElementById('key-box').open")
        assert page.locator("#model-select option").count() == 0

        def give_key() -> None:
            page.fill("#api-key", "sesame")
            page.dispatch_event("#api-key", "change")

        answered(page, give_key)
        assert page.locator("#model-select option").count() >= 4
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


# --- models of other sizes and colours ------------------------------------------------------------
#
# Built as other frameworks write them (tests/foreign_models.py), with hand-written manifests:
# a 3 x 32 x 32 colour VAE, a 1 x 64 x 64 grayscale one, the same on a light background; and the
# bundled mnist-vae beside them, to switch between sizes.


def write_foreign_model(folder: Path, style_name: str, background: str = "dark") -> None:
    """An ONNX pair of `style_name` in `folder` with the manifest a person importing it would
    write (NCHW in and out)."""
    from service.manifest import Manifest, sha256sum
    from tests.foreign_models import LATENT, STYLES, export_style

    style = STYLES[style_name]
    encoder, decoder = export_style(style, folder)
    c, h, w = style.chw

    def spec(name: str, shape: list[int | str]) -> dict[str, Any]:
        return {"name": name, "dtype": "float32", "shape": shape}

    manifest = {
        "name": folder.name,
        "kind": style.kind,
        "latent_dim": LATENT,
        "description": f"{style_name} from tests/foreign_models.py (untrained)",
        "input": {
            "shape": [c, h, w],
            "dtype": "float32",
            "pixel_range": [0.0, 1.0],
            "preprocessing": {"resize": [h, w], "resample": "bilinear", "invert": False},
            "layout": "NCHW",
            "background": background,
        },
        "encoder": {
            "file": encoder.name,
            "sha256": sha256sum(encoder),
            "inputs": [spec(style.input_name, ["N", c, h, w])],
            "outputs": [spec(name, ["N", LATENT]) for name in style.encoder_outputs],
        },
        "decoder": {
            "file": decoder.name,
            "sha256": sha256sum(decoder),
            "inputs": [spec(style.decoder_input, ["N", LATENT])],
            "outputs": [spec(style.decoder_output, ["N", c, h, w])],
            "output_range": [0.0, 1.0],
        },
        "output": {"layout": "NCHW"},
        "latent": {
            "code_output": style.mean,
            "logvar_output": style.variance,
            "variance": style.variance_kind,
        },
        "opset": 17,
        "dataset": {"name": style_name},
    }
    Manifest.model_validate(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture(scope="module")
def foreign_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[reliability.Server]:
    pytest.importorskip("torch", reason="torch missing: the test models are exported with it")
    models = tmp_path_factory.mktemp("foreign-models")
    shutil.copytree(reliability.MODELS / "mnist-vae", models / "mnist-vae")
    write_foreign_model(models / "color-vae", "color_vae")
    write_foreign_model(models / "gray64-vae", "gray64_vae")
    write_foreign_model(models / "gray64-light", "gray64_vae", background="light")
    with reliability.serve({"VAE_ACCESS_LOG": "false"}, model_dir=models) as server:
        yield server


def size(page: Any, selector: str) -> list[int]:
    """A canvas's own pixels, [width, height]."""
    value: list[int] = page.eval_on_selector(selector, "c => [c.width, c.height]")
    return value


def rgb(page: Any, selector: str, x: int, y: int) -> list[int]:
    """The [red, green, blue] (0-255) of one pixel of a canvas."""
    value: list[int] = page.eval_on_selector(
        selector,
        "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3))",
        [x, y],
    )
    return value


def mean_rgb(page: Any, selector: str) -> list[float]:
    """The mean [red, green, blue] (0-255) of a canvas."""
    value: list[float] = page.eval_on_selector(
        selector,
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  const s = [0, 0, 0];
                  for (let i = 0; i < d.length; i += 4)
                    for (let k = 0; k < 3; k++) s[k] += d[i + k];
                  return s.map(v => v / (d.length / 4)); }""",
    )
    return value


def colourful(page: Any, selector: str) -> int:
    """How many pixels of a canvas are not grey (their channels differ)."""
    value: int = page.eval_on_selector(
        selector,
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0;
                  for (let i = 0; i < d.length; i += 4)
                    if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) n++;
                  return n; }""",
    )
    return value


def ink_box(page: Any, selector: str, light: bool = False) -> dict[str, float]:
    """The bounding box (`left`, `top`, `right`, `bottom`) and centre (`x`, `y`) of what is
    drawn on a canvas: pixels over half bright, or under half on a `light` background."""
    box: dict[str, float] = page.eval_on_selector(
        selector,
        """(c, light) => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let left = c.width, top = c.height, right = -1, bottom = -1;
                  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
                    const v = d[4 * (y * c.width + x)];
                    if (light ? v >= 128 : v <= 127) continue;
                    left = Math.min(left, x); right = Math.max(right, x);
                    top = Math.min(top, y); bottom = Math.max(bottom, y); }
                  return {left, top, right, bottom,
                          x: (left + right + 1) / 2, y: (top + bottom + 1) / 2}; }""",
        light,
    )
    return box


def centre_of_mass(page: Any, selector: str, light: bool = False) -> tuple[float, float]:
    """Where the ink of a canvas balances, in its pixels, each pixel counted at its index (as
    MNIST's preparation counts them: the centre of a 64-pixel side is 31.5)."""
    x, y = page.eval_on_selector(
        selector,
        """(c, light) => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let m = 0, mx = 0, my = 0;
                  for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) {
                    const v = d[4 * (y * c.width + x)] / 255, ink = light ? 1 - v : v;
                    m += ink; mx += ink * x; my += ink * y; }
                  return [mx / m, my / m]; }""",
        light,
    )
    return x, y


def pick(page: Any, model: str) -> None:
    """Switch the page to `model` and wait until its answers are painted."""
    answered(page, lambda: page.select_option("#model-select", model))


MODEL_CANVASES = [
    "#input-canvas",
    "#recon-canvas",
    "#heat-canvas",
    "#map-preview",
    "#interp-a",
    "#interp-b",
]


def test_playground_follows_a_64x64_grayscale_model(
    watched: Watched, foreign_server: reliability.Server
) -> None:
    page = open_playground(watched, foreign_server, "gray64-vae")
    assert "64 \N{MULTIPLICATION SIGN} 64" in page.inner_text("#input-caption")
    assert not page.is_visible("#brush-colour")  # grayscale: white ink, as in MNIST
    assert size(page, "#draw-canvas") == [PAD, PAD]
    for canvas in MODEL_CANVASES:
        assert size(page, canvas) == [64, 64], canvas
    draw(page, SEVEN)
    assert brightness(page, "#input-canvas") > 10
    assert brightness(page, "#recon-canvas") > 10
    # MNIST's preparation at 64 x 64: the strokes fitted to 20/28 of the frame (46 pixels) and
    # placed near its centre.
    ink = ink_box(page, "#input-canvas")
    extent = max(ink["right"] - ink["left"] + 1, ink["bottom"] - ink["top"] + 1)
    assert 43 <= extent <= 47, ink
    x, y = centre_of_mass(page, "#input-canvas")
    assert abs(x - 31.5) <= 1 and abs(y - 31.5) <= 1, (x, y)
    # Not calibrated: the service's note, reconstruction error as the score, no percentile and
    # no verdict; still the parts and the heat map, at the model's size.
    shown = score_panel(page)
    assert shown["outlier"] == "unknown" and shown["percentile"] is None, shown
    assert "not calibrated" in shown["verdict"], shown
    assert "has no score calibration" in shown["note"], shown
    assert shown["line"].startswith("Score ") and "reconstruction_error" in shown["line"]
    assert "nll, k = 8, seed 0" in shown["parts"], shown
    assert page.eval_on_selector("#heat-canvas", LIT) > 0
    assert page.locator("#samples canvas").count() == 6
    samples = page.eval_on_selector_all("#samples canvas", "cs => cs.map(c => [c.width, c.height])")
    assert samples == [[64, 64]] * 6
    answered(page, lambda: page.select_option("#gen-n", "16"))
    assert size(page, "#gen-canvas") == [4 * 64, 4 * 64]
    assert brightness(page, "#gen-canvas") > 10
    page.click("#interp-set-a")
    wait_brightness(page, "#interp-a", "b > 10")
    page.click("#clear-btn")
    wait_brightness(page, "#input-canvas", "b === 0")
    draw(page, ZERO)
    answered(page, lambda: page.click("#interp-set-b"))
    assert size(page, "#interp-canvas") == [10 * 64, 64]
    watched.shot("playground-gray64")
    watched.check_clean()


def test_playground_follows_a_colour_model(
    watched: Watched, foreign_server: reliability.Server, tmp_path: Path
) -> None:
    from PIL import Image, ImageDraw

    page = open_playground(watched, foreign_server, "color-vae")
    assert "32 \N{MULTIPLICATION SIGN} 32, colour" in page.inner_text("#input-caption")
    assert size(page, "#draw-canvas") == [PAD, PAD]
    for canvas in MODEL_CANVASES:
        assert size(page, canvas) == [32, 32], canvas
    # A colour model's pad paints in the brush's colour, and the model sees it in colour.
    assert page.is_visible("#brush-colour")
    page.fill("#brush-colour", "#ff0000")
    draw(page, SEVEN)
    red, green, blue = mean_rgb(page, "#input-canvas")
    assert red > 10 and green < 1 and blue < 1, (red, green, blue)
    assert colourful(page, "#recon-canvas") > 0  # an RGB answer, painted as such
    assert page.locator("#samples canvas").count() == 6
    assert colourful(page, "#samples canvas >> nth=0") > 0
    answered(page, lambda: page.select_option("#gen-n", "16"))
    assert size(page, "#gen-canvas") == [4 * 32, 4 * 32]
    assert colourful(page, "#gen-canvas") > 0

    # Dropped pictures keep their colour, stretched over the pad as the service resizes them,
    # and are never inverted (invert=auto is the grayscale ink-on-paper rule), though a green
    # border is light (luminance 150 of 255).
    picture = Image.new("RGB", (300, 200), (0, 255, 0))
    ImageDraw.Draw(picture).rectangle([(100, 50), (199, 149)], fill=(0, 0, 255))
    picture.save(tmp_path / "green.png")
    answered(page, lambda: page.set_input_files("#upload-input", str(tmp_path / "green.png")))
    assert rgb(page, "#draw-canvas", 3, 3) == [0, 255, 0]
    assert rgb(page, "#draw-canvas", 140, 140) == [0, 0, 255]
    assert rgb(page, "#input-canvas", 0, 0) == [0, 255, 0]
    assert rgb(page, "#input-canvas", 16, 16) == [0, 0, 255]
    assert not page.is_visible("#drop-note")
    assert colourful(page, "#recon-canvas") > 0
    watched.shot("playground-color")
    watched.check_clean()


def test_playground_draws_dark_on_light_for_a_light_background_model(
    watched: Watched, foreign_server: reliability.Server, tmp_path: Path
) -> None:
    from PIL import Image, ImageDraw

    page = open_playground(watched, foreign_server, "gray64-light")
    assert pixel(page, "#draw-canvas", 5, 5) == 255  # white paper
    draw(page, SEVEN)
    assert pixel(page, "#draw-canvas", 5, 5) == 255
    assert pixel(page, "#input-canvas", 0, 0) == 255
    ink = ink_box(page, "#input-canvas", light=True)  # dark strokes, centred
    extent = max(ink["right"] - ink["left"] + 1, ink["bottom"] - ink["top"] + 1)
    assert 43 <= extent <= 47, ink
    # Dark ink on white paper is what this model takes: not inverted; a bright garment on a
    # dark frame is, and its letterbox is the model's white.
    image = Image.new("RGB", (300, 200), "white")
    ImageDraw.Draw(image).line([(40, 40), (40, 160)], fill="black", width=14)
    image.save(tmp_path / "one.png")
    answered(page, lambda: page.set_input_files("#upload-input", str(tmp_path / "one.png")))
    assert pixel(page, "#draw-canvas", 140, 10) == 255
    assert pixel(page, "#draw-canvas", 250, 140) == 255
    assert pixel(page, "#draw-canvas", 37, 140) < 50
    garment = Image.new("RGB", (200, 280), "black")
    ImageDraw.Draw(garment).rectangle([(50, 0), (149, 279)], fill=(230, 230, 230))
    garment.save(tmp_path / "trousers.png")
    answered(page, lambda: page.set_input_files("#upload-input", str(tmp_path / "trousers.png")))
    assert pixel(page, "#draw-canvas", 140, 140) == 25
    assert pixel(page, "#draw-canvas", 5, 140) == 255  # the letterbox
    watched.check_clean()


def test_playground_switches_between_model_sizes_without_a_reload(
    watched: Watched, foreign_server: reliability.Server
) -> None:
    page = open_playground(watched, foreign_server, "mnist-vae")
    page.evaluate("window.sameDocument = true")
    draw(page, SEVEN)
    page.click("#interp-set-a")
    wait_brightness(page, "#interp-a", "b > 10")
    page.click("#clear-btn")
    wait_brightness(page, "#input-canvas", "b === 0")
    draw(page, ONE)
    answered(page, lambda: page.click("#interp-set-b"))
    assert size(page, "#interp-canvas") == [10 * 28, 28]
    for model, side, colour in [
        ("gray64-vae", 64, False),
        ("color-vae", 32, True),
        ("gray64-light", 64, False),
        ("mnist-vae", 28, False),
    ]:
        pick(page, model)
        for canvas in MODEL_CANVASES:
            assert size(page, canvas) == [side, side], (model, canvas)
        # The drawing and both ends of the interpolation came along, at the new size.
        light = model == "gray64-light"
        ink = ink_box(page, "#input-canvas", light=light)
        assert ink["right"] >= 0, model
        for end in ("#interp-a", "#interp-b"):
            assert ink_box(page, end, light=light)["right"] >= 0, (model, end)
        assert size(page, "#interp-canvas") == [10 * side, side], model
        assert (
            page.eval_on_selector_all("#samples canvas", "cs => cs.map(c => [c.width, c.height])")
            == [[side, side]] * 6
        ), model
        assert size(page, "#gen-canvas") == [6 * side, 6 * side], model
        assert (colourful(page, "#gen-canvas") > 0) == colour, model
        assert page.is_visible("#brush-colour") == colour, model
        # The score is the new model's: calibrated (a percentile) only for mnist-vae.
        shown = score_panel(page)
        assert (shown["percentile"] is not None) == (model == "mnist-vae"), (model, shown)
        assert (shown["note"] is None) == (model == "mnist-vae"), (model, shown)
    assert page.evaluate("window.sameDocument") is True
    watched.check_clean()
