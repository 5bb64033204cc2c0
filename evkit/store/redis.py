"""A Redis stream shared by several broadcasters: ``redis://host:6379/0`` store URLs.

Every instance appends the events emitted on it with ``XADD`` (``MAXLEN ~`` trimming)
and reads the whole stream back with a blocking ``XREAD`` on a connection of its own;
what it reads, in stream order, is what it delivers to its local clients. So an event
emitted on instance A reaches the clients of B, and every client of every instance sees
one order. The Redis stream id (``1764171234567-0``) is the event id on the wire;
resuming (``since``) reads the stream with ``XRANGE``, on whichever instance the client
reaches.

Failures: while Redis is unreachable the broadcaster's bounded queue keeps what is
emitted (beyond it, events are dropped and counted) and both the writer and the reader
retry with capped exponential backoff and jitter. When Redis returns with its data the
queue is written and the reader continues where it was: nothing is lost. When the
stream itself was lost (Redis restarted without persistence, or the stream ends before
where this instance had read), the epoch changes: the broadcaster closes its clients
with 1012 so that their resume reports ``complete: false`` instead of silently missing
events.

A write whose reply was lost is retried, and may then be in the stream twice; each
entry names its producer and a sequence number, and readers skip the repeat.

This module needs the ``redis`` extra (redis-py). It is used only from the broadcaster's
loop; its blocking-free API is the async methods below plus the :class:`Store` ones,
which serve the instance's recent history from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from evkit import protocol as messages
from evkit.exceptions import ProtocolError, StoreUnavailable
from evkit.store.base import Record, Store, new_epoch
from evkit.store.ring import HistoryRing

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from evkit.bus import Event

__all__ = ["RedisStore", "StoreUnavailable", "format_stream_id", "parse_stream_id"]

logger = logging.getLogger("evkit.store.redis")

_SEQ_BITS = 32
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_WRITE_BATCH = 500  # most events per XADD transaction
_READ_COUNT = 1000  # most entries per XREAD
_BLOCK_MS = 2000
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
_SEEN_PRODUCERS = 4096  # producers remembered for skipping repeated writes

# Rotate the epoch only if nobody did it first: every instance that notices a lost
# stream agrees on one new epoch.
# XADD every event of a batch. ARGV: maxlen, then per event a header
# "<type> <timestamp> <producer:sequence> <correlation ID or nothing>" and the payload
# JSON (two arguments per event keep the command cheap to encode). Returns the ids.
_APPEND = """
local ids = {}
local maxlen = ARGV[1]
for i = 2, #ARGV, 2 do
  local t, ts, o, c = string.match(ARGV[i], '^(%S+) (%d+) (%S+) (.*)$')
  if c == '' then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
      't', t, 'ts', ts, 'p', ARGV[i + 1], 'o', o)
  else
    ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
      't', t, 'ts', ts, 'c', c, 'p', ARGV[i + 1], 'o', o)
  end
end
return ids
"""

_ROTATE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"""

#: What the broadcaster's queue holds: the event, its correlation ID, its payload JSON
#: and the moment it was queued (perf_counter).
Pending = tuple["Event", str | None, bytes, float]


def parse_stream_id(text: str) -> int:
    """The position of a Redis stream id: ``"1764171234567-3"``, ``"1764171234567"`` or ``"0"``.

    Raises:
        ValueError: not a stream id.
    """
    ms, dash, seq = text.partition("-")
    if not ms.isdigit() or (dash and not seq.isdigit()) or len(text) > 41:
        raise ValueError(
            f"an event id of this server is a Redis stream id like 1764171234567-0, got {text!r}"
        )
    sequence = int(seq) if dash else 0
    if int(ms) >= 1 << 64:
        raise ValueError(f"stream id milliseconds out of range in {text!r}")
    if sequence > _SEQ_MASK:
        raise ValueError(f"stream id sequence out of range in {text!r}")
    return int(ms) << _SEQ_BITS | sequence


def format_stream_id(position: int) -> str:
    """The Redis stream id of a position (``parse_stream_id``'s inverse)."""
    return f"{position >> _SEQ_BITS}-{position & _SEQ_MASK}"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisStore(Store):
    """One Redis stream shared by every broadcaster that names it.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS, or
            ``unix:///path/redis.sock``; redis-py reads every option from it.
        stream: the stream key; the epoch lives next to it at ``<stream>:epoch``.
        maxlen: entries the stream keeps (``XADD MAXLEN ~``: Redis trims whole nodes,
            so a little more is kept).
        memory_size: recent events this instance keeps in memory for fast replays (at
            most ``maxlen``).
    """

    name = "redis"
    shared = True

    def __init__(
        self,
        url: str,
        stream: str,
        maxlen: int,
        memory_size: int = 10_000,
        memory_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if not stream:
            raise ValueError("stream must be a non-empty Redis key")
        if maxlen < 1:
            raise ValueError(f"maxlen must be a positive integer, got {maxlen!r}")
        self.url = url
        self.display_url = _redacted(url)
        self.stream = stream
        self.maxlen = maxlen
        self.epoch = ""
        self.last_id = 0  # the newest position this instance has read (and delivered)
        self.state = "starting"
        self.last_error: str | None = None
        self.written = 0
        self.read = 0
        self.outages = 0
        self.repeats_skipped = 0
        self.malformed = 0
        self.resets = 0
        self.gaps = 0
        self.missed = 0
        self._index = 0  # how many entries the stream had added up to the reader's position
        self._epoch_key = f"{stream}:epoch"
        # Never more than the stream keeps: every instance serves the same history. Every
        # entry after its dropped_through, up to last_id, is in it.
        self._cache = HistoryRing(min(memory_size, maxlen), memory_bytes)
        self._position = "0-0"  # where the reader's next XREAD starts
        self._producer = os.urandom(6).hex().encode()
        self._sequence = 0
        self._seen: dict[bytes, int] = {}
        self._written_position = 0  # the newest entry this instance wrote
        self._retry: deque[tuple[int, Pending]] = deque()
        self._writing = False
        self._client: Redis | None = None
        self._append_script: AsyncScript | None = None
        self._reader: Redis | None = None
        self._wake: asyncio.Event | None = None
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: deque[Pending] = deque()
        self._deliver: Callable[[list[Record]], None] = lambda records: None
        self._written: Callable[[list[Pending]], None] = lambda items: None
        self._reset: Callable[[], None] = lambda: None
        self._gap: Callable[[], None] = lambda: None

    # -- ids --------------------------------------------------------------------------

    def parse_id(self, text: str) -> int:
        return parse_stream_id(text)

    def format_id(self, position: int) -> str:
        return format_stream_id(position)

    # -- the Store interface: this instance's recent history, in memory -----------------

    def append(self, record: Record) -> None:
        self._cache.append(record)
        self.last_id = record.id

    def first_id(self) -> int:
        return self._cache.first_id(self.last_id + 1)

    def trimmed_through(self) -> int:
        """What the memory cache cannot serve: older entries are read from Redis."""
        return self._cache.dropped_through

    def read_after(self, after: int) -> Iterator[Record]:
        return self._cache.read_after(after)

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "url": self.display_url,
            "stream": self.stream,
            "maxlen": self.maxlen,
            "epoch": self.epoch,
            "lastId": format_stream_id(self.last_id),
            "cached": len(self._cache),
            "written": self.written,
            "read": self.read,
            "waiting": len(self._pending) + len(self._retry),
            "outages": self.outages,
            "resets": self.resets,
            "gaps": self.gaps,
            "missed": self.missed,
            "repeatsSkipped": self.repeats_skipped,
            "malformed": self.malformed,
            "lastError": self.last_error,
        }

    # -- lifecycle (on the broadcaster's loop) --------------------------------------------

    async def start(
        self,
        pending: deque[Pending],
        deliver: Callable[[list[Record]], None],
        written: Callable[[list[Pending]], None],
        reset: Callable[[], None],
        gap: Callable[[], None],
    ) -> None:
        """Connect, learn the epoch and the recent history, then write and read in the background.

        ``pending`` is the broadcaster's queue, which the writer empties; ``deliver``
        gets what the reader reads, in order; ``written`` what was appended (ids set);
        ``reset`` is called when the stream was lost and the epoch changed, ``gap`` when
        entries were trimmed before this instance read them.

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

        self._pending, self._deliver, self._written = pending, deliver, written
        self._reset, self._gap = reset, gap
        options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 10.0}
        try:
            pool = BlockingConnectionPool.from_url(
                self.url, max_connections=8, timeout=10, **options
            )
            self._client = Redis(connection_pool=pool)
            self._reader = Redis.from_url(self.url, single_connection_client=True, **options)
            await self._client.ping()
            self._append_script = self._client.register_script(_APPEND)
            await self._check_stream()
            await self._load_recent()
        except (RedisError, OSError, ValueError) as exc:
            await self.aclose()
            raise StoreUnavailable(f"cannot use Redis at {self.display_url}: {exc}") from None
        self.state = "ok"
        self._wake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="evkit-redis-writer"),
            asyncio.create_task(self._read_loop(), name="evkit-redis-reader"),
        ]

    def kick(self) -> None:
        """Tell the writer the queue has events (call on the loop)."""
        if self._wake is not None:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until the queue is written and this instance has read back its own writes."""
        progress = self._progress
        while (
            self._pending or self._retry or self._writing or self.last_id < self._written_position
        ):
            self.kick()
            progress.clear()
            await progress.wait()  # set by the writer and the reader at every step

    async def wait_for_ids(self, events: list[Event], timeout: float) -> None:
        """Wait until Redis gave every one of ``events`` its id, or ``timeout`` passed."""
        deadline = asyncio.get_running_loop().time() + timeout
        progress = self._progress
        while any(event.id is None for event in events):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self.kick()
            progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), remaining)

    async def aclose(self) -> None:
        """Stop the writer and the reader and close the connections (within a few seconds)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.error("evkit Redis task failed: %r", task.exception())
        for client in (self._reader, self._client):
            if client is not None:
                try:
                    await asyncio.wait_for(client.aclose(), 2.0)
                except Exception as exc:  # closing a broken connection: nothing to do
                    logger.debug("closing a Redis connection: %s", exc)
        self._client = self._reader = None

    # -- replay beyond the memory cache -----------------------------------------------------

    async def read_range(self, after: int, count: int) -> tuple[list[Record], int]:
        """Up to ``count`` entries after ``after`` (``XRANGE``), and where trimming reached.

        The second value is the position just before the stream's first entry when
        anything was ever trimmed (else 0): a replay after an older position may have
        missed something. It errs on the side of reporting a gap: when the entry the
        client saw last has just been trimmed, nothing after it may have been.

        Only entries this instance has already read are returned (the rest reach the
        client live). Raises :class:`StoreUnavailable` when Redis cannot answer.
        """
        from redis.exceptions import RedisError, ResponseError

        assert self._client is not None
        start = "-" if after == 0 else "(" + format_stream_id(after)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xinfo_stream(self.stream)
                pipe.xrange(self.stream, min=start, max=format_stream_id(self.last_id), count=count)
                info, entries = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis at {self.display_url}: {exc}") from None
        if isinstance(entries, Exception):
            raise StoreUnavailable(f"Redis at {self.display_url}: {entries}")
        trimmed = 0
        if isinstance(info, dict):
            trimmed = _trimmed_through(info)
        elif not (isinstance(info, ResponseError) and "no such key" in str(info)):
            raise StoreUnavailable(f"Redis at {self.display_url}: {info}")
        records, _ = self._parse(entries or [], {})
        return records, trimmed

    # -- the writer ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        from redis.exceptions import RedisError

        assert self._wake is not None
        backoff = _BACKOFF_FIRST
        while True:
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
                self._failed("writing", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            self._writing = False
            backoff = _BACKOFF_FIRST
            self._recovered()
            items = []
            for (_, item), raw_id in zip(batch, ids, strict=True):
                item[0].id = _text(raw_id)
                items.append(item)
            self._written_position = max(self._written_position, parse_stream_id(_text(ids[-1])))
            self.written += len(items)
            self._written(items)
            self._progress.set()

    def _take_batch(self) -> list[tuple[int, Pending]]:
        retry, pending = self._retry, self._pending
        batch: list[tuple[int, Pending]] = []
        while retry and len(batch) < _WRITE_BATCH:
            batch.append(retry.popleft())
        while pending and len(batch) < _WRITE_BATCH:
            self._sequence += 1
            batch.append((self._sequence, pending.popleft()))
        return batch

    async def _append(self, batch: list[tuple[int, Pending]]) -> list[Any]:
        """XADD a batch in one script call: atomic, and one command to encode, not hundreds."""
        assert self._append_script is not None
        producer = self._producer
        args: list[bytes | int] = [self.maxlen]
        for sequence, (event, correlation_id, payload_json, _) in batch:
            header = b"%s %d %b:%d " % (event.type.encode(), event.timestamp, producer, sequence)
            if correlation_id is not None:
                header += correlation_id.encode()
            args += (header, payload_json)
        return list(await self._append_script(keys=[self.stream], args=args))

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
        while True:
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
                self._failed("reading", exc)
                check = True
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_FIRST
            self._recovered()
            if not reply:
                continue
            entries = reply[0][1]
            if isinstance(info, dict):
                first_index = int(info["entries-added"]) - int(info["length"]) + 1
                if first_index > self._index + 1:
                    self._fell_behind(_trimmed_through(info), first_index - self._index - 1)
                    self._index = first_index - 1
            self._index += len(entries)
            records, newest = self._parse(entries, self._seen)
            self._position = newest
            self.read += len(records)
            append = self.append
            for record in records:
                append(record)
            self.last_id = max(self.last_id, parse_stream_id(newest))
            if records:
                self._deliver(records)
            self._progress.set()

    def _fell_behind(self, trimmed: int, missed: int) -> None:
        """``missed`` entries, up to ``trimmed``, left the stream before this instance read them."""
        self.gaps += 1
        self.missed += missed
        logger.warning(
            "Redis stream %s was trimmed past this instance's reader (%d entries after %s never"
            " read): raise maxlen; clients are closed and resume with complete=false",
            self.stream,
            missed,
            self._position,
        )
        # What is held in memory stops at the gap: replays older than it go to Redis,
        # which reports them incomplete.
        self._cache.clear(trimmed)
        self.last_id = max(self.last_id, trimmed)
        self._gap()

    def _parse(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]], seen: dict[bytes, int]
    ) -> tuple[list[Record], str]:
        """Records of stream entries, skipping repeated writes; and the last entry's id."""
        records: list[Record] = []
        append = records.append
        encode_event = messages.encode_event
        for raw_id, fields in entries:
            origin = fields.get(b"o")
            if origin is not None:
                producer, _, number = origin.rpartition(b":")
                sequence = int(number) if number.isdigit() else 0
                if sequence <= seen.get(producer, 0):
                    self.repeats_skipped += 1
                    continue
                if len(seen) >= _SEEN_PRODUCERS and producer not in seen:
                    del seen[next(iter(seen))]
                seen[producer] = sequence
            try:
                type_ = fields[b"t"].decode()
                timestamp = int(fields[b"ts"])
                payload_json = fields[b"p"]
                correlation = fields.get(b"c")
                if origin is None:  # not written by evkit: check what would reach clients
                    messages.validate_event_type(type_)
                    if not isinstance(orjson.loads(payload_json), dict):
                        raise ValueError("payload is not a JSON object")
                    if correlation is not None:
                        messages.validate_correlation_id(correlation.decode())
            except (KeyError, ValueError, ProtocolError) as exc:
                self._skip_malformed(raw_id, exc)
                continue
            ms, _, seq = raw_id.partition(b"-")
            append(
                Record(
                    int(ms) << _SEQ_BITS | int(seq),
                    timestamp,
                    type_,
                    correlation.decode() if correlation is not None else None,
                    encode_event(type_, timestamp, raw_id.decode(), payload_json),
                )
            )
        newest = _text(entries[-1][0]) if entries else self._position
        return records, newest

    def _skip_malformed(self, raw_id: bytes, exc: Exception) -> None:
        self.malformed += 1
        if self.malformed == 1 or self.malformed % 10_000 == 0:
            logger.warning(
                "skipped a malformed entry %s in Redis stream %s (%d so far): %r",
                _text(raw_id),
                self.stream,
                self.malformed,
                exc,
            )

    # -- epoch, recent history, health ----------------------------------------------------------

    async def _check_stream(self) -> None:
        """Learn the epoch; when the stream was lost, start a new one and reset."""
        assert self._client is not None
        client = self._client
        await client.set(self._epoch_key, new_epoch(), nx=True)
        epoch = _text(await client.get(self._epoch_key))
        last_generated, added = await self._stream_info()
        if (
            self.epoch
            and epoch == self.epoch
            and (self.last_id > last_generated or self._index > added)
        ):
            # The stream ends before what this instance read: Redis lost its tail.
            rotated = await client.eval(_ROTATE, 1, self._epoch_key, epoch, new_epoch())
            epoch = _text(rotated)
        if not self.epoch:
            self.epoch = epoch
        elif epoch != self.epoch:
            logger.warning(
                "Redis stream %s was lost (epoch %s -> %s): clients resume with complete=false",
                self.stream,
                self.epoch,
                epoch,
            )
            self.epoch = epoch
            self.resets += 1
            self._cache.clear(0)
            self.last_id = 0
            self._position = "0-0"
            self._seen.clear()
            self._written_position = 0
            self._index = 0
            self._reset()

    async def _stream_info(self) -> tuple[int, int]:
        """The stream's last generated position and how many entries it ever added."""
        from redis.exceptions import ResponseError

        assert self._client is not None
        try:
            info = await self._client.xinfo_stream(self.stream)
        except ResponseError as exc:
            if "no such key" in str(exc):
                return 0, 0
            raise
        return parse_stream_id(_text(info["last-generated-id"])), int(info["entries-added"])

    async def _load_recent(self) -> None:
        """Fill the memory cache with the newest entries and read on from the stream's end."""
        from redis.exceptions import ResponseError

        assert self._client is not None
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(self.stream)
            pipe.xrevrange(self.stream, count=self._cache.max_events)
            info, entries = await pipe.execute(raise_on_error=False)
        if isinstance(info, dict):
            last_generated = parse_stream_id(_text(info["last-generated-id"]))
            self._index = int(info["entries-added"])
        elif isinstance(info, ResponseError) and "no such key" in str(info):
            last_generated, self._index, entries = 0, 0, []
        else:
            raise info
        if isinstance(entries, Exception):
            raise entries
        self._position = format_stream_id(last_generated)
        entries.reverse()
        records, _ = self._parse(entries, self._seen)
        self._cache.clear(records[0].id - 1 if records else last_generated)
        for record in records:
            self._cache.append(record)
        self.last_id = last_generated

    def _failed(self, what: str, exc: BaseException) -> None:
        message = f"{what} {self.display_url}: {type(exc).__name__}: {exc}"
        if self.state != "error":
            logger.warning("evkit lost Redis (%s); retrying with backoff", message)
            self.outages += 1
        self.state = "error"
        self.last_error = message

    def _recovered(self) -> None:
        if self.state == "error":
            logger.warning("evkit reached Redis at %s again", self.display_url)
        self.state = "ok"


def _trimmed_through(info: dict[str, Any]) -> int:
    """From ``XINFO STREAM``: the position before the first entry if anything was trimmed, else 0."""
    if int(info["entries-added"]) <= int(info["length"]):
        return 0
    first = info.get("recorded-first-entry-id")
    if first is None:
        return parse_stream_id(_text(info["last-generated-id"]))
    return parse_stream_id(_text(first)) - 1


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
