"""evkit.server.fanout without sockets: clients are recorders of what they were written.

The fan-out writes to anything with ``write``, ``send_message``, ``buffered`` and
``compressed``; these tests give it plain objects and read back the frames.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson
import pytest

from evkit.protocol import BatchOptions, encode, encode_event
from evkit.server.counters import Counters
from evkit.server.fanout import Fanout, Writable
from evkit.store.base import Record
from evkit.testing import wait_until_async


class Recorder:
    """A client: keeps every byte written to it, or every message sent through it."""

    def __init__(self, compressed: bool = False) -> None:
        self.compressed = compressed
        self.data = bytearray()
        self.messages: list[bytes] = []
        self.writes = 0
        self.waiting = 0  # what buffered() reports: set it to play a slow client
        self.lost = False

    def write(self, data: bytes) -> int:
        if self.lost:
            return -1
        self.writes += 1
        self.data += data
        return self.waiting

    def send_message(self, message: bytes) -> int:
        if self.lost:
            return -1
        self.messages.append(message)
        return self.waiting

    def buffered(self) -> int:
        return -1 if self.lost else self.waiting

    def received(self) -> list[dict[str, Any]]:
        """The messages in the frames written (server frames: FIN, text, unmasked)."""
        out, data, at = [], bytes(self.data), 0
        while at < len(data):
            assert data[at] == 0x81, "a final text frame"
            length, at = data[at + 1], at + 2
            if length == 126:
                (length,), at = struct.unpack("!H", data[at : at + 2]), at + 2
            elif length == 127:
                (length,), at = struct.unpack("!Q", data[at : at + 8]), at + 8
            out.append(orjson.loads(data[at : at + length]))
            at += length
        out.extend(orjson.loads(message) for message in self.messages)
        return out


def record(n: int, type_: str = "repo.commit.created", correlation_id: str | None = None) -> Record:
    payload: dict[str, Any] = {"n": n}
    if correlation_id is not None:
        payload["correlationId"] = correlation_id
    return Record(
        n, 1_000 + n, type_, correlation_id, encode_event(type_, 1_000 + n, str(n), encode(payload))
    )


def numbers(client: Recorder) -> list[int]:
    numbers: list[int] = []
    for message in client.received():
        events = message["payload"]["events"] if message["type"] == "websocket.batch" else [message]
        numbers += [event["payload"]["n"] for event in events if "id" in event]
    return numbers


@pytest.fixture
def slow() -> list[Writable]:
    return []


@pytest.fixture
def fanout(slow: list[Writable]) -> Fanout:
    loop = asyncio.new_event_loop()
    try:
        yield Fanout(1_000, Counters(), slow.append, loop=lambda: loop)
    finally:
        loop.close()


def test_each_client_gets_its_events_in_order_in_one_write(fanout: Fanout) -> None:
    everything, repos, filtered = Recorder(), Recorder(), Recorder()
    fanout.index.add_subscriber(everything, ["*"])
    fanout.index.add_subscriber(repos, ["repo.*"])
    fanout.index.add_subscriber(filtered, ["*"], "req-1")
    fanout.deliver(
        [
            record(1),
            record(2, "claude.session.started"),
            record(3, correlation_id="req-1"),
            record(4, "github.api.completed", "req-2"),
        ]
    )
    assert numbers(everything) == [1, 2, 3, 4]
    assert numbers(repos) == [1, 3]
    assert numbers(filtered) == [3]
    assert (everything.writes, repos.writes, filtered.writes) == (1, 1, 1)


def test_compressed_clients_get_messages_through_their_connection(fanout: Fanout) -> None:
    plain, compressed = Recorder(), Recorder(compressed=True)
    for client in (plain, compressed):
        fanout.index.add_subscriber(client, ["*"])
    fanout.deliver([record(1), record(2)])
    assert compressed.data == b""
    assert len(compressed.messages) == 2
    assert numbers(plain) == numbers(compressed) == [1, 2]


def test_batched_clients_alike_share_one_batch(fanout: Fanout) -> None:
    first, second, alone = Recorder(), Recorder(), Recorder()
    options = BatchOptions(max_events=3, max_delay_ms=10_000)
    for client in (first, second):
        fanout.index.add_subscriber(client, ["repo.*"])
        fanout.set_batch(client, options)
    fanout.index.add_subscriber(alone, ["*"])
    fanout.set_batch(alone, options)
    fanout.deliver([record(n) for n in range(1, 8)])
    # Two full batches each; the seventh event waits for its window or a flush.
    assert [m["type"] for m in first.received()] == ["websocket.batch"] * 2
    assert first.received() == second.received()
    assert len(fanout.batching.groups) == 2  # (repo.*) and (*)
    fanout.send(first, encode({"type": "pong", "timestamp": 1, "payload": {"echo": 1}}))
    # A reply never overtakes what was queued: the group's batch goes first, to both.
    assert [m["type"] for m in first.received()][-2:] == ["websocket.batch", "pong"]
    assert numbers(first) == numbers(second) == list(range(1, 8))


def test_replayed_history_is_batched_for_the_client_alone(fanout: Fanout) -> None:
    client, other = Recorder(), Recorder()
    for each in (client, other):
        fanout.index.add_subscriber(each, ["*"])
        fanout.set_batch(each, BatchOptions(max_events=2, max_delay_ms=10_000))
    for n in range(1, 4):
        fanout.queue_history(client, record(n).frame)
    fanout.flush(client)
    assert numbers(client) == [1, 2, 3]
    assert other.received() == []


def test_a_client_past_the_limit_is_handed_over_once_after_the_writes(
    fanout: Fanout, slow: list[Writable]
) -> None:
    quick, late = Recorder(), Recorder()
    for client in (quick, late):
        fanout.index.add_subscriber(client, ["*"])
    late.waiting = 5_000
    fanout.deliver([record(1), record(2)])
    assert slow == [late]
    assert numbers(late) == [1, 2]  # it got this call's frames; the broadcaster closes it


def test_a_lost_client_stops_being_routed_to(fanout: Fanout, slow: list[Writable]) -> None:
    gone, staying = Recorder(), Recorder()
    for client in (gone, staying):
        fanout.index.add_subscriber(client, ["*"])
    gone.lost = True
    fanout.deliver([record(1)])
    assert gone not in fanout.index
    assert slow == []
    fanout.deliver([record(2)])
    assert numbers(staying) == [1, 2]


def test_deliveries_are_counted_by_category() -> None:
    counters = Counters()
    loop = asyncio.new_event_loop()
    try:
        fanout = Fanout(1_000, counters, lambda client: None, loop=lambda: loop)
        clients = [Recorder() for _ in range(3)]
        for client in clients:
            fanout.index.add_subscriber(client, ["*"])
        fanout.deliver([record(1), record(2, "claude.x.y")])
    finally:
        loop.close()
    assert counters.delivered == 6
    assert counters.delivered_by_category == {"repo": 3, "claude": 3}


def test_a_batch_window_is_kept_by_the_one_timer() -> None:
    async def scenario() -> None:
        fanout = Fanout(1_000, Counters(), lambda client: None)
        client = Recorder()
        fanout.index.add_subscriber(client, ["*"])
        fanout.set_batch(client, BatchOptions(max_events=100, max_delay_ms=20))
        fanout.deliver([record(1), record(2)])
        assert client.received() == []
        await wait_until_async(lambda: bool(client.received()), "the batch's window ended", 5)
        assert numbers(client) == [1, 2]

    asyncio.run(scenario())
