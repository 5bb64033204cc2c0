"""The SQLite file format (evkit.store.sqlite_format): chunks with plain values, files of
earlier releases moved into chunks, and the writer's checkpoints, on real files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evkit.protocol import encode_event
from evkit.recording import RecordingWriter, read_events
from evkit.store import Record, SQLiteStore
from evkit.store.sqlite_format import (
    CHUNK_BYTES,
    EVENTS_PER_CHUNK,
    SCHEMA,
    chunks_of,
    decode_chunk,
    encode_chunk,
    insert,
    read_records,
)
from evkit.testing import wait_until

BASE_MS = 1_700_000_000_000

# The layout evkit wrote before chunks: one row per event.
OLD_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    timestamp INTEGER NOT NULL,
    type TEXT NOT NULL,
    correlation_id TEXT,
    frame BLOB NOT NULL
);
CREATE INDEX events_timestamp ON events (timestamp);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def record(event_id: int, size: int = 0, cid: str | None = None, ts: int = BASE_MS) -> Record:
    payload = orjson.dumps({"n": event_id, "pad": "x" * size})
    frame = encode_event("a.b.c", ts + event_id, str(event_id), payload)
    return Record(event_id, ts + event_id, "a.b.c", cid, frame)


# -- chunks, plain values ------------------------------------------------------------------


def test_a_chunk_gives_back_the_records_it_was_made_of() -> None:
    records = [record(1, cid="req-1"), record(2), record(3, cid="req-3")]
    last, first, oldest, newest, header, frames = encode_chunk(records)
    assert (last, first, oldest, newest) == (3, 1, BASE_MS + 1, BASE_MS + 3)
    assert decode_chunk(header, frames) == records


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=CHUNK_BYTES // 3), max_size=40))
def test_chunks_hold_every_record_once_in_order_within_both_bounds(sizes: list[int]) -> None:
    records = [record(i + 1, size) for i, size in enumerate(sizes)]
    chunks = list(chunks_of(records))
    assert [r for chunk in chunks for r in chunk] == records
    for chunk in chunks:
        assert 1 <= len(chunk) <= EVENTS_PER_CHUNK
        assert len(chunk) == 1 or sum(len(r.frame) for r in chunk) <= CHUNK_BYTES


def test_chunks_are_cut_by_count() -> None:
    records = [record(i) for i in range(1, 2 * EVENTS_PER_CHUNK + 2)]
    assert [len(chunk) for chunk in chunks_of(records)] == [EVENTS_PER_CHUNK] * 2 + [1]


def test_a_frame_larger_than_a_chunk_gets_a_chunk_of_its_own() -> None:
    records = [record(1), record(2, CHUNK_BYTES + 10), record(3)]
    assert [[r.id for r in chunk] for chunk in chunks_of(records)] == [[1], [2], [3]]


def test_a_damaged_chunk_is_a_clear_error() -> None:
    *_, header, frames = encode_chunk([record(1), record(2)])
    with pytest.raises(ValueError, match="a chunk of 2 events holds 1 frames"):
        decode_chunk(header, frames.replace(b"\x1e", b" "))


# -- files ------------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path)
    connection.executescript(SCHEMA)
    return connection


def test_read_records_bounds_ids_and_skips_chunks_outside_the_times(tmp_path: Path) -> None:
    connection = connect(tmp_path / "e.db")
    with connection:
        insert(connection, [record(i) for i in range(1, 11)])
        insert(connection, [record(i) for i in range(11, 21)])
    assert [r.id for r in read_records(connection, after=8, before=13)] == [9, 10, 11, 12]
    # A chunk is read whole if any of its events is in the time range: callers filter.
    assert [r.id for r in read_records(connection, low=BASE_MS + 15)] == list(range(11, 21))
    assert [r.id for r in read_records(connection, high=BASE_MS + 5)] == list(range(1, 11))
    connection.close()


def write_old_file(path: Path, count: int) -> list[Record]:
    """A store file as earlier releases wrote it: one row per event, epoch and last id."""
    records = [record(i, cid="req") for i in range(1, count + 1)]
    connection = sqlite3.connect(path)
    connection.executescript(OLD_SCHEMA)
    with connection:
        connection.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", records)
        connection.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("epoch", "0ldf11e5"), ("last_id", str(count)), ("reserved", str(count))],
        )
    connection.close()
    return records


def test_a_store_file_of_an_earlier_release_is_moved_into_chunks(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    old = write_old_file(path, 2_500)
    store = SQLiteStore(path, history_size=10)
    store.open()
    try:
        assert (store.epoch, store.last_id, store.first_id()) == ("0ldf11e5", 2_500, 1)
        assert list(store.read_after(0)) == old  # from disk: the ring holds the last 10
        store.append(record(2_501))
        store.sync()
    finally:
        store.close()
    connection = sqlite3.connect(path)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "events" not in tables
        assert connection.execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 4
        assert [r.id for r in read_records(connection)] == list(range(1, 2_502))
    finally:
        connection.close()


def test_a_recording_of_an_earlier_release_still_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = write_old_file(path, 30)
    events = list(read_events(path, correlation_id="req", since=BASE_MS + 11))
    assert [e["payload"]["n"] for e in events] == list(range(11, 31))
    assert [orjson.dumps(e) for e in events] == [r.frame for r in old[10:]]
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()
    assert ("events",) in tables  # reading opens the file read-only: nothing moved


def test_a_recorded_frame_holding_the_chunk_separator_is_refused(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "e.db") as writer:
        with pytest.raises(ValueError, match="raw 0x1E"):
            writer.write({"type": "a.b.c", "id": "1"}, b'{"type":"a.b.c",\x1e"id":"1"}')
        writer.write({"type": "a.b.c", "id": "2", "timestamp": BASE_MS, "payload": {}})
    assert [e["id"] for e in read_events(tmp_path / "e.db")] == ["2"]


def test_the_writer_checkpoints_the_wal_when_the_stream_goes_quiet(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path, batch_interval=0.02)
    store.open()
    try:
        before = path.stat().st_size
        for i in range(1, 2_001):
            store.append(record(i, 100))
        store.sync()
        # Committed to the WAL, then copied into the database file by the writer's own
        # checkpoint once a batch interval passed with nothing to write.
        wait_until(lambda: path.stat().st_size > before + 200_000, "the checkpoint")
    finally:
        store.close()
