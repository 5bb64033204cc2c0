"""The asyncio Subscriber over real sockets: its URL, resume and gaps, refusals, rejections.

Each test runs the subscriber in its own ``asyncio.run`` loop in the test thread, while
the broadcaster runs on evkit's loop thread. Events are emitted synchronously from the
test: between two awaits the subscriber cannot run, which is how a test emits "while the
connection is down" without racing the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

import evkit
from evkit.client import Subscriber, SubscriberStats
from evkit.exceptions import ConnectError

TIMEOUT = 10.0


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def emit_sequence(start: int, stop: int, type_: str = "repo.commit.created") -> None:
    for seq in range(start, stop):
        evkit.emit(type_, {"seq": seq})
    evkit.flush()


class Sink:
    """Records what a subscriber hands over; awaits conditions on it with a timeout."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    def on_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()

    @property
    def seqs(self) -> list[int]:
        return [event["payload"]["seq"] for event in self.events]

    def kinds(self) -> list[str]:
        return [message["type"] for message in self.messages]

    async def until(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait until ``condition`` holds: re-checked on every message, and every 20 ms
        for what no message announces (a lost connection)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.02)

    def subscriber(self, url: str, patterns: list[str], **options: Any) -> Subscriber:
        return Subscriber(
            url, patterns, on_event=self.on_event, on_message=self.on_message, **options
        )


@contextlib.asynccontextmanager
async def running(subscriber: Subscriber) -> AsyncIterator[asyncio.Task[None]]:
    """Run the subscriber for the block; stop it and make sure ``run()`` ended after."""
    task = asyncio.create_task(subscriber.run())
    try:
        yield task
    finally:
        await subscriber.stop()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class FrontDoor:
    """A TCP front for a real server: closes its first connections, or holds them, then forwards.

    ``close_first`` connections are closed at once, before any HTTP (as a server does
    while it shuts down); the others wait for ``gate`` and are then piped to ``upstream``.
    """

    def __init__(self, upstream_port: int, close_first: int = 0) -> None:
        self.upstream_port = upstream_port
        self.close_first = close_first
        self.accepted = 0
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def __aenter__(self) -> FrontDoor:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/ws/events"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        self.arrived.set()
        if self.accepted <= self.close_first:
            writer.close()
            return
        await self.gate.wait()
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.upstream_port
        )
        self._writers.append(upstream_writer)
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


# -- the connect URL -------------------------------------------------------------------------


def test_connect_url_carries_the_subscription_then_the_resume_point(server: evkit.Server) -> None:
    async def scenario() -> None:
        sink = Sink()
        sub = sink.subscriber(server.url, ["repo.*", "claude.*"], correlation_id="req-1")
        url = sub.connect_url()
        assert url.startswith(server.url + "?")
        assert query_of(url) == {
            "eventTypes": ["repo.*,claude.*"],
            "correlationId": ["req-1"],
            "batch": ["1000,20"],  # evkit's own client asks for batched delivery by default
        }

        async with running(sub):
            await sub.wait_connected(TIMEOUT)
            evkit.emit("repo.commit.created", {"seq": 0}, correlation_id="req-1")
            evkit.emit("repo.commit.created", {"seq": 1}, correlation_id="req-2")
            evkit.emit("claude.session.started", {"seq": 2}, correlation_id="req-1")
            evkit.flush()
            await sink.until(lambda: len(sink.events) == 2)
            assert sink.seqs == [0, 2]
            query = query_of(sub.connect_url())
            assert query["eventTypes"] == ["repo.*,claude.*"]
            assert query["correlationId"] == ["req-1"]
            assert query["since"] == [sink.events[-1]["id"]]
            assert query["epoch"] == [server.stats()["epoch"]]
            assert sub.counters.received == 2
            assert sub.counters.state == "connected"
            assert sink.kinds()[0] == "websocket.connected"
        assert sub.counters.state == "stopped"

    asyncio.run(scenario())


def test_subscribe_changes_what_the_next_connection_asks_for(server: evkit.Server) -> None:
    async def scenario() -> None:
        sink = Sink()
        sub = sink.subscriber(server.url, ["repo.*"])
        async with running(sub):
            await sub.wait_connected(TIMEOUT)
            reply = await sub.subscribe(["claude.*"], correlation_id="req-9")
            assert reply["subscriptions"] == ["repo.*", "claude.*"]
            assert sub.patterns == ["repo.*", "claude.*"]
            assert sub.correlation_id == "req-9"
            query = query_of(sub.connect_url())
            assert query["eventTypes"] == ["repo.*,claude.*"]
            assert query["correlationId"] == ["req-9"]

            reply = await sub.unsubscribe(["repo.*"])
            assert reply["subscriptions"] == ["claude.*"]
            assert query_of(sub.connect_url())["eventTypes"] == ["claude.*"]

    asyncio.run(scenario())


def test_stats_is_a_plain_dict_any_thread_may_read(server: evkit.Server) -> None:
    async def scenario() -> None:
        sink = Sink()
        sub = sink.subscriber(server.url, ["repo.*"])
        async with running(sub):
            await sub.wait_connected(TIMEOUT)
            emit_sequence(0, 3)
            await sink.until(lambda: len(sink.events) == 3)
            # Read on another thread, as a collector does: the snapshot published after
            # the last message.
            stats = await asyncio.to_thread(sub.stats)
            assert type(stats) is dict
            assert stats["received"] == 3
            assert stats["state"] == "connected"
            assert stats["last_id"] == sink.events[-1]["id"]
            assert stats["client_id"] == sink.messages[0]["payload"]["clientId"]
            counters = sub.counters
            assert isinstance(counters, SubscriberStats)
            assert (counters.received, counters.last_id) == (3, stats["last_id"])

    asyncio.run(scenario())


# -- resuming after a dropped connection -----------------------------------------------------


def test_resume_beyond_history_is_counted_as_a_gap() -> None:
    srv = evkit.serve(port=0, history_size=10)
    try:

        async def scenario() -> None:
            sink = Sink()
            sub = sink.subscriber(srv.url, ["repo.*"])
            async with running(sub):
                await sub.wait_connected(TIMEOUT)
                emit_sequence(0, 5)
                await sink.until(lambda: len(sink.events) == 5)

                await sub.drop_connection()
                emit_sequence(5, 55)  # no await: the subscriber is still away
                await sink.until(lambda: "websocket.replayed" in sink.kinds())
                await sink.until(lambda: sub.connected)

                stats = sub.counters
                assert stats.gaps == 1
                assert len(stats.gap_reports) == 1
                assert stats.gap_reports[0]["complete"] is False
                assert stats.gap_reports[0]["since"] == sink.events[4]["id"]
                assert stats.replayed == 10
                assert stats.reconnects == 1
                # What history still held arrived, once and in order.
                assert sink.seqs == [*range(5), *range(45, 55)]

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_resume_within_history_delivers_every_event_exactly_once(server: evkit.Server) -> None:
    async def scenario() -> None:
        sink = Sink()
        sub = sink.subscriber(server.url, ["repo.*"])
        async with running(sub):
            await sub.wait_connected(TIMEOUT)
            emit_sequence(0, 5)
            await sink.until(lambda: len(sink.events) == 5)

            await sub.drop_connection()
            emit_sequence(5, 55)
            evkit.emit("claude.session.started", {"seq": -1})  # not subscribed: not replayed
            await sink.until(lambda: "websocket.replayed" in sink.kinds())
            emit_sequence(55, 60)  # live again
            await sink.until(lambda: len(sink.events) >= 60)

            assert sink.seqs == list(range(60))
            ids = [int(event["id"]) for event in sink.events]
            assert all(a < b for a, b in itertools.pairwise(ids))
            stats = sub.counters
            assert stats.gaps == 0
            assert stats.gap_reports == []
            assert stats.replayed == 50
            assert stats.reconnects == 1
            assert stats.received == 60
            assert stats.last_id == sink.events[-1]["id"]

    asyncio.run(scenario())


def test_drop_before_the_first_event_still_resumes(server: evkit.Server) -> None:
    """A connection lost before any event arrived resumes from where it subscribed."""

    async def scenario() -> None:
        sink = Sink()
        sub = sink.subscriber(server.url, ["repo.*"])
        async with running(sub):
            await sub.wait_connected(TIMEOUT)
            await sub.drop_connection()
            emit_sequence(0, 20)
            await sink.until(lambda: "websocket.replayed" in sink.kinds())
            await sink.until(lambda: len(sink.events) >= 20)
            assert sink.seqs == list(range(20))
            assert sub.counters.replayed == 20
            assert sub.counters.gaps == 0

    asyncio.run(scenario())


def test_a_handshake_cut_before_any_http_is_retried(server: evkit.Server) -> None:
    """A peer that closes before answering (a server shutting down) is not fatal."""

    async def scenario() -> None:
        async with FrontDoor(server.port, close_first=2) as door:
            door.gate.set()
            sink = Sink()
            sub = sink.subscriber(door.url, ["repo.*"])
            async with running(sub) as task:
                await asyncio.wait(
                    {task, asyncio.ensure_future(sub.wait_connected(TIMEOUT))},
                    return_when=asyncio.FIRST_COMPLETED,
                )
                assert not task.done(), f"run() ended: {task.exception()!r}"
                assert sub.connected
                assert door.accepted == 3
                assert sub.counters.reconnects == 2
                emit_sequence(0, 3)
                await sink.until(lambda: len(sink.events) == 3)

    asyncio.run(scenario())


def test_stop_during_the_handshake_ends_run(server: evkit.Server) -> None:
    async def scenario() -> None:
        async with FrontDoor(server.port) as door:
            sink = Sink()
            sub = sink.subscriber(door.url, ["repo.*"])
            task = asyncio.create_task(sub.run())
            try:
                await asyncio.wait_for(door.arrived.wait(), TIMEOUT)
                await sub.stop()  # the handshake is under way: nothing to close yet
                door.gate.set()
                done, _ = await asyncio.wait({task}, timeout=3)
                assert task in done, "run() went on receiving after stop()"
                assert sub.counters.state == "stopped"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


# -- refusals and rejections -----------------------------------------------------------------


def test_refused_subscription_makes_run_raise_protocol_error(server: evkit.Server) -> None:
    async def scenario() -> None:
        sink = Sink()
        sub = sink.subscriber(server.url, ["repo.*"])
        sub.patterns = ["bad pattern"]  # past the client's own validation
        with pytest.raises(evkit.ProtocolError) as info:
            await asyncio.wait_for(sub.run(), TIMEOUT)
        assert info.value.code == "invalid_pattern"
        assert "refused" in str(info.value)
        assert "bad pattern" in str(info.value)
        assert sub.counters.state == "stopped"
        assert sink.events == []

    asyncio.run(scenario())


def test_client_validates_patterns_before_connecting() -> None:
    with pytest.raises(evkit.InvalidPatternError):
        Subscriber("ws://127.0.0.1:1/ws/events", ["bad pattern"], on_event=lambda event: None)


def test_subscribe_when_not_connected_is_a_connection_error() -> None:
    async def scenario() -> None:
        sub = Subscriber("ws://127.0.0.1:1/ws/events", ["repo.*"], on_event=lambda event: None)
        with pytest.raises(ConnectionError, match=r"ws://127\.0\.0\.1:1/ws/events") as info:
            await sub.subscribe(["claude.*"], timeout=1)
        assert isinstance(info.value, ConnectError)
        with pytest.raises(ConnectionError):
            await sub.unsubscribe(["repo.*"], timeout=1)

    asyncio.run(scenario())


def test_server_rejection_of_subscribe_is_a_protocol_error() -> None:
    srv = evkit.serve(port=0, max_subscriptions=2)
    try:

        async def scenario() -> None:
            sink = Sink()
            sub = sink.subscriber(srv.url, ["a.*"])
            async with running(sub):
                await sub.wait_connected(TIMEOUT)
                with pytest.raises(evkit.ProtocolError) as info:
                    await sub.subscribe(["b.*", "c.*"])
                assert info.value.code == "too_many_subscriptions"
                assert info.value.detail == {"limit": 2, "requested": 3}
                assert sub.patterns == ["a.*"]
                # Rejected whole, and the connection is still good.
                reply = await sub.subscribe(["b.*"])
                assert reply["subscriptions"] == ["a.*", "b.*"]
                assert sub.connected

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_after_resuming_into_a_new_stream_a_later_drop_loses_nothing() -> None:
    """Once resumed into a restarted server, the cursor is that stream's, not the old one's."""
    first = evkit.serve(port=0)
    port = first.port
    servers = [first]
    try:

        async def scenario() -> None:
            sink = Sink()
            sub = sink.subscriber(first.url, ["repo.*"])
            async with running(sub):
                await sub.wait_connected(TIMEOUT)
                emit_sequence(0, 30)
                await sink.until(lambda: len(sink.events) == 30)

                # In a thread: stopping waits for this loop to answer the closing handshake.
                await asyncio.to_thread(first.stop)
                await sink.until(lambda: not sub.connected)
                servers.append(evkit.serve(port=port))
                await sink.until(lambda: sub.connected and sub.counters.gaps == 1)
                await sink.until(lambda: "websocket.replayed" in sink.kinds())
                assert sub.counters.epoch == servers[1].stats()["epoch"]

                await sub.drop_connection()
                emit_sequence(30, 35)  # ids 1-5 of the new stream, while away
                await sink.until(lambda: sink.kinds().count("websocket.replayed") == 2)
                await sink.until(lambda: len(sink.events) >= 35)
                assert sink.seqs == list(range(35))
                assert sub.counters.gaps == 1

        asyncio.run(scenario())
    finally:
        for srv in servers:
            srv.stop()


def test_a_gap_is_counted_even_when_the_connection_drops_before_the_replay_ends() -> None:
    # The gap is announced before the replayed events: a subscriber cut after the first
    # few resumes from an id past the gap (a complete replay), and has counted it anyway.
    # 20 MB of history cannot all be on the wire when the first ten events are read.
    srv = evkit.serve(
        port=0, history_size=20_000, client_buffer_limit=64 * 1024, history_bytes=64 * 1024 * 1024
    )
    try:
        padding = "x" * 1000
        for seq in range(25_000):
            evkit.emit("repo.commit.created", {"seq": seq, "padding": padding})
        evkit.flush()

        async def scenario() -> None:
            sink = Sink()
            sub = sink.subscriber(srv.url, ["repo.*"], since="1", batch=None)

            cuts: list[asyncio.Task[None]] = []

            def on_event(event: dict[str, Any]) -> None:
                sink.on_event(event)
                if len(sink.events) == 10:
                    cuts.append(asyncio.ensure_future(sub.drop_connection()))

            sub.on_event = on_event
            async with running(sub):
                await sink.until(lambda: "websocket.replayed" in sink.kinds(), timeout=30)
                stats = sub.counters
                assert stats.reconnects == 1
                assert stats.gaps == 1, stats.gap_reports
                assert stats.gap_reports[0]["reason"] == "trimmed"
                # The first replay never ended; the one after the cut was complete.
                replayed = [
                    m["payload"] for m in sink.messages if m["type"] == "websocket.replayed"
                ]
                assert [r["complete"] for r in replayed] == [True]
                assert sink.seqs == list(range(5_000, 25_000))  # once each, in order

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_a_message_that_is_not_a_json_object_ends_run_with_a_protocol_error() -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def garbling(ws: ServerConnection) -> None:
        await ws.send('{"type":"websocket.connected","timestamp":1,"payload":{"clientId":"ws-1"}}')
        await ws.send("[1, 2]")
        await ws.wait_closed()

    async def scenario() -> None:
        async with serve(garbling, "127.0.0.1", 0) as garbler:
            port = garbler.sockets[0].getsockname()[1]
            sink = Sink()
            sub = sink.subscriber(f"ws://127.0.0.1:{port}/ws/events", ["*"])
            with pytest.raises(evkit.ProtocolError) as info:
                await asyncio.wait_for(sub.run(), TIMEOUT)
            assert info.value.code == "invalid_message"
            assert "not an object" in str(info.value)
            assert sink.kinds() == ["websocket.connected"]
            assert sub.stats()["state"] == "stopped"

    asyncio.run(scenario())
