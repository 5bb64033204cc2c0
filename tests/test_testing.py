"""evkit.testing, as a user's tests would use it: real servers, real sockets, bounded waits."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import evkit
from evkit.bus import EventBus
from evkit.exceptions import WaitTimeout
from evkit.testing import TestClient, capture_events, free_port, serving, wait_until


def test_capture_events_records_matching_events_in_order_and_lets_go() -> None:
    with capture_events("repo.*") as events:
        evkit.emit("repo.commit.created", {"n": 1})
        evkit.emit("claude.session.started", {"n": 2})
        evkit.emit("repo.push.completed", {"n": 3})
    evkit.emit("repo.commit.created", {"n": 4})  # after the block: not recorded
    assert [(e.type, e.payload["n"]) for e in events] == [
        ("repo.commit.created", 1),
        ("repo.push.completed", 3),
    ]


def test_capture_events_on_a_bus_of_its_own() -> None:
    bus = EventBus()
    with capture_events(bus=bus) as events:
        bus.emit("a.b.c", {"n": 1})
        evkit.emit("a.b.c", {"n": 2})  # the global bus: another bus
    assert [e.payload["n"] for e in events] == [1]


def test_serving_and_the_test_client_speak_the_real_protocol() -> None:
    with serving(max_subscriptions=3) as server:
        assert server.running

        async def scenario() -> None:
            async with await TestClient.connect(server.url, eventTypes="repo.*") as client:
                assert client.welcome["payload"]["subscriptions"] == ["repo.*"]
                evkit.emit("repo.commit.created", {"n": 1})
                [event] = await client.events(1)
                assert event["payload"]["n"] == 1
                reply = await client.request(
                    {"type": "subscribe", "payload": {"eventTypes": ["a", "b", "c"]}}
                )
                assert reply["payload"]["code"] == "too_many_subscriptions"
                evkit.flush()
                await client.assert_silent()

        asyncio.run(scenario())
    assert not server.running


def test_wait_until_returns_once_true_and_names_what_it_waited_for() -> None:
    done = threading.Event()
    threading.Timer(0.05, done.set).start()
    wait_until(done.is_set, "the timer fired", timeout=5)
    with pytest.raises(WaitTimeout, match="waiting until nothing happens") as info:
        wait_until(lambda: False, "nothing happens", timeout=0.05)
    assert isinstance(info.value, TimeoutError)


def test_free_port_is_free() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
