"""The comparison view (`/?compare=A,B`) in headless Chromium, as tests/test_browser.py drives
the playground: the service as a real process on the bundled models, no request leaving
127.0.0.1, waits on the page's own state (`window.playground`), screenshots in
test-artifacts/browser/ (compare-*.png) and the answer times in compare-timings.json."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest

from tests import test_browser
from tests.test_browser import (
    ONE,
    SEVEN,
    Watched,
    answered,
    brightness,
    draw,
    new_context,
    picture,
    reliability,
    save_timings,
    settle,
    tap_pad,
)

# The playground tests' fixtures: Chromium, a watched page, the service on the bundled models,
# and one on models of other sizes and colours.
browser = test_browser.browser
server = test_browser.server
foreign_server = test_browser.foreign_server
watched = test_browser.watched

AE, VAE = "mnist-ae-2d", "mnist-vae-2d"


def open_compare(watched: Watched, server: reliability.Server, names: str) -> Any:
    page = watched.page
    page.goto(f"{server.url}/?compare={names}")
    page.wait_for_selector("body[data-ready=true]")
    settle(page)
    return page


def darkest_near(page: Any, selector: str, x: float, y: float) -> int:
    """The darkest pixel (its brightest channel) within 2 pixels of (x, y) on a canvas: a thin
    anti-aliased line lies somewhere there."""
    value: int = page.eval_on_selector(
        selector,
        """(c, [x, y]) => { const d = c.getContext('2d').getImageData(x - 2, y - 2, 5, 5).data;
                            let least = 255;
                            for (let i = 0; i < d.length; i += 4)
                              least = Math.min(least, Math.max(d[i], d[i + 1], d[i + 2]));
                            return least; }""",
        [round(x), round(y)],
    )
    return value


def label_colours(page: Any, selector: str) -> int:
    """How many distinct saturated colours a map shows (the labels' colours, blended)."""
    seen: int = page.eval_on_selector(
        selector,
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  const seen = new Set();
                  for (let i = 0; i < d.length; i += 4)
                    if (Math.abs(d[i] - d[i + 1]) > 40 || Math.abs(d[i + 1] - d[i + 2]) > 40)
                      seen.add(d[i] >> 5 << 6 | d[i + 1] >> 5 << 3 | d[i + 2] >> 5);
                  return seen.size; }""",
    )
    return seen


def decode_bodies(watched: Watched) -> list[dict[str, Any]]:
    """Every /decode request the page sends from now on: its JSON body."""
    bodies: list[dict[str, Any]] = []
    watched.page.on(
        "request",
        lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/decode") else None,
    )
    return bodies


def test_compare_an_ae_and_a_vae_side_by_side(watched: Watched, server: reliability.Server) -> None:
    decodes = decode_bodies(watched)
    page = open_compare(watched, server, f"{AE},{VAE}")
    assert page.is_hidden("#compare-error")
    assert [page.input_value("#model-a"), page.input_value("#model-b")] == [AE, VAE]
    titles = page.eval_on_selector_all("#map-pair .side-title", "hs => hs.map(h => h.innerText)")
    assert titles[0].startswith(AE) and "AE, latent 2" in titles[0], titles
    assert titles[1].startswith(VAE) and "VAE, latent 2" in titles[1], titles
    explained = page.inner_text("#explain")
    for words in ("N(0, I)", "sigma = exp(logvar / 2)", "ReLU", "log2", "KL"):
        assert words in explained, words

    # The grid and the prior samples: one /decode per model, 225 grid points and 36 samples.
    batches = sorted((body["model"], len(body["z"])) for body in decodes if len(body["z"]) > 1)
    assert batches == [(AE, 225 + 36), (VAE, 225 + 36)]
    for side in "ab":
        assert page.eval_on_selector(f"#grid-{side}", "c => [c.width, c.height]") == [420, 420]
        assert brightness(page, f"#grid-{side}") > 10
        assert page.eval_on_selector(f"#gen-{side}", "c => [c.width, c.height]") == [168, 168]
        assert brightness(page, f"#gen-{side}") > 10

    # Both maps: the test set in ten colours, at the same scale and the same size on screen,
    # with the prior's 1-sigma and 2-sigma circles where the common axes put them.
    boxes = [page.locator(f"#map-{side}").bounding_box() for side in "ab"]
    assert boxes[0]["width"] == boxes[1]["width"] == boxes[0]["height"] > 200
    views = page.evaluate("state.views")
    assert views["a"] == views["b"]
    view = views["a"]
    for side in "ab":
        assert label_colours(page, f"#map-{side}") >= 8, side
        centre_x = 180 + (0 - view["cx"]) * view["scale"]
        centre_y = 180 + (view["cy"] - 0) * view["scale"]
        for radius in (1, 2):
            # Left of the centre, on the circle, away from the axes' grey: dark ink.
            x = centre_x - radius * view["scale"] * 0.6
            y = centre_y - radius * view["scale"] * 0.8
            assert darkest_near(page, f"#map-{side}", x, y) < 90, (side, radius)

    # Unticking "Same scale" fits each map to its own points: the VAE's are packed near 0.
    page.uncheck("#same-scale")
    views = page.evaluate("state.views")
    assert views["b"]["scale"] > views["a"]["scale"]
    watched.shot("compare-own-scales")
    page.check("#same-scale")
    assert page.evaluate("state.views.a.scale === state.views.b.scale")

    # A drawing: each model's deterministic reconstruction; the VAE's six sampled ones change
    # with the seed; the AE says it has nothing to sample.
    draw(page, SEVEN)
    for side in "ab":
        assert brightness(page, f"#recon-{side}") > 10
    assert "nothing to sample" in page.inner_text("#recon-pair .side:first-child .note")
    assert page.locator("#samples-a").count() == 0
    assert page.locator("#samples-b canvas").count() == 6
    assert "sigma = exp(logvar / 2)" in page.inner_text("#code-b")
    assert "no sigma" in page.inner_text("#code-a")
    codes = page.evaluate("[state.sides.a.code, state.sides.b.code]")
    assert codes[0]["sigma"] is None and all(s > 0 for s in codes[1]["sigma"])

    def strip() -> list[str]:
        return list(
            page.eval_on_selector_all("#samples-b canvas", "cs => cs.map(c => c.toDataURL())")
        )

    ae_recon, first = picture(page, "recon-a"), strip()
    answered(page, lambda: page.click("#resample-btn"))
    assert page.input_value("#seed-input") == "2" and strip() != first
    assert picture(page, "recon-a") == ae_recon  # nothing to sample: the same picture

    # The probe: the point under the pointer, decoded by both models at the same z.
    # hover(): the map scrolled into view and the pointer placed on it where it is at that
    # moment, however the answers before moved the page (a position measured earlier may miss).
    the_map = page.locator("#map-b")
    captions = []
    for fx, fy in [(0.5, 0.5), (0.3, 0.7)]:
        box = the_map.bounding_box()
        assert box is not None
        position = {"x": fx * box["width"], "y": fy * box["height"]}
        answered(page, partial(the_map.hover, position=position))
        caption = [page.inner_text(f"#probe-z-{side}") for side in "ab"]
        assert caption[0] == caption[1] and caption[0].startswith("decode(z = ["), caption
        captions.append(caption[0])
        assert brightness(page, "#probe-a") > 5 and brightness(page, "#probe-b") > 5
    assert captions[0] != captions[1]
    # The arrow keys move it too, on either map.
    page.focus("#map-a")
    before = page.evaluate("state.probe")
    for _ in range(3):
        answered(page, lambda: page.keyboard.press("ArrowUp"))
    after = page.evaluate("state.probe")
    assert after[0] == before[0] and after[1] > before[1]
    assert page.inner_text("#probe-z-a") == page.inner_text("#probe-z-b")

    # New prior samples: both grids of samples change; the quantile grids stay.
    grids = [picture(page, "grid-a"), picture(page, "grid-b")]
    samples = [picture(page, "gen-a"), picture(page, "gen-b")]
    answered(page, lambda: page.click("#sample-btn"))
    assert [picture(page, "gen-a"), picture(page, "gen-b")] != samples
    assert [picture(page, "grid-a"), picture(page, "grid-b")] == grids
    assert all(len(body["z"]) in (1, 36) for body in decodes if len(body["z"]) != 261)

    watched.shot("compare-ae-vae")
    save_timings(page, "compare")
    watched.check_clean()


def test_the_playground_links_to_the_comparison(
    watched: Watched, server: reliability.Server
) -> None:
    page = watched.page
    page.goto(f"{server.url}/?model={VAE}")
    page.wait_for_selector("body[data-ready=true]")
    settle(page)
    page.click("#compare-link")
    page.wait_for_selector("body.compare[data-ready=true]")
    settle(page)
    assert page.url.endswith(f"/?compare={AE},{VAE}")
    assert page.is_visible("#map-a") and page.is_visible("#map-b")
    watched.check_clean()


def test_compare_says_what_it_can_show_for_latents_that_are_not_2d(
    watched: Watched, server: reliability.Server
) -> None:
    page = open_compare(watched, server, "mnist-ae,mnist-vae")
    for side, name, dims in (("a", "mnist-ae", 16), ("b", "mnist-vae", 32)):
        notes = page.inner_text("#map-pair").replace("\n", " ")
        assert f"{name} has a {dims}-D latent space" in notes
        assert page.locator(f"#map-{side}").count() == 0
        assert page.locator(f"#grid-{side}").count() == 0
        assert brightness(page, f"#gen-{side}") > 3  # 36 samples of N(0, I), painted
    draw(page, ONE)
    assert brightness(page, "#recon-a") > 10 and brightness(page, "#recon-b") > 10
    assert page.locator("#samples-b canvas").count() == 6
    # Picking another pair in the page: the URL follows, and the maps come back.
    answered(page, lambda: page.select_option("#model-a", AE))
    answered(page, lambda: page.select_option("#model-b", VAE))
    assert page.url.endswith(f"/?compare={AE},{VAE}")
    assert page.is_visible("#map-a") and page.is_visible("#map-b")
    watched.shot("compare-16d")
    watched.check_clean()


@pytest.mark.parametrize(
    ("names", "said"),
    [
        ("", "Name two models to compare"),
        ("mnist-vae", "Name two models to compare"),
        ("mnist-vae,mnist-ae,mnist-vae-2d", "Name two models to compare"),
        ("mnist-vae,no-such-model", 'There is no model named "no-such-model" here'),
    ],
)
def test_compare_refuses_a_wrong_pair_clearly(
    watched: Watched, server: reliability.Server, names: str, said: str
) -> None:
    page = open_compare(watched, server, names)
    message = page.inner_text("#compare-error")
    assert page.is_visible("#compare-error") and said in message, message
    assert "mnist-vae-2d" in message  # what there is to pick from
    assert page.is_hidden("#compare-main")
    watched.check_clean()


def test_compare_needs_the_same_input_shape(
    watched: Watched,
    foreign_server: reliability.Server,
) -> None:
    page = open_compare(watched, foreign_server, "mnist-vae,color-vae")
    message = page.inner_text("#compare-error")
    said = "mnist-vae takes 28 \N{MULTIPLICATION SIGN} 28 grayscale images and color-vae 32 "
    assert said in message and "32 colour ones" in message, message
    assert "same input shape" in message and page.is_hidden("#compare-main")
    # Two 64 x 64 models, one trained dark-on-light: compared, each given its own background.
    page = open_compare(watched, foreign_server, "gray64-vae,gray64-light")
    assert page.is_hidden("#compare-error")
    assert page.eval_on_selector("#recon-a", "c => [c.width, c.height]") == [64, 64]
    draw(page, ONE)
    inputs = page.evaluate("[state.sides.a.input[0], state.sides.b.input[0]]")
    assert inputs == [0, 1]  # a corner of the frame: the model's own background
    watched.check_clean()


def test_compare_fits_a_phone_and_works_with_a_keyboard(
    browser: Any,
    server: reliability.Server,
) -> None:
    context = new_context(
        browser, viewport={"width": 375, "height": 812}, has_touch=True, is_mobile=True
    )
    watched = Watched(context.new_page())
    page = open_compare(watched, server, f"{AE},{VAE}")
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways on a phone: {width} px wide"
    # Stacked: the VAE's map under the AE's, both the same size and within the screen.
    a, b = (page.locator(f"#map-{side}").bounding_box() for side in "ab")
    assert b["y"] >= a["y"] + a["height"] and a["width"] == b["width"] <= 375
    page.locator("#draw-canvas").scroll_into_view_if_needed()  # under the explanation
    tap_pad(page, "touch", 0.5, 0.5)
    assert brightness(page, "#recon-a") > 0 and brightness(page, "#recon-b") > 0
    watched.shot("compare-phone")
    watched.check_clean()
    context.close()

    # Every control is reached with Tab; the arrow keys move the probe on a focused map.
    context = new_context(browser)
    watched = Watched(context.new_page())
    page = open_compare(watched, server, f"{AE},{VAE}")
    reached = []
    for _ in range(25):
        focused = page.evaluate_handle("document.activeElement")
        page.keyboard.press("Tab")
        page.wait_for_function("before => document.activeElement !== before", arg=focused)
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    wanted = {"model-a", "model-b", "draw-canvas", "clear-btn", "upload-input", "seed-input",
              "resample-btn", "map-a", "map-b", "sample-seed", "sample-btn"}  # fmt: skip
    assert wanted <= set(reached), wanted - set(reached)
    page.focus("#map-b")
    answered(page, lambda: page.keyboard.press("ArrowRight"))
    assert page.evaluate("state.probe")[0] > 0
    assert page.inner_text("#probe-z-b").startswith("decode(z = [")
    watched.check_clean()
    context.close()
