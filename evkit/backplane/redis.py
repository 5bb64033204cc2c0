"""Several instances, one stream: a Redis stream shared by every broadcaster that names it.

Every instance appends the events emitted on it with ``XADD`` (``MAXLEN ~`` trimming,
one script call per batch) and reads the whole stream back with ``XREAD`` on a
connection of its own; what it reads, in stream order, is what it records in its
:class:`RedisHistory` and delivers to its local clients. So an event emitted on
instance A reaches the clients of B, and every client of every instance sees one
order. A replay reads what this instance no longer holds in memory with ``XRANGE``.

Failures: while Redis is unreachable the broadcaster's bounded queue keeps what is
emitted (beyond it, events are dropped and counted) and both the writer and the reader
retry with capped exponential backoff and jitter. When Redis returns with its data the
queue is written and the reader continues where it was: nothing is lost. When the
stream itself was lost (Redis restarted without persistence, or the stream ends before
where this instance had read), the epoch changes, and when trimming outran this
instance's reader, entries were missed: either way the sink is told the stream broke
(clients are closed with 1012, so that their resume reports the gap).

Needs the ``redis`` extra (redis-py), imported when the backplane starts. Used only
from the broadcaster's loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from evkit.backplane.base import Backplane, Pending, Queue, Sink
from evkit.backplane.redis_history import RedisHistory
from evkit.backplane.redis_stream import (
    ROTATE_SCRIPT,
    EntryParser,
    UnparsedEntries,
    batch_fields,
    entries_to_keep,
    entry_end,
    entry_position,
    format_stream_id,
    redacted_url,
    text,
    trimmed_through,
)
from evkit.exceptions import StoreUnavailable
from evkit.store.base import new_epoch

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisBackplane", "RedisHistory"]

logger = logging.getLogger("evkit.backplane.redis")

_ENTRY_EVENTS = 500  # most events per stream entry
_ENTRIES_PER_WRITE = 8  # most entries per round trip of the writer (one pipeline)
_READ_COUNT = 100  # most entries per XREAD
_RECENT_ENTRIES = 1024  # entry sizes remembered for trimming
_BLOCK_MS = 2000
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0


class RedisBackplane(Backplane):
    """One Redis stream shared by every broadcaster that names it.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, or
            ``unix:///path/redis.sock``; redis-py reads every option from it.
        stream: the stream key; the epoch lives next to it at ``<stream>:epoch:2`` (2:
            the batched entry format).
        maxlen: at least how many events the stream keeps, about (``XADD MAXLEN ~``
            counts entries: as many as this writer's newest entries needed to hold
            ``maxlen`` events; Redis trims whole nodes, so a little more is kept).
        history_size, history_bytes: recent events this instance keeps in memory for
            fast replays (at most ``maxlen``).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        stream: str,
        maxlen: int,
        history_size: int = 10_000,
        history_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if not stream:
            raise ValueError("stream must be a non-empty Redis key")
        if maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer, got {maxlen!r}")
        self.url = url
        self.display_url = redacted_url(url)
        self.stream = stream
        self.maxlen = maxlen
        self.history = self._history = RedisHistory(self, min(history_size, maxlen), history_bytes)
        self.state = "starting"
        self.last_error: str | None = None
        self.counts = dict.fromkeys(("written", "read", "outages", "resets", "gaps", "missed"), 0)
        self.parser = EntryParser(stream)
        self._index = 0  # how many entries the stream had added up to the reader's position
        self._epoch_key = f"{stream}:epoch:2"  # 2: batched entries, a new stream to clients
        self._position = "0-0"  # where the reader's next XREAD starts
        self._producer = os.urandom(6).hex().encode()
        self._sequence = 0
        self._written_position = 0  # the newest event this instance wrote
        self._retry: deque[tuple[int, list[Pending]]] = deque()
        # Events in each of this writer's newest entries, newest first (trimming).
        self._recent_entries: deque[int] = deque(maxlen=_RECENT_ENTRIES)
        self._writing = False
        self._closing = asyncio.Event()  # close() began: the writer and the reader stop
        self.client: Redis | None = None
        self._reader: Redis | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: deque[Pending] = deque()
        self._sink: Sink | None = None
        # Entries read while no client was subscribed, not yet parsed (see _defer); within
        # what the memory ring holds.
        ring = self._history.ring
        self._unparsed = UnparsedEntries(ring.max_events, ring.max_bytes)

    def open(self) -> None:
        return None  # nothing to prepare off the loop: start() connects

    # -- lifecycle (on the broadcaster's loop) --------------------------------------------

    async def start(self, queue: Queue, sink: Sink) -> None:
        """Connect, learn the epoch and the recent history, then write and read in the background.

        Raises:
            StoreUnavailable: Redis cannot be reached or refused the commands.
        """
        try:
            from redis.asyncio import BlockingConnectionPool, Redis
        except ImportError:  # pragma: no cover - the extra is part of evkit[all]
            raise StoreUnavailable(
                "a redis:// store needs redis-py: pip install 'evkit[redis]'"
            ) from None
        from redis.exceptions import RedisError

        self._pending, self._sink = queue.pending, sink
        self._closing.clear()
        options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 10.0}
        try:
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=8, timeout=10, **options
            )
            self.client = Redis(connection_pool=pool)
            self._reader = Redis.from_url(self.url, single_connection_client=True, **options)
            await self.client.ping()
            await self._check_stream()
            await self._load_recent()
        except (RedisError, OSError, ValueError) as exc:
            await self.close()
            raise StoreUnavailable(f"cannot use Redis at {self.display_url}: {exc}") from None
        self.state = "ok"
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="evkit-redis-writer"),
            asyncio.create_task(self._read_loop(), name="evkit-redis-reader"),
        ]

    def wake(self) -> None:
        self._wake.set()

    async def settle(self, timeout: float | None = None) -> bool:
        """Wait until the queue is written and this instance has read back its own writes."""
        try:
            async with asyncio.timeout(timeout):
                progress = self._progress
                while (
                    self._pending
                    or self._retry
                    or self._writing
                    or self.history.last_id < self._written_position
                ):
                    self.wake()
                    progress.clear()
                    await progress.wait()  # set by the writer and the reader at every step
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the writer and the reader and close the connections (within a few seconds).

        redis-py can absorb a cancellation that lands just as a reply arrived (the task
        then waits on in a blocking ``XREAD``, and later fails on the closed client). So
        the loops also stop at ``_closing``, and a task still running shortly after the
        cancel is woken by closing its connection before the clients are closed.
        """
        self._closing.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, running = await asyncio.wait(tasks, timeout=0.5)
            if running:
                await self._disconnect()
                await asyncio.wait(running, timeout=2.0)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.error("evkit Redis task failed: %r", task.exception())
        for client in (self._reader, self.client):
            if client is not None:
                try:
                    await asyncio.wait_for(client.aclose(), 2.0)
                except Exception as exc:  # closing a broken connection: nothing to do
                    logger.debug("closing a Redis connection: %s", exc)
        self.client = self._reader = None

    async def _disconnect(self) -> None:
        """Close the sockets under the clients (they stay usable: a command reconnects)."""
        for client in (self._reader, self.client):
            if client is None:
                continue
            connection = client.connection  # the reader's single connection
            try:
                if connection is not None:
                    await asyncio.wait_for(connection.disconnect(nowait=True), 2.0)
                else:
                    await asyncio.wait_for(client.connection_pool.disconnect(), 2.0)
            except Exception as exc:  # the socket is broken already: nothing to do
                logger.debug("disconnecting from Redis: %s", exc)

    def waiting(self) -> int:
        return len(self._pending) + sum(len(items) for _, items in self._retry)

    def health(self) -> dict[str, Any]:
        history = self._history
        counts = self.counts
        return {
            "name": self.name,
            "state": self.state,
            "url": self.display_url,
            "stream": self.stream,
            "maxlen": self.maxlen,
            "epoch": history.epoch,
            "lastId": format_stream_id(history.last_id),
            "cached": len(history.ring) + self._unparsed.events,
            "written": counts["written"],
            "read": counts["read"],
            "waiting": self.waiting(),
            "outages": counts["outages"],
            "resets": counts["resets"],
            "gaps": counts["gaps"],
            "missed": counts["missed"],
            "repeatsSkipped": self.parser.repeats_skipped,
            "malformed": self.parser.malformed,
            "lastError": self.last_error,
        }

    # -- the writer ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        from redis.exceptions import RedisError

        backoff = _BACKOFF_FIRST
        while not self._closing.is_set():
            if not (self._pending or self._retry):
                await self._wake.wait()
            self._wake.clear()
            batch = self._take_batch()
            if not batch:
                continue
            self._writing = True
            try:
                ids = await self._append(batch)
            except (RedisError, OSError) as exc:
                self._retry.extendleft(reversed(batch))
                self._writing = False
                self._progress.set()
                if self._closing.is_set():
                    return
                self._failed("writing", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            self._writing = False
            backoff = _BACKOFF_FIRST
            self._recovered()
            self._written(batch, ids)

    def _written(self, batch: list[tuple[int, list[Pending]]], ids: list[Any]) -> None:
        """Give written events their ids (their entry's, with their place) and count them."""
        written: list[Pending] = []
        for (_, items), raw_id in zip(batch, ids, strict=True):
            entry = text(raw_id)
            ms, _, seq = entry.partition("-")
            sequence = int(seq) << 16
            for place, item in enumerate(items):
                item[0].id = f"{ms}-{sequence | place}"
            written += items
            self._written_position = max(
                self._written_position, entry_position(entry) | (len(items) - 1)
            )
        self.counts["written"] += len(written)
        assert self._sink is not None
        self._sink.published(written)
        self._progress.set()

    def _take_batch(self) -> list[tuple[int, list[Pending]]]:
        """Up to a few entries' worth of events: retried entries first, then the queue."""
        retry, pending = self._retry, self._pending
        batch: list[tuple[int, list[Pending]]] = []
        while retry and len(batch) < _ENTRIES_PER_WRITE:
            batch.append(retry.popleft())
        while pending and len(batch) < _ENTRIES_PER_WRITE:
            self._sequence += 1
            count = min(len(pending), _ENTRY_EVENTS)
            batch.append((self._sequence, [pending.popleft() for _ in range(count)]))
        return batch

    async def _append(self, batch: list[tuple[int, list[Pending]]]) -> list[Any]:
        """One ``XADD`` per entry, in one pipeline: one round trip for thousands of events.

        Trimming counts entries: the stream keeps as many entries as this writer's
        newest ones needed to hold ``maxlen`` events (:func:`entries_to_keep`).
        """
        assert self.client is not None
        producer = self._producer
        recent = self._recent_entries
        async with self.client.pipeline(transaction=False) as pipe:
            for sequence, items in batch:
                recent.appendleft(len(items))
                limit = entries_to_keep(recent, self.maxlen)
                pipe.xadd(
                    self.stream,
                    batch_fields(producer, sequence, items),  # type: ignore[arg-type]
                    maxlen=limit,
                    approximate=True,
                )
            return list(await pipe.execute())

    # -- the reader ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Read the stream in order and deliver it; notice when trimming outran this reader.

        Entries are read in a transaction with ``XINFO STREAM``, whose ``entries-added``
        and ``length`` give the index of the stream's first entry at the same instant;
        the reader counts the entries it has read, so when that index lies past the
        next one it expects, entries were trimmed before this instance read them. A
        blocking ``XREAD`` only waits for the stream to grow. (Entries are removed only
        by trimming: nothing else may ``XDEL`` from an evkit stream.)
        """
        from redis.exceptions import RedisError

        assert self._reader is not None
        reader = self._reader
        backoff = _BACKOFF_FIRST
        check = False
        while not self._closing.is_set():
            try:
                if check:
                    await self._check_stream()
                    check = False
                async with reader.pipeline(transaction=True) as pipe:
                    pipe.xinfo_stream(self.stream)
                    pipe.xread({self.stream: self._position}, count=_READ_COUNT)
                    info, reply = await pipe.execute(raise_on_error=False)
                if isinstance(reply, Exception):
                    raise reply
                if not reply:  # nothing new: wait until the stream grows
                    await reader.xread({self.stream: self._position}, count=1, block=_BLOCK_MS)
            except (RedisError, OSError) as exc:
                if self._closing.is_set():
                    return
                self._failed("reading", exc)
                check = True
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_FIRST
            self._recovered()
            if reply:
                self._read(info, reply[0][1])
            self._progress.set()

    def _read(self, info: Any, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Record and deliver entries the reader read (``info``: XINFO at the same instant)."""
        if isinstance(info, dict):
            first_index = int(info["entries-added"]) - int(info["length"]) + 1
            if first_index > self._index + 1:
                self._fell_behind(trimmed_through(info), first_index - self._index - 1)
                self._index = first_index - 1
        self._index += len(entries)
        self._position = text(entries[-1][0])
        assert self._sink is not None
        if not self._sink.listening():
            self._defer(entries)
            return
        self.catch_up()
        records = self.parser.parse(entries)
        self.counts["read"] += len(records)
        history = self._history
        if records:
            history.ring.extend(records)
            history.last_id = max(history.last_id, records[-1].id)
            self._sink.deliver(records)

    def _defer(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Keep ``entries`` unparsed: no client is subscribed to be sent them.

        Every instance reads the whole stream, and framing each event is most of what
        reading costs; an instance that only emits (or has no client yet) frames them
        only when something asks for its history (:meth:`catch_up`). Repeated writes
        are skipped here, in stream order, and ``last_id`` moves on as if parsed; what
        is kept is bounded as the memory ring is, and what goes is what the ring would
        have dropped.
        """
        history, unparsed, parser = self._history, self._unparsed, self.parser
        events = unparsed.events
        for raw_id, fields in entries:
            origin = fields.get(b"o")
            if origin is None or not parser.repeated(origin):
                unparsed.keep(raw_id, fields)
        self.counts["read"] += unparsed.events - events
        history.last_id = max(history.last_id, unparsed.newest)
        dropped = unparsed.trim()
        if dropped:  # older than what is kept, as the ring would have dropped them
            history.ring.clear(dropped)

    def catch_up(self) -> None:
        """Parse the entries kept by :meth:`_defer` into the memory ring (on the loop)."""
        if not self._unparsed:
            return
        records = self.parser.parse(self._unparsed.take(), remember=False)  # repeats skipped
        if records:
            self._history.ring.extend(records)

    def _fell_behind(self, trimmed: int, missed: int) -> None:
        """``missed`` entries, up to ``trimmed``, left the stream before this instance read them."""
        self.counts["gaps"] += 1
        self.counts["missed"] += missed
        logger.warning(
            "Redis stream %s was trimmed past this instance's reader (%d entries after %s never"
            " read): raise maxlen; clients are closed and resume with complete=false",
            self.stream,
            missed,
            self._position,
        )
        # What is held in memory stops at the gap: replays older than it go to Redis,
        # which reports them incomplete.
        history = self._history
        self._unparsed.clear()  # older than the gap, as is the ring
        history.ring.clear(trimmed)
        history.last_id = max(history.last_id, trimmed)
        assert self._sink is not None
        self._sink.stream_broken("event stream gap")

    # -- epoch and recent history -----------------------------------------------------------------

    async def _check_stream(self) -> None:
        """Learn the epoch; when the stream was lost, start a new one and reset."""
        assert self.client is not None
        client, history = self.client, self._history
        await client.set(self._epoch_key, new_epoch(), nx=True)
        epoch = text(await client.get(self._epoch_key))
        last_generated, added = await _stream_info(client, self.stream)
        if (
            history.epoch
            and epoch == history.epoch
            and (history.last_id > last_generated or self._index > added)
        ):
            # The stream ends before what this instance read: Redis lost its tail.
            epoch = text(await client.eval(ROTATE_SCRIPT, 1, self._epoch_key, epoch, new_epoch()))
        if not history.epoch:
            history.epoch = epoch
        elif epoch != history.epoch:
            logger.warning(
                "Redis stream %s was lost (epoch %s -> %s): clients resume with complete=false",
                self.stream,
                history.epoch,
                epoch,
            )
            history.epoch = epoch
            self.counts["resets"] += 1
            self._unparsed.clear()
            history.ring.clear(0)
            history.last_id = 0
            self._position = "0-0"
            self.parser.seen.clear()
            self._written_position = 0
            self._index = 0
            if self._sink is not None:
                self._sink.stream_broken("event stream reset")

    async def _load_recent(self) -> None:
        """Fill the memory ring with the newest entries and read on from the stream's end."""
        from redis.exceptions import ResponseError

        assert self.client is not None
        history = self._history
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(self.stream)
            # Entries hold batches: enough of them for the ring at one event each, no more.
            pipe.xrevrange(self.stream, count=min(history.ring.max_events, 1_000))
            info, entries = await pipe.execute(raise_on_error=False)
        if isinstance(info, dict):
            last_entry = text(info["last-generated-id"])
            self._index = int(info["entries-added"])
        elif isinstance(info, ResponseError) and "no such key" in str(info):
            last_entry, self._index, entries = "0-0", 0, []
        else:
            raise info
        if isinstance(entries, Exception):
            raise entries
        self._position = last_entry
        entries.reverse()
        records = self.parser.parse(entries)[-history.ring.max_events :]
        last = entry_end(last_entry) if last_entry != "0-0" else 0
        self._unparsed.clear()
        history.ring.clear(records[0].id - 1 if records else last)
        for record in records:
            history.ring.append(record)
        # Every place of the newest entry: a cursor from here never replays it.
        history.last_id = records[-1].id if records else last

    def _failed(self, what: str, exc: BaseException) -> None:
        message = f"{what} {self.display_url}: {type(exc).__name__}: {exc}"
        if self.state != "error":
            logger.warning("evkit lost Redis (%s); retrying with backoff", message)
            self.counts["outages"] += 1
        self.state = "error"
        self.last_error = message

    def _recovered(self) -> None:
        if self.state == "error":
            logger.warning("evkit reached Redis at %s again", self.display_url)
        self.state = "ok"


async def _stream_info(client: Any, stream: str) -> tuple[int, int]:
    """The stream's last generated position and how many entries it ever added."""
    from redis.exceptions import ResponseError

    try:
        info = await client.xinfo_stream(stream)
    except ResponseError as exc:
        if "no such key" in str(exc):
            return 0, 0
        raise
    return entry_end(text(info["last-generated-id"])), int(info["entries-added"])
