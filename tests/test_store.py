"""Event history stores: the memory ring and durable SQLite, alone and behind the server.

The stores are driven directly with plain :class:`~evkit.store.Record` values (ids
assigned by the test, as the broadcaster assigns them); SQLite files live in
``tmp_path``. The server tests use real sockets on 127.0.0.1 and check what a client
resuming across a restart sees. Waits are on conditions with deadlines: ``sync()``,
``evkit.flush()`` and bounded receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

import evkit
from evkit.backplane.base import Pending
from evkit.backplane.local import LocalBackplane
from evkit.bus import Event
from evkit.protocol import encode, encode_event
from evkit.store import MemoryStore, Record, SQLiteStore, Store, open_store
from evkit.store.sqlite_format import read_records
from evkit.testing import open_client, recv_json, recv_until, send_json

EPOCH = re.compile(r"[0-9a-f]{8}")
NOW_MS = int(time.time() * 1000)
HOUR_MS = 3_600_000


def record(
    event_id: int,
    timestamp: int = NOW_MS,
    type_: str = "repo.commit.created",
    correlation_id: str | None = None,
) -> Record:
    """A record framed exactly as the broadcaster frames it."""
    payload: dict[str, Any] = {"n": event_id}
    if correlation_id is not None:
        payload["correlationId"] = correlation_id
    frame = encode_event(type_, timestamp, str(event_id), encode(payload))
    return Record(event_id, timestamp, type_, correlation_id, frame)


def append_all(store: Store, first: int, last: int, timestamp: int = NOW_MS) -> list[Record]:
    records = [record(i, timestamp) for i in range(first, last + 1)]
    for item in records:
        store.append(item)
    return records


def ids(records: Iterator[Record]) -> list[int]:
    return [r.id for r in records]


def rows_on_disk(path: Path) -> list[int]:
    """The ids the file holds, read with a connection of the test's own."""
    connection = sqlite3.connect(path)
    try:
        return [record.id for record in read_records(connection)]
    finally:
        connection.close()


@pytest.fixture
def open_sqlite(tmp_path: Path) -> Iterator[Callable[..., SQLiteStore]]:
    """Opens SQLite stores (default file ``tmp_path/events.db``); closes them all after."""
    opened: list[SQLiteStore] = []

    def make(path: Path | None = None, **options: Any) -> SQLiteStore:
        store = SQLiteStore(path or tmp_path / "events.db", **options)
        store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


# -- MemoryStore ---------------------------------------------------------------------------


def test_memory_store_starts_empty() -> None:
    store = MemoryStore(history_size=5)
    assert store.last_id == 0
    assert store.first_id() == 1
    assert list(store.read_after(0)) == []
    assert len(store) == 0


def test_memory_store_reads_after_any_id_within_capacity() -> None:
    store = MemoryStore(history_size=5)
    records = append_all(store, 1, 4)
    assert (store.first_id(), store.last_id) == (1, 4)
    assert list(store.read_after(0)) == records
    assert ids(store.read_after(2)) == [3, 4]
    assert list(store.read_after(4)) == []
    assert list(store.read_after(99)) == []  # a cursor from the future reads nothing


def test_memory_store_ring_overflow_keeps_the_newest() -> None:
    store = MemoryStore(history_size=5)
    append_all(store, 1, 12)
    assert (store.first_id(), store.last_id, len(store)) == (8, 12, 5)
    assert ids(store.read_after(0)) == [8, 9, 10, 11, 12]  # older ones are gone
    assert ids(store.read_after(7)) == [8, 9, 10, 11, 12]
    assert ids(store.read_after(9)) == [10, 11, 12]
    assert ids(store.read_after(11)) == [12]
    assert list(store.read_after(12)) == []


def test_memory_store_read_after_returns_the_records_appended() -> None:
    store = MemoryStore(history_size=3)
    records = append_all(store, 1, 3)
    assert [orjson.loads(r.frame)["id"] for r in store.read_after(0)] == ["1", "2", "3"]
    assert list(store.read_after(0)) == records


def test_every_memory_store_has_a_new_epoch() -> None:
    epochs = {MemoryStore().epoch for _ in range(20)}
    assert len(epochs) == 20
    assert all(EPOCH.fullmatch(e) for e in epochs)


def test_memory_store_health() -> None:
    store = MemoryStore(history_size=5)
    append_all(store, 1, 7)
    assert store.health() == {
        "name": "memory",
        "state": "ok",
        "events": 5,
        "bytes": sum(len(r.frame) for r in store.read_after(0)),
        "capacity": 5,
        "epoch": store.epoch,
        "lastId": "7",
    }


def test_memory_store_is_bounded_in_bytes_too() -> None:
    one = len(record(10).frame)  # ids 8-10 have frames this long or shorter
    store = MemoryStore(history_size=100, history_bytes=one * 3)
    append_all(store, 1, 10)
    assert [r.id for r in store.read_after(0)] == [8, 9, 10]
    assert (store.first_id(), store.trimmed_through()) == (8, 7)
    # An event larger than the whole budget is still kept, alone.
    big = Record(11, NOW_MS, "big.event", None, b"x" * (one * 10))
    store.append(big)
    assert list(store.read_after(0)) == [big]


def test_sqlite_and_memory_rings_hold_the_byte_bound(tmp_path: Path) -> None:
    one = len(record(10).frame)
    store = SQLiteStore(tmp_path / "e.db", history_size=100, history_bytes=one * 3)
    store.open()
    try:
        append_all(store, 1, 10)
        store.sync()
        # The ring holds three; the disk still serves the rest, in order.
        assert ids(store.read_after(0)) == list(range(1, 11))
        assert len(store._ring) == 3
    finally:
        store.close()


def test_memory_store_rejects_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="capacity must be positive"):
        MemoryStore(history_size=0)


# -- open_store ----------------------------------------------------------------------------


def test_open_store_memory_uses_history_size() -> None:
    store = open_store("memory://", history_size=7)
    assert isinstance(store, MemoryStore)
    assert store.capacity == 7


def test_open_store_memory_size_option() -> None:
    store = open_store("memory://?size=5", history_size=7)
    assert isinstance(store, MemoryStore)
    assert store.capacity == 5


def test_open_store_sqlite_relative_path_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel.db", history_size=50)
    assert isinstance(store, SQLiteStore)
    assert store.path == Path("rel.db")
    assert (store.history_size, store.retention_size, store.max_age) == (50, 1_000_000, None)
    store.open()
    try:
        assert (tmp_path / "rel.db").is_file()
    finally:
        store.close()


def test_open_store_sqlite_relative_path_in_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///data/rel.db")
    assert isinstance(store, SQLiteStore)
    store.open()
    try:
        assert (tmp_path / "data" / "rel.db").is_file()
    finally:
        store.close()


def test_open_store_sqlite_absolute_path(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/abs.db")  # tmp_path starts with "/"
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "abs.db"
    assert store.path.is_absolute()


def test_open_store_sqlite_retention_options(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="max_events is now called size"):
        store = open_store(f"sqlite:///{tmp_path}/e.db?max_events=10&max_age=60")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "e.db"
    assert (store.retention_size, store.max_age) == (10, 60.0)
    fractional = open_store(f"sqlite:///{tmp_path}/e.db?max_age=0.5")
    assert isinstance(fractional, SQLiteStore)
    assert fractional.max_age == 0.5
    full = open_store(f"sqlite:///{tmp_path}/e.db?synchronous=full")
    assert isinstance(full, SQLiteStore)
    assert (full.synchronous, fractional.synchronous) == ("FULL", "NORMAL")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis-cluster://localhost",
            r"unknown store URL .*use memory://, sqlite:///.* or redis://",
        ),
        ("memory", r"unknown store URL 'memory'"),
        ("", r"unknown store URL ''"),
        ("sqlite://", r"names no file; use sqlite:///events.db"),
        ("sqlite:///", r"names no file"),
        ("memory://?size=0", r"size must be a positive integer, got '0'"),
        ("memory://?size=abc", r"size must be a positive integer, got 'abc'"),
        ("memory://?size=", r"size must be a positive integer, got ''"),
        ("sqlite:///e.db?max_events=-3", r"max_events must be a positive integer, got '-3'"),
        ("sqlite:///e.db?max_age=abc", r"max_age must be a positive number of seconds"),
        ("sqlite:///e.db?max_age=-1", r"max_age must be a positive number of seconds"),
        ("sqlite:///e.db?synchronous=OFF", r"synchronous must be NORMAL or FULL, got 'OFF'"),
        ("sqlite:///e.db?max_age=nan", r"max_age must be a positive number of seconds"),
        ("memory://?sise=5", r"unknown option 'sise' for memory://; accepted: size"),
        (
            "sqlite:///e.db?maxevents=3",
            r"unknown option 'maxevents' for sqlite://; accepted: size, max_age",
        ),
    ],
)
def test_open_store_rejects_bad_urls_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url)


# -- SQLiteStore ---------------------------------------------------------------------------


def test_sqlite_new_file_starts_a_new_epoch_at_id_one(
    open_sqlite: Callable[..., SQLiteStore], tmp_path: Path
) -> None:
    store = open_sqlite()
    assert EPOCH.fullmatch(store.epoch)
    assert (store.last_id, store.first_id()) == (0, 1)
    assert list(store.read_after(0)) == []
    assert (tmp_path / "events.db").is_file()


def test_sqlite_ids_and_epoch_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = SQLiteStore(path)
    first.open()
    written = append_all(first, 1, 10)
    first.sync()
    epoch = first.epoch
    first.close()

    second = SQLiteStore(path)
    second.open()
    try:
        assert second.epoch == epoch
        assert (second.first_id(), second.last_id) == (1, 10)
        assert list(second.read_after(0)) == written  # from disk, frames byte for byte
        assert ids(second.read_after(7)) == [8, 9, 10]
        append_all(second, 11, 12)
        second.sync()
        assert ids(second.read_after(9)) == [10, 11, 12]
    finally:
        second.close()
    assert rows_on_disk(path) == list(range(1, 13))


def test_sqlite_close_writes_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = SQLiteStore(path, batch_interval=60)  # the writer only writes when told to
    store.open()
    append_all(store, 1, 25)
    store.close()
    assert rows_on_disk(path) == list(range(1, 26))


def test_sqlite_wiped_file_starts_a_new_epoch_from_id_one(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = SQLiteStore(path)
    first.open()
    append_all(first, 1, 5)
    first.sync()
    old_epoch = first.epoch
    first.close()
    for name in ("events.db", "events.db-wal", "events.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    second = SQLiteStore(path)
    second.open()
    try:
        assert second.epoch != old_epoch
        assert EPOCH.fullmatch(second.epoch)
        assert (second.last_id, second.first_id()) == (0, 1)
        append_all(second, 1, 2)
        second.sync()
    finally:
        second.close()
    assert rows_on_disk(path) == [1, 2]


def test_sqlite_killed_with_uncommitted_ids_keeps_its_epoch_and_skips_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    first = SQLiteStore(path)
    first.open()
    append_all(first, 1, 5)
    first.sync()
    epoch = first.epoch
    first.close()
    # What a kill leaves: ids up to 40 were reserved (and may have been handed out),
    # only 5 committed. None of 6..40 reached a client: delivery waits for the commit.
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("UPDATE meta SET value = '40' WHERE key = 'reserved'")
    connection.close()

    second = SQLiteStore(path)
    second.open()
    try:
        assert (second.epoch, second.last_id) == (epoch, 40)
        assert not second.continues(epoch)
        append_all(second, 41, 41)  # the next id is 41: 6..40 are never reused
        second.sync()
    finally:
        second.close()


def test_sqlite_still_knows_epochs_an_older_file_replaced_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = SQLiteStore(path)
    first.open()
    first.close()
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("INSERT OR REPLACE INTO meta VALUES ('lineage', '[\"0badc0de\"]')")
    connection.close()
    second = SQLiteStore(path)
    second.open()
    try:
        assert second.continues("0badc0de")
        assert not second.continues("12345678")
    finally:
        second.close()


def test_sqlite_on_written_reports_each_commit_in_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    written: list[int] = []
    assert store.on_written(written.append) is True
    assert MemoryStore(10).on_written(written.append) is False  # nothing to wait for
    store.open()
    try:
        for first in (1, 11, 21):
            store.extend([record(i) for i in range(first, first + 10)])
        store.sync()
        assert written
        assert written[-1] == 30
        assert written == sorted(written)
        assert rows_on_disk(tmp_path / "events.db") == list(range(1, 31))
    finally:
        store.close()


class _Queue:
    """The broadcaster's queue as a backplane sees it (as evkit.server.ingress does it),
    with ``held``: a drain the test itself stands for, scheduled but not yet run."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.pending: deque[Pending] = deque()
        self.held = False
        self._wake = wake
        self._scheduled = False

    @property
    def waking(self) -> bool:
        return self.held or self._scheduled

    def again(self, delay: float = 0.0) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(delay, self._woken)

    def _woken(self) -> None:
        self._scheduled = False
        self._wake()


class _Sink:
    def __init__(self) -> None:
        self.delivered: list[int] = []

    def deliver(self, records: list[Record]) -> None:
        self.delivered += [r.id for r in records]

    def published(self, items: list[Pending]) -> None:
        pass

    def stream_broken(self, reason: str) -> None:
        pass

    def listening(self) -> bool:
        return True


def test_a_commit_reaches_clients_by_the_drain_already_scheduled_or_else_by_a_wake(
    tmp_path: Path,
) -> None:
    """Under load a drain is always scheduled: the writer then does not wake the loop
    (a syscall that hands the GIL away), and that drain delivers the commit first."""
    store = SQLiteStore(tmp_path / "events.db")
    store.open()

    async def scenario() -> None:
        backplane = LocalBackplane(store)
        queue, sink = _Queue(backplane.wake), _Sink()
        await backplane.start(queue, sink)
        loop = asyncio.get_running_loop()

        async def drained() -> None:
            for _ in range(500):  # the first ids wait for the writer to commit a mark
                if not queue.pending:
                    return
                backplane.wake()
                await asyncio.sleep(0.01)

        async def settled(count: int) -> None:
            await loop.run_in_executor(None, store.sync)
            for _ in range(50):  # a few loop turns for a wake already sent
                await asyncio.sleep(0.01)
                if len(sink.delivered) >= count:
                    return

        queue.pending += [(Event("t.a", 0), None, b"{}", 0.0) for _ in range(3)]
        queue.held = True  # a drain is scheduled: the writer leaves the commit to it
        await drained()
        await settled(3)
        assert sink.delivered == []  # committed, waiting for that drain
        queue.held = False  # from now on only the queue's own retries are scheduled
        queue.pending.append((Event("t.a", 0), None, b"{}", 0.0))
        backplane.wake()  # that drain: the commit first, then the new event recorded
        assert sink.delivered == [1, 2, 3]
        await settled(4)
        assert sink.delivered == [1, 2, 3, 4]

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_sqlite_keeps_its_epoch_when_retention_emptied_the_table(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    first = SQLiteStore(path, max_age=60)
    first.open()
    append_all(first, 1, 3, timestamp=NOW_MS - HOUR_MS)  # all past retention
    first.sync()
    epoch = first.epoch
    first.close()
    assert rows_on_disk(path) == []

    second = SQLiteStore(path)
    second.open()
    try:
        # The ids handed out still apply: same stream, and the next id is 4, not 1.
        assert (second.epoch, second.last_id, second.first_id()) == (epoch, 3, 4)
    finally:
        second.close()


def test_sqlite_read_after_spans_disk_and_ring(open_sqlite: Callable[..., SQLiteStore]) -> None:
    store = open_sqlite(history_size=5)
    written = append_all(store, 1, 50)
    store.sync()
    assert list(store.read_after(3)) == written[3:]  # 4..45 from disk, 46..50 from the ring
    assert [orjson.loads(r.frame)["id"] for r in store.read_after(3)] == [
        str(i) for i in range(4, 51)
    ]
    assert list(store.read_after(0)) == written
    assert ids(store.read_after(44)) == [45, 46, 47, 48, 49, 50]
    assert ids(store.read_after(47)) == [48, 49, 50]
    assert list(store.read_after(50)) == []


def test_sqlite_read_after_includes_events_not_yet_written(
    open_sqlite: Callable[..., SQLiteStore],
) -> None:
    # The writer is idle until sync(): the events older than the ring are only pending.
    store = open_sqlite(history_size=5, batch_interval=60)
    written = append_all(store, 1, 50)
    assert store.first_id() == 1
    assert list(store.read_after(3)) == written[3:]
    store.sync()
    assert list(store.read_after(3)) == written[3:]


def test_sqlite_read_after_while_the_writer_is_writing(
    open_sqlite: Callable[..., SQLiteStore],
) -> None:
    # Reads race the writer thread: whatever has or has not been committed yet, a read
    # returns every event after the cursor, once each, in order.
    store = open_sqlite(history_size=10, batch_interval=0.001)
    for last in range(100, 2001, 100):
        append_all(store, last - 99, last)
        assert ids(store.read_after(0)) == list(range(1, last + 1))
        assert ids(store.read_after(last - 150)) == list(range(max(1, last - 149), last + 1))
    store.sync()


def test_sqlite_retention_by_count(open_sqlite: Callable[..., SQLiteStore], tmp_path: Path) -> None:
    store = open_sqlite(retention_size=20)
    append_all(store, 1, 50)
    store.sync()
    assert store.first_id() == 31
    assert ids(store.read_after(0)) == list(range(31, 51))
    assert rows_on_disk(tmp_path / "events.db") == list(range(31, 51))
    health = store.health()
    assert (health["firstId"], health["lastId"]) == ("31", "50")


def test_sqlite_retention_by_count_with_a_small_ring(
    open_sqlite: Callable[..., SQLiteStore], tmp_path: Path
) -> None:
    store = open_sqlite(retention_size=20, history_size=5)
    append_all(store, 1, 50)
    store.sync()
    assert store.first_id() == 31
    assert ids(store.read_after(3)) == list(range(31, 51))
    assert len(rows_on_disk(tmp_path / "events.db")) <= 20


def test_sqlite_retention_by_age(open_sqlite: Callable[..., SQLiteStore], tmp_path: Path) -> None:
    store = open_sqlite(max_age=60)
    append_all(store, 1, 10, timestamp=NOW_MS - HOUR_MS)
    append_all(store, 11, 15, timestamp=int(time.time() * 1000))
    store.sync()
    assert rows_on_disk(tmp_path / "events.db") == [11, 12, 13, 14, 15]
    assert store.first_id() == 11
    assert ids(store.read_after(0)) == [11, 12, 13, 14, 15]
    assert store.last_id == 15


def test_sqlite_health_fields(open_sqlite: Callable[..., SQLiteStore], tmp_path: Path) -> None:
    store = open_sqlite(history_size=5)
    append_all(store, 1, 8)
    store.sync()
    assert store.health() == {
        "name": "sqlite",
        "state": "ok",
        "path": str(tmp_path / "events.db"),
        "epoch": store.epoch,
        "lastId": "8",
        "firstId": "1",
        "writtenId": "8",
        "pending": 0,
        "dropped": 0,
        "error": None,
    }


def test_sqlite_past_max_pending_the_oldest_unwritten_are_dropped_and_counted(
    open_sqlite: Callable[..., SQLiteStore], tmp_path: Path
) -> None:
    store = open_sqlite(queue_size=3, batch_interval=60)
    append_all(store, 1, 5)
    health = store.health()
    assert (health["pending"], health["dropped"]) == (3, 2)
    store.sync()
    assert rows_on_disk(tmp_path / "events.db") == [3, 4, 5]
    assert store.health()["dropped"] == 2


def test_sqlite_sync_times_out_while_the_database_is_locked(
    open_sqlite: Callable[..., SQLiteStore], tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    store = open_sqlite()
    append_all(store, 1, 3)
    store.sync()
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        append_all(store, 4, 6)
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=r"did not write up to id 6 within 0.3 s") as info:
            store.sync(timeout=0.3)
        assert time.monotonic() - began < 5
        assert "written: 3" in str(info.value)
        health = store.health()
        assert (health["writtenId"], health["lastId"], health["pending"]) == ("3", "6", 3)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # The writer was waiting on the lock, not failing: once released, it catches up.
    store.sync(timeout=10)
    assert rows_on_disk(path) == [1, 2, 3, 4, 5, 6]
    assert store.health()["state"] == "ok"


def test_sqlite_open_fails_with_oserror_where_no_folder_can_be(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = SQLiteStore(blocker / "events.db")
    with pytest.raises(OSError):  # noqa: PT011 - which errno depends on the platform
        store.open()


# -- through the server --------------------------------------------------------------------


def healthz(srv: evkit.Server) -> dict[str, Any]:
    with urllib.request.urlopen(f"{srv.http_url}/healthz", timeout=10) as response:
        body: dict[str, Any] = orjson.loads(response.read())
        return body


def emit_numbered(first: int, last: int) -> None:
    for n in range(first, last + 1):
        evkit.emit("repo.commit.created", {"n": n})


def marker(replayed: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``websocket.replayed`` payload these tests are about."""
    return {key: replayed.get(key) for key in ("since", "count", "complete", "epoch")}


async def resume(url: str, **query: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Connect with ``query`` (since, epoch); the replayed events and the replayed marker."""
    ws, _ = await open_client(url, None, **query)
    try:
        seen = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
    finally:
        await ws.close()
    marker = seen[-1]["payload"]
    # An incomplete replay is announced first, before any replayed event.
    gaps = [m for m in seen if m["type"] == "websocket.gap"]
    assert gaps == ([] if marker["complete"] else [seen[0]]), seen[:3]
    return [m for m in seen[:-1] if "id" in m], marker


def test_server_sqlite_store_resumes_across_a_restart(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/e.db"
    srv = evkit.serve(port=0, store=store)
    try:
        emit_numbered(1, 10)
        evkit.flush()
        before = healthz(srv)
    finally:
        srv.stop()
    assert before["store"]["name"] == "sqlite"
    assert before["store"]["lastId"] == before["store"]["writtenId"] == "10"
    epoch = before["store"]["epoch"]

    srv = evkit.serve(port=0, store=store)
    try:
        after = healthz(srv)
        assert after["status"] == "ok"
        assert (after["store"]["name"], after["store"]["state"]) == ("sqlite", "ok")
        assert after["store"]["epoch"] == epoch
        assert after["store"]["lastId"] == "10"
        assert srv.stats()["epoch"] == epoch

        # A client that had seen up to id 6 before the restart gets exactly 7..10.
        missed, replayed = asyncio.run(resume(srv.url, since="6", epoch=epoch))
        assert [m["id"] for m in missed] == ["7", "8", "9", "10"]
        assert [m["payload"]["n"] for m in missed] == [7, 8, 9, 10]
        assert marker(replayed) == {"since": "6", "count": 4, "complete": True, "epoch": epoch}

        # New events continue the ids.
        emit_numbered(11, 12)
        evkit.flush()
        assert healthz(srv)["store"]["lastId"] == "12"
        missed, replayed = asyncio.run(resume(srv.url, since="10", epoch=epoch))
        assert [(m["id"], m["payload"]["n"]) for m in missed] == [("11", 11), ("12", 12)]
        assert replayed["complete"] is True
    finally:
        srv.stop()


def test_server_sqlite_store_wiped_between_runs_starts_a_new_epoch(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/e.db"
    srv = evkit.serve(port=0, store=store)
    try:
        emit_numbered(1, 5)
        evkit.flush()
        old_epoch = healthz(srv)["store"]["epoch"]
    finally:
        srv.stop()
    for name in ("e.db", "e.db-wal", "e.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    srv = evkit.serve(port=0, store=store)
    try:
        health = healthz(srv)["store"]
        assert health["epoch"] != old_epoch
        assert health["lastId"] == "0"
        emit_numbered(1, 2)
        evkit.flush()
        # The old cursor does not apply to this stream: everything held is sent, and the
        # replay says it may not be everything the client missed.
        missed, replayed = asyncio.run(resume(srv.url, since="3", epoch=old_epoch))
        assert [m["id"] for m in missed] == ["1", "2"]
        assert replayed["complete"] is False
        assert replayed["epoch"] == health["epoch"]
        # Without the epoch the server still knows: id 3 was never handed out here.
        missed, replayed = asyncio.run(resume(srv.url, since="3"))
        assert replayed["complete"] is False
    finally:
        srv.stop()


def test_server_memory_history_overflow_reports_an_incomplete_replay() -> None:
    srv = evkit.serve(port=0, history_size=5)
    try:
        emit_numbered(1, 20)
        evkit.flush()
        health = healthz(srv)["store"]
        assert (health["name"], health["events"], health["lastId"]) == ("memory", 5, "20")
        missed, replayed = asyncio.run(resume(srv.url, since="2", epoch=health["epoch"]))
        assert [m["id"] for m in missed] == ["16", "17", "18", "19", "20"]
        assert replayed["complete"] is False
        # A cursor the ring still reaches back to is complete.
        missed, replayed = asyncio.run(resume(srv.url, since="15", epoch=health["epoch"]))
        assert [m["id"] for m in missed] == ["16", "17", "18", "19", "20"]
        assert replayed["complete"] is True
    finally:
        srv.stop()


def test_server_stop_writes_every_event_emitted_before_it(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    srv = evkit.serve(port=0, store=f"sqlite:///{path}")
    try:
        emit_numbered(1, 1000)
    finally:
        srv.stop()
    assert rows_on_disk(path) == list(range(1, 1001))
    connection = sqlite3.connect(path)
    try:
        frames = [orjson.loads(record.frame) for record in read_records(connection)]
    finally:
        connection.close()
    assert [f["payload"]["n"] for f in frames] == list(range(1, 1001))


def test_server_with_an_unopenable_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(evkit.ServerError, match=r"cannot open the store sqlite:///"):
        evkit.serve(port=0, store=f"sqlite:///{blocker}/e.db")


# -- through the command line --------------------------------------------------------------

SERVING = re.compile(r"evkit: serving (ws://\S+/ws/events)")


def serve_command(store: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m evkit serve --port 0 --store STORE``; the process and its event URL.

    Ready means the "serving" line was printed: the SIGTERM handler is installed right
    after it (the log line "listening" comes earlier, before the handler is in place).
    Unbuffered, because that print is not flushed and stdout is a pipe here.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "evkit", "serve", "--port", "0", "--store", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 10
    seen: list[str] = []
    while time.monotonic() < deadline and process.poll() is None:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(line)
        match = SERVING.search(line)
        if match:
            return process, match.group(1)
    process.kill()
    process.wait(10)
    pytest.fail(f"evkit serve did not start serving within 10 s: {''.join(seen)}")


def stop_command(process: subprocess.Popen[str]) -> int:
    """SIGTERM, then the exit code (killed if it does not exit within 10 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise


async def publish_numbered(url: str, first: int, last: int) -> str:
    """Publish events n=first..last over the socket; returns the stream's epoch."""
    ws, welcome = await open_client(url, eventTypes="")
    try:
        await send_json(
            ws,
            {
                "type": "publish",
                "payload": [
                    {"type": "repo.commit.created", "payload": {"n": n}}
                    for n in range(first, last + 1)
                ],
            },
        )
        await send_json(ws, {"type": "ping", "payload": "taken"})
        assert (await recv_json(ws))["type"] == "pong"
    finally:
        await ws.close()
    epoch: str = welcome["payload"]["epoch"]
    return epoch


def test_cli_serve_store_writes_on_sigterm_and_resumes_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    process, url = serve_command(f"sqlite:///{path}")
    try:
        epoch = asyncio.run(publish_numbered(url, 1, 5))
    finally:
        code = stop_command(process)
    assert code == 0
    assert rows_on_disk(path) == [1, 2, 3, 4, 5]

    process, url = serve_command(f"sqlite:///{path}")
    try:
        missed, replayed = asyncio.run(resume(url, since="2", epoch=epoch))
        assert [(m["id"], m["payload"]["n"]) for m in missed] == [("3", 3), ("4", 4), ("5", 5)]
        assert marker(replayed) == {"since": "2", "count": 3, "complete": True, "epoch": epoch}
        asyncio.run(publish_numbered(url, 6, 6))
    finally:
        code = stop_command(process)
    assert code == 0
    assert rows_on_disk(path) == [1, 2, 3, 4, 5, 6]


def test_cli_serve_rejects_a_bad_store_url_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evkit",
            "serve",
            "--port",
            "0",
            "--store",
            "sqlite:///x.db?maxevents=1",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "evkit: unknown option 'maxevents' for sqlite://" in result.stderr
    assert "Traceback" not in result.stderr


# -- kill -9 at random points: acknowledged events kept, ids never reused ----------------------


async def http_post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to ``url`` over a plain asyncio connection; OSError if the server died."""
    parts = url.removeprefix("http://").split("/", 1)
    host, port = parts[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"POST /{parts[1]} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, data = answer.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionResetError("the server closed the connection without answering")
    return int(head.split(b" ", 2)[1]), orjson.loads(data)


async def load_until_killed(
    url: str, process: subprocess.Popen[str], kill_after: float
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], str]:
    """POST numbered events while a client reads them; SIGKILL the server mid-stream.

    Returns what the client was sent, what the POSTs acknowledged (id, n) and the epoch.
    """
    ws, welcome = await open_client(url, eventTypes="kill.*")
    seen: list[tuple[str, int]] = []
    acknowledged: list[tuple[str, int]] = []
    first_acknowledged = asyncio.Event()

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                message = orjson.loads(raw)
                if "id" in message:
                    seen.append((message["id"], message["payload"]["n"]))

    async def post_forever() -> None:
        n = 0
        post_url = url.replace("ws://", "http://").replace("/ws/events", "/events")
        while True:
            body = orjson.dumps(
                [{"type": "kill.test.event", "payload": {"n": n + i}} for i in range(25)]
            )
            try:
                status, answer = await http_post(post_url, body)
            except OSError:
                return  # killed while this POST was in flight: it was not acknowledged
            assert status == 202, answer
            acknowledged.extend(zip(answer["ids"], range(n, n + 25), strict=True))
            first_acknowledged.set()
            n += 25

    reader = asyncio.create_task(read())
    poster = asyncio.create_task(post_forever())
    await asyncio.wait_for(first_acknowledged.wait(), 10)
    await asyncio.sleep(kill_after)  # a random point of the stream, not a wait for a condition
    process.send_signal(signal.SIGKILL)
    await asyncio.get_running_loop().run_in_executor(None, process.wait, 10)
    await asyncio.wait_for(asyncio.gather(reader, poster), 10)
    epoch: str = welcome["payload"]["epoch"]
    return seen, acknowledged, epoch


def stored_numbers(path: Path) -> dict[str, int]:
    """Each stored event's id and payload n, read from the file itself."""
    connection = sqlite3.connect(path)
    try:
        rows = list(read_records(connection))
    finally:
        connection.close()
    return {str(row.id): orjson.loads(row.frame)["payload"]["n"] for row in rows}


@pytest.mark.slow
def test_sigkill_at_random_points_keeps_acknowledged_events_and_never_reuses_an_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kill.db"
    rng = random.Random(20261204)
    highest_seen = 0
    for round_ in range(4):
        process, url = serve_command(f"sqlite:///{path}")
        try:
            seen, acknowledged, epoch = asyncio.run(
                load_until_killed(url, process, rng.uniform(0.05, 0.4))
            )
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        assert acknowledged, f"round {round_}: nothing was acknowledged before the kill"
        stored = stored_numbers(path)
        # Every acknowledged event is on disk, under the id the POST answered.
        missing = [(i, n) for i, n in acknowledged if stored.get(i) != n]
        assert missing == [], f"round {round_}: acknowledged but lost: {missing[:5]}"
        # What the client was sent is on disk, under the same id: a client is sent an
        # event only once it is committed, so a crash of the process loses none of them.
        lost = [(i, n) for i, n in seen if i not in stored]
        assert lost == [], f"round {round_}: sent to a client but lost: {lost[:5]}"
        assert all(stored[i] == n for i, n in seen), f"round {round_}"

        process, url = serve_command(f"sqlite:///{path}")
        try:
            _, replayed = asyncio.run(resume(url, since=seen[-1][0], epoch=epoch))
            # Nothing it was sent was lost: the same stream, and its resume is complete.
            assert replayed["epoch"] == epoch
            assert replayed["complete"] is True
            # New ids continue after every id any client may have seen.
            status, answer = asyncio.run(
                http_post(
                    url.replace("ws://", "http://").replace("/ws/events", "/events"),
                    orjson.dumps({"type": "kill.test.after", "payload": {"n": -1}}),
                )
            )
            assert status == 202
            highest_seen = max(highest_seen, *(int(i) for i, _ in seen))
            assert int(answer["ids"][0]) > highest_seen, (answer, highest_seen)
        finally:
            assert stop_command(process) == 0
        print(f"round {round_}: {len(acknowledged)} acknowledged, {len(seen)} sent")
