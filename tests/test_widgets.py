"""The ipywidgets dashboard over a real collector fed by a real broadcaster.

The widgets are driven the way a user drives them (toggles, a click on Apply, the
picker's value, Pause and Clear); the assertions read the widgets' state, the collector
and :attr:`Dashboard.rendering`, not pixels. Every wait is a condition with a deadline:
``evkit.flush()`` after emitting, then ``col.wait(...)`` / ``col.wait_for(...)``, or a
counter of the dashboard polled until it moves.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import evkit
from evkit import analysis
from evkit._dashboard_panels import png
from evkit.collector import Collector
from evkit.testing import wait_until
from evkit.widgets import ALL, CATEGORIES, MOST_CATEGORIES, Dashboard

TIMEOUT = 10.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def emit_and_wait(
    col: Collector, events: list[tuple[str, dict[str, Any], str | None]], arrive: int
) -> None:
    """Emit ``events``, flush, and wait until the collector holds ``arrive`` events."""
    for type_, payload, correlation_id in events:
        evkit.emit(type_, payload, correlation_id=correlation_id)
    evkit.flush()
    col.wait(count=arrive, timeout=TIMEOUT)


def three_requests() -> list[tuple[str, dict[str, Any], str | None]]:
    """Three requests of three events each; req-3 is the slowest, req-1 the fastest."""
    events: list[tuple[str, dict[str, Any], str | None]] = []
    for number, milliseconds in ((1, 30.0), (2, 60.0), (3, 120.0)):
        request = f"req-{number}"
        span = f"g{number}"
        events += [
            ("graphql.query.completed", {"duration": milliseconds, "spanId": span}, request),
            (
                "github.api.completed",
                {"duration": milliseconds / 2, "spanId": f"h{number}", "parentSpanId": span},
                request,
            ),
            ("repo.commit.created", {"path": "/src", "n": number}, request),
        ]
    return events


def dashboard_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "evkit-dashboard"]


@pytest.fixture
def col(server: evkit.Server) -> Iterator[evkit.collector.WebSocketCollector]:
    with evkit.collect(server) as collector:
        yield collector


@pytest.fixture
def dash(col: Collector) -> Iterator[Dashboard]:
    built = evkit.dashboard(col)
    assert isinstance(built, Dashboard)
    try:
        yield built
    finally:
        built.close()


# -- the pattern chooser ------------------------------------------------------------------


def test_chooser_starts_from_the_collectors_patterns(dash: Dashboard) -> None:
    assert list(dash.category_toggles) == list(CATEGORIES)
    assert not any(toggle.value for toggle in dash.category_toggles.values())
    assert dash.pattern_text.value == "*"
    assert dash.chosen_patterns() == ["*"]


def test_applying_a_category_resubscribes_the_collector(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    emit_and_wait(col, [("claude.session.started", {"phase": "before"}, None)], arrive=1)

    for name, toggle in dash.category_toggles.items():
        toggle.value = name == "repo"
    dash.pattern_text.value = ""
    assert dash.chosen_patterns() == ["repo.*"]
    dash.apply_button.click()  # returns once the server confirmed the new subscription

    assert col.patterns == ["repo.*"]
    assert dash.status.value == "subscribed to repo.*"
    after = [
        ("claude.session.started", {"phase": "after", "n": 0}, None),
        ("repo.commit.created", {"phase": "after", "n": 1}, None),
        ("claude.command.executed", {"phase": "after", "n": 2}, None),
        ("github.api.started", {"phase": "after", "n": 3}, None),
        ("repo.push.completed", {"phase": "after", "n": 4}, None),
    ]
    for type_, payload, correlation_id in after:
        evkit.emit(type_, payload, correlation_id=correlation_id)
    evkit.flush()
    # Stream order: once the last repo event is here, every earlier match is too.
    col.wait_for(lambda event: event["payload"].get("n") == 4, timeout=TIMEOUT)

    df = col.to_dataframe()
    new = df[df["phase"] == "after"]
    assert list(new["type"]) == ["repo.commit.created", "repo.push.completed"]
    assert list(df[df["phase"] == "before"]["type"]) == ["claude.session.started"]


def test_toggles_and_free_text_combine(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    dash.category_toggles["claude"].value = True
    dash.category_toggles["performance"].value = True
    dash.pattern_text.value = " *.completed ,, github.api.* "
    dash.apply_button.click()

    expected = ["claude.*", "performance.*", "*.completed", "github.api.*"]
    assert col.patterns == expected
    assert dash.status.value == f"subscribed to {', '.join(expected)}"
    assert dash.pattern_text.value == "*.completed, github.api.*"


def test_an_invalid_pattern_is_reported_and_changes_nothing(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    dash.category_toggles["repo"].value = True
    dash.pattern_text.value = "github.*, bad pattern!"
    dash.apply_button.click()

    assert "not applied" in dash.status.value
    assert "'bad pattern!'" in dash.status.value
    assert "still subscribed to *" in dash.status.value
    assert col.patterns == ["*"]
    # The server's side is unchanged too: a claude event (matched by neither repo.*
    # nor github.*) still arrives.
    emit_and_wait(col, [("claude.session.started", {"probe": 1}, None)], arrive=1)
    assert list(col.to_dataframe()["type"]) == ["claude.session.started"]


def test_an_empty_choice_is_refused(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    dash.pattern_text.value = " , "
    dash.apply_button.click()

    assert dash.status.value.startswith("not applied: choose a category or type a pattern")
    assert col.patterns == ["*"]


# -- the correlation picker ---------------------------------------------------------------


def test_picker_restricts_the_charts_and_the_table(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    emit_and_wait(col, three_requests(), arrive=9)
    everything = dash.refresh()

    assert everything is not None
    assert dash.correlation_picker.options == (ALL, "req-1", "req-2", "req-3")
    assert everything.correlation is None
    assert everything.events == 9
    assert everything.latency_correlations == ("req-3", "req-2", "req-1")
    assert everything.waterfall_correlation == "req-3"  # the slowest, when all are shown
    all_latency, all_waterfall = bytes(dash.latency_image.value), bytes(dash.waterfall_image.value)

    dash.correlation_picker.value = "req-2"
    assert dash.selected_correlation == "req-2"
    one = dash.refresh()

    assert one is not None
    assert one.correlation == "req-2"
    assert one.events == 3
    assert list(one.table["correlation_id"]) == ["req-2"] * 3
    assert list(one.table["type"]) == [  # newest first
        "repo.commit.created",
        "github.api.completed",
        "graphql.query.completed",
    ]
    assert one.latency_correlations == ("req-2",)
    assert one.waterfall_correlation == "req-2"
    assert "req-2" in dash.table.value
    assert "req-1" not in dash.table.value
    assert "req-3" not in dash.table.value
    request = col.to_dataframe()
    request = request[request["correlation_id"] == "req-2"]
    assert bytes(dash.waterfall_image.value) == png(analysis.plot_waterfall(request, "req-2"))
    assert bytes(dash.latency_image.value).startswith(PNG_SIGNATURE)
    assert bytes(dash.latency_image.value) != all_latency
    assert bytes(dash.waterfall_image.value) != all_waterfall

    dash.correlation_picker.value = ALL
    assert dash.selected_correlation is None
    restored = dash.refresh()

    assert restored is not None
    assert restored.events == 9
    assert set(restored.table["correlation_id"]) == {"req-1", "req-2", "req-3"}
    assert restored.latency_correlations == ("req-3", "req-2", "req-1")
    assert bytes(dash.latency_image.value) == all_latency
    assert bytes(dash.waterfall_image.value) == all_waterfall


def test_picker_keeps_the_choice_while_new_requests_arrive(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    emit_and_wait(col, three_requests(), arrive=9)
    dash.refresh()
    dash.correlation_picker.value = "req-2"

    emit_and_wait(col, [("repo.commit.created", {"n": 9}, "req-0")], arrive=10)
    rendering = dash.refresh()

    assert rendering is not None
    assert dash.correlation_picker.options == (ALL, "req-0", "req-1", "req-2", "req-3")
    assert dash.correlation_picker.value == "req-2"
    assert rendering.correlation == "req-2"


def test_table_escapes_what_events_carry(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    emit_and_wait(
        col, [("repo.commit.created", {"message": "<script>alert(1)</script> & co"}, "r<1>")], 1
    )
    dash.refresh()

    assert "<script>" not in dash.table.value
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in dash.table.value
    assert "r&lt;1&gt;" in dash.table.value


# -- live updates ---------------------------------------------------------------------------


def test_redraws_are_throttled_while_events_pour_in(
    col: evkit.collector.WebSocketCollector,
) -> None:
    max_per_second = 2.0
    seconds, chunk, step = 2.0, 100, 0.01  # 100 events every 10 ms: 10,000 events/s
    steps = round(seconds / step)
    with evkit.widgets.dashboard(col, max_redraws_per_second=max_per_second) as dash:
        emit_times: list[float] = []

        def pour() -> None:
            started = time.perf_counter()
            for number in range(steps):
                begun = time.perf_counter()
                for index in range(chunk):
                    evkit.emit(
                        "github.api.completed",
                        {"duration": 5.0, "n": number * chunk + index},
                        correlation_id=f"load-{index % 50}",
                    )
                emit_times.append(time.perf_counter() - begun)
                # Pacing, not synchronisation: keep to the planned 10 ms slots.
                ahead = started + (number + 1) * step - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)

        redraws_before = dash.redraws
        window_start = time.monotonic()
        pourer = threading.Thread(target=pour, name="test-pour")
        pourer.start()
        main_steps: list[float] = []
        while pourer.is_alive():  # the main thread (the kernel's, in a notebook) stays free
            begun = time.perf_counter()
            time.sleep(0.01)
            main_steps.append(time.perf_counter() - begun)
        pourer.join(TIMEOUT)
        window_end = time.monotonic()
        redraws = dash.redraws - redraws_before
        assert dash.rendering is not None
        last_redraw_seconds = dash.rendering.seconds
        drawn_at = [at for at in dash.rendered_at if window_start <= at <= window_end]

        evkit.flush(timeout=30)
        col.wait(count=steps * chunk, timeout=30)
        wait_until(
            lambda: dash.rendering is not None and dash.rendering.events == steps * chunk,
            "the dashboard drew every event",
        )

    elapsed = window_end - window_start
    bound = max_per_second * elapsed + 2  # at most 2 redraws a second, +2 for the edges
    print(
        f"{steps * chunk} events in {elapsed:.2f} s; {redraws} redraws (bound {bound:.1f}); "
        f"worst emit step {max(emit_times) * 1000:.1f} ms, "
        f"worst main-thread step {max(main_steps) * 1000:.1f} ms; "
        f"last redraw in the window took {last_redraw_seconds:.2f} s"
    )
    assert 0 < redraws <= bound
    assert 0 < len(drawn_at) <= bound
    gaps = [later - earlier for earlier, later in itertools.pairwise(drawn_at)]
    assert all(gap >= 1 / max_per_second - 0.01 for gap in gaps), gaps
    assert max(emit_times) < 0.5
    assert max(main_steps) < 0.5


def test_pause_stops_redraws_and_resume_restarts_them(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    dash.pause_button.value = True  # what clicking Pause does
    assert dash.paused
    assert dash.pause_button.description == "Resume"
    assert dash.status.value.startswith("paused")
    # A redraw the refresher had already begun when Pause was pressed ends within two ticks.
    ticks = dash.ticks
    wait_until(lambda: dash.ticks >= ticks + 2, "the refresher noticed the pause")
    redraws = dash.redraws

    emit_and_wait(col, three_requests(), arrive=9)
    ticks = dash.ticks
    wait_until(lambda: dash.ticks >= ticks + 3, "the refresher woke three more times")
    assert dash.redraws == redraws
    assert len(col) == 9  # the collector kept collecting

    dash.resume()
    assert not dash.paused
    assert dash.pause_button.description == "Pause"
    wait_until(lambda: dash.redraws > redraws, "a redraw after Resume")
    wait_until(
        lambda: dash.rendering is not None and dash.rendering.events == 9,
        "the redraw showed what arrived during the pause",
    )


def test_clear_empties_the_collector(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    emit_and_wait(col, three_requests(), arrive=9)
    drawn = dash.refresh()
    assert drawn is not None
    assert drawn.events == 9

    dash.clear_button.click()

    assert len(col) == 0
    assert col.to_dataframe().empty
    assert dash.status.value.startswith("cleared")
    wait_until(
        lambda: dash.rendering is not None and dash.rendering.events == 0,
        "the refresher drew the emptied collector",
    )
    assert "no events yet" in dash.table.value
    assert dash.correlation_picker.options == (ALL,)


def test_counters_show_the_collectors_stats(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    emit_and_wait(col, three_requests(), arrive=9)
    dash.refresh()

    counters = dash.counters.value
    for text in ("held <b>9</b>", "received <b>9</b>", "dropped <b>0</b>", "reconnects <b>0</b>"):
        assert text in counters
    assert "graphql.query.completed 3" in counters


def test_a_failing_redraw_is_reported_and_the_refresher_goes_on(
    col: evkit.collector.WebSocketCollector,
    dash: Dashboard,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("chart exploded")

    with caplog.at_level(logging.ERROR, logger="evkit.widgets"):
        monkeypatch.setattr(analysis, "plot_latency_by_correlation", broken)
        emit_and_wait(col, three_requests()[:3], arrive=3)
        wait_until(lambda: "chart exploded" in dash.status.value, "the failure was reported")
        assert dash.status.value.startswith("redraw failed: RuntimeError")
        assert any("redraw failed" in record.getMessage() for record in caplog.records)

    monkeypatch.undo()
    emit_and_wait(col, three_requests()[3:], arrive=9)
    wait_until(
        lambda: dash.rendering is not None and dash.rendering.events == 9,
        "a redraw succeeded after the failure",
    )
    wait_until(lambda: dash.status.value == "", "the failure message was cleared")


# -- building, displaying, closing -----------------------------------------------------------


def test_dashboard_displays_as_a_widget(dash: Dashboard) -> None:
    bundle = dash._repr_mimebundle_()
    view = bundle["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == dash.widget.model_id


def test_close_detaches_and_stops_the_refresher(col: evkit.collector.WebSocketCollector) -> None:
    before = len(dashboard_threads())
    dash = evkit.widgets.dashboard(col)
    assert len(col._listeners) == 1
    assert len(dashboard_threads()) == before + 1

    dash.close()
    dash.close()  # a second close does nothing

    assert col._listeners == []
    assert len(dashboard_threads()) == before
    assert dash.apply_button.disabled
    assert dash.status.value == "closed"
    assert col.stats["state"] == "running"  # not the dashboard's to stop


def test_dashboard_from_a_server_owns_its_collector(server: evkit.Server) -> None:
    dash = evkit.widgets.dashboard(server, table_rows=2)
    try:
        collector = dash.collector
        assert collector.url == server.url
        assert collector.patterns == ["*"]
        emit_and_wait(collector, three_requests(), arrive=9)
        drawn = dash.refresh()
        assert drawn is not None
        assert len(drawn.table) == 2
    finally:
        dash.close()
    assert collector.stats["state"] == "stopped"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_redraws_per_second": 0}, "max_redraws_per_second must be a positive number"),
        ({"max_redraws_per_second": float("nan")}, "max_redraws_per_second"),
        ({"table_rows": 0}, "table_rows must be a positive integer"),
        ({"table_rows": 2.5}, "table_rows must be a positive integer"),
    ],
)
def test_bad_options_are_refused(
    col: evkit.collector.WebSocketCollector, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        evkit.widgets.dashboard(col, **options)
    assert col._listeners == []


def test_a_url_that_is_not_a_websocket_url_is_refused() -> None:
    with pytest.raises(ValueError, match="WebSocket URL"):
        evkit.widgets.dashboard("http://127.0.0.1:3000/")


def test_save_the_latency_chart(
    server: evkit.Server, col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    evkit.simulate.simulate(seconds=1, seed=7, rate=20, speed=4)
    evkit.flush()
    last_id = server.stats()["last_id"]
    col.wait_for(lambda event: event.get("id") == last_id, timeout=TIMEOUT)
    drawn = dash.refresh()

    assert drawn is not None
    assert len(drawn.latency_correlations) > 1
    png = bytes(dash.latency_image.value)
    assert png.startswith(PNG_SIGNATURE)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard-latency.png").write_bytes(png)


def test_dashboard_over_an_in_process_capture() -> None:
    with evkit.capture() as captured, evkit.widgets.dashboard(captured) as dash:
        dash.category_toggles["claude"].value = True
        dash.pattern_text.value = ""
        dash.apply_button.click()
        assert captured.patterns == ["claude.*"]

        # capture() ingests on the emitting thread: the events are held when emit returns.
        evkit.emit("repo.commit.created", {"n": 0}, correlation_id="req-1")
        evkit.emit("claude.session.started", {"n": 1}, correlation_id="req-1")
        drawn = dash.refresh()

        assert drawn is not None
        assert list(drawn.table["type"]) == ["claude.session.started"]
    assert captured._listeners == []


# -- categories learnt from the stream ------------------------------------------------------


def test_categories_seen_in_the_stream_become_toggles(
    col: evkit.collector.WebSocketCollector, dash: Dashboard
) -> None:
    emit_and_wait(
        col,
        [
            ("billing.invoice.created", {"n": 1}, None),
            ("log.warning", {"message": "slow"}, None),
            ("repo.commit.created", {"n": 2}, None),
        ],
        arrive=3,
    )
    drawn = dash.refresh()

    assert drawn is not None
    assert drawn.categories == (*CATEGORIES, "billing", "log")
    assert list(dash.category_toggles) == [*CATEGORIES, "billing", "log"]
    toggle = dash.category_toggles["billing"]
    assert (toggle.description, toggle.layout.display) == ("billing", None)

    for name, each in dash.category_toggles.items():
        each.value = name in ("billing", "log")
    dash.pattern_text.value = ""
    dash.apply_button.click()
    assert col.patterns == ["billing.*", "log.*"]
    assert dash.pattern_text.value == ""


def test_a_collector_of_other_categories_shows_them_as_toggles(server: evkit.Server) -> None:
    with (
        evkit.collect(server, ["orders.*", "*.failed"]) as collector,
        evkit.dashboard(collector) as board,
    ):
        assert list(board.category_toggles) == [*CATEGORIES, "orders"]
        assert board.category_toggles["orders"].value is True
        assert board.pattern_text.value == "*.failed"
        hidden = [t for t in board._toggle_pool if t.layout.display == "none"]
        assert len(hidden) == MOST_CATEGORIES - len(CATEGORIES) - 1
