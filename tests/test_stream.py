"""``evkit.subscribe``: events as an async iterator, from the bus and over real sockets.

The consumer's loop is the test's own (``asyncio.run``), as a notebook's is the kernel's;
the WebSocket side runs on evkit's loop thread. Waits are conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import evkit
from evkit.bus import Event, EventBus
from evkit.client.stream import EventStream
from evkit.testing import serving, wait_until, wait_until_async

TIMEOUT = 10.0


def handlers(bus: EventBus) -> int:
    return len(bus._index)  # subscribers registered: the stream's handler leaves with it


def test_bus_events_arrive_filtered_and_breaking_out_unsubscribes() -> None:
    bus = EventBus()

    async def main() -> list[tuple[str, Any]]:
        got: list[tuple[str, Any]] = []
        stream = evkit.subscribe(bus, ["repo.*", "*.failed"], correlation_id="req-1")
        async with stream:
            assert handlers(bus) == 1
            bus.emit("repo.commit.created", {"n": 1}, correlation_id="req-1")
            bus.emit("repo.commit.created", {"n": 2}, correlation_id="other")
            bus.emit("claude.session.started", {"n": 3}, correlation_id="req-1")
            bus.emit("claude.session.failed", {"n": 4}, correlation_id="req-1")
            async for event in stream:
                assert isinstance(event, Event)
                got.append((event.type, event.payload["n"]))
                if len(got) == 2:
                    break
            # The loop finalises the abandoned iteration on its next turn.
            await wait_until_async(lambda: stream.stats()["state"] == "closed", "closed")
            assert handlers(bus) == 0
        return got

    assert asyncio.run(main()) == [("repo.commit.created", 1), ("claude.session.failed", 4)]


def test_events_emitted_on_another_thread_wake_the_consumer() -> None:
    bus = EventBus()

    async def main() -> list[int]:
        numbers: list[int] = []
        async with evkit.subscribe(bus, "work.*") as stream:
            worker = threading.Thread(
                target=lambda: [bus.emit("work.item.done", {"n": n}) for n in range(50)]
            )
            worker.start()
            async for event in stream:
                numbers.append(event.payload["n"])
                if len(numbers) == 50:
                    break
            worker.join()
        return numbers

    assert asyncio.run(main()) == list(range(50))


def test_a_slow_consumer_loses_the_oldest_events_and_they_are_counted() -> None:
    bus = EventBus()

    async def main() -> tuple[list[int], dict[str, Any]]:
        async with evkit.subscribe(bus, "*", buffer_size=3) as stream:
            for n in range(10):
                bus.emit("work.item.done", {"n": n})
            numbers = []
            async for event in stream:
                numbers.append(event.payload["n"])
                if stream.stats()["held"] == 0:
                    break
            return numbers, stream.stats()

    numbers, stats = asyncio.run(main())
    assert numbers == [7, 8, 9]
    assert (stats["received"], stats["dropped"]) == (10, 7)


def test_the_global_bus_as_evkit_bus() -> None:
    async def main() -> Event:
        async with evkit.subscribe(evkit.bus, "stream-test.*") as stream:
            evkit.emit("stream-test.ping.sent", {"n": 1})
            async for event in stream:
                return event
        raise AssertionError("no event")

    assert asyncio.run(main()).type == "stream-test.ping.sent"


def test_over_a_real_socket_with_ids_and_a_clean_end_on_break() -> None:
    with serving() as server:

        async def main() -> list[Event]:
            got: list[Event] = []
            stream = evkit.subscribe(server, ["repo.*"])
            async for event in stream:  # connects on the first step
                got.append(event)
                if len(got) == 3:
                    break
            return got

        async def run() -> list[Event]:
            task = asyncio.create_task(main())
            await wait_until_async(lambda: server.stats()["clients"] == 1, "the stream connected")
            for n in range(3):
                evkit.emit("claude.session.started", {"n": -1})
                evkit.emit("repo.commit.created", {"n": n})
            return await asyncio.wait_for(task, TIMEOUT)

        got = asyncio.run(run())
        assert [event.payload["n"] for event in got] == [0, 1, 2]
        assert all(event.id is not None for event in got)
        assert [int(event.id or 0) for event in got] == sorted(int(event.id or 0) for event in got)
        wait_until(lambda: server.stats()["clients"] == 0, "the stream disconnected", TIMEOUT)


def test_closing_the_consumers_loop_ends_the_subscription() -> None:
    with serving() as server:

        async def main() -> None:
            async def read() -> None:
                async for _ in evkit.subscribe(server.url):
                    pass

            asyncio.create_task(read())  # noqa: RUF006  # left running: asyncio.run ends it
            await wait_until_async(lambda: server.stats()["clients"] == 1, "the stream connected")

        asyncio.run(main())
        wait_until(lambda: server.stats()["clients"] == 0, "the stream disconnected", TIMEOUT)


def test_a_refused_subscription_raises_from_the_loop() -> None:
    with serving(token="a-long-random-string-for-tests") as server:

        async def main() -> None:
            async for _ in evkit.subscribe(server, token="wrong", connect_timeout=5):
                pass

        with pytest.raises(evkit.EvkitError):
            asyncio.run(main())


def test_bad_sources_and_options_are_refused_at_the_call() -> None:
    with pytest.raises(ValueError, match="ws:// URL"):
        evkit.subscribe("http://127.0.0.1:3000/")
    with pytest.raises(TypeError, match="EventBus"):
        evkit.subscribe(42)
    with pytest.raises(ValueError, match="keeps no history"):
        evkit.subscribe(evkit.bus, since="10")
    with pytest.raises(ValueError, match="buffer_size"):
        evkit.subscribe(evkit.bus, buffer_size=0)
    with pytest.raises(evkit.InvalidPatternError):
        evkit.subscribe(evkit.bus, ["not a pattern"])
    stream = evkit.subscribe(evkit.bus)
    assert isinstance(stream, EventStream)
    assert stream.stats()["state"] == "new"
    assert repr(stream) == "<evkit.EventStream in-process bus new>"
