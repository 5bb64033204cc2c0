"""Forwarding a bus to a remote broadcaster (evkit.client.forwarder) over real sockets.

Each broadcaster here has a bus of its own, and each in-process forwarder forwards a
bus of its own: a forwarder must never feed the bus of the server it publishes to.
What arrived is read on the server side, either by a WebSocket collector (resuming
from id 0, so it misses nothing whenever it connects) or by ``evkit.capture`` on the
server's bus. ``Forwarder.flush()`` returns once the server answered the ping that
followed the last publish, and the server emits published events on its bus before it
answers, so a capture is complete when flush() returns. No test sleeps to synchronise:
every wait is a flush, a collector's ``wait`` or a polled condition with a deadline.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

import evkit
from evkit.bus import EventBus
from evkit.client import Forwarder, connect
from evkit.exceptions import ConnectError
from evkit.testing import wait_until

pytestmark = pytest.mark.timeout(15)

TIMEOUT = 10.0
TOKEN = "t" * 32
JWT_SECRET = "s" * 32


def payloads(events: list[dict[str, Any]], key: str = "n") -> list[Any]:
    return [event["payload"].get(key) for event in events]


@pytest.fixture
def server_bus() -> EventBus:
    return EventBus()


@pytest.fixture
def source() -> EventBus:
    """The bus of the "service" whose events are forwarded."""
    return EventBus()


@pytest.fixture
def forwarders() -> Iterator[list[Forwarder]]:
    """Forwarders to stop at the end of the test, whatever happened."""
    started: list[Forwarder] = []
    yield started
    for forwarder in started:
        forwarder.stop(timeout=1.0)


def jwt_token(scope: str) -> str:
    return jwt.encode({"exp": int(time.time()) + 300, "scope": scope}, JWT_SECRET, "HS256")


# -- a service in its own process --------------------------------------------------------


def run_service(script: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python process of its own, with the broadcaster's URL."""
    return subprocess.run(
        [sys.executable, "-c", script, url], capture_output=True, text=True, timeout=TIMEOUT
    )


SERVICE = r"""
import sys

import evkit
from evkit.forward import connect

forwarder = connect(sys.argv[1])


@evkit.emits("svc.work", fields=lambda n: {"n": n})
def work(n):
    return n


for n in range(250):
    with evkit.correlation(f"req-{n}"):
        evkit.emit("svc.item.queued", {"n": n})
        work(n)
        evkit.emit("svc.item.done", {"n": n})
forwarder.flush()
print("done", forwarder.stats["forwarded"], forwarder.stats["dropped"], flush=True)
forwarder.stop()
"""


def test_a_service_process_forwards_every_event_once_in_order(server_bus: EventBus) -> None:
    srv = evkit.serve(port=0, bus=server_bus)
    with evkit.collect(srv, ["svc.*", "test.end"], since="0") as col:
        child = run_service(SERVICE, srv.url)
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["done", "1000", "0"], child.stderr
        # Stream order: once this marker arrived, nothing published before it is pending.
        server_bus.emit("test.end")
        col.wait(count=1001, timeout=TIMEOUT)
        frame = col.to_dataframe()
    assert len(frame) == 1001
    assert frame["type"].iloc[-1] == "test.end"
    frame = frame.iloc[:-1]
    expected = [
        (kind, n, f"req-{n}")
        for n in range(250)
        for kind in ("svc.item.queued", "svc.work.started", "svc.work.completed", "svc.item.done")
    ]
    received = list(
        zip(frame["type"], frame["n"].astype(int), frame["correlation_id"], strict=True)
    )
    assert received == expected
    ids = frame["id"].astype(int).tolist()
    assert ids == sorted(set(ids))
    spans = frame[frame["type"].str.startswith("svc.work.")]
    assert spans.groupby("spanId")["type"].count().eq(2).all()  # started and completed pair up
    assert spans["duration_ms"].notna().sum() == 250


EXITING_SERVICE = r"""
import sys

import evkit
from evkit.forward import connect

connect(sys.argv[1], flush_interval=60.0)  # nothing would go out on its own for a minute
for n in range(300):
    evkit.emit("svc.item.done", {"n": n})
"""


def test_a_service_that_exits_without_stopping_still_sends_what_it_emitted(
    server_bus: EventBus,
) -> None:
    srv = evkit.serve(port=0, bus=server_bus)
    captured = evkit.capture(["svc.*"], bus=server_bus)
    child = run_service(EXITING_SERVICE, srv.url)
    assert child.returncode == 0, child.stderr
    # The child's exit hook flushed before the process ended: the server had answered.
    assert captured.to_dataframe()["n"].tolist() == list(range(300))


# -- authentication -----------------------------------------------------------------------


def test_with_a_token_events_arrive_and_without_one_connect_says_why(
    server_bus: EventBus, source: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    srv = evkit.serve(port=0, token=TOKEN, bus=server_bus)
    captured = evkit.capture(["svc.*"], bus=server_bus)
    with connect(srv.url, TOKEN, bus=source) as forwarder:
        source.emit("svc.auth.checked", {"n": 1}, correlation_id="req-1")
        forwarder.flush()
        assert forwarder.stats["forwarded"] == 1
    assert payloads(captured.recent()) == [1]
    assert captured.recent()[0]["payload"]["correlationId"] == "req-1"

    caplog.set_level(logging.WARNING, logger="evkit.forward")
    with pytest.raises(ConnectionError, match=r"HTTP 401.*invalid token") as refused:
        connect(srv.url, "not-the-token", bus=source, connect_timeout=0.5)
    assert srv.url in str(refused.value)
    # Retried with backoff, but the configuration error is logged once.
    assert sum("HTTP 401" in r.getMessage() for r in caplog.records) == 1

    with pytest.raises(ConnectionError, match=r"unauthorized: the server requires a token"):
        connect(srv.url, bus=source, connect_timeout=0.5)

    # Neither failed forwarder stayed attached to the bus (no public count: a peek).
    assert len(source._index) == 0


def test_a_token_without_the_publish_scope_has_its_events_rejected(
    server_bus: EventBus, source: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="evkit.forward")
    srv = evkit.serve(port=0, jwt_secret=JWT_SECRET, bus=server_bus)
    captured = evkit.capture(["*"], bus=server_bus)
    with connect(srv.url, jwt_token("subscribe"), bus=source) as forwarder:
        for n in range(10):
            source.emit("svc.item.done", {"n": n})
        forwarder.flush()
        for n in range(5):
            source.emit("svc.item.done", {"n": n})
        forwarder.flush()
        stats = forwarder.stats
    assert stats["rejected"] == 15
    assert stats["forwarded"] == 0
    assert stats["reconnects"] == 0  # the connection was kept
    assert "forbidden" in stats["last_error"]
    assert "publish scope" in stats["last_error"]
    assert len(captured) == 0
    assert sum("rejected" in r.getMessage() for r in caplog.records) == 1

    with connect(srv.url, jwt_token("subscribe publish"), bus=source) as forwarder:
        source.emit("svc.item.done", {"n": 99})
        forwarder.flush()
        assert forwarder.stats["forwarded"] == 1
    assert payloads(captured.recent()) == [99]


# -- reconnecting ----------------------------------------------------------------------------


def cut_off(source: EventBus, forwarders: list[Forwarder], **options: Any) -> tuple[Forwarder, int]:
    """A forwarder whose broadcaster has gone away; returns it and the port to reopen."""
    first = evkit.serve(port=0, bus=EventBus())
    port = first.port
    forwarder = connect(first.url, bus=source, **options)
    forwarders.append(forwarder)
    first.stop()
    wait_until(lambda: forwarder.stats["state"] != "connected", "the forwarder saw the close")
    return forwarder, port


def test_events_emitted_while_the_server_is_down_are_sent_after_reconnecting(
    source: EventBus, forwarders: list[Forwarder]
) -> None:
    forwarder, port = cut_off(source, forwarders)
    for n in range(100):
        source.emit("svc.item.done", {"n": n})
    assert forwarder.stats["buffered"] == 100
    with pytest.raises(TimeoutError, match="100 events waiting"):
        forwarder.flush(timeout=0.1)

    second = evkit.serve(port=port, bus=EventBus())
    with evkit.collect(second, ["svc.*"], since="0") as col:
        col.wait(count=100, timeout=TIMEOUT)
        assert payloads(col.recent(100)) == list(range(100))
    forwarder.flush()
    stats = forwarder.stats
    assert stats["reconnects"] == 1
    assert stats["forwarded"] == 100
    assert stats["buffered"] == stats["dropped"] == 0
    assert stats["last_error"] is not None  # the outage stays on record


def test_a_full_buffer_drops_the_oldest_and_counts_them(
    source: EventBus, forwarders: list[Forwarder]
) -> None:
    forwarder, port = cut_off(source, forwarders, queue_size=50)
    for n in range(200):
        source.emit("svc.item.done", {"n": n})
    assert forwarder.stats["dropped"] == 150
    assert forwarder.stats["buffered"] == 50

    second = evkit.serve(port=port, bus=EventBus())
    with evkit.collect(second, ["svc.*"], since="0") as col:
        col.wait(count=50, timeout=TIMEOUT)
        forwarder.flush()
        second.flush()
        assert payloads(col.recent(100)) == list(range(150, 200))
    assert forwarder.stats["forwarded"] == 50
    assert forwarder.stats["dropped"] == 150


# -- what leaves the process -----------------------------------------------------------------


def test_payloads_are_redacted_before_they_leave_the_process(
    server_bus: EventBus, source: EventBus
) -> None:
    # The server redacts nothing itself here, so what it receives is what was sent.
    srv = evkit.serve(port=0, bus=server_bus, redact_keys=())
    captured = evkit.capture(["svc.*"], bus=server_bus)
    local = evkit.capture(["svc.*"], bus=source)
    with connect(srv.url, bus=source) as forwarder:
        source.emit(
            "svc.user.login",
            {"user": "ada", "password": "hunter2", "headers": [{"Authorization": "Bearer x"}]},
        )
        forwarder.flush()
    [received] = captured.recent()
    assert received["payload"] == {
        "user": "ada",
        "password": "[redacted]",
        "headers": [{"Authorization": "[redacted]"}],
    }
    # The emitter's own event is untouched.
    assert local.recent()[0]["payload"]["password"] == "hunter2"


def test_an_event_that_cannot_be_sent_is_counted_and_the_rest_still_go(
    server_bus: EventBus, source: EventBus
) -> None:
    srv = evkit.serve(port=0, bus=server_bus)
    captured = evkit.capture(["svc.*"], bus=server_bus)
    with connect(srv.url, bus=source, max_message_size=16 * 1024) as forwarder:
        source.emit("svc.item.done", {"n": 0})
        source.emit("svc.item.huge", {"n": 1, "blob": "x" * 20_000})  # past the frame limit
        source.emit("svc.item.odd", {"n": 2, "big": 2**70})  # JSON cannot hold it
        deep: dict[str, Any] = {}
        for _ in range(5_000):
            deep = {"inner": deep}
        source.emit("svc.item.deep", {"n": 3, "deep": deep})  # too deep to redact or encode
        source.emit("svc.item.done", {"n": 4})
        forwarder.flush()
        stats = forwarder.stats
    assert stats["unsendable"] == 3
    assert stats["forwarded"] == 2
    assert stats["reconnects"] == 0
    assert payloads(captured.recent()) == [0, 4]


def test_a_large_burst_is_split_into_messages_the_server_accepts(
    server_bus: EventBus, source: EventBus
) -> None:
    # 2,000 events of about 1 KiB: far more than one 64 KiB frame (the server's limit,
    # which would close the connection with 1009) or one batch of 500 could hold.
    srv = evkit.serve(port=0, bus=server_bus)
    captured = evkit.capture(["svc.*"], bus=server_bus)
    with connect(srv.url, bus=source) as forwarder:
        for n in range(2_000):
            source.emit("svc.item.done", {"n": n, "pad": "x" * 1_000})
        forwarder.flush()
        assert forwarder.stats["reconnects"] == 0
    assert captured.to_dataframe()["n"].tolist() == list(range(2_000))
    assert srv.stats()["published"] == 2_000


def test_events_go_out_on_their_own_within_the_flush_interval(
    server_bus: EventBus, source: EventBus
) -> None:
    srv = evkit.serve(port=0, bus=server_bus)
    captured = evkit.capture(["svc.*"], bus=server_bus)
    with connect(srv.url, bus=source, flush_interval=0.01) as forwarder:
        source.emit("svc.item.done", {"n": 1})  # one event, far from a full batch; no flush()
        wait_until(lambda: len(captured) == 1, "the event arrived", timeout=5.0)
        wait_until(lambda: forwarder.stats["forwarded"] == 1, "the pong confirmed it", 5.0)


def test_stop_sends_what_is_waiting_then_detaches(server_bus: EventBus, source: EventBus) -> None:
    srv = evkit.serve(port=0, bus=server_bus)
    captured = evkit.capture(["svc.*"], bus=server_bus)
    forwarder = connect(srv.url, bus=source, patterns=["svc.item.*"], flush_interval=5.0)
    for n in range(10):
        source.emit("svc.item.done", {"n": n})
    source.emit("svc.other.event", {"n": -1})  # not matched by the patterns
    forwarder.stop()
    assert payloads(captured.recent()) == list(range(10))
    source.emit("svc.item.done", {"n": 10})
    stats = forwarder.stats
    assert (stats["state"], stats["forwarded"], stats["buffered"]) == ("stopped", 10, 0)
    assert repr(forwarder).startswith(f"<evkit.Forwarder {srv.url} stopped forwarded=10")
    forwarder.stop()  # again: nothing to do


def test_connect_rejects_what_is_not_a_websocket_url() -> None:
    for url in ("http://127.0.0.1:3000/ws/events", "127.0.0.1:3000", "ws://"):
        with pytest.raises(ValueError, match="WebSocket URL"):
            connect(url)
    with pytest.raises(ValueError, match="queue_size"):
        connect("ws://127.0.0.1:1/ws/events", queue_size=0)


def test_connect_to_nothing_raises_connection_error_naming_the_url() -> None:
    url = "ws://127.0.0.1:9/ws/events"  # the discard port: nothing listens on it
    with pytest.raises(ConnectionError, match=r"ws://127\.0\.0\.1:9/ws/events.*last error") as info:
        connect(url, bus=EventBus(), connect_timeout=0.3)
    # evkit's own error, still caught by `except ConnectionError`.
    assert isinstance(info.value, ConnectError)
    assert isinstance(info.value, evkit.EvkitError)


# -- names and forms ------------------------------------------------------------------------


def test_the_old_module_still_gives_the_forwarder() -> None:
    import evkit.forward

    assert evkit.forward.Forwarder is Forwarder
    assert evkit.forward.connect is connect


def test_max_buffer_still_works_with_a_deprecation_warning(
    server_bus: EventBus, source: EventBus
) -> None:
    srv = evkit.serve(port=0, bus=server_bus)
    with pytest.warns(DeprecationWarning, match=r"max_buffer.*queue_size=50") as warned:
        forwarder = connect(srv.url, bus=source, max_buffer=50)
    assert warned[0].filename == __file__  # attributed to the caller, so it is shown
    with forwarder:
        assert forwarder.queue_size == 50
        with pytest.warns(DeprecationWarning, match="queue_size"):
            assert forwarder.max_buffer == 50
    with (
        pytest.warns(DeprecationWarning, match="max_buffer"),
        pytest.raises(ValueError, match="max_buffer"),
    ):
        connect(srv.url, bus=source, max_buffer=0)
    with (
        pytest.warns(DeprecationWarning, match="max_buffer"),
        pytest.raises(TypeError, match="both"),
    ):
        connect(srv.url, bus=source, max_buffer=5, queue_size=6)


def test_stats_is_called_for_a_plain_dict_and_still_reads_as_one(
    server_bus: EventBus, source: EventBus
) -> None:
    srv = evkit.serve(port=0, bus=server_bus)
    with connect(srv.url, bus=source) as forwarder:
        source.emit("svc.item.done", {"n": 1})
        forwarder.flush()
        stats = forwarder.stats()
        assert type(stats) is dict
        assert stats["forwarded"] == 1
        assert forwarder.stats["forwarded"] == 1  # the documented older form
        assert set(stats) == {
            "state",
            "forwarded",
            "dropped",
            "rejected",
            "unsendable",
            "reconnects",
            "buffered",
            "last_error",
        }


# -- the command line ---------------------------------------------------------------------------


def evkit_publish(
    *args: str, token_variable: str | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "EVKIT_TOKEN"}
    if token_variable is not None:
        environment["EVKIT_TOKEN"] = token_variable
    return subprocess.run(
        [sys.executable, "-m", "evkit", "publish", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
    )


def test_cli_publish_to_a_server_with_auth(server_bus: EventBus) -> None:
    srv = evkit.serve(port=0, token=TOKEN, bus=server_bus)
    captured = evkit.capture(["repo.*"], bus=server_bus)
    event = ["repo.commit.created", "--payload", '{"path": "/x"}', "--url", srv.url]

    done = evkit_publish(*event, "--token", TOKEN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "published repo.commit.created as id 1"
    assert [e["payload"] for e in captured.recent()] == [{"path": "/x"}]

    done = evkit_publish(*event, token_variable=TOKEN)  # the token from $EVKIT_TOKEN
    assert done.returncode == 0, done.stderr
    assert len(captured) == 2

    refused = evkit_publish(*event, "--token", "not-the-token")
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr
    assert "invalid token" in refused.stderr
    assert "Traceback" not in refused.stderr

    refused = evkit_publish(*event)
    assert refused.returncode == 1
    assert "requires a token" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(captured) == 2


def test_cli_publish_rejected_for_want_of_the_publish_scope_says_why(server_bus: EventBus) -> None:
    srv = evkit.serve(port=0, jwt_secret=JWT_SECRET, bus=server_bus)
    captured = evkit.capture(["repo.*"], bus=server_bus)
    done = evkit_publish("repo.commit.created", "--url", srv.url, "--token", jwt_token("subscribe"))
    assert done.returncode == 1
    assert "evkit: rejected: forbidden" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(captured) == 0
