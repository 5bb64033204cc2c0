"""Recordings: events kept in a file, read back for offline analysis or replayed live.

A recording is either a SQLite file in the durable store's own format (what
``serve(store="sqlite:///events.db")`` writes, and what ``evkit record --out
events.db`` writes) or JSON Lines, one event frame per line (``--out events.jsonl``).

:func:`load` reads one into the collector's DataFrame shape (or listens to a live
server for some seconds: the same DataFrame, from a collector); :func:`read_events`
yields the events for ``evkit replay``; :class:`RecordingWriter` appends to either
format. Sources are named by path, by ``sqlite:///path`` URL, or by a server's
``ws://`` / ``wss://`` URL (for :func:`load`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evkit.patterns import compile_pattern, validate_patterns
from evkit.store.base import Record
from evkit.store.sqlite_format import SCHEMA, insert, migrate, read_records
from evkit.tls import SSLOption

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RecordingWriter", "load", "read_events"]


def _path_of(source: str | Path) -> Path:
    text = str(source)
    if text.startswith("sqlite:///"):
        # As in open_store: sqlite:///rel.db is relative, sqlite:////abs.db absolute, and
        # a query (the store's retention options) is not part of the path.
        return Path(text[len("sqlite:///") :].split("?", 1)[0])
    if "://" in text:
        raise ValueError(
            f"cannot read {text!r}: give a file path, sqlite:///path.db, a .jsonl file, or "
            "(to load) a server's ws:// URL"
        )
    return Path(text)


def _is_jsonl(path: Path) -> bool:
    return path.suffix in (".jsonl", ".ndjson")


def _to_ms(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a time, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name}={value!r} has no time zone; evkit timestamps are UTC")
        return int(value.timestamp() * 1000)
    timestamp = getattr(value, "timestamp", None)  # pandas.Timestamp and the like
    if callable(timestamp):
        return int(timestamp() * 1000)
    raise TypeError(f"{name} must be a datetime, an ISO string or epoch milliseconds")


def _malformed(event: Any) -> str | None:
    """What makes a decoded JSON Lines value no event, or None when it is one."""
    if not isinstance(event, dict):
        return f"a JSON {type(event).__name__}, not an object"
    if not isinstance(event.get("type"), str):
        return "no 'type' string"
    timestamp = event.get("timestamp", 0)
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        return "'timestamp' is not epoch milliseconds"
    if not isinstance(event.get("payload") or {}, dict):
        return "'payload' is not an object"
    return None


def read_events(
    source: str | Path,
    patterns: Iterable[str] = ("*",),
    correlation_id: str | None = None,
    since: Any = None,
    until: Any = None,
) -> Iterator[dict[str, Any]]:
    """The recorded events matching the filters, oldest first.

    ``since`` / ``until`` bound the event timestamps (inclusive): a timezone-aware
    datetime, an ISO 8601 string with an offset, or epoch milliseconds.

    Raises:
        FileNotFoundError: no such recording.
        InvalidPatternError: a malformed pattern.
        ValueError: a malformed line in a JSON Lines recording (its line number is given).
    """
    path = _path_of(source)
    if not path.exists():
        raise FileNotFoundError(f"no recording at {path}")
    if isinstance(patterns, str):
        patterns = [patterns]
    matchers = [compile_pattern(p) for p in validate_patterns(list(patterns))]
    low, high = _to_ms(since, "since"), _to_ms(until, "until")

    def wanted(type_: str, correlation: Any, timestamp: int) -> bool:
        return (
            (correlation_id is None or correlation == correlation_id)
            and (low is None or timestamp >= low)
            and (high is None or timestamp <= high)
            and any(m(type_) for m in matchers)
        )

    if _is_jsonl(path):
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON event ({exc})") from None
                problem = _malformed(event)
                if problem:
                    raise ValueError(f"{path}:{number}: not an evkit event ({problem})")
                payload = event.get("payload") or {}
                if wanted(
                    event.get("type", ""), payload.get("correlationId"), event.get("timestamp", 0)
                ):
                    yield event
        return
    # as_uri() escapes what a URI would misread in a path (?, #, %).
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        for record in read_records(connection, low=low, high=high):
            if wanted(record.type, record.correlation_id, record.timestamp):
                yield orjson.loads(record.frame)
    finally:
        connection.close()


def load(
    source: str | Path,
    patterns: Iterable[str] = ("*",),
    correlation_id: str | None = None,
    since: Any = None,
    until: Any = None,
    *,
    seconds: float | None = None,
    token: str | None = None,
    ssl: SSLOption = None,
    connect_timeout: float = 10.0,
) -> pd.DataFrame:
    """A recording, a SQLite store, or what a live server sends for ``seconds``, as the
    collector's DataFrame.

    Same columns and dtypes as :meth:`evkit.Collector.to_dataframe`; filters as in
    :func:`read_events`. A ``ws://`` or ``wss://`` source is listened to for
    ``seconds`` (required then), with ``token``, ``ssl`` and ``connect_timeout`` as for
    :func:`evkit.collect`.

    Raises:
        FileNotFoundError: no such recording.
        ValueError: a malformed recording, or a live source without ``seconds``.
        ConnectError: a live server could not be reached within ``connect_timeout``.
        ProtocolError: a live server refused the subscription (a token, a pattern).
    """
    from evkit.columns import ColumnBuffer

    if str(source).startswith(("ws://", "wss://")):
        return _listen(
            str(source),
            patterns,
            correlation_id,
            since,
            until,
            seconds,
            token=token,
            ssl=ssl,
            connect_timeout=connect_timeout,
        )
    buffer = ColumnBuffer()
    for event in read_events(source, patterns, correlation_id, since, until):
        buffer.append(event)
    return buffer.to_frame()


def _listen(
    url: str,
    patterns: Iterable[str],
    correlation_id: str | None,
    since: Any,
    until: Any,
    seconds: float | None,
    **connection: Any,
) -> pd.DataFrame:
    """What ``url`` sends for ``seconds``, as :func:`load` returns it."""
    from evkit.collector import collect

    if seconds is None or not seconds > 0:
        raise ValueError(
            f"loading from a live server ({url}) needs seconds=..., how long to listen"
        )
    low, high = _to_ms(since, "since"), _to_ms(until, "until")
    with collect(url, patterns, correlation_id, **connection) as collector:
        threading.Event().wait(seconds)  # listening is what the caller asked for
        frame = collector.to_dataframe()
    stamps = frame["timestamp"].astype("int64") // 1_000_000
    if low is not None:
        frame = frame[stamps >= low]
    if high is not None:
        frame = frame[stamps <= high]
    return frame.reset_index(drop=True)


class RecordingWriter:
    """Appends events to a recording (SQLite or JSON Lines, by the file's suffix).

    Events keep their stream ids in a SQLite recording when they are integers; an
    event with an id at or below one already recorded (a repeat after a resume) is
    not written twice.
    Call :meth:`flush` to commit, :meth:`close` when done.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = _path_of(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self._pending: list[Record] = []
        self._jsonl = _is_jsonl(self.path)
        if self._jsonl:
            self._file = self.path.open("ab")
            self._db: sqlite3.Connection | None = None
        else:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            migrate(self._db)  # an earlier release's recording: one row per event
            newest = self._db.execute("SELECT MAX(last_id) FROM chunks").fetchone()[0]
            self._next = (newest or 0) + 1

    def write(self, event: dict[str, Any], frame: bytes | None = None) -> None:
        """Add one event (``frame``: its bytes as received, to keep them exact)."""
        data = frame if frame is not None else orjson.dumps(event)
        self.count += 1
        if self._jsonl:
            self._file.write(data.rstrip(b"\n") + b"\n")
            return
        if b"\x1e" in data:  # JSON never holds it unescaped; chunks are joined by it
            raise ValueError("a recorded frame must be JSON text; this one holds a raw 0x1E")
        event_id = event.get("id")
        numbered = isinstance(event_id, str) and event_id.isdigit()
        row_id = int(event_id) if isinstance(event_id, str) and numbered else self._next
        if numbered and row_id < self._next:
            return  # recorded already: a repeat after a resume
        self._next = row_id + 1
        payload = event.get("payload") or {}
        correlation = payload.get("correlationId") if isinstance(payload, dict) else None
        self._pending.append(
            Record(
                row_id,
                int(event.get("timestamp") or 0),
                str(event.get("type", "")),
                correlation if isinstance(correlation, str) else None,
                data,
            )
        )
        if len(self._pending) >= 1000:
            self.flush()

    def flush(self) -> None:
        """Make what was written durable."""
        if self._jsonl:
            self._file.flush()
            return
        if self._pending and self._db is not None:
            with self._db:
                insert(self._db, self._pending)
            self._pending.clear()

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self._jsonl:
            self._file.close()
        elif self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
