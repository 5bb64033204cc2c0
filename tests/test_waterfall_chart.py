"""The interactive waterfall in a real headless Chromium, drawn by real Vega-Lite.

``evkit.analysis.waterfall_spec`` is data; what makes it a chart is the Vega-Lite that
Jupyter frontends bundle (JupyterLab's and Notebook 7's vega-lite 5, VS Code's 6).
vl-convert ships those same libraries; its self-contained page (no network) is what
Chromium loads here. The test hovers a bar and reads the tooltip, then scrolls over the
chart and reads the time axis.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import evkit
from evkit import analysis
from tests.conftest import require_service

CHROMIUM = shutil.which("chromium")
WAIT_MS = 10_000

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


def a_trace() -> tuple[Any, str]:
    """Two HTTP calls, a pause, a failed call: captured from real spans."""
    with evkit.capture(correlation_id="chart-1") as cap:

        @evkit.emits("http.get", fields=lambda path: {"path": path})
        def get(path: str) -> None:
            time.sleep(0.01)

        with evkit.correlation("chart-1"), evkit.span("notebook.cell"):
            get("/orders")
            get("/customers")
            time.sleep(0.03)
            with (
                pytest.raises(ValueError, match="HTTP 500"),
                evkit.span("http.post", path="/report"),
            ):
                raise ValueError("HTTP 500")
        return cap.df, "chart-1"


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    require_service(
        CHROMIUM is not None
        and importlib.util.find_spec("playwright") is not None
        and importlib.util.find_spec("vl_convert") is not None,
        "the chart test needs Debian's chromium, playwright and vl-convert-python",
    )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*sandbox, "--headless", "--disable-gpu"]
        )
        context = chromium.new_context(viewport={"width": 1100, "height": 700})
        outside: list[str] = []

        def offline(route: Any) -> None:
            # Everything the chart needs is in the page: any request out is a failure.
            if urlsplit(route.request.url).scheme in ("data", "about"):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", offline)
        yield context.new_page()
        assert outside == []
        chromium.close()
    expect.set_options(timeout=5_000)


@pytest.mark.parametrize("vega_lite", ["5.21", "6.4"], ids=["jupyterlab", "vscode"])
def test_hover_shows_the_payload_and_scrolling_zooms_on_time(page: Any, vega_lite: str) -> None:
    import vl_convert
    from playwright.sync_api import expect

    frame, correlation_id = a_trace()
    spec = analysis.waterfall_spec(frame, correlation_id)
    page.set_content(vl_convert.vegalite_to_html(spec, vl_version=vega_lite, bundle=True))

    bars = page.locator("g.layer_1_marks path")
    expect(bars).to_have_count(4)
    labels = page.locator("g.role-axis-label text").all_text_contents()
    assert "\u200b\u2514\u00a0http.get" in labels

    bars.nth(2).hover()  # the second http.get, under the root
    tooltip = page.locator("#vg-tooltip-element")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("/customers")
    expect(tooltip).to_contain_text("span status")
    bars.nth(3).hover()
    expect(tooltip).to_contain_text("ValueError")
    expect(tooltip).to_contain_text("HTTP 500")

    axis = page.locator("g.role-axis[aria-label^='X-axis'] g.role-axis-label text")
    before = axis.all_text_contents()
    assert before[0] == "0"
    box = page.locator("g.layer_1_marks").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)  # zoom in on time
    expect(axis).not_to_have_text(before)
