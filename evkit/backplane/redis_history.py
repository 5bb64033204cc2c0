"""One instance's view of a Redis stream as its history: the newest events in memory,
older ones read back from Redis (``XRANGE``) for a replay.

Must not write the stream or read it forward: :mod:`evkit.backplane.redis` does both,
and fills the memory ring with what it reads (or keeps it unparsed while no client
listens, framed when this history is first asked for).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from evkit.backplane.redis_stream import (
    entry_id,
    format_stream_id,
    parse_stream_id,
    trimmed_through,
)
from evkit.exceptions import StoreUnavailable
from evkit.store.base import History, Record
from evkit.store.ring import HistoryRing

if TYPE_CHECKING:
    from evkit.backplane.redis import RedisBackplane

__all__ = ["RedisHistory"]


class RedisHistory(History):
    """This instance's view of the stream: its newest entries in memory, older ones in Redis.

    The memory ring never holds more than the stream keeps (``maxlen``), so every
    instance serves the same history. ``last_id`` is the newest position this instance
    has read (and delivered).
    """

    name = "redis"

    def __init__(self, backplane: RedisBackplane, size: int, max_bytes: int) -> None:
        self._backplane = backplane
        self.epoch = ""
        self.last_id = 0
        # Every entry after its dropped_through, up to last_id, is in it.
        self.ring = HistoryRing(size, max_bytes)

    def parse_id(self, text: str) -> int:
        return parse_stream_id(text)

    def format_id(self, position: int) -> str:
        return format_stream_id(position)

    def append(self, record: Record) -> None:
        self.ring.append(record)
        self.last_id = record.id

    def first_id(self) -> int:
        self._backplane.catch_up()
        return self.ring.first_id(self.last_id + 1)

    def trimmed_through(self) -> int:
        """What the memory ring cannot serve: older entries are read from Redis."""
        self._backplane.catch_up()
        return self.ring.dropped_through

    def read_after(self, after: int) -> Iterator[Record]:
        self._backplane.catch_up()
        return self.ring.read_after(after)

    async def read_older(self, after: int, count: int) -> tuple[list[Record], int]:
        """Up to ``count`` entries after ``after`` (``XRANGE``), and where trimming reached.

        The second value is the position just before the stream's first entry when
        anything was ever trimmed (else 0): a replay after an older position may have
        missed something. It errs on the side of reporting a gap: when the entry the
        client saw last has just been trimmed, nothing after it may have been. Only
        entries this instance has already read are returned (the rest reach the client
        live).

        Raises:
            StoreUnavailable: Redis cannot answer.
        """
        from redis.exceptions import RedisError, ResponseError

        backplane = self._backplane
        client, where = backplane.client, f"Redis at {backplane.display_url}"
        if client is None:
            raise StoreUnavailable(f"{where} is not connected")
        # From the entry holding `after` (its later events are wanted too), to the newest
        # entry this instance has read.
        start = "-" if after == 0 else entry_id(after)
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.xinfo_stream(backplane.stream)
                # `count` is in events; an entry holds a batch of them.
                entries_wanted = max(2, count // 100)
                pipe.xrange(
                    backplane.stream, min=start, max=entry_id(self.last_id), count=entries_wanted
                )
                info, entries = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"{where}: {exc}") from None
        if isinstance(entries, Exception):
            raise StoreUnavailable(f"{where}: {entries}")
        trimmed = 0
        if isinstance(info, dict):
            trimmed = trimmed_through(info)
        elif not (isinstance(info, ResponseError) and "no such key" in str(info)):
            raise StoreUnavailable(f"{where}: {info}")
        records = backplane.parser.parse(entries or [], remember=False)
        newest = self.last_id
        return [record for record in records if after < record.id <= newest], trimmed

    def health(self) -> dict[str, Any]:
        return self._backplane.health()
