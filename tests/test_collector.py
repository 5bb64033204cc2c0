"""The notebook collector: over real sockets against a real broadcaster, and from the bus.

Every wait is on a condition with a deadline: ``evkit.flush()`` after emitting, then
``col.wait(count=...)`` or ``col.wait_for(...)``; connection states are polled with a
deadline. Stream order makes "nothing else arrived" checkable: once the last event
emitted has arrived, every earlier one that matched has arrived too.
"""

from __future__ import annotations

import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import pytest

import evkit
from evkit.collector import FIXED_COLUMNS, Collector
from evkit.exceptions import ConnectError
from evkit.testing import wait_until
from tests.test_columns import assert_fixed_dtypes

TIMEOUT = 10.0


def emit_all(events: Sequence[tuple[str, dict[str, Any], str | None]]) -> None:
    for type_, payload, correlation_id in events:
        evkit.emit(type_, payload, correlation_id=correlation_id)
    evkit.flush()


def types_of(col: evkit.Collector) -> list[str]:
    return list(col.to_dataframe()["type"])


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port with nothing listening on it (bound, so nobody else takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- subscription over the socket -----------------------------------------------------------


def test_only_subscribed_events_arrive(server: evkit.Server) -> None:
    with evkit.collect(server, ["repo.*"]) as col:
        emit_all(
            [
                ("repo.commit.created", {"n": 0}, None),
                ("claude.session.started", {"n": 1}, None),
                ("github.api.started", {"n": 2}, None),
                ("repo.push.completed", {"n": 3}, None),
            ]
        )
        col.wait(count=2, timeout=TIMEOUT)
        df = col.to_dataframe()
        assert list(df["type"]) == ["repo.commit.created", "repo.push.completed"]
        assert list(df["n"]) == [0, 3]


def test_correlation_id_restricts_to_that_request(server: evkit.Server) -> None:
    with evkit.collect(server, ["*"], correlation_id="req-1") as col:
        assert col.correlation_id == "req-1"
        emit_all(
            [
                ("repo.commit.created", {"n": 0}, "req-1"),
                ("repo.commit.created", {"n": 1}, "req-2"),
                ("repo.commit.created", {"n": 2}, None),
                ("claude.session.started", {"n": 3}, "req-1"),
            ]
        )
        col.wait(count=2, timeout=TIMEOUT)
        df = col.to_dataframe()
        assert list(df["n"]) == [0, 3]
        assert list(df["correlation_id"]) == ["req-1", "req-1"]


def test_live_resubscription_with_replace(server: evkit.Server) -> None:
    with evkit.collect(server, ["repo.*"]) as col:
        emit_all([("repo.commit.created", {"n": 0}, None)])
        col.wait(count=1, timeout=TIMEOUT)

        assert col.subscribe(["claude.*"], replace=True) == ["claude.*"]
        assert col.patterns == ["claude.*"]
        emit_all(
            [
                ("repo.commit.created", {"n": 1}, None),
                ("claude.session.started", {"n": 2}, None),
                ("repo.push.completed", {"n": 3}, None),
                ("claude.session.completed", {"n": 4}, None),
            ]
        )
        col.wait(count=3, timeout=TIMEOUT)
        df = col.to_dataframe()
        assert list(df["n"]) == [0, 2, 4]

        # Without replace, patterns are added to the set.
        assert col.subscribe(["github.api.*"]) == ["claude.*", "github.api.*"]
        emit_all([("repo.x.y", {"n": 5}, None), ("github.api.completed", {"n": 6}, None)])
        col.wait(count=4, timeout=TIMEOUT)
        assert list(col.to_dataframe()["n"]) == [0, 2, 4, 6]


def test_unsubscribe_removes_patterns(server: evkit.Server) -> None:
    with evkit.collect(server, ["repo.*", "claude.*"]) as col:
        assert col.unsubscribe(["repo.*"]) == ["claude.*"]
        assert col.patterns == ["claude.*"]
        emit_all(
            [
                ("repo.commit.created", {"n": 0}, None),
                ("claude.session.started", {"n": 1}, None),
            ]
        )
        col.wait(count=1, timeout=TIMEOUT)
        assert types_of(col) == ["claude.session.started"]


def test_set_correlation_then_clear_it(server: evkit.Server) -> None:
    with evkit.collect(server, ["*"]) as col:
        col.set_correlation("x")
        assert [col.correlation_id] == ["x"]
        emit_all([("repo.a.b", {"n": 0}, "y"), ("repo.a.b", {"n": 1}, "x")])
        col.wait(count=1, timeout=TIMEOUT)
        assert list(col.to_dataframe()["n"]) == [1]

        col.set_correlation(None)
        assert col.correlation_id is None
        emit_all([("repo.a.b", {"n": 2}, "y"), ("repo.a.b", {"n": 3}, None)])
        col.wait(count=3, timeout=TIMEOUT)
        df = col.to_dataframe()
        assert list(df["n"]) == [1, 2, 3]
        assert list(df["correlation_id"].astype(object).fillna("-")) == ["x", "y", "-"]


# -- waiting ---------------------------------------------------------------------------------


def test_wait_timeout_says_how_many_arrived_and_their_types(server: evkit.Server) -> None:
    with evkit.collect(server, ["repo.*"]) as col:
        emit_all(
            [
                ("repo.commit.created", {}, None),
                ("repo.commit.created", {}, None),
                ("repo.push.completed", {}, None),
                ("claude.session.started", {}, None),
            ]
        )
        col.wait(count=3, timeout=TIMEOUT)
        started = time.monotonic()
        with pytest.raises(evkit.WaitTimeout) as info:
            col.wait(count=10, timeout=0.3)
        assert time.monotonic() - started < 5
        assert isinstance(info.value, TimeoutError)
        message = str(info.value)
        assert "10 events" in message
        assert "arrived: 3 events" in message
        assert "repo.commit.created 2" in message
        assert "repo.push.completed 1" in message
        assert "claude" not in message.replace("'repo.*'", "")

        with pytest.raises(evkit.WaitTimeout, match="another event"):
            col.wait(timeout=0.2)


def test_wait_for_more_than_buffer_size_is_a_value_error(server: evkit.Server) -> None:
    with evkit.collect(server, buffer_size=10) as col:
        with pytest.raises(ValueError, match="buffer_size=10"):
            col.wait(count=11, timeout=0.1)
        # Exactly buffer_size is reachable, so it is a valid wait.
        emit_all([("repo.a.b", {"n": n}, None) for n in range(10)])
        col.wait(count=10, timeout=TIMEOUT)


def test_wait_for_returns_an_event_already_received(server: evkit.Server) -> None:
    with evkit.collect(server, ["*"]) as col:
        emit_all([("repo.a.b", {"n": 0}, None), ("repo.a.c", {"n": 1}, None)])
        col.wait(count=2, timeout=TIMEOUT)
        event = col.wait_for(lambda e: e["payload"]["n"] == 0, timeout=TIMEOUT)
        assert event["type"] == "repo.a.b"
        assert set(event) == {"type", "timestamp", "id", "payload"}


def test_wait_for_returns_an_event_arriving_later(server: evkit.Server) -> None:
    with evkit.collect(server, ["*"]) as col:
        emit_all([("repo.a.b", {"n": 0}, None)])
        col.wait(count=1, timeout=TIMEOUT)
        scanning = threading.Event()

        def predicate(event: dict[str, Any]) -> bool:
            scanning.set()  # wait_for is running: what is emitted now arrives "later"
            return bool(event["payload"]["n"] == 1)

        def emit_when_scanning() -> None:
            if scanning.wait(TIMEOUT):
                evkit.emit("repo.a.c", {"n": 1})

        emitter = threading.Thread(target=emit_when_scanning, daemon=True)
        emitter.start()
        event = col.wait_for(predicate, timeout=TIMEOUT)
        emitter.join(TIMEOUT)
        assert event["type"] == "repo.a.c"
        assert col.stats["received"] == 2


def test_wait_for_raises_wait_timeout_when_nothing_matches(server: evkit.Server) -> None:
    with evkit.collect(server, ["*"]) as col:
        emit_all([("repo.a.b", {"n": 0}, None)])
        col.wait(count=1, timeout=TIMEOUT)
        with pytest.raises(evkit.WaitTimeout, match=r"arrived: 1 events \(repo\.a\.b 1\)"):
            col.wait_for(lambda e: False, timeout=0.3)


# -- bounded buffer and stats ----------------------------------------------------------------


def test_bounded_buffer_keeps_exactly_the_newest_events(server: evkit.Server) -> None:
    with evkit.collect(server, ["bulk.*"], buffer_size=100) as col:
        emit_all([("bulk.item.created", {"seq": n}, None) for n in range(1000)])
        last = col.wait_for(lambda e: e["payload"]["seq"] == 999, timeout=TIMEOUT)
        stats = col.stats
        assert stats["received"] == 1000
        assert stats["held"] == 100
        assert len(col) == 100
        # Every event received is either held or counted as dropped, at any moment.
        assert stats["held"] + stats["dropped"] == stats["received"]

        df = col.to_dataframe()
        assert len(df) == 100
        assert list(df["seq"]) == list(range(900, 1000))
        last_id = int(last["id"])
        assert list(df["id"]) == [str(i) for i in range(last_id - 99, last_id + 1)]
        stats = col.stats
        assert stats["dropped"] == 900
        assert stats["held"] == 100
        assert stats["received"] == 1000


def test_bounded_buffer_trims_an_already_converted_frame_too() -> None:
    with evkit.capture(["bulk.*"], buffer_size=100) as col:
        for n in range(60):
            evkit.emit("bulk.item.created", {"seq": n})
        assert list(col.to_dataframe()["seq"]) == list(range(60))
        for n in range(60, 160):
            evkit.emit("bulk.item.created", {"seq": n})
        stats = col.stats
        assert (stats["received"], stats["held"], stats["dropped"]) == (160, 100, 60)
        df = col.to_dataframe()
        assert list(df["seq"]) == list(range(60, 160))
        assert list(df.index) == list(range(100))
        stats = col.stats
        assert (stats["received"], stats["held"], stats["dropped"]) == (160, 100, 60)


def test_stats_counters(server: evkit.Server) -> None:
    with evkit.collect(server, ["repo.*", "claude.*"]) as col:
        stats = col.stats
        assert stats["state"] == "running"
        assert stats["connection"] == "connected"
        assert (stats["received"], stats["held"], stats["dropped"]) == (0, 0, 0)
        assert (stats["reconnects"], stats["replayed"], stats["gaps"]) == (0, 0, 0)
        assert stats["types"] == {}
        assert stats["last_id"] == server.stats()["last_id"]

        emit_all(
            [("repo.commit.created", {}, None)] * 3
            + [("claude.session.started", {}, None)] * 2
            + [("github.api.started", {}, None)]
        )
        col.wait(count=5, timeout=TIMEOUT)
        stats = col.stats
        assert (stats["received"], stats["held"], stats["dropped"]) == (5, 5, 0)
        assert stats["types"] == {"repo.commit.created": 3, "claude.session.started": 2}
        assert stats["last_id"] == col.to_dataframe()["id"].iloc[-1]
        assert stats["rate"] >= 0

        col.clear()
        stats = col.stats
        assert (stats["received"], stats["held"]) == (5, 0)
        assert len(col.to_dataframe()) == 0


def test_stats_is_called_for_a_plain_dict_and_still_reads_as_one() -> None:
    with evkit.capture(["repo.*"]) as col:
        evkit.emit("repo.a.b", {"n": 0})
        stats = col.stats()
        assert type(stats) is dict
        assert stats["received"] == 1
        assert col.stats["received"] == 1  # the documented older form
        assert isinstance(col.stats, dict)


def test_max_events_still_works_with_a_deprecation_warning(server: evkit.Server) -> None:
    with pytest.warns(DeprecationWarning, match=r"max_events.*buffer_size=10") as warned:
        col = evkit.collect(server, max_events=10)
    assert warned[0].filename == __file__  # attributed to the caller, so it is shown
    with col:
        assert col.buffer_size == 10
        with pytest.warns(DeprecationWarning, match="buffer_size"):
            assert col.max_events == 10
    with pytest.warns(DeprecationWarning, match="capture"):
        captured = evkit.capture(["x.*"], max_events=5)
    assert captured.buffer_size == 5
    captured.stop()
    with pytest.warns(DeprecationWarning, match=r"Collector\(max_events"):
        assert Collector("x", ["*"], None, max_events=7).buffer_size == 7
    with (
        pytest.warns(DeprecationWarning, match="max_events"),
        pytest.raises(TypeError, match="both"),
    ):
        evkit.capture(["x.*"], buffer_size=3, max_events=5)
    # The fourth positional argument is the same bound under its new name.
    with evkit.capture(["x.*"], None, 4) as positional:
        assert positional.buffer_size == 4


# -- reconnecting ------------------------------------------------------------------------------


def test_reconnects_after_the_server_restarts_on_the_same_port() -> None:
    srv = evkit.serve(port=0)
    port = srv.port
    srv2: evkit.Server | None = None
    try:
        with evkit.collect(srv, ["life.*"]) as col:
            emit_all([("life.cycle.before", {"n": 0}, None)])
            col.wait(count=1, timeout=TIMEOUT)

            srv.stop()
            wait_until(lambda: col.stats["connection"] != "connected", "the collector noticed")
            srv2 = evkit.serve(port=port)
            wait_until(
                lambda: col.stats["reconnects"] >= 1 and col.stats["connection"] == "connected",
                "the collector reconnected",
            )

            emit_all([("life.cycle.after", {"n": 1}, None), ("other.x.y", {}, None)])
            col.wait(count=2, timeout=TIMEOUT)
            assert types_of(col) == ["life.cycle.before", "life.cycle.after"]
            stats = col.stats
            # The new server is another stream (new epoch): the resume was reported.
            assert stats["gaps"] >= 1
            assert stats["state"] == "running"
    finally:
        srv.stop()
        if srv2 is not None:
            srv2.stop()


def test_forced_drops_during_a_stream_lose_and_repeat_nothing(server: evkit.Server) -> None:
    total, drops, window = 2000, 10, 50
    failures: list[BaseException] = []

    with evkit.collect(server, ["drill.*"]) as col:

        def emitter() -> None:
            # At most `window` events ahead of what arrived: the stream is still flowing
            # when each drop happens, and events are emitted while the collector is away.
            try:
                for seq in range(total):
                    if seq >= window:
                        col.wait(count=seq - window + 1, timeout=TIMEOUT)
                    evkit.emit("drill.item.created", {"seq": seq})
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=emitter, daemon=True)
        thread.start()
        for drop in range(drops):
            col.wait(count=(drop + 1) * 180, timeout=TIMEOUT)
            wait_until(lambda: col.stats["connection"] == "connected", f"connected ({drop})")
            col.drop_connection()
        col.wait_for(lambda e: e["payload"]["seq"] == total - 1, timeout=TIMEOUT)
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert not failures, failures
        evkit.flush()

        df = col.to_dataframe()
        ids = [int(i) for i in df["id"]]
        assert all(a < b for a, b in itertools.pairwise(ids)), "ids not strictly increasing"
        assert list(df["seq"]) == list(range(total))
        stats = col.stats
        assert stats["received"] == total
        assert stats["reconnects"] >= drops
        assert stats["replayed"] > 0 or stats["reconnects"] >= 1
        assert stats["gaps"] == 0


# -- errors at collect() -----------------------------------------------------------------------


def test_nothing_listening_is_a_quick_connection_error_naming_the_url(free_port: int) -> None:
    url = f"ws://127.0.0.1:{free_port}/ws/events"
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        evkit.collect(url, connect_timeout=1)
    assert time.monotonic() - started < 4
    assert url in str(info.value)
    assert isinstance(info.value, ConnectError)  # evkit's own, under EvkitError


def test_changing_the_subscription_while_disconnected_is_a_connect_error() -> None:
    srv = evkit.serve(port=0)
    try:
        with evkit.collect(srv, ["repo.*"]) as col:
            srv.stop()
            wait_until(lambda: col.stats()["connection"] != "connected", "the collector noticed")
            with pytest.raises(ConnectError, match="not connected") as info:
                col.subscribe(["claude.*"], timeout=1)
            assert isinstance(info.value, ConnectionError)
            assert col.patterns == ["repo.*"]
    finally:
        srv.stop()


def test_bad_pattern_is_an_invalid_pattern_error(server: evkit.Server) -> None:
    with pytest.raises(evkit.InvalidPatternError) as info:
        evkit.collect(server, ["bad pattern"])
    assert info.value.code == "invalid_pattern"
    assert "bad pattern" in str(info.value)


def test_collect_needs_a_url_or_a_server() -> None:
    with pytest.raises(TypeError, match="int"):
        evkit.collect(123)


# -- display and lifecycle ---------------------------------------------------------------------


def test_repr_html_shows_url_patterns_and_counts(server: evkit.Server) -> None:
    with evkit.collect(server, ["repo.*", "claude.*"], buffer_size=50) as col:
        emit_all([("repo.a.b", {}, None)] * 3)
        col.wait(count=3, timeout=TIMEOUT)
        html = col._repr_html_()
        rows = dict(re.findall(r"<th[^>]*>(.*?)</th><td[^>]*>(.*?)</td>", html))
        assert rows["source"] == server.url
        assert rows["patterns"] == "repo.*, claude.*"
        assert rows["received"] == "3"
        assert rows["events held"] == "3 of at most 50"
        assert rows["dropped (buffer full)"] == "0"
        assert ">running</span>" in html  # the state is the card's badge
        assert server.url in repr(col)


def test_context_manager_stops_the_collector(server: evkit.Server) -> None:
    with evkit.collect(server, ["repo.*"]) as col:
        emit_all([("repo.a.b", {}, None)])
        col.wait(count=1, timeout=TIMEOUT)
    assert col.stats["state"] == "stopped"
    wait_until(lambda: col.stats["connection"] == "stopped", "the subscriber ended")
    emit_all([("repo.a.b", {}, None)])
    assert col.stats["received"] == 1
    assert len(col.to_dataframe()) == 1  # what was buffered stays readable
    col.stop()  # stopping twice is harmless


# -- incremental conversion ------------------------------------------------------------------


def test_incremental_conversion_keeps_every_row() -> None:
    with evkit.capture(["inc.*"]) as col:
        for n in range(3):
            evkit.emit("inc.a.b", {"n": n})
        first = col.to_dataframe()
        assert list(first["n"]) == [0, 1, 2]

        evkit.emit("inc.a.b", {"n": 3, "extra": "e"})
        evkit.emit("inc.a.c", {"n": 4, "y": "changed type"})
        second = col.to_dataframe()
        assert list(second["n"]) == [0, 1, 2, 3, 4]
        assert list(second.columns) == [*FIXED_COLUMNS, "n", "extra", "y"]
        assert list(second["type"]) == ["inc.a.b"] * 4 + ["inc.a.c"]
        assert second["extra"].iloc[:3].isna().all()
        assert second["extra"].iloc[3] == "e"
        assert_fixed_dtypes(second)
        pd.testing.assert_frame_equal(second.iloc[:3][list(first.columns)], first)

        third = col.to_dataframe()
        pd.testing.assert_frame_equal(third, second)
        assert third is not second
        assert col.df.equals(second)


def test_capture_filters_by_correlation_id() -> None:
    with evkit.capture(["*"], correlation_id="req-1") as col:
        evkit.emit("repo.a.b", {"n": 0}, correlation_id="req-1")
        evkit.emit("repo.a.b", {"n": 1}, correlation_id="req-2")
        evkit.emit("repo.a.b", {"n": 2})
        with evkit.correlation("req-1"):
            evkit.emit("repo.a.b", {"n": 3})
        df = col.to_dataframe()
    assert list(df["n"]) == [0, 3]
    assert list(df["correlation_id"]) == ["req-1", "req-1"]


def test_capture_stop_stops_receiving() -> None:
    col = evkit.capture(["repo.*"])
    evkit.emit("repo.a.b", {"n": 0})
    col.stop()
    evkit.emit("repo.a.b", {"n": 1})
    assert col.stats["state"] == "stopped"
    assert col.stats["received"] == 1
    assert list(col.to_dataframe()["n"]) == [0]


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/ws/events", "not a url"])
def test_collect_rejects_a_url_that_is_not_websocket(url: str) -> None:
    with pytest.raises(ValueError, match="needs a WebSocket URL"):
        evkit.collect(url)
