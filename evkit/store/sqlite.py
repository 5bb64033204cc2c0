"""A durable store on the standard library's sqlite3: every event kept, ids continue.

Writes never happen on the broadcaster's loop: ``append`` puts the record in the
in-memory ring (which serves recent replays) and in a pending batch, and a writer
thread commits each batch as one INSERT of chunks (up to 1,000 events a row; the
format is :mod:`evkit.store.sqlite_format`), in WAL mode with ``synchronous=NORMAL``.
The writer also runs the WAL checkpoints, after telling the loop of a commit rather
than inside it (every 16 MiB written, and when the stream goes quiet). Retention is
bounded by count (``retention_size``) and optionally by age (``max_age`` seconds); it
runs on the writer thread after commits, only when something is due.

When the database is new (or was wiped) the store starts a new epoch; otherwise it
reads the epoch and the last id back, so after a restart ids continue and history is
still served. Replays older than the ring read the database on the loop thread with a
separate read connection (WAL lets it read while the writer writes).

Ids are handed out before they are committed, but the broadcaster delivers an event
only once it is committed (:meth:`History.on_written`), and a POST is answered only then:
what a client was sent or told survives the process being killed. Ids are never reused
either: the store persists a high-water mark (``reserved``) of the ids it may hand out,
ahead of handing them out, and lowers it to the last committed id whenever everything
is written (idle, ``sync()``, ``close()``). At open, a mark above the last committed id
means the previous run was killed with events not yet committed, which no client saw:
the epoch is kept, and ids continue after the mark. (Files written by evkit before
commit-before-deliver started a new epoch there; :meth:`SQLiteStore.continues` still
knows those epochs, so a client resuming from one is told its replay is incomplete.)

With ``synchronous=NORMAL`` in WAL mode a committed event survives the process being
killed but may be lost with the last transactions on a power loss or OS crash;
``synchronous=FULL`` (the ``synchronous`` option) survives both and costs an fsync
per commit.

If the disk fails, the error is logged, shown by ``health()``, and the batch is kept
and retried; past ``queue_size`` unwritten events the oldest are dropped and counted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from evkit.exceptions import StoreUnavailable
from evkit.store.base import History, Record, new_epoch
from evkit.store.ring import HistoryRing
from evkit.store.sqlite_format import (
    SCHEMA,
    decode_chunk,
    insert,
    migrate,
    read_records,
    transaction,
)

__all__ = ["SCHEMA", "SQLiteStore"]

logger = logging.getLogger("evkit.store.sqlite")

_RESERVE_STEP = 100_000  # ids the high-water mark runs ahead of the newest, under load
_CHECKPOINT_BYTES = 16 << 20  # of events written between checkpoints
_NEVER = 1 << 62  # an "oldest timestamp" when the file holds nothing


class SQLiteStore(History):
    """Durable history in one SQLite file. See the module docstring."""

    name = "sqlite"
    durable = True

    def __init__(
        self,
        path: str | Path,
        *,
        history_size: int = 10_000,
        history_bytes: int = 16 * 1024 * 1024,
        retention_size: int = 1_000_000,
        max_age: float | None = None,
        batch_interval: float = 0.05,
        queue_size: int = 1_000_000,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.path = Path(path)
        self.history_size = history_size
        self.retention_size = retention_size
        self.max_age = max_age
        self.batch_interval = batch_interval
        self.queue_size = queue_size
        self.epoch = ""
        self.last_id = 0
        self._ring = HistoryRing(history_size, history_bytes)
        self._pending: list[Record] = []
        self._writing: list[Record] = []  # the batch the writer is committing
        self._expired_id = 0  # the newest id that age retention removed
        self._lock = threading.Condition()
        self._written_id = 0
        self._retained_id = 0  # written, and retention applied after it
        self._unchecked_bytes = 0  # written to the WAL since the last checkpoint (about)
        self._first_on_disk = 1
        self._oldest_on_disk = _NEVER  # the oldest timestamp in the file (ms)
        self._dropped = 0
        self._error: str | None = None
        self._closing = False
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        # The id high-water mark: ids up to _reserved may be handed out (it is committed,
        # or lower than what is); _wanted is the mark the loop asked for next.
        self._reserved = 0
        self._wanted = 0
        self._claimed = 0  # the newest id the loop was allowed to hand out
        self._on_disk = 0  # the mark as committed
        self._tighten = False  # lower the mark to what is written, once all of it is
        self._lineage: list[str] = []  # epochs this one continues (older files' crashes)
        self._written_callback: Callable[[int], object] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Create or read the file, then start the writer thread.

        Raises:
            OSError: the folder cannot be made.
            StoreUnavailable: sqlite refused the file (not a database, locked, read-only).
        """
        try:
            self._open()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite store {self.path}: {exc}") from None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._connect()
        try:
            connection.executescript(SCHEMA)
            moved = migrate(connection)
            if moved:
                logger.info("sqlite store %s: %d events moved into chunks", self.path, moved)
            row = connection.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            bounds = connection.execute("SELECT MIN(first_id), MAX(last_id) FROM chunks").fetchone()
            stored_last = connection.execute(
                "SELECT value FROM meta WHERE key = 'last_id'"
            ).fetchone()
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            committed = max(bounds[1] or 0, int(stored_last[0]) if stored_last else 0)
            reserved = int(meta.get("reserved", committed))
            if row is None or (bounds[1] is None and stored_last is None and reserved == 0):
                self.epoch = new_epoch()
            else:
                self.epoch = row[0]
                self._lineage = orjson.loads(meta.get("lineage", "[]"))
                if reserved > committed:
                    # Killed with ids (committed, reserved] handed out but not committed:
                    # no client was sent them (delivery waits for the commit); they are
                    # skipped, never reused.
                    logger.warning(
                        "sqlite store %s was not closed cleanly: events after id %d were "
                        "not committed (no client was sent them); ids continue after %d",
                        self.path,
                        committed,
                        reserved,
                    )
                    committed = reserved
            with connection:
                connection.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("epoch", self.epoch),
                        ("last_id", str(committed)),
                        ("reserved", str(committed)),
                        ("lineage", orjson.dumps(self._lineage).decode()),
                    ],
                )
            self.last_id = committed
            self._first_on_disk = bounds[0] if bounds[0] is not None else self.last_id + 1
            oldest = connection.execute("SELECT MIN(oldest) FROM chunks").fetchone()[0]
            self._oldest_on_disk = oldest if oldest is not None else _NEVER
            self._written_id = self._claimed = self._reserved = self._wanted = self.last_id
            self._retained_id = self.last_id
            self._on_disk = self.last_id
        finally:
            connection.close()
        self._reader = self._connect()
        self._writer = threading.Thread(target=self._write_loop, name="evkit-sqlite", daemon=True)
        self._writer.start()
        logger.info(
            "sqlite store %s: epoch %s, last id %d, first id %d",
            self.path,
            self.epoch,
            self.last_id,
            self._first_on_disk,
        )

    def _connect(self, autocommit: bool = False) -> sqlite3.Connection:
        """A connection to the file; ``autocommit``: each statement its own transaction
        unless ``transaction()`` opens one (the writer's: see :meth:`_write`)."""
        connection = sqlite3.connect(
            self.path,
            check_same_thread=False,
            timeout=30,
            isolation_level=None if autocommit else "DEFERRED",
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        return connection

    def continues(self, epoch: str) -> bool:
        """Whether ``epoch`` is one this store's epoch replaced after a crash (files of
        evkit versions that delivered before committing).

        Ids never repeat across them, so an id of that epoch is a position here; what
        followed it may have been lost.
        """
        return epoch in self._lineage

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._tighten = True
            self._lock.notify_all()
        if self._writer is not None:
            self._writer.join(30)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- the loop side ------------------------------------------------------------------

    def claim(self, count: int) -> int:
        """How many of the next ``count`` ids may be handed out now (see the module doc).

        When fewer than ``count``, a higher mark is being committed: ask again shortly.
        """
        wanted = self.last_id + count
        with self._lock:
            reserved = self._reserved
            if wanted + _RESERVE_STEP // 2 > reserved and self._wanted < wanted + _RESERVE_STEP:
                self._wanted = wanted + _RESERVE_STEP
                self._lock.notify_all()
            allowed = max(0, min(count, reserved - self.last_id))
            self._claimed = max(self._claimed, self.last_id + allowed)
        return allowed

    def append(self, record: Record) -> None:
        self.extend([record])

    def extend(self, records: list[Record]) -> None:
        """Keep ``records`` in the ring and hand them to the writer, which commits at once."""
        self._ring.extend(records)
        self.last_id = records[-1].id
        with self._lock:
            pending = self._pending
            pending += records
            overflow = len(pending) - self.queue_size
            if overflow > 0:  # the disk fell behind: the oldest unwritten go, counted
                del pending[:overflow]
                self._dropped += overflow
            self._lock.notify_all()

    def on_written(self, callback: Callable[[int], object]) -> bool:
        """Call ``callback(written id)`` from the writer thread after each commit."""
        self._written_callback = callback
        return True

    def _retained_after(self) -> int:
        # The ring may still hold what retention removed from disk: ids up to this one
        # are no longer held, wherever they are.
        return max(self.last_id - self.retention_size, self._expired_id)

    def first_id(self) -> int:
        held = min(self._first_on_disk, self._ring.first_id(self.last_id + 1))
        return max(held, self._retained_after() + 1)

    def read_after(self, after: int) -> Iterator[Record]:
        after = max(after, self._retained_after())
        ring_first = self._ring.first_id(self.last_id + 1)
        if after + 1 < ring_first:
            # Older than the ring: on disk, or still waiting for the writer. Take the
            # unwritten ones first: whatever the writer commits after this is in that copy.
            with self._lock:
                unwritten = [*self._writing, *self._pending]
            last = after
            if self._reader is not None:
                for record in read_records(self._reader, after, ring_first):
                    last = record.id
                    yield record
            for record in unwritten:
                if last < record.id < ring_first:
                    last = record.id
                    yield record
        yield from self._ring.read_after(after)

    # -- the writer thread ----------------------------------------------------------------

    def _write_loop(self) -> None:
        connection = self._connect(autocommit=True)
        # Checkpoints (copying the WAL into the file, with an fsync) run here after the
        # loop was told of a commit (_write), not inside a COMMIT that delivery waits on.
        connection.execute("PRAGMA wal_autocheckpoint=0")
        try:
            while True:
                with self._lock:
                    idle = not (self._pending or self._closing or self._wanted > self._reserved)
                    quiet = False
                    if idle and not self._lock.wait(self.batch_interval) and not self._pending:
                        self._tighten = quiet = True  # a whole interval with nothing to write
                    batch = self._pending
                    self._pending = []
                    self._writing = batch
                    closing = self._closing
                if batch:
                    self._write(connection, batch)
                elif quiet and self._unchecked_bytes:
                    self._checkpoint(connection)
                self._move_mark(connection)
                if closing:
                    with self._lock:
                        if not self._pending:
                            break
        finally:
            connection.close()

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        """Copy the WAL into the database file (PASSIVE: readers are not waited for).

        Run on the writer thread between commits, so the WAL starts over afterwards: it
        stays within about _CHECKPOINT_BYTES and one batch, as with SQLite's own
        automatic checkpoints (which run inside the COMMIT, and would delay delivery).
        """
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            logger.warning("sqlite store %s: checkpoint failed (%s); retried later", self.path, exc)
            return
        self._unchecked_bytes = 0

    def _move_mark(self, connection: sqlite3.Connection) -> None:
        """Commit the high-water mark: raised when the loop asked, lowered when all is written.

        A mark is committed before the loop may use it; a lowered one is visible to the
        loop at once (it is below what is committed).
        """
        with self._lock:
            if self._wanted > self._reserved:
                mark = self._wanted
            elif (
                self._tighten
                and not self._pending
                and not self._writing
                and self._claimed == self._written_id < self._on_disk
            ):
                mark = self._reserved = self._wanted = self._written_id  # lowered at once
            else:
                self._tighten = False
                return
            self._tighten = False
        try:
            with self._lock:
                written = self._written_id
            connection.execute(  # one statement: one transaction
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('reserved', ?), ('last_id', ?)",
                (str(mark), str(written)),
            )
        except sqlite3.Error as exc:
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc}"
            logger.error("sqlite store %s: cannot write the id mark (%s); retrying", self.path, exc)
            time.sleep(0.1)
            return
        with self._lock:
            self._reserved = max(self._reserved, mark)
            self._on_disk = mark
            self._lock.notify_all()

    def _write(self, connection: sqlite3.Connection, batch: list[Record]) -> None:
        """Commit ``batch``, tell the loop, then apply retention.

        The batch goes in as one INSERT statement in its own transaction: every
        statement lets go of the GIL while SQLite works and must take it back from a
        busy loop thread (up to the 5 ms switch interval each), and delivery waits for
        this commit. The last id is not written here: the chunks show it, and the
        meta row keeps it whenever retention deletes (``_retain``) or the id mark moves.
        """
        while True:
            try:
                self._unchecked_bytes += insert(connection, batch)
                if self.max_age is not None:
                    oldest = min(record.timestamp for record in batch)
                    self._oldest_on_disk = min(self._oldest_on_disk, oldest)
                with self._lock:
                    self._written_id = batch[-1].id
                    self._writing = []
                    self._error = None
                    self._lock.notify_all()
                callback = self._written_callback
                if callback is not None:
                    callback(batch[-1].id)
                self._retain(connection)
                with self._lock:
                    self._retained_id = batch[-1].id
                    self._lock.notify_all()
                if self._unchecked_bytes >= _CHECKPOINT_BYTES:
                    self._checkpoint(connection)
                return
            except sqlite3.Error as exc:
                with self._lock:
                    self._error = f"{type(exc).__name__}: {exc}"
                    closing = self._closing
                logger.error("sqlite store %s: write failed (%s); retrying", self.path, exc)
                if closing:
                    return
                time.sleep(1.0)

    def _retain(self, connection: sqlite3.Connection) -> None:
        """Remove the events past ``retention_size`` and those older than ``max_age``.

        Whole chunks are deleted; the one chunk a bound falls in is rewritten without
        what it removes (usually one per commit, at most 1,000 events).
        """
        cutoff = self.last_id - self.retention_size
        age_cutoff = None if self.max_age is None else int((time.time() - self.max_age) * 1000)
        if cutoff < self._first_on_disk and (
            age_cutoff is None or self._oldest_on_disk >= age_cutoff
        ):
            return  # nothing is due: no statement, no GIL hand-off
        select = "SELECT last_id, header, frames FROM chunks "
        with transaction(connection):
            # What is deleted may hold the newest id: the meta row keeps it.
            connection.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_id', ?)",
                (str(self._written_id),),
            )
            connection.execute("DELETE FROM chunks WHERE last_id <= ?", (cutoff,))
            first = connection.execute(
                "SELECT last_id, first_id FROM chunks ORDER BY last_id LIMIT 1"
            ).fetchone()
            if first is not None and first[1] <= cutoff:
                rows = connection.execute(select + "WHERE last_id = ?", (first[0],)).fetchall()
                self._rewrite(connection, rows, lambda record: record.id > cutoff)
            if age_cutoff is not None:
                expiring = age_cutoff
                rows = connection.execute(select + "WHERE oldest < ?", (expiring,)).fetchall()
                self._rewrite(connection, rows, lambda record: record.timestamp >= expiring)
        first = connection.execute(
            "SELECT first_id FROM chunks ORDER BY last_id LIMIT 1"
        ).fetchone()
        self._first_on_disk = first[0] if first is not None else self._written_id + 1
        oldest = connection.execute("SELECT MIN(oldest) FROM chunks").fetchone()[0]
        self._oldest_on_disk = oldest if oldest is not None else _NEVER

    def _rewrite(
        self,
        connection: sqlite3.Connection,
        rows: list[tuple[int, bytes, bytes]],
        keep: Callable[[Record], bool],
    ) -> None:
        """Write the chunks of ``rows`` again with only the records ``keep`` accepts; ids up
        to the newest one removed are no longer held (``first_id()``)."""
        for last_id, header, frames in rows:
            connection.execute("DELETE FROM chunks WHERE last_id = ?", (last_id,))
            try:
                records = decode_chunk(header, frames)
            except ValueError as exc:
                logger.error("sqlite store %s: deleted a damaged chunk (%s)", self.path, exc)
                self._expired_id = max(self._expired_id, last_id)
                continue
            kept = [record for record in records if keep(record)]
            removed = max((record.id for record in records if not keep(record)), default=0)
            self._expired_id = max(self._expired_id, removed)
            if kept:
                self._unchecked_bytes += insert(connection, kept)

    # -- waiting and health ---------------------------------------------------------------

    def sync(self, timeout: float = 30.0) -> None:
        """Block until every event appended so far is committed (and retention applied).

        Raises:
            TimeoutError: the disk did not keep up within ``timeout`` seconds.
        """
        target = self.last_id

        def done() -> bool:
            # Written, and the mark lowered to match unless more is under way: a kill
            # right after sync() then keeps the epoch, since nothing could be lost.
            return self._retained_id >= target and (
                self._on_disk <= self._written_id or self._claimed > self._written_id
            )

        with self._lock:
            self._tighten = True
            self._lock.notify_all()
            if not self._lock.wait_for(done, timeout):
                raise TimeoutError(
                    f"sqlite store {self.path} did not write up to id {target} within "
                    f"{timeout:g} s (written: {self._written_id}; error: {self._error})"
                )

    def health(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self._pending) + len(self._writing)
            error = self._error
            written = self._written_id
            dropped = self._dropped
        return {
            "name": self.name,
            "state": "error" if error else "ok",
            "path": str(self.path),
            "epoch": self.epoch,
            "lastId": str(self.last_id),
            "firstId": str(self.first_id()),
            "writtenId": str(written),
            "pending": pending,
            "dropped": dropped,
            "error": error,
        }
