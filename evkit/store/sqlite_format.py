"""What evkit keeps in a SQLite file: chunks of events, written and read back.

A row of ``chunks`` holds consecutive events as the writer committed them: up to
:data:`EVENTS_PER_CHUNK` events or :data:`CHUNK_BYTES` of frames (at least one event).
``header`` is a JSON list ``[id, timestamp, type, correlation ID or null]`` per event,
``frames`` their frames (each the exact bytes clients were sent) joined by the ASCII
record separator 0x1E, which JSON never holds unescaped; ``last_id`` (the key) and
``first_id`` bound the ids it holds, ``oldest`` and ``newest`` its timestamps (ms).

One row per event cost the writer 3 us per row alone and 10-14 us under the GIL
contention of a busy loop thread (bench/README.md, "Scale-out"); a row per chunk costs
one ``orjson.dumps`` and one ``join`` per chunk.

Files of earlier evkit releases hold one row per event in a table ``events``: the
store moves those into chunks when it opens such a file (:func:`migrate`), and
:func:`read_records` reads both, so older recordings still load.

Pure apart from the connection it is given: no threads, no logging, no policy (what to
delete and when is the store's).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import sqlite3
from collections.abc import Iterator

import orjson

from evkit.store.base import Record

__all__ = [
    "CHUNK_BYTES",
    "EVENTS_PER_CHUNK",
    "SCHEMA",
    "chunks_of",
    "decode_chunk",
    "encode_chunk",
    "insert",
    "migrate",
    "read_records",
    "transaction",
]

#: Most events in one row.
EVENTS_PER_CHUNK = 1_000
#: Most bytes of frames in one row, unless one event alone is larger.
CHUNK_BYTES = 1 << 20
_SEPARATOR = b"\x1e"
# Fields of a Record (id, timestamp, type, correlation_id, frame), taken in C.
_HEADER = operator.itemgetter(0, 1, 2, 3)
_TIMESTAMP = operator.itemgetter(1)
_FRAME = operator.itemgetter(4)

SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    last_id INTEGER PRIMARY KEY,
    first_id INTEGER NOT NULL,
    oldest INTEGER NOT NULL,
    newest INTEGER NOT NULL,
    header BLOB NOT NULL,
    frames BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_oldest ON chunks (oldest);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = "last_id, first_id, oldest, newest, header, frames"
_ROWS_PER_STATEMENT = 1_000  # 6,000 parameters: under SQLite's 32,766
_Row = tuple[int, int, int, int, bytes, bytes]
_LOWEST, _HIGHEST = -(1 << 63), (1 << 63) - 1  # SQLite's integer range


def chunks_of(records: list[Record]) -> Iterator[list[Record]]:
    """``records`` cut into runs of at most EVENTS_PER_CHUNK events and CHUNK_BYTES of frames."""
    for start in range(0, len(records), EVENTS_PER_CHUNK):
        run = records[start : start + EVENTS_PER_CHUNK]
        if sum(map(len, map(_FRAME, run))) <= CHUNK_BYTES:
            yield run
            continue
        first, size = 0, 0  # large frames: cut by bytes, one record at a time
        for index, record in enumerate(run):
            length = len(record.frame)
            if index > first and size + length > CHUNK_BYTES:
                yield run[first:index]
                first, size = index, 0
            size += length
        yield run[first:]


def encode_chunk(records: list[Record]) -> _Row:
    """The row of one chunk (``records`` in id order, at least one)."""
    timestamps = list(map(_TIMESTAMP, records))
    header = orjson.dumps(list(map(_HEADER, records)))
    frames = _SEPARATOR.join(map(_FRAME, records))
    return (records[-1].id, records[0].id, min(timestamps), max(timestamps), header, frames)


def decode_chunk(header: bytes, frames: bytes) -> list[Record]:
    """The records of one row.

    Raises:
        ValueError: the header and the frames do not agree (a damaged row).
    """
    entries = orjson.loads(header)
    parts = frames.split(_SEPARATOR)
    if len(parts) != len(entries):
        raise ValueError(f"a chunk of {len(entries)} events holds {len(parts)} frames")
    return [
        Record(id_, timestamp, type_, correlation_id, frame)
        for (id_, timestamp, type_, correlation_id), frame in zip(entries, parts, strict=True)
    ]


def insert(connection: sqlite3.Connection, records: list[Record]) -> int:
    """Write ``records`` (in id order) as chunks, in one statement when they fit in one.

    In the caller's transaction if one is open; else, on an autocommit connection, the
    one statement is its own transaction (a larger batch gets one of its own).
    Returns the bytes of headers and frames written.
    """
    rows = [encode_chunk(chunk) for chunk in chunks_of(records)]
    size = sum(len(row[4]) + len(row[5]) for row in rows)
    parts = [
        rows[start : start + _ROWS_PER_STATEMENT]
        for start in range(0, len(rows), _ROWS_PER_STATEMENT)
    ]
    if len(parts) == 1:
        connection.execute(_insert_statement(len(rows)), tuple(itertools.chain(*rows)))
        return size
    with transaction(connection):
        for part in parts:
            connection.execute(_insert_statement(len(part)), tuple(itertools.chain(*part)))
    return size


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One transaction on an autocommit connection (``isolation_level=None``); on any
    other connection, or inside a transaction already open, the caller's."""
    if connection.isolation_level is not None or connection.in_transaction:
        yield
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


@functools.lru_cache(maxsize=64)
def _insert_statement(rows: int) -> str:
    return f"INSERT OR REPLACE INTO chunks ({_COLUMNS}) VALUES " + ",".join(
        ("(?,?,?,?,?,?)",) * rows
    )


def read_records(
    connection: sqlite3.Connection,
    after: int = 0,
    before: int | None = None,
    low: int | None = None,
    high: int | None = None,
) -> Iterator[Record]:
    """Stored records with ``after < id < before``, oldest id first, chunk by chunk.

    ``low`` / ``high`` skip chunks (and legacy rows) with no timestamp in that range
    (inclusive); records of a chunk that is read are all yielded, whatever their
    timestamps: the caller filters events.
    """
    limit = before if before is not None else _HIGHEST
    bounds = (_LOWEST if low is None else low, _HIGHEST if high is None else high)
    if _has_table(connection, "events"):  # an earlier release's file, read as it is
        for row in connection.execute(
            "SELECT id, timestamp, type, correlation_id, frame FROM events "
            "WHERE id > ? AND id < ? AND timestamp >= ? AND timestamp <= ? ORDER BY id",
            (after, limit, *bounds),
        ):
            yield Record(row[0], row[1], row[2], row[3], bytes(row[4]))
    if not _has_table(connection, "chunks"):
        return
    rows = connection.execute(
        "SELECT header, frames FROM chunks WHERE last_id > ? AND first_id < ? "
        "AND newest >= ? AND oldest <= ? ORDER BY last_id",
        (after, limit, *bounds),
    )
    for header, frames in rows:
        for record in decode_chunk(header, frames):
            if after < record.id < limit:
                yield record


def migrate(connection: sqlite3.Connection) -> int:
    """Move an earlier release's one-row-per-event table into chunks (one transaction).

    Returns how many events were moved (0 when there was no such table).
    """
    if not _has_table(connection, "events"):
        return 0
    moved = 0
    with connection:
        rows = connection.execute(
            "SELECT id, timestamp, type, correlation_id, frame FROM events ORDER BY id"
        )
        while batch := rows.fetchmany(EVENTS_PER_CHUNK * 10):
            records = [Record(r[0], r[1], r[2], r[3], bytes(r[4])) for r in batch]
            insert(connection, records)
            moved += len(records)
        rows.close()
        connection.execute("DROP TABLE events")
    return moved


def _has_table(connection: sqlite3.Connection, name: str) -> bool:
    row = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None
