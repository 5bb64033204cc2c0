"""What evkit keeps in a Redis stream (evkit.backplane.redis_stream), with plain values:
no Redis server here."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from evkit.backplane.redis import RedisBackplane
from evkit.backplane.redis_stream import (
    EntryParser,
    UnparsedEntries,
    batch_fields,
    entries_to_keep,
    entry_events,
)
from evkit.bus import Event
from evkit.protocol import encode_event
from evkit.store.base import Record

Entry = tuple[bytes, dict[bytes, bytes]]


@pytest.mark.parametrize(
    ("newest_first", "maxlen", "expected"),
    [
        ([50, 25, 25, 50], 100, 3),  # the newest three hold 100
        ([500], 100, 1),
        ([25, 25, 50, 50, 50], 100, 3),  # small newest entries: more of them, not the mean's 2
        ([10] * 5, 100, 10),  # five seen, the rest at their average
        ([], 100, 100),  # nothing written yet: one event per entry
        ([0, 0], 100, 100),
    ],
)
def test_the_stream_keeps_enough_of_the_newest_entries_to_hold_maxlen_events(
    newest_first: list[int], maxlen: int, expected: int
) -> None:
    assert entries_to_keep(newest_first, maxlen) == expected


def items(count: int, type_: str = "a.b.c") -> list[tuple[Event, str | None, bytes, float]]:
    return [
        (Event(type_, 1_764_900_000_000 + n, {"n": n}), None, orjson.dumps({"n": n}), 0.0)
        for n in range(count)
    ]


def test_an_entry_gives_back_its_events_with_ids_of_the_entry_and_place() -> None:
    fields = batch_fields(b"p", 1, items(3))
    records = EntryParser("s").parse([(b"1764900000000-2", fields)])
    assert [r.frame for r in records] == [
        encode_event(
            "a.b.c", 1_764_900_000_000 + n, f"1764900000000-{2 << 16 | n}", b'{"n":%d}' % n
        )
        for n in range(3)
    ]


def test_a_damaged_entry_is_skipped_whole_and_counted() -> None:
    parser = EntryParser("s")
    bad = {**batch_fields(b"p", 1, items(2)), b"h": b'[["a.b.c",1,null],[2]]'}
    good = batch_fields(b"p", 2, items(2))
    records = parser.parse([(b"1-0", bad), (b"2-0", good)])
    assert [r.id >> 32 for r in records] == [2, 2]  # none of the damaged entry's events
    assert parser.malformed == 1


def test_an_entry_tells_how_many_events_it_holds_without_being_parsed() -> None:
    assert entry_events(batch_fields(b"p", 1, items(3))) == 3
    assert entry_events(batch_fields(b"p", 1, items(1))) == 1
    assert entry_events({b"type": b"a.b.c", b"event": b"{}"}) == 1  # an older single-event entry


def test_unparsed_entries_are_kept_in_order_and_given_back_once() -> None:
    kept = UnparsedEntries(max_events=100, max_bytes=1 << 20)
    read = entries(1, 3, 4)
    for raw_id, fields in read:
        kept.keep(raw_id, fields)
    assert (len(kept), kept.events, kept.newest) == (3, 12, 3 << 32 | 3)
    assert kept.size == sum(len(value) for _, fields in read for value in fields.values())
    assert kept.trim() == 0  # within the bound: nothing goes
    assert kept.take() == read
    assert (len(kept), kept.events, kept.size, kept.newest) == (0, 0, 0, 0)
    assert kept.take() == []


def test_unparsed_entries_let_the_oldest_go_as_a_ring_of_their_bound_would() -> None:
    kept = UnparsedEntries(max_events=10, max_bytes=1 << 20)
    for raw_id, fields in entries(1, 5, 4):
        kept.keep(raw_id, fields)
    # 20 events: entries 1 and 2 go, since 3-5 hold 12 >= 10 without them; 3 stays
    # (4 and 5 alone hold 8 < 10), so at least the bound is kept.
    assert kept.trim() == 2 << 32 | 3  # the last event let go
    assert [raw_id for raw_id, _ in kept.take()] == [b"3-0", b"4-0", b"5-0"]

    by_bytes = UnparsedEntries(max_events=1_000, max_bytes=1)
    for raw_id, fields in entries(1, 3, 4):
        by_bytes.keep(raw_id, fields)
    assert by_bytes.trim() == 2 << 32 | 3
    assert (len(by_bytes), by_bytes.events) == (1, 4)  # the newest stays, however large
    assert by_bytes.trim() == 0


class _Sink:
    """The broadcaster as a reader sees it: whether a client is subscribed, and what it
    was sent."""

    def __init__(self) -> None:
        self.subscribed = False
        self.delivered: list[int] = []

    def listening(self) -> bool:
        return self.subscribed

    def deliver(self, records: list[Record]) -> None:
        self.delivered += [r.id for r in records]

    def published(self, items: list[Any]) -> None:
        pass

    def stream_broken(self, reason: str) -> None:
        raise AssertionError(reason)


def entries(first: int, count: int, size: int, producer: bytes = b"p") -> list[Entry]:
    """``count`` entries of ``size`` events, with ids ``<n>-0`` from ``first``."""
    return [
        (b"%d-0" % n, batch_fields(producer, n, items(size))) for n in range(first, first + count)
    ]


def reader(history_size: int = 1_000) -> tuple[RedisBackplane, _Sink]:
    backplane = RedisBackplane("redis://127.0.0.1:1", "s", 10_000, history_size=history_size)
    sink = _Sink()
    backplane._sink = sink  # what start() sets; _read() needs nothing else
    return backplane, sink


def test_entries_read_with_no_client_subscribed_are_parsed_only_when_history_is_asked_for() -> None:
    backplane, sink = reader()
    read = entries(1, 3, 4)
    # A retried write: the same producer and sequence again, under a later id.
    read.append((b"4-0", read[1][1]))
    backplane._read(None, read[:2])
    backplane._read(None, read[2:])
    history = backplane.history
    assert backplane.health()["cached"] == 12  # kept as read, not framed
    assert len(history.ring) == 0
    assert history.last_id == (3 << 32 | 3)  # moved on as if parsed
    assert sink.delivered == []
    eager = EntryParser("s").parse([(raw_id, fields) for raw_id, fields in read])
    assert [r.frame for r in history.read_after(0)] == [r.frame for r in eager]
    assert len(eager) == 12  # the repeated entry skipped, both ways
    assert backplane.parser.repeats_skipped == 1

    sink.subscribed = True  # a client: what is read from now on is delivered
    backplane._read(None, entries(5, 1, 2))
    assert sink.delivered == [5 << 32, 5 << 32 | 1]
    assert [r.id >> 32 for r in history.read_after(0)] == [1] * 4 + [2] * 4 + [3] * 4 + [5] * 2


def test_what_is_kept_unparsed_is_bounded_as_the_memory_ring_is() -> None:
    backplane, _ = reader(history_size=10)
    for first in range(1, 101, 10):
        backplane._read(None, entries(first, 10, 4))
    assert backplane.health()["cached"] <= 10 + 4 - 1  # the ring's bound, and part of an entry
    history = backplane.history
    held = [r.id for r in history.read_after(0)]
    assert held == sorted(held)
    assert held[-1] == 100 << 32 | 3
    assert len(held) == 10
    # What went is what the ring would have dropped: older replays go to Redis.
    assert held == [98 << 32 | 2, 98 << 32 | 3] + [n << 32 | k for n in (99, 100) for k in range(4)]
    assert history.trimmed_through() < held[0]
    assert history.first_id() == held[0]
