"""The broadcaster's write path over real sockets on 127.0.0.1.

Events are framed once by evkit and written once per connection per loop turn;
batched clients with the same patterns, filter and options share a batch group. These
tests check what a client sees: every frame whole, every event once and in stream
order, with batched and unbatched clients side by side, clients changing group while
events wait in it, compression on, a slow consumer cut with 1013 and a vanished one
forgotten, while the others keep receiving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

import evkit
from evkit.patterns import matches
from evkit.protocol import text_frame as _text_frame
from evkit.testing import TIMEOUT, open_client, recv_json, send_json

MIB = 1024 * 1024


async def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Wait for ``condition`` (checked every few milliseconds) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def read_until(ws: ClientConnection, last: Callable[[dict[str, Any]], bool]) -> list[Any]:
    """The messages ``ws`` receives up to the one ``last`` accepts (included).

    Events come back as their ``payload.n`` (batches unpacked, in order), other
    messages as their type.
    """
    seen: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = await recv_json(ws)
            kind = message["type"]
            if kind == "websocket.batch":
                seen.extend(event["payload"]["n"] for event in message["payload"]["events"])
            elif "id" in message:
                seen.append(message["payload"]["n"])
            else:
                seen.append(kind)
            if last(message):
                return seen


async def read_all(ws: ClientConnection) -> list[Any]:
    """What ``ws`` has been sent so far (see :func:`read_until`); call evkit.flush() first."""
    await send_json(ws, {"type": "ping", "payload": "end of read_all"})
    seen = await read_until(ws, lambda m: m["payload"] == {"echo": "end of read_all"})
    assert seen.pop() == "pong"
    return seen


def published(srv: evkit.Server) -> Callable[[int], Callable[[], bool]]:
    """``published(srv)(count)``: a condition true once ``count`` events were handed out."""
    start = srv.stats()["published"]
    return lambda count: lambda: srv.stats()["published"] >= start + count


# -- frames --------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_frame_is_what_websockets_serialises(length: int) -> None:
    payload = bytes(i % 251 for i in range(length))
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert _text_frame(payload) == expected


def test_many_events_to_many_clients_arrive_whole_in_order_with_contiguous_ids() -> None:
    total, clients = 3_000, 20
    # Frame lengths of every size class: 7-bit, 16-bit and 64-bit.
    pads = {0: "", 1: "p" * 100, 2: "q" * 1_000, 3: "r" * 70_000}
    srv = evkit.serve(port=0, client_buffer_limit=512 * MIB)

    def pad_of(n: int) -> str:
        return pads[3] if n % 500 == 7 else pads[n % 3]

    async def reader(ws: ClientConnection) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while len(events) < total:
                message = await recv_json(ws)
                if "id" in message:
                    events.append(message)
        return events

    async def scenario() -> None:
        sockets = [(await open_client(srv.url, eventTypes="wp.*"))[0] for _ in range(clients)]
        first = int(srv.stats()["last_id"]) + 1
        readers = [asyncio.ensure_future(reader(ws)) for ws in sockets]

        def emit_all() -> None:
            for n in range(total):
                evkit.emit("wp.frame.sent", {"n": n, "pad": pad_of(n)})
            evkit.flush()

        await asyncio.get_running_loop().run_in_executor(None, emit_all)
        for events in await asyncio.gather(*readers):
            assert [int(e["id"]) for e in events] == list(range(first, first + total))
            assert [e["payload"]["n"] for e in events] == list(range(total))
            assert all(e["payload"]["pad"] == pad_of(e["payload"]["n"]) for e in events)
        for ws in sockets:
            assert await read_all(ws) == []  # nothing extra, nothing left over
            await ws.close()

    try:
        asyncio.run(scenario())
        assert srv.stats()["delivered"] == total * clients
        assert srv.stats()["slow_consumer_disconnects"] == 0
    finally:
        srv.stop()


# -- batched and unbatched side by side ----------------------------------------------------

MIXED_TYPES = ("mx.a.start", "mx.a.done", "mx.b.start", "mx.b.done")
MIXED_CORRELATIONS = (None, "c1", "c2")
MIXED_CLIENTS: list[dict[str, str]] = [
    {},
    {"batch": "50,20"},
    {"batch": "50,20"},  # the same group as the one before
    {"eventTypes": "mx.a.*", "batch": "50,20"},
    {"eventTypes": "mx.a.*"},
    {"eventTypes": "mx.*.done", "batch": "7,1000"},
    {"eventTypes": "mx.b.*", "correlationId": "c1", "batch": "50,20"},
    {"eventTypes": "mx.b.*", "correlationId": "c1"},
    {"eventTypes": "*", "correlationId": "c2", "batch": "1000,5"},
    {"eventTypes": "mx.b.start,mx.a.*", "batch": "50,20"},
    {"eventTypes": "mx.a.*,mx.b.start", "batch": "50,20"},  # same patterns, other order
]


def selected(query: dict[str, str], stream: list[tuple[str, str | None]]) -> list[int]:
    patterns = query.get("eventTypes", "*").split(",")
    wanted = query.get("correlationId")
    return [
        n
        for n, (type_, correlation_id) in enumerate(stream)
        if any(matches(p, type_) for p in patterns) and wanted in (None, correlation_id)
    ]


def test_batched_and_unbatched_clients_each_get_exactly_their_events_in_order(
    server: evkit.Server,
) -> None:
    stream = [(MIXED_TYPES[n % 4], MIXED_CORRELATIONS[(n // 4) % 3]) for n in range(2_000)]
    before = server.broadcaster.metrics_snapshot()["delivered"].get("mx", 0)
    delivered_before = server.stats()["delivered"]

    async def scenario() -> None:
        sockets = [(await open_client(server.url, **query))[0] for query in MIXED_CLIENTS]
        for n, (type_, correlation_id) in enumerate(stream):
            evkit.emit(type_, {"n": n}, correlation_id=correlation_id)
        evkit.flush()
        for ws, query in zip(sockets, MIXED_CLIENTS, strict=True):
            assert await read_all(ws) == selected(query, stream), query
            await ws.close()

    asyncio.run(scenario())
    expected = sum(len(selected(query, stream)) for query in MIXED_CLIENTS)
    assert server.stats()["delivered"] - delivered_before == expected
    assert server.broadcaster.metrics_snapshot()["delivered"]["mx"] - before == expected


def test_batches_reach_every_member_of_a_group_once_without_a_flush(
    server: evkit.Server,
) -> None:
    async def scenario() -> None:
        short = [(await open_client(server.url, batch="1000,30"))[0] for _ in range(3)]
        long = (await open_client(server.url, batch="1000,150"))[0]
        for n in range(5):
            evkit.emit("tm.batch.sent", {"n": n})
        # No flush: the one batch timer sends both windows' batches.
        for ws in [*short, long]:
            message = await recv_json(ws, timeout=5)
            assert message["type"] == "websocket.batch"
            assert [e["payload"]["n"] for e in message["payload"]["events"]] == list(range(5))
        for ws in [*short, long]:
            assert await read_all(ws) == []
            await ws.close()

    asyncio.run(scenario())


# -- moving between groups while events wait -----------------------------------------------


def test_clients_change_group_while_events_wait_and_lose_or_repeat_nothing(
    server: evkit.Server,
) -> None:
    handed_out = published(server)
    # Long windows: events wait in their group until something flushes it.
    query = {"eventTypes": "gc.one.*", "batch": "1000,10000"}
    sent = 0

    async def phase(one: int, two: int) -> list[int]:
        """Emit ``one`` gc.one events then ``two`` gc.two ones; the gc.one numbers."""
        nonlocal sent
        ones = list(range(sent, sent + one))
        for n in range(sent, sent + one + two):
            evkit.emit("gc.one.event" if n in ones else "gc.two.event", {"n": n})
        sent += one + two
        await until(handed_out(sent), f"{sent} events handed out")
        return ones

    async def change(ws: ClientConnection, kind: str, payload: dict[str, Any]) -> list[Any]:
        """Send a subscription change; what arrives up to its reply (which ends the list)."""
        await send_json(ws, {"type": kind, "payload": payload})
        return await read_until(ws, lambda m: m["type"] == f"websocket.{kind}d")

    async def scenario() -> None:
        a, b, c, d = [(await open_client(server.url, **query))[0] for _ in range(4)]
        resumed_from = server.stats()["last_id"]
        seen: dict[ClientConnection, list[Any]] = {ws: [] for ws in (a, b, c, d)}

        one1 = await phase(10, 5)
        # Adding a pattern moves A to a group of its own; what waited for it goes first.
        seen[a] += await change(a, "subscribe", {"eventTypes": ["gc.two.*"]})
        assert seen[a] == [*one1, "websocket.subscribed"]
        one2 = await phase(10, 5)
        # New batch options move B.
        batch = {"maxEvents": 3, "maxDelayMs": 10000}
        seen[b] += await change(b, "subscribe", {"eventTypes": [], "batch": batch})
        one3 = await phase(10, 5)
        # Dropping its only pattern takes C out of every group.
        seen[c] += await change(c, "unsubscribe", {"eventTypes": ["gc.one.*"]})
        one4 = await phase(5, 5)
        # A client joining a group that holds events (D's, with one4) gets none of them ...
        e = (await open_client(server.url, **query))[0]
        # ... and one resuming gets its history in batches of its own, then live events.
        f = (await open_client(server.url, **query, since=resumed_from))[0]
        seen[e], seen[f] = [], []
        one5 = await phase(5, 5)
        # maxEvents 1: D leaves batching.
        unbatched = {"maxEvents": 1, "maxDelayMs": 0}
        seen[d] += await change(d, "subscribe", {"eventTypes": [], "batch": unbatched})
        one6 = await phase(5, 5)
        evkit.flush()
        for ws in seen:
            seen[ws] += await read_all(ws)
            await ws.close()

        one_before_e = [*one1, *one2, *one3, *one4]
        assert seen[a] == [*one1, "websocket.subscribed", *range(one2[0], sent)]
        assert seen[b] == [*one1, *one2, "websocket.subscribed", *one3, *one4, *one5, *one6]
        assert seen[c] == [*one1, *one2, *one3, "websocket.unsubscribed"]
        assert seen[d] == [*one_before_e, *one5, "websocket.subscribed", *one6]
        assert seen[e] == [*one5, *one6]
        assert seen[f] == [*one_before_e, "websocket.replayed", *one5, *one6]

    asyncio.run(scenario())


# -- compression -----------------------------------------------------------------------------


def test_compressed_and_plain_clients_share_batches_and_get_every_event() -> None:
    total = 500
    srv = evkit.serve(port=0, compression=True)

    async def scenario() -> None:
        clients = [
            await connect(srv.url, max_size=None),  # permessage-deflate
            await connect(f"{srv.url}?batch=20,10", max_size=None),
            await connect(srv.url, max_size=None, compression=None),
            await connect(f"{srv.url}?batch=20,10", max_size=None, compression=None),
        ]
        assert [bool(ws.protocol.extensions) for ws in clients] == [True, True, False, False]
        for ws in clients:
            assert (await recv_json(ws))["type"] == "websocket.connected"
        for n in range(total):
            evkit.emit("cz.event.sent", {"n": n, "text": "the same words again " * (n % 7)})
        evkit.flush()
        for ws in clients:
            assert await read_all(ws) == list(range(total))
            await ws.close()

    try:
        asyncio.run(scenario())
    finally:
        srv.stop()


# -- slow and vanished clients ---------------------------------------------------------------


@pytest.mark.parametrize("slow_batch", [None, "100,5"], ids=["slow-unbatched", "slow-batched"])
def test_a_slow_consumer_is_cut_with_1013_and_the_others_keep_receiving(
    slow_batch: str | None,
) -> None:
    limit = 256 * 1024
    chunk, pad = 100, "x" * 1_000  # about 100 KB a chunk: the fast clients stay far below
    srv = evkit.serve(port=0, client_buffer_limit=limit)

    async def scenario() -> None:
        query = f"?batch={slow_batch}" if slow_batch else ""
        slow = await connect(srv.url + query, max_size=None, ping_interval=None)
        assert (await recv_json(slow))["type"] == "websocket.connected"
        slow.transport.pause_reading()
        fast = [
            (await open_client(srv.url))[0],
            (await open_client(srv.url, batch="100,5"))[0],
        ]
        counts = [0, 0]

        async def read_fast(k: int) -> None:
            while True:
                message = await recv_json(fast[k], timeout=60)
                if message["type"] == "websocket.batch":
                    events = message["payload"]["events"]
                else:
                    events = [message]
                for event in events:
                    assert event["payload"]["n"] == counts[k]
                    counts[k] += 1

        async def read_slow() -> None:
            while True:
                await recv_json(slow)

        readers = [asyncio.ensure_future(read_fast(k)) for k in range(2)]
        slow_reader: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        sent = 0
        cut_at = None
        while cut_at is None or sent < cut_at + 10 * chunk:  # and on, after the cut
            assert sent < 100 * MIB // len(pad), "the slow consumer was never cut"
            for _ in range(chunk):
                evkit.emit("sl.event.sent", {"n": sent, "pad": pad})
                sent += 1
            await loop.run_in_executor(None, srv.flush)
            await until(lambda n=sent: counts == [n, n], f"fast clients at {sent}")
            if cut_at is None and srv.stats()["slow_consumer_disconnects"]:
                cut_at = sent
                # Read again at once, or the close frame behind the backlog would not
                # arrive before the server's close timeout.
                slow.transport.resume_reading()
                slow_reader = asyncio.ensure_future(read_slow())
        assert slow_reader is not None
        with pytest.raises(ConnectionClosed):
            await slow_reader
        assert slow.close_code == 1013
        assert slow.close_reason == "slow consumer"
        for reader in readers:
            reader.cancel()
        for ws in fast:
            await ws.close()

    try:
        asyncio.run(scenario())
        stats = srv.stats()
        assert stats["slow_consumer_disconnects"] == 1
        assert stats["dropped"] == 0
    finally:
        srv.stop()


def test_a_vanished_client_is_forgotten_and_the_others_get_everything(
    server: evkit.Server, caplog: pytest.LogCaptureFixture
) -> None:
    total = 2_000
    handed_out = published(server)

    async def scenario() -> None:
        plain, batched, gone = (
            (await open_client(server.url, eventTypes="vc.*"))[0],
            (await open_client(server.url, eventTypes="vc.*", batch="50,5"))[0],
            (await open_client(server.url, eventTypes="vc.*"))[0],
        )
        for n in range(total // 2):
            evkit.emit("vc.event.sent", {"n": n})
        await until(handed_out(total // 2), "the first half handed out")
        gone.transport.abort()  # no closing handshake: the peer just vanishes
        for n in range(total // 2, total):
            evkit.emit("vc.event.sent", {"n": n})
            if n % 100 == 0:
                await asyncio.sleep(0)  # let the server see the loss meanwhile
        evkit.flush()
        assert await read_all(plain) == list(range(total))
        assert await read_all(batched) == list(range(total))
        await until(lambda: server.stats()["clients"] == 2, "the vanished client to be dropped")
        for ws in (plain, batched):
            await ws.close()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "socket.send() raised" in r.getMessage()]


def test_a_write_that_fails_on_one_connection_does_not_stop_the_others(
    server: evkit.Server, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        (broken, welcome), (healthy, _) = [
            await open_client(server.url, eventTypes="wf.*") for _ in range(2)
        ]
        broken_id = welcome["payload"]["clientId"]
        [connection] = [
            s.connection for s in server.broadcaster.clients.values() if s.client_id == broken_id
        ]

        def refuse(data: bytes) -> None:
            raise RuntimeError("this transport refuses writes")

        connection.transport.write = refuse  # type: ignore[method-assign]
        for n in range(10):
            evkit.emit("wf.event.sent", {"n": n})
        evkit.flush()
        assert await read_all(healthy) == list(range(10))
        await healthy.close()
        await broken.close()

    with caplog.at_level(logging.WARNING, logger="evkit.server"):
        asyncio.run(scenario())
    assert any("this transport refuses writes" in r.getMessage() for r in caplog.records)
