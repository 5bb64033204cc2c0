"""The Redis Streams backplane (issue #7): several broadcasters sharing one stream.

Everything is real: a ``redis-server`` per test (``redis_server`` fixture,
tests/redis_support.py), broadcasters in this process (``evkit.serve``) and in child
processes (``python -m evkit serve``), WebSocket clients over 127.0.0.1. Every wait is on
a condition with a deadline (a message received, a PING answered, ``/healthz`` saying
so); nothing sleeps to synchronise. Stream order makes "nothing else arrived" checkable:
once a marker published last has arrived, anything repeated or extra would have too.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

import evkit
from evkit._loop import loop_thread
from evkit.collector import FIXED_COLUMNS
from evkit.testing import open_client, recv_events, recv_json, recv_until, request, send_json
from tests.redis_support import (
    Instance,
    RedisServer,
    Relay,
    closed_port,
    get_json,
    get_text,
    post_events,
    wait_for,
)

pytestmark = pytest.mark.redis

TIMEOUT = 20.0
STREAM = "evkit:test"
STREAM_ID = re.compile(r"(\d+)-(\d+)")

InstanceFactory = Callable[..., list[Instance]]
ServeFactory = Callable[..., evkit.Server]


def position(event_id: str) -> tuple[int, int]:
    """A Redis stream id as a comparable (milliseconds, sequence) pair."""
    match = STREAM_ID.fullmatch(event_id)
    assert match, f"{event_id!r} is not a Redis stream id"
    return int(match.group(1)), int(match.group(2))


def strictly_increasing(ids: list[str]) -> bool:
    return all(position(a) < position(b) for a, b in itertools.pairwise(ids))


def sequence_report(numbers: list[int], total: int) -> str:
    """What is wrong with ``numbers`` against ``range(total)``: missing, repeated, misplaced."""
    counts = Counter(numbers)
    missing = [n for n in range(total) if n not in counts]
    repeated = sorted(n for n, seen in counts.items() if seen > 1)
    first_out = next((i for i, n in enumerate(numbers) if n != i), None)
    return (
        f"{len(numbers)} numbers; missing {missing[:20]}{'...' if len(missing) > 20 else ''}; "
        f"repeated {repeated[:20]}; first out of place at index {first_out}: "
        f"{numbers[max(0, (first_out or 0) - 3) : (first_out or 0) + 5]}"
    )


def event(kind: str, **payload: Any) -> dict[str, Any]:
    return {"type": kind, "payload": payload}


async def replayed_report(ws: ClientConnection) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read up to ``websocket.replayed``: the events before it, and its payload."""
    messages = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
    return [m for m in messages if "id" in m], messages[-1]["payload"]


async def posted_arrives_live(
    ws: ClientConnection, http_url: str, kind: str, n: int, after_id: str
) -> None:
    """POST event ``n`` to an instance: ``ws`` (past its replay) gets it live, after
    ``after_id``."""
    status, _ = await asyncio.to_thread(post_events, http_url, event(kind, n=n))
    assert status == 202
    [live] = await recv_events(ws, 1)
    assert live["payload"]["n"] == n
    assert position(live["id"]) > position(after_id)


async def closed_code(ws: ClientConnection, timeout: float = TIMEOUT) -> int | None:
    """Read until the server closes ``ws``; its close code."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return ws.close_code


def health(http_url: str) -> dict[str, Any]:
    status, body = get_json(f"{http_url}/healthz")
    assert status == 200, (status, body)
    document: dict[str, Any] = body
    return document


def healthy(http_url: str) -> bool:
    return health(http_url)["status"] == "ok"


def degraded(http_url: str) -> bool:
    return health(http_url)["status"] == "degraded"


def store_up(http_url: str) -> float:
    """The value of ``evkit_store_up`` in ``/metrics``."""
    for line in get_text(f"{http_url}/metrics").splitlines():
        if line.startswith("evkit_store_up"):
            return float(line.split()[-1])
    raise AssertionError("/metrics has no evkit_store_up")


@pytest.fixture
def serve(redis_server: RedisServer) -> Iterator[ServeFactory]:
    """``evkit.serve(port=0, store=<this test's Redis>, stream=STREAM, **options)``.

    The servers are stopped before the Redis server is (a fixture this one depends on).
    """
    servers: list[evkit.Server] = []

    def start(**options: Any) -> evkit.Server:
        options = {"store": redis_server.url, "stream": STREAM, **options}
        srv = evkit.serve(port=0, **options)
        servers.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in servers:
            srv.stop()


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[InstanceFactory]:
    """Start ``python -m evkit serve`` children (in parallel); all are stopped afterwards.

    Their stdout and stderr are printed at teardown, which pytest shows for a failed test.
    """
    started: list[Instance] = []
    names = itertools.count()

    def start(store: str, count: int = 1, **options: Any) -> list[Instance]:
        group = [
            Instance(store, tmp_path / "instances", name=f"instance-{next(names)}", **options)
            for _ in range(count)
        ]
        started.extend(group)
        for instance in group:
            instance.launch()
        for instance in group:
            instance.wait_serving()
        return group

    try:
        yield start
    finally:
        for instance in started:
            instance.stop()
            print(instance.output())


# -- one instance, in this process ----------------------------------------------------------------


def test_an_emitted_event_is_xadded_and_delivered_with_its_stream_id(
    redis_server: RedisServer,
    serve: ServeFactory,
) -> None:
    srv = serve()

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        ws, welcome = await open_client(srv.url, eventTypes="redis.*")
        for n in range(5):
            evkit.emit("redis.test.event", {"n": n})
        events = await recv_events(ws, 5)
        await ws.close()
        return welcome["payload"], events

    welcome, events = asyncio.run(scenario())
    ids = [e["id"] for e in events]
    assert strictly_increasing(ids)
    assert [e["payload"]["n"] for e in events] == list(range(5))
    assert welcome["epoch"] == srv.stats()["epoch"]
    position(welcome["lastId"])  # where the stream stood: a stream id too
    assert srv.stats()["last_id"] == ids[-1]

    client = redis_server.client()
    try:
        entries = client.xrange(STREAM)
    finally:
        client.close()
    # An entry holds a batch: each event's id is its entry's, with its place in the entry
    # in the low 16 bits of the sequence.
    held = {
        entry_id.decode(): fields[b"p"].split(b"\x1e")
        for entry_id, fields in entries
        if b"redis.test.event" in fields[b"h"]
    }
    for n, event_id in enumerate(ids):
        ms, _, sequence = event_id.partition("-")
        payloads = held[f"{ms}-{int(sequence) >> 16}"]
        assert orjson.loads(payloads[int(sequence) & 0xFFFF]) == {"n": n}, entries
    health_document = health(srv.http_url)
    assert health_document["status"] == "ok"
    assert health_document["store"]["name"] == "redis"
    assert health_document["store"]["state"] == "ok"
    assert store_up(srv.http_url) == 1


def test_the_collector_gets_everything_from_a_redis_backed_server(serve: ServeFactory) -> None:
    srv = serve()
    with evkit.collect(srv, ["github.*", "claude.*"]) as col:
        for n in range(300):
            with evkit.correlation(f"req-{n % 10}"):
                evkit.emit(
                    "github.api.completed", {"endpoint": "/repos", "duration": n / 2, "n": n}
                )
        evkit.emit("repo.commit.created", {"n": -1})  # not subscribed
        evkit.emit("claude.session.started", {"sessionId": "s1", "n": 300})
        col.wait(count=301, timeout=TIMEOUT)
        df = col.to_dataframe()
        stats = col.stats
    assert list(df.columns[: len(FIXED_COLUMNS)]) == list(FIXED_COLUMNS)
    assert len(df) == 301
    assert list(df["n"]) == list(range(301))
    assert strictly_increasing(list(df["id"]))
    api = df[df["type"] == "github.api.completed"]
    assert list(api["correlation_id"]) == [f"req-{n % 10}" for n in range(300)]
    assert list(api["duration_ms"]) == [n / 2 for n in range(300)]
    assert list(api["action"].unique()) == ["completed"]
    assert stats["received"] == 301
    assert (stats["gaps"], stats["dropped"]) == (0, 0)


# -- several instances, each in its own process ----------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_events_published_on_every_instance_reach_every_client_in_one_order(
    redis_server: RedisServer, instances: InstanceFactory, count: int
) -> None:
    per_instance, posted = 40, 5
    total = count * per_instance + posted
    nodes = instances(redis_server.url, count, stream=STREAM)

    async def scenario() -> list[list[dict[str, Any]]]:
        clients = [(await open_client(node.url, eventTypes="fan.*"))[0] for node in nodes]
        # Publish-only connections (?eventTypes= : they receive nothing).
        publishers = [(await open_client(node.url, eventTypes=""))[0] for node in nodes]

        async def publish(k: int) -> None:
            for n in range(per_instance):
                message = {"type": "publish", "payload": event("fan.test.event", k=k, n=n)}
                await send_json(publishers[k], message)

        post = asyncio.to_thread(
            post_events,
            nodes[0].http_url,
            [event("fan.test.posted", k=-1, n=n) for n in range(posted)],
        )
        *_, (status, body) = await asyncio.gather(*(publish(k) for k in range(count)), post)
        assert status == 202, body
        received = [await recv_events(ws, total) for ws in clients]
        # A marker published after everything: the next thing each client gets.
        await send_json(
            publishers[-1], {"type": "publish", "payload": event("fan.test.done", k=-2, n=0)}
        )
        for ws in clients:
            [marker] = await recv_events(ws, 1)
            assert marker["type"] == "fan.test.done", marker
        for ws in clients + publishers:
            await ws.close()
        return received

    received = asyncio.run(scenario())
    ids = [e["id"] for e in received[0]]
    assert strictly_increasing(ids)
    expected = {(k, n) for k in range(count) for n in range(per_instance)}
    expected |= {(-1, n) for n in range(posted)}
    order = [(e["payload"]["k"], e["payload"]["n"]) for e in received[0]]
    assert set(order) == expected
    assert len(order) == total
    for k in range(-1, count):
        assert [n for kk, n in order if kk == k] == sorted(n for kk, n in order if kk == k)
    for events in received[1:]:
        assert [e["id"] for e in events] == ids
        assert [(e["payload"]["k"], e["payload"]["n"]) for e in events] == order


def test_a_client_resumes_on_another_instance_with_exactly_what_it_missed(
    redis_server: RedisServer, instances: InstanceFactory
) -> None:
    a, b = instances(redis_server.url, 2, stream=STREAM)

    async def scenario() -> None:
        ws, welcome = await open_client(a.url, eventTypes="resume.*")
        epoch = welcome["payload"]["epoch"]
        status, _ = await asyncio.to_thread(
            post_events, b.http_url, [event("resume.test.event", n=n) for n in range(10)]
        )
        assert status == 202
        seen = await recv_events(ws, 10)
        assert [e["payload"]["n"] for e in seen] == list(range(10))

        assert await asyncio.to_thread(a.stop) == 0  # SIGTERM: a clean exit
        assert await closed_code(ws) == 1001

        status, _ = await asyncio.to_thread(
            post_events, b.http_url, [event("resume.test.event", n=n) for n in range(10, 25)]
        )
        assert status == 202
        resumed, welcome_b = await open_client(
            b.url, eventTypes="resume.*", since=seen[-1]["id"], epoch=epoch
        )
        assert welcome_b["payload"]["epoch"] == epoch
        missed, report = await replayed_report(resumed)
        assert [e["payload"]["n"] for e in missed] == list(range(10, 25))
        assert strictly_increasing([seen[-1]["id"]] + [e["id"] for e in missed])
        assert report["count"] == 15
        assert report["complete"] is True
        assert report["epoch"] == epoch
        assert report["lastId"] == missed[-1]["id"]

        # Then live events, and nothing twice.
        await posted_arrives_live(resumed, b.http_url, "resume.test.event", 25, missed[-1]["id"])
        await resumed.close()

    asyncio.run(scenario())


def test_an_instance_no_client_listens_to_frames_what_it_read_only_when_a_replay_asks(
    redis_server: RedisServer, instances: InstanceFactory
) -> None:
    """B reads the stream with no client (entries kept unparsed, bounded as its memory
    ring is: 100 events here); a client then resumes on B from an early id and gets
    everything, the older part from Redis, then live events once each."""
    [a] = instances(redis_server.url, 1, stream=STREAM)
    [b] = instances(redis_server.url, 1, stream=STREAM, extra=("--history-size", "100"))

    async def scenario() -> None:
        ws, welcome = await open_client(a.url, eventTypes="idle.*")
        epoch = welcome["payload"]["epoch"]
        for start in range(0, 300, 100):
            status, _ = await asyncio.to_thread(
                post_events,
                a.http_url,
                [event("idle.test.event", n=n) for n in range(start, start + 100)],
            )
            assert status == 202
        seen = await recv_events(ws, 300)
        assert [e["payload"]["n"] for e in seen] == list(range(300))

        def b_read_all() -> bool:
            return bool(health(b.http_url)["store"]["lastId"] == seen[-1]["id"])

        await asyncio.to_thread(wait_for, b_read_all, "B to read all 300 events")
        cached = health(b.http_url)["store"]["cached"]
        assert 100 <= cached < 200, cached  # the ring's 100, and part of an entry at most

        resumed, _ = await open_client(b.url, eventTypes="idle.*", since=seen[9]["id"], epoch=epoch)
        missed, report = await replayed_report(resumed)
        assert [e["id"] for e in missed] == [e["id"] for e in seen[10:]]
        assert [e["payload"]["n"] for e in missed] == list(range(10, 300))
        assert report["complete"] is True

        await posted_arrives_live(resumed, a.http_url, "idle.test.event", 300, missed[-1]["id"])
        await resumed.close()
        await ws.close()

    asyncio.run(scenario())


def test_a_collector_behind_a_relay_moves_to_another_instance_and_misses_nothing(
    redis_server: RedisServer, instances: InstanceFactory
) -> None:
    a, b = instances(redis_server.url, 2, stream=STREAM)

    def publish(instance: Instance, numbers: range) -> None:
        status, body = post_events(
            instance.http_url, [event("move.test.event", n=n) for n in numbers]
        )
        assert status == 202, body

    with Relay(a.port) as relay, evkit.collect(relay.url, ["move.*"]) as col:
        publish(a, range(20))
        col.wait(count=20, timeout=TIMEOUT)
        relay.backend = b.port  # new connections go to b from now on
        assert a.stop() == 0  # a closes its clients (1001); the collector comes back via b
        publish(b, range(20, 40))
        col.wait(count=40, timeout=TIMEOUT)
        wait_for(lambda: col.stats["connection"] == "connected", "the collector is connected")
        publish(b, range(40, 50))
        col.wait(count=50, timeout=TIMEOUT)
        df = col.to_dataframe()
        stats = col.stats
    assert list(df["n"]) == list(range(50))
    assert strictly_increasing(list(df["id"]))
    assert stats["reconnects"] >= 1
    assert stats["gaps"] == 0, stats
    assert stats["received"] == 50


# -- Redis going away -----------------------------------------------------------------------------


def test_events_emitted_while_redis_is_down_are_buffered_and_arrive_everywhere_in_order(
    redis_server: RedisServer, serve: ServeFactory, instances: InstanceFactory
) -> None:
    srv = serve()  # instance a, here
    [b] = instances(redis_server.url, stream=STREAM)  # instance b, another process
    with evkit.collect(srv, ["outage.*"]) as col_a, evkit.collect(b.url, ["outage.*"]) as col_b:
        for n in range(50):
            evkit.emit("outage.test.event", {"n": n})
        col_a.wait(count=50, timeout=TIMEOUT)
        col_b.wait(count=50, timeout=TIMEOUT)

        redis_server.stop(kill=True)  # AOF with fsync always: nothing acknowledged is lost
        for url in (srv.http_url, b.http_url):
            wait_for(lambda: degraded(url), f"{url}/healthz says degraded")  # noqa: B023
        down = health(srv.http_url)
        assert down["store"]["name"] == "redis"
        assert down["store"]["state"] == "error"
        assert down["store"]["lastError"]
        assert store_up(srv.http_url) == 0
        assert store_up(b.http_url) == 0

        for n in range(50, 150):
            evkit.emit("outage.test.event", {"n": n})  # into a's queue while Redis is away
        assert srv.stats()["dropped"] == 0

        redis_server.start()
        for url in (srv.http_url, b.http_url):
            wait_for(lambda: healthy(url), f"{url}/healthz says ok again")  # noqa: B023
        for n in range(150, 200):
            evkit.emit("outage.test.event", {"n": n})
        # In the stream before what b publishes next (emit() only queues).
        evkit.flush(timeout=TIMEOUT)
        status, body = post_events(
            b.http_url, [event("outage.test.posted", n=n) for n in range(200, 210)]
        )
        assert status == 202, body
        col_a.wait(count=210, timeout=TIMEOUT)
        col_b.wait(count=210, timeout=TIMEOUT)
        frames = [col_a.to_dataframe(), col_b.to_dataframe()]
        stats = [col_a.stats, col_b.stats]
    assert store_up(srv.http_url) == 1
    for name, df, collector_stats in zip("ab", frames, stats, strict=True):
        assert list(df["n"]) == list(range(210)), (
            f"collector on instance {name}: {sequence_report(list(df['n']), 210)}; "
            f"{collector_stats}"
        )
        assert strictly_increasing(list(df["id"]))
        assert collector_stats["gaps"] == 0, collector_stats
        assert collector_stats["received"] == 210
    assert list(frames[0]["id"]) == list(frames[1]["id"])
    assert srv.stats()["dropped"] == 0


def test_events_past_queue_size_while_redis_is_down_are_dropped_and_counted(
    redis_server: RedisServer,
    serve: ServeFactory,
) -> None:
    queue_size, emitted = 100, 2_000
    srv = serve(queue_size=queue_size)
    with evkit.collect(srv, ["queue.*"]) as col:
        redis_server.stop(kill=True)
        wait_for(lambda: degraded(srv.http_url), "/healthz says degraded")
        for n in range(emitted):
            evkit.emit("queue.test.event", {"n": n})
        dropped = srv.stats()["dropped"]
        kept = emitted - dropped
        # Bounded: the queue, plus what the writer holds to retry (a write batch or so),
        # may take events while Redis is away; which ones depends on when it retried.
        assert 0 < kept <= queue_size + 1_000, srv.stats()
        redis_server.start()
        wait_for(lambda: healthy(srv.http_url), "/healthz says ok again")
        evkit.emit("queue.test.done", {"n": -1})
        col.wait_for(lambda e: e["type"] == "queue.test.done", timeout=TIMEOUT)
        df = col.to_dataframe()
        stats = col.stats
    numbers = list(df["n"])
    assert numbers[-1] == -1
    # Every event that was not counted as dropped arrived once, in emit order.
    assert len(numbers) - 1 == kept, (kept, sequence_report(numbers[:-1], emitted))
    assert all(a < b for a, b in itertools.pairwise(numbers[:-1]))
    assert numbers[:queue_size] == list(range(queue_size))  # the queue filled first
    assert stats["gaps"] == 0
    assert srv.stats()["dropped"] == dropped


@pytest.mark.parametrize(
    "redis_server", [{"persistence": False}], indirect=True, ids=["without-persistence"]
)
def test_a_redis_restarted_empty_closes_clients_with_1012_and_resumes_report_a_gap(
    redis_server: RedisServer, serve: ServeFactory, instances: InstanceFactory
) -> None:
    srv = serve()  # instance a, here
    [b] = instances(redis_server.url, stream=STREAM)  # instance b, another process
    col = evkit.collect(b.url, ["reset.*"])

    async def scenario() -> None:
        ws_a, welcome_a = await open_client(srv.url, eventTypes="reset.*")
        ws_b, welcome_b = await open_client(b.url, eventTypes="reset.*")
        old_epoch = welcome_a["payload"]["epoch"]
        assert welcome_b["payload"]["epoch"] == old_epoch  # one stream, one epoch
        for n in range(10):
            evkit.emit("reset.test.event", {"n": n})
        await recv_events(ws_a, 10)
        seen = await recv_events(ws_b, 10)
        await asyncio.to_thread(col.wait, count=10, timeout=TIMEOUT)

        # SHUTDOWN NOSAVE and start again: the stream is gone.
        await asyncio.to_thread(redis_server.restart)
        assert await closed_code(ws_a) == 1012
        assert await closed_code(ws_b) == 1012
        for url in (srv.http_url, b.http_url):
            await asyncio.to_thread(wait_for, lambda: healthy(url), f"{url} ok")  # noqa: B023
        new_epoch = srv.stats()["epoch"]
        assert new_epoch != old_epoch

        resumed, welcome = await open_client(
            b.url, eventTypes="reset.*", since=seen[-1]["id"], epoch=old_epoch
        )
        assert welcome["payload"]["epoch"] == new_epoch
        _, report = await replayed_report(resumed)
        assert report["complete"] is False
        assert report["epoch"] == new_epoch
        evkit.emit("reset.test.event", {"n": 10})
        [live] = await recv_events(resumed, 1)
        assert live["payload"]["n"] == 10
        await resumed.close()

    try:
        asyncio.run(scenario())
        col.wait(count=11, timeout=TIMEOUT)
        wait_for(lambda: col.stats["gaps"] >= 1, "the collector counted the gap")
        assert list(col.to_dataframe()["n"]) == list(range(11))
        assert col.stats["reconnects"] >= 1
    finally:
        col.stop()


# -- retention ------------------------------------------------------------------------------------


def test_a_resume_from_an_id_trimmed_away_replays_the_rest_and_says_incomplete(
    redis_server: RedisServer,
    serve: ServeFactory,
) -> None:
    maxlen, total, chunk = 100, 2_000, 50
    srv = serve(maxlen=maxlen)

    async def scenario() -> None:
        ws, welcome = await open_client(srv.url, eventTypes="trim.*")
        epoch = welcome["payload"]["epoch"]
        events: list[dict[str, Any]] = []
        # In chunks the instance reads before the next: this test is about resuming.
        for start in range(0, total, chunk):
            for n in range(start, start + chunk):
                evkit.emit("trim.test.event", {"n": n})
            events += await recv_events(ws, chunk)
        await ws.close()
        assert [e["payload"]["n"] for e in events] == list(range(total))

        client = redis_server.client()
        try:  # events held: an entry holds a batch of them
            length = sum(len(orjson.loads(f[b"h"])) for _, f in client.xrange(STREAM))
        finally:
            client.close()
        assert maxlen <= length < total  # approximate trimming keeps a little more

        # From the first id: trimmed away long ago.
        old, _ = await open_client(srv.url, eventTypes="trim.*", since=events[0]["id"], epoch=epoch)
        replayed, report = await replayed_report(old)
        await old.close()
        assert report["complete"] is False, (
            f"resumed from {events[0]['id']}, trimmed away long ago (the stream holds "
            f"{length} events, from {replayed[0]['id'] if replayed else '?'}): {report}"
        )
        count = report["count"]
        assert count == len(replayed)
        assert maxlen <= count <= length
        assert [e["payload"]["n"] for e in replayed] == list(range(total - count, total))
        assert [e["id"] for e in replayed] == [e["id"] for e in events[total - count :]]

        # From an id still held: complete.
        recent, _ = await open_client(
            srv.url, eventTypes="trim.*", since=events[-51]["id"], epoch=epoch
        )
        replayed, report = await replayed_report(recent)
        await recent.close()
        assert report["complete"] is True
        assert [e["payload"]["n"] for e in replayed] == list(range(total - 50, total))

    asyncio.run(scenario())


def test_a_burst_larger_than_maxlen_never_skips_events_silently_for_a_live_client(
    serve: ServeFactory,
) -> None:
    """Trimming may outrun an instance's reader; its clients must then hear of it.

    Either every event arrives, or the connection is closed with 1012 after an unbroken
    run (the client's resume then says ``complete: false``). Skipping what was trimmed
    before this instance read it, with the connection still open, is a silent gap.
    """
    maxlen, total = 100, 2_000
    srv = serve(maxlen=maxlen)

    async def scenario() -> None:
        ws, _ = await open_client(srv.url, eventTypes="burst.*")
        for n in range(total):
            evkit.emit("burst.test.event", {"n": n})
        # Once flushed, this instance has read (and sent) all it ever will of the burst:
        # the pong comes after every event it sent.
        await asyncio.to_thread(evkit.flush, TIMEOUT)
        received: list[int] = []
        try:
            await send_json(ws, {"type": "ping", "payload": "end"})
            async with asyncio.timeout(TIMEOUT):
                while (message := await recv_json(ws, TIMEOUT))["type"] != "pong":
                    if "id" in message:
                        received.append(message["payload"]["n"])
        except ConnectionClosed:
            assert ws.close_code == 1012, (ws.close_code, ws.close_reason)
        skipped = [(a, b) for a, b in itertools.pairwise([-1, *received]) if b != a + 1]
        assert not skipped, (
            f"{len(received)} of {total} events arrived on an open connection, with "
            f"{len(skipped)} silent gaps (last before, first after): {skipped[:5]}"
        )
        if ws.close_code is None:
            assert len(received) == total
        await ws.close()

    asyncio.run(scenario())


# -- what a user can get wrong --------------------------------------------------------------------


@pytest.mark.parametrize("credentials", ["", ":s3cret-password@"], ids=["plain", "password"])
def test_serve_with_an_unreachable_redis_raises_a_server_error_naming_the_url(
    credentials: str,
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(evkit.ServerError) as info:
        evkit.serve(port=0, store=f"redis://{credentials}{address}/0", stream=STREAM)
    message = str(info.value)
    assert f"redis://{address}/0" in message or f"redis://:***@{address}/0" in message, message
    assert "s3cret" not in message
    assert time.monotonic() - started < 10
    assert evkit.running_servers() == []


def test_the_cli_with_an_unreachable_redis_exits_with_a_one_line_message() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", "evkit", "serve", "--port", "0", "--store", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result
    assert url in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving" not in result.stdout


@pytest.mark.parametrize("maxlen", [0, -5])
def test_maxlen_must_be_positive(redis_server: RedisServer, maxlen: int) -> None:
    with pytest.raises(ValueError, match="maxlen"):
        evkit.serve(port=0, store=redis_server.url, stream=STREAM, maxlen=maxlen)
    assert evkit.running_servers() == []


@pytest.mark.parametrize(
    "since", ["abc", "12-x", "1-2-3", "-3", "1-", "+", "18446744073709551616-0"]
)
def test_a_malformed_since_is_refused_with_400_and_a_reason(
    serve: ServeFactory, since: str
) -> None:
    srv = serve()

    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as info:
            await open_client(srv.url, since=since)
        assert info.value.response.status_code == 400
        body = orjson.loads(info.value.response.body)
        assert "since" in body["error"]
        # The server is fine: the next client is served.
        ws, _ = await open_client(srv.url)
        pong = await request(ws, {"type": "ping", "payload": "still serving"})
        assert pong["payload"] == {"echo": "still serving"}
        await ws.close()

    asyncio.run(scenario())


async def evkit_redis_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("evkit-redis")]


def test_stopping_a_server_ends_its_redis_tasks_after_a_burst(serve: ServeFactory) -> None:
    # After a burst the reader waits in a blocking XREAD; stop() must end it there too,
    # not leave it running to fail later on a closed client ("Task exception was never
    # retrieved" when the process exits).
    for round_ in range(3):
        srv = serve(stream=f"{STREAM}-stop-{round_}")
        for seq in range(100_000):
            evkit.emit("bench.stop.event", {"seq": seq})
        evkit.flush(timeout=TIMEOUT)
        tasks = loop_thread().run(evkit_redis_tasks(), timeout=TIMEOUT)
        assert len(tasks) == 2  # the writer and the reader
        srv.stop()
        assert [task.done() for task in tasks] == [True, True]
        assert all(task.cancelled() or task.exception() is None for task in tasks)
