"""The history ring every store keeps (evkit.store.ring), with plain values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from evkit.protocol import encode_event
from evkit.store import Record
from evkit.store.ring import HistoryRing


def record(event_id: int, size: int) -> Record:
    frame = encode_event("a.b.c", 0, str(event_id), b'{"pad":"%b"}' % (b"x" * size))
    return Record(event_id, 0, "a.b.c", None, frame)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(min_value=0, max_value=300), max_size=30), max_size=8),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=4_000),
)
def test_ring_extend_keeps_what_appending_one_by_one_keeps(
    batches: list[list[int]], max_events: int, max_bytes: int
) -> None:
    one_by_one, at_once = HistoryRing(max_events, max_bytes), HistoryRing(max_events, max_bytes)
    next_id = 1
    for sizes in batches:
        records = [record(next_id + i, size) for i, size in enumerate(sizes)]
        next_id += len(sizes)
        for item in records:
            one_by_one.append(item)
        at_once.extend(records)
        assert list(at_once) == list(one_by_one)
        assert (at_once.bytes, at_once.dropped_through) == (
            one_by_one.bytes,
            one_by_one.dropped_through,
        )
