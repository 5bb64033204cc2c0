"""A real headless Chromium against servers with a token, and pages of other origins.

The dashboard logs in with a token from its URL fragment or its form (sent as the
first-message ``auth``, kept for the tab's session); pages served from another local
port, or opened from a file, are let in or refused by the origin rules. Waits are
Playwright's own, with timeouts.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import evkit
from tests.conftest import require_service

TOKEN = "browser-token-0123456789abcdef0123456789"
WAIT_MS = 10_000

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    executable = shutil.which("chromium")
    require_service(
        executable is not None and importlib.util.find_spec("playwright") is not None,
        "the browser tests need Debian's chromium on PATH and the playwright package",
    )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=(["--no-sandbox"] if os.geteuid() == 0 else []) + flags,
        )
        yield browser
        browser.close()
    expect.set_options(timeout=5_000)


@pytest.fixture
def tab(chromium: Any) -> Iterator[Any]:
    """A page in a context of its own; ``tab.seen`` lists every URL it requested."""
    context = chromium.new_context()
    page = context.new_page()
    page.seen = []
    page.on("request", lambda request: page.seen.append(request.url))
    page.on("websocket", lambda socket: page.seen.append(socket.url))
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def auth_server() -> Iterator[evkit.Server]:
    srv = evkit.serve(port=0, token=TOKEN)
    try:
        yield srv
    finally:
        srv.stop()


def emit(*types: str) -> None:
    for type_ in types:
        evkit.emit(type_, {"from": "python"})
    evkit.flush()


def test_a_token_in_the_fragment_logs_in_and_is_never_sent_or_logged(
    tab: Any, auth_server: evkit.Server, caplog: pytest.LogCaptureFixture
) -> None:
    from playwright.sync_api import expect

    caplog.set_level(logging.DEBUG)
    tab.goto(f"{auth_server.http_url}/#token={TOKEN}")
    expect(tab.locator("#status")).to_have_text("connected")
    emit("repo.commit.created", "github.api.completed")
    expect(tab.locator("#events li")).to_have_count(2)
    assert "#" not in tab.url  # the fragment is dropped from the address bar and history
    assert tab.seen
    assert not any(TOKEN in url for url in tab.seen)
    assert not any(TOKEN in record.getMessage() for record in caplog.records)
    # Kept for the tab's session: a reload logs in again without the fragment.
    tab.reload()
    expect(tab.locator("#status")).to_have_text("connected")
    expect(tab.locator("#login")).to_be_hidden()


def test_a_wrong_token_is_refused_with_a_message_and_the_form_logs_in(
    tab: Any, auth_server: evkit.Server
) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{auth_server.http_url}/#token=not-the-token")
    expect(tab.locator("#login")).to_be_visible()
    expect(tab.locator("#login-why")).to_have_text("The token was refused: invalid token.")
    expect(tab.locator("#status")).to_have_text("login needed")
    emit("repo.commit.created")
    tab.locator("#token").fill(TOKEN)
    tab.locator("#login button").click()
    expect(tab.locator("#status")).to_have_text("connected")
    expect(tab.locator("#login")).to_be_hidden()
    emit("repo.push.completed")
    expect(tab.locator("#events li")).to_have_count(1)  # only what came after logging in
    expect(tab.locator("#events li").first).to_have_attribute("data-type", "repo.push.completed")


def test_without_a_token_the_page_asks_for_one_at_once(tab: Any, auth_server: evkit.Server) -> None:
    from playwright.sync_api import expect

    tab.goto(auth_server.http_url + "/")
    # Well before the server's auth_timeout (5 s): the page's first message asks.
    expect(tab.locator("#login-why")).to_have_text(
        "This server needs an access token.", timeout=3_000
    )
    assert auth_server.stats()["clients"] == 0


def test_a_token_does_no_harm_on_a_server_without_auth(tab: Any, server: evkit.Server) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{server.http_url}/#token=anything")
    expect(tab.locator("#status")).to_have_text("connected")
    emit("claude.session.started")
    expect(tab.locator("#events li")).to_have_count(1)


# -- pages of other origins ----------------------------------------------------------------------

PROBE = """<!doctype html><title>probe</title><pre id="out">waiting</pre><script>
const out = document.getElementById("out");
const socket = new WebSocket(new URLSearchParams(location.search).get("ws"));
socket.onmessage = (m) => { out.textContent = JSON.parse(m.data).type; };
socket.onclose = (c) => { if (out.textContent === "waiting") out.textContent = "closed " + c.code; };
async function post(url) {
  const answer = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({type: "page.post.sent", payload: {}})});
  return answer.status + " " + (await answer.text());
}
</script>"""


@pytest.fixture
def probe_site(tmp_path: Path) -> Iterator[str]:
    """A plain static server on another local port (as ``python -m http.server``)."""
    (tmp_path / "probe.html").write_text(PROBE)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{site.server_address[1]}/probe.html"
    finally:
        site.shutdown()
        site.server_close()


def test_a_page_served_from_another_local_port_connects_and_posts(
    tab: Any, server: evkit.Server, probe_site: str
) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{probe_site}?ws={server.url}")
    expect(tab.locator("#out")).to_have_text("websocket.connected")
    answer = tab.evaluate("url => post(url)", f"{server.http_url}/events")
    assert answer.startswith('202 {"ids":['), answer  # CORS let the page read the answer


@pytest.mark.parametrize("allowed", [False, True])
def test_a_page_opened_from_a_file_needs_null_allowed(
    tab: Any, tmp_path: Path, allowed: bool
) -> None:
    from playwright.sync_api import expect

    page = tmp_path / "probe.html"
    page.write_text(PROBE)
    srv = evkit.serve(port=0, allowed_origins=("null",) if allowed else None)
    try:
        tab.goto(f"{page.as_uri()}?ws={srv.url}")
        expected = "websocket.connected" if allowed else re.compile(r"closed 1006")
        expect(tab.locator("#out")).to_have_text(expected)
        if allowed:
            answer = tab.evaluate("url => post(url)", f"{srv.http_url}/events")
            assert answer.startswith("202 "), answer
    finally:
        srv.stop()
