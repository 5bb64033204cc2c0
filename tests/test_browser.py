"""The browser dashboard (``evkit/static/dashboard.html``) in a real headless Chromium.

Each test serves the page from a real broadcaster on an ephemeral port, drives it with
Playwright and emits events from Python. Waits are Playwright's own (``expect``,
``wait_for_*``) with timeouts; absence is proved by stream order: an event emitted
after the unwanted one has arrived, so the unwanted one would have too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import evkit
from tests.conftest import require_service

PAGE_FILE = Path(evkit.__file__).parent / "static" / "dashboard.html"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = shutil.which("chromium")
CATEGORIES = ("claude", "repo", "github", "graphql", "performance")
WAIT_MS = 10_000  # default for every Playwright expectation
RECONNECT_MS = 15_000  # backoff is capped near 5 s; allow two full rounds

pytestmark = pytest.mark.timeout(30)


# -- the page as a file: needs no browser ---------------------------------------------------


def test_page_is_small_and_self_contained() -> None:
    html = PAGE_FILE.read_text(encoding="utf-8")
    assert len(html.encode()) < 28 * 1024
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert all(link.startswith(("data:", "#")) for link in links), links
    assert not re.search(r"@import|url\(|https?://", html), "external resource"
    script = html[html.index("<script>") :]
    assert not re.search(r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write", script), (
        "event data must reach the page through textContent"
    )


# -- Chromium through Playwright -------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_service(
        CHROMIUM is not None and importlib.util.find_spec("playwright") is not None,
        "the browser tests need Debian's chromium on PATH and the playwright package",
    )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    args = [
        "--headless",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    if os.geteuid() == 0:
        args.insert(0, "--no-sandbox")  # Chromium refuses to sandbox as root
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()
    expect.set_options(timeout=5_000)  # Playwright's default, for anything else in this process


@dataclass
class Dashboard:
    """One browser page on the dashboard, and everything that went wrong in it."""

    page: Any
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)

    def open(self, server: evkit.Server, path: str = "/") -> None:
        """Load the page and wait until it is connected and shows its client id."""
        from playwright.sync_api import expect

        response = self.page.goto(server.http_url + path)
        assert response is not None
        assert response.status == 200
        expect(self.status).to_have_text("connected")
        expect(self.page.locator("#client-id")).to_have_text(re.compile(r"ws-\d+-[0-9a-z]{9}"))

    @property
    def status(self) -> Any:
        return self.page.locator("#status")

    def rows(self, selector: str = "") -> Any:
        return self.page.locator(f"#events li{selector}")

    def payloads(self, selector: str = "") -> list[dict[str, Any]]:
        texts = self.rows(selector).locator(".payload").all_text_contents()
        return [json.loads(text) for text in texts]

    def apply_patterns(self, keep: set[str], extra: str = "") -> None:
        """Check exactly the categories in ``keep`` (``all`` off), type ``extra``, apply."""
        page = self.page
        page.locator("input[data-category=all]").set_checked("all" in keep)
        if "all" not in keep:
            shown = page.locator("input[data-category]:not([data-category=all])")
            for category in shown.evaluate_all("boxes => boxes.map(b => b.dataset.category)"):
                page.locator(f"input[data-category={category}]").set_checked(category in keep)
            page.locator("#patterns").fill(extra)
        page.locator("#apply").click()

    def apply_correlation(self, correlation_id: str) -> None:
        self.page.locator("#correlation").fill(correlation_id)
        self.page.locator("#apply-correlation").click()

    def assert_clean(self, console: bool = True) -> None:
        """No script errors, failed or outside requests; no console errors if ``console``."""
        assert self.page_errors == []
        assert self.failed_requests == []
        assert self.outside_requests == []
        if console:
            assert self.console_errors == []


@pytest.fixture
def dashboard(browser: Any) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    board = Dashboard(page)
    page.on("console", lambda m: m.type == "error" and board.console_errors.append(m.text))
    page.on("pageerror", lambda exc: board.page_errors.append(str(exc)))
    page.on("requestfailed", lambda r: board.failed_requests.append(f"{r.url} {r.failure}"))

    def local_only(route: Any) -> None:
        # The page must work offline: anything not for the server it came from is refused.
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            board.outside_requests.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    try:
        yield board
    finally:
        context.close()


def emit_and_flush(events: list[tuple[str, dict[str, Any], str | None]]) -> None:
    for type_, payload, correlation_id in events:
        evkit.emit(type_, payload, correlation_id=correlation_id)
    evkit.flush()


@pytest.mark.browser
@pytest.mark.parametrize("path", ["/", "/dashboard"])
def test_page_loads_and_connects(server: evkit.Server, dashboard: Dashboard, path: str) -> None:
    from playwright.sync_api import expect

    dashboard.open(server, path)
    expect(dashboard.page).to_have_title(re.compile("evkit"))
    expect(dashboard.page.locator("input[data-category=all]")).to_be_checked()
    expect(dashboard.page.locator("#subscriptions")).to_contain_text("*")
    assert server.stats()["clients"] == 1
    dashboard.assert_clean()


@pytest.mark.browser
def test_events_appear_newest_first_and_the_list_is_capped(
    server: evkit.Server, dashboard: Dashboard
) -> None:
    from playwright.sync_api import expect

    dashboard.open(server)
    emit_and_flush(
        [
            ("repo.commit.created", {"commitHash": "ab12", "note": "<b>not bold</b>"}, "req-1"),
            ("github.api.completed", {"endpoint": "/repos", "duration": 42}, "req-2"),
        ]
    )
    expect(dashboard.rows()).to_have_count(2)
    first = dashboard.rows().first
    expect(first).to_have_attribute("data-type", "github.api.completed")
    expect(first).to_have_attribute("data-correlation", "req-2")
    expect(first.locator(".type")).to_have_text("github.api.completed")
    # Event data is text, never markup.
    expect(dashboard.rows("[data-correlation=req-1]").locator("b")).to_have_count(0)
    assert dashboard.payloads("[data-correlation=req-1]") == [
        {"commitHash": "ab12", "note": "<b>not bold</b>"}
    ]

    emit_and_flush([("claude.command.executed", {"n": n}, "bulk") for n in range(600)])
    expect(dashboard.page.locator("#count")).to_have_text("602")
    expect(dashboard.rows()).to_have_count(500)
    numbers = [payload["n"] for payload in dashboard.payloads()]
    assert numbers == list(range(599, 99, -1))
    expect(dashboard.page.locator("#rate")).to_have_text("602")
    dashboard.assert_clean()


@pytest.mark.browser
def test_batched_delivery_is_shown_event_by_event(
    server: evkit.Server, dashboard: Dashboard
) -> None:
    from playwright.sync_api import expect

    dashboard.open(server, "/dashboard?batch=20,50")
    emit_and_flush([("graphql.query.started", {"n": n}, "batched") for n in range(45)])
    expect(dashboard.rows("[data-correlation=batched]")).to_have_count(45)
    assert [p["n"] for p in dashboard.payloads()] == list(range(44, -1, -1))
    dashboard.assert_clean()


@pytest.mark.browser
def test_category_filter(server: evkit.Server, dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    dashboard.open(server)
    dashboard.apply_patterns({"repo"})
    message = dashboard.page.locator("#message")
    expect(message).to_have_attribute("data-kind", "ok")
    expect(message).to_have_text("Subscribed: repo.*")
    expect(dashboard.page.locator("input[data-category=claude]")).not_to_be_checked()

    emit_and_flush(
        [
            ("claude.session.started", {"sessionId": "s1"}, "cat"),
            ("repo.commit.created", {"n": 1}, "cat"),
            ("github.api.started", {"n": 2}, "cat"),
            ("repo.push.completed", {"n": 3}, "cat"),
        ]
    )
    expect(dashboard.rows("[data-type='repo.push.completed']")).to_have_count(1)
    types = dashboard.rows().evaluate_all("rows => rows.map(r => r.dataset.type)")
    assert types == ["repo.push.completed", "repo.commit.created"]

    # A free-text pattern adds to the toggles; the page URL follows the subscription.
    dashboard.apply_patterns({"repo"}, extra="*.failed")
    expect(message).to_have_text("Subscribed: repo.*, *.failed")
    assert "eventTypes=repo.*%2C*.failed" in dashboard.page.url
    emit_and_flush([("claude.session.failed", {"n": 4}, "cat")])
    expect(dashboard.rows("[data-type='claude.session.failed']")).to_have_count(1)
    dashboard.assert_clean()


@pytest.mark.browser
def test_categories_seen_in_the_stream_become_toggles(
    server: evkit.Server, dashboard: Dashboard
) -> None:
    from playwright.sync_api import expect

    dashboard.open(server)
    emit_and_flush(
        [
            ("billing.invoice.created", {"n": 1}, "cat"),
            ("log.warning", {"n": 2}, "cat"),
            ("repo.commit.created", {"n": 3}, "cat"),
        ]
    )
    billing = dashboard.page.locator("input[data-category=billing]")
    expect(billing).to_be_checked()  # "all" is on: every category is received
    expect(billing).to_be_disabled()
    expect(dashboard.page.locator("input[data-category=log]")).to_be_visible()
    order = dashboard.page.locator("input[data-category]").evaluate_all(
        "boxes => boxes.map(b => b.dataset.category)"
    )
    assert order == ["all", *CATEGORIES, "billing", "log"]

    dashboard.apply_patterns({"billing"})
    expect(dashboard.page.locator("#message")).to_have_text("Subscribed: billing.*")
    emit_and_flush([("repo.push.completed", {"n": 4}, "cat"), ("billing.invoice.paid", {}, "cat")])
    expect(dashboard.rows("[data-type='billing.invoice.paid']")).to_have_count(1)
    expect(dashboard.rows("[data-type='repo.push.completed']")).to_have_count(0)
    dashboard.assert_clean()


@pytest.mark.browser
def test_a_subscription_names_its_categories(server: evkit.Server, dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    dashboard.open(server, "/?eventTypes=orders.*,*.failed")
    expect(dashboard.page.locator("input[data-category=orders]")).to_be_checked()
    expect(dashboard.page.locator("input[data-category=repo]")).not_to_be_checked()
    expect(dashboard.page.locator("#patterns")).to_have_value("*.failed")
    dashboard.assert_clean()


@pytest.mark.browser
def test_a_rejected_subscription_is_shown_and_changes_nothing(
    server: evkit.Server, dashboard: Dashboard
) -> None:
    from playwright.sync_api import expect

    dashboard.open(server)
    dashboard.apply_patterns({"repo"}, extra="not a pattern!")
    message = dashboard.page.locator("#message")
    expect(message).to_have_attribute("data-kind", "error")
    expect(message).to_contain_text("invalid_pattern")
    expect(dashboard.page.locator("#subscriptions")).to_have_text("Receiving *")
    expect(dashboard.status).to_have_text("connected")
    dashboard.assert_clean()


@pytest.mark.browser
def test_correlation_filter_and_clearing_it(server: evkit.Server, dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    dashboard.open(server)
    dashboard.apply_correlation("keep-me")
    expect(dashboard.page.locator("#subscriptions")).to_have_text(
        "Receiving * · correlation keep-me"
    )
    emit_and_flush(
        [
            ("repo.commit.created", {"n": 1}, "drop-me"),
            ("repo.commit.created", {"n": 2}, "keep-me"),
            ("claude.session.started", {"n": 3}, None),
            ("repo.push.completed", {"n": 4}, "keep-me"),
        ]
    )
    expect(dashboard.rows("[data-type='repo.push.completed']")).to_have_count(1)
    assert [p["n"] for p in dashboard.payloads()] == [4, 2]

    dashboard.apply_correlation("")
    expect(dashboard.page.locator("#subscriptions")).to_have_text("Receiving *")
    emit_and_flush(
        [("repo.commit.created", {"n": 5}, "drop-me"), ("repo.scan.completed", {}, None)]
    )
    expect(dashboard.rows("[data-type='repo.scan.completed']")).to_have_count(1)
    expect(dashboard.rows("[data-correlation=drop-me]")).to_have_count(1)

    # Clicking a correlation id in the list follows it.
    dashboard.rows("[data-correlation=drop-me]").locator("button.corr").click()
    expect(dashboard.page.locator("#correlation")).to_have_value("drop-me")
    expect(dashboard.page.locator("#subscriptions")).to_contain_text("correlation drop-me")
    dashboard.assert_clean()


@pytest.mark.browser
def test_latency_bars_slowest_first(server: evkit.Server, dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    dashboard.open(server)
    durations = {"lat-a": 120.0, "lat-b": 480.0, "lat-c": 250.0}
    events: list[tuple[str, dict[str, Any], str | None]] = []
    for correlation_id, duration in durations.items():
        events.append(("graphql.query.started", {"operationName": "Q"}, correlation_id))
        events.append(("github.api.completed", {"duration": duration / 2}, correlation_id))
        events.append(("graphql.query.completed", {"duration": duration}, correlation_id))
    emit_and_flush(events)

    bars = dashboard.page.locator("#latency .bar[data-correlation]")
    expect(bars).to_have_count(3)
    order = bars.evaluate_all("bars => bars.map(b => [b.dataset.correlation, +b.dataset.ms])")
    assert order == [["lat-b", 480], ["lat-c", 250], ["lat-a", 120]]
    widths = bars.locator(".fill").evaluate_all("fills => fills.map(f => f.style.width)")
    assert [float(width.removesuffix("%")) for width in widths] == [100.0, 52.1, 25.0]
    dashboard.assert_clean()


@pytest.mark.browser
def test_reconnects_after_the_server_restarts(dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    server = evkit.serve(port=0)
    port = server.port
    dashboard.open(server)
    emit_and_flush([("repo.commit.created", {"n": 1}, "before")])
    expect(dashboard.rows("[data-correlation=before]")).to_have_count(1)
    first_client = dashboard.page.locator("#client-id").text_content()

    server.stop()
    expect(dashboard.status).to_have_text("reconnecting")
    restarted = evkit.serve(port=port)
    try:
        emit_and_flush([("repo.push.completed", {"n": 2}, "after")])
        expect(dashboard.status).to_have_text("connected", timeout=RECONNECT_MS)
        expect(dashboard.rows("[data-correlation=after]")).to_have_count(1)
        # A new stream (epoch): the page says events may be missing.
        expect(dashboard.page.locator("#notice")).to_be_visible()
        expect(dashboard.page.locator("#notice")).to_contain_text("may be missing")
        assert dashboard.page.locator("#client-id").text_content() != first_client
        emit_and_flush([("repo.scan.completed", {"n": 3}, "after")])
        expect(dashboard.rows("[data-correlation=after]")).to_have_count(2)
        expect(dashboard.rows("[data-correlation=before]")).to_have_count(1)
    finally:
        restarted.stop()
    dashboard.assert_clean(console=False)  # refused connections are logged while it is down


@pytest.mark.browser
def test_resumes_without_loss_after_a_server_side_disconnect(
    server: evkit.Server, dashboard: Dashboard
) -> None:
    from playwright.sync_api import expect

    dashboard.open(server, "/dashboard?eventTypes=repo.*")
    emit_and_flush([("repo.commit.created", {"n": n}, "resume") for n in range(5)])
    expect(dashboard.rows()).to_have_count(5)

    assert server.disconnect() == 1  # closes with 1012; the page resumes with since=<last id>
    emit_and_flush(
        [("repo.commit.created", {"n": n}, "resume") for n in range(5, 55)]
        + [("claude.session.started", {"n": -1}, "resume")]  # not subscribed
    )
    expect(dashboard.status).to_have_attribute("data-replayed", "50", timeout=RECONNECT_MS)
    expect(dashboard.status).to_have_text("connected")
    emit_and_flush([("repo.commit.created", {"n": n}, "resume") for n in range(55, 60)])
    expect(dashboard.rows()).to_have_count(60)
    assert [p["n"] for p in dashboard.payloads()] == list(range(59, -1, -1))
    expect(dashboard.page.locator("#notice")).to_be_hidden()
    dashboard.assert_clean()


@pytest.mark.browser
def test_screenshot_with_simulated_traffic(server: evkit.Server, dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    from evkit.simulate import simulate

    dashboard.open(server)
    simulate(seconds=2, rate=20, speed=4)
    evkit.flush()
    expect(dashboard.page.locator("#latency .bar")).to_have_count(15)
    expect(dashboard.page.locator("#rate")).not_to_have_text("0")
    ARTIFACTS.mkdir(exist_ok=True)
    dashboard.page.screenshot(path=str(ARTIFACTS / "browser-dashboard.png"))
    dashboard.assert_clean()
