"""What evkit keeps in a Redis stream (evkit.backplane.redis_stream), with plain values:
no Redis server here."""

from __future__ import annotations

import orjson
import pytest

from evkit.backplane.redis_stream import EntryParser, batch_fields, entries_to_keep
from evkit.bus import Event
from evkit.protocol import encode_event


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
