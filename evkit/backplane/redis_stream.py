"""What evkit keeps in a Redis stream: ids, entries, the scripts that write them.

An entry holds a batch of events, as one instance's drain handed them to its writer:
``h`` (a JSON list ``[type, timestamp, correlation ID or null]`` per event), ``p`` (their
payloads' JSON, joined by the ASCII record separator 0x1E, which JSON never holds
unescaped) and ``o`` (``producer:sequence``, so a write retried after a lost reply is
recognised and skipped by every reader). An event's id is its entry's Redis stream id
with its place in the entry folded into the sequence: the ``k``-th event of entry
``1764171234567-3`` is ``1764171234567-{3 << 16 | k}``, so ids keep the form of stream
ids and their order. Inside evkit an id is the integer ``ms << 32 | seq``.

Entries of one event in the fields ``t`` (type), ``ts``, ``c`` (correlation ID) and ``p``
(payload) are read too: what other writers append (checked before any client sees it).

Pure apart from logging: entries in, records out. No connection is made here.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

import orjson

from evkit.exceptions import ProtocolError
from evkit.protocol import (
    encode_event,
    stream_event_format,
    validate_correlation_id,
    validate_event_type,
)
from evkit.store.base import Record

if TYPE_CHECKING:
    from evkit.backplane.base import Pending

__all__ = [
    "EVENTS_PER_ENTRY",
    "ROTATE_SCRIPT",
    "EntryParser",
    "UnparsedEntries",
    "batch_fields",
    "entries_to_keep",
    "entry_end",
    "entry_events",
    "entry_id",
    "entry_position",
    "format_stream_id",
    "parse_stream_id",
    "redacted_url",
    "text",
    "trimmed_through",
]

logger = logging.getLogger("evkit.backplane.redis")

_SEQ_BITS = 32
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_SEEN_PRODUCERS = 4096  # producers remembered for skipping repeated writes

_PLACE_BITS = 16  # an event's place in its entry, in the low bits of its sequence
#: Most events one entry holds.
EVENTS_PER_ENTRY = 1 << _PLACE_BITS
_SEPARATOR = b"\x1e"
_new_record = cast(Callable[[type[Record], tuple[Any, ...]], Record], tuple.__new__)

# Rotate the epoch only if nobody did it first: every instance that notices a lost
# stream agrees on one new epoch.
ROTATE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"""


def parse_stream_id(value: str) -> int:
    """The position of a Redis stream id: ``"1764171234567-3"``, ``"1764171234567"`` or ``"0"``.

    Raises:
        ValueError: not a stream id.
    """
    ms, dash, seq = value.partition("-")
    if not ms.isdigit() or (dash and not seq.isdigit()) or len(value) > 41:
        raise ValueError(
            f"an event id of this server is a Redis stream id like 1764171234567-0, got {value!r}"
        )
    sequence = int(seq) if dash else 0
    if int(ms) >= 1 << 64:
        raise ValueError(f"stream id milliseconds out of range in {value!r}")
    if sequence > _SEQ_MASK:
        raise ValueError(f"stream id sequence out of range in {value!r}")
    return int(ms) << _SEQ_BITS | sequence


def format_stream_id(position: int) -> str:
    """The Redis stream id of a position (``parse_stream_id``'s inverse)."""
    return f"{position >> _SEQ_BITS}-{position & _SEQ_MASK}"


def entry_position(value: str | bytes) -> int:
    """The position of a stream entry's first event (its place 0), from the entry's id.

    Raises:
        ValueError: not a stream id, or a sequence past what entries of events use.
    """
    raw = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = raw.partition("-")
    sequence = int(seq) if seq else 0
    if sequence >= 1 << (_SEQ_BITS - _PLACE_BITS):
        raise ValueError(f"stream entry {raw!r}: sequence past {1 << (_SEQ_BITS - _PLACE_BITS)}")
    return int(ms) << _SEQ_BITS | sequence << _PLACE_BITS


def entry_end(value: str | bytes) -> int:
    """The position of the last event an entry can hold (every place of it)."""
    return entry_position(value) | (EVENTS_PER_ENTRY - 1)


def entry_id(position: int) -> str:
    """The id of the stream entry holding the event at ``position``."""
    sequence = (position & _SEQ_MASK) >> _PLACE_BITS
    return f"{position >> _SEQ_BITS}-{sequence}"


def entry_events(fields: dict[bytes, bytes]) -> int:
    """How many events an entry holds, without parsing it (a batch's payloads are joined
    by 0x1E, which no JSON text holds; an older single-event entry holds one)."""
    if b"h" not in fields:
        return 1
    return fields.get(b"p", b"").count(_SEPARATOR) + 1


def entries_to_keep(newest_first: Iterable[int], maxlen: int) -> int:
    """How many stream entries hold ``maxlen`` events, judging by the sizes of the newest
    entries (events in each, newest first): enough of them, then their average for the
    rest. An average of all of them could keep fewer than ``maxlen`` events when the
    newest entries are the smaller ones.
    """
    kept = count = 0
    for size in newest_first:
        count += 1
        kept += size
        if kept >= maxlen:
            return count
    if kept == 0:
        return max(1, maxlen)  # nothing written yet: as if one event per entry
    return count + math.ceil((maxlen - kept) * count / kept)


def redacted_url(url: str) -> str:
    """``url`` with its password shown as ``***``, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def trimmed_through(info: dict[str, Any]) -> int:
    """From ``XINFO STREAM``: the position before the first entry if anything was trimmed, else 0."""
    if int(info["entries-added"]) <= int(info["length"]):
        return 0
    first = info.get("recorded-first-entry-id")
    if first is None:
        return entry_end(text(info["last-generated-id"]))
    return entry_position(text(first)) - 1


def text(value: Any) -> str:
    """A Redis reply value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class EntryParser:
    """Turns stream entries into records: repeated writes skipped, malformed ones counted.

    ``seen`` remembers the newest sequence of each producer (bounded): an entry at or
    below it is a write retried after a lost reply, already read.
    """

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.seen: dict[bytes, int] = {}
        self.repeats_skipped = 0
        self.malformed = 0

    def parse(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]], remember: bool = True
    ) -> list[Record]:
        """Records of ``entries``, in order. ``remember``: note their producers' sequences
        (reading the stream forward); a replay reads old entries without it."""
        seen = self.seen if remember else {}
        records: list[Record] = []
        for raw_id, fields in entries:
            origin = fields.get(b"o")
            if origin is not None and self._repeated(origin, seen):
                continue
            try:
                if b"h" in fields:
                    self._batch(raw_id, fields, records)
                else:
                    self._single(raw_id, fields, origin is None, records)
            except (
                KeyError,
                ValueError,
                TypeError,
                IndexError,
                AttributeError,
                ProtocolError,
            ) as exc:
                self._skip_malformed(raw_id, exc)
        return records

    def repeated(self, origin: bytes) -> bool:
        """Whether an entry from ``origin`` (``producer:sequence``) was read already: a
        retried write. Noted as read otherwise (reading the stream forward)."""
        return self._repeated(origin, self.seen)

    def _repeated(self, origin: bytes, seen: dict[bytes, int]) -> bool:
        producer, _, number = origin.rpartition(b":")
        sequence = int(number) if number.isdigit() else 0
        if sequence <= seen.get(producer, 0):
            self.repeats_skipped += 1
            return True
        if len(seen) >= _SEEN_PRODUCERS and producer not in seen:
            del seen[next(iter(seen))]
        seen[producer] = sequence
        return False

    @staticmethod
    def _batch(raw_id: bytes, fields: dict[bytes, bytes], records: list[Record]) -> None:
        """An entry of evkit's: a batch of events, checked when they were emitted."""
        header = orjson.loads(fields[b"h"])
        payloads = fields[b"p"].split(_SEPARATOR)
        if len(payloads) != len(header) or len(header) > EVENTS_PER_ENTRY:
            raise ValueError(f"{len(header)} events in the header, {len(payloads)} payloads")
        ms, _, seq = raw_id.partition(b"-")
        base = entry_position(raw_id)
        sequence = int(seq) << _PLACE_BITS
        frame = stream_event_format(ms)  # one formatting per event
        encoded = {type_: type_.encode() for type_ in {item[0] for item in header}}
        # Every reader frames every event of the stream: built in one comprehension, the
        # records made as tuples of the Record class (its constructor is a Python-level
        # function): about 15 % less per event (bench/README.md, "Scale-out").
        records += [
            _new_record(
                Record,
                (
                    base | place,
                    timestamp,
                    type_,
                    correlation_id,
                    frame % (encoded[type_], timestamp, sequence | place, payload_json),
                ),
            )
            for place, ((type_, timestamp, correlation_id), payload_json) in enumerate(
                zip(header, payloads, strict=True)
            )
        ]

    @staticmethod
    def _single(
        raw_id: bytes, fields: dict[bytes, bytes], foreign: bool, records: list[Record]
    ) -> None:
        """An entry of one event (another writer's, checked here, or an older evkit's)."""
        type_ = fields[b"t"].decode()
        timestamp = int(fields[b"ts"])
        payload_json = fields[b"p"]
        correlation = fields.get(b"c")
        if foreign:  # not written by evkit: check what would reach clients
            validate_event_type(type_)
            if not isinstance(orjson.loads(payload_json), dict):
                raise ValueError("payload is not a JSON object")
            if correlation is not None:
                validate_correlation_id(correlation.decode())
        position = entry_position(raw_id)
        records.append(
            Record(
                position,
                timestamp,
                type_,
                correlation.decode() if correlation is not None else None,
                encode_event(type_, timestamp, format_stream_id(position), payload_json),
            )
        )

    def _skip_malformed(self, raw_id: bytes, exc: Exception) -> None:
        self.malformed += 1
        if self.malformed == 1 or self.malformed % 10_000 == 0:
            logger.warning(
                "skipped a malformed entry %s in Redis stream %s (%d so far): %r",
                text(raw_id),
                self.stream,
                self.malformed,
                exc,
            )


class UnparsedEntries:
    """Entries read but not framed yet, oldest first, bounded as a memory ring of
    ``max_events`` events and ``max_bytes`` bytes is.

    An instance that no client listens to keeps what it reads this way: framing every
    event is most of what reading costs, and only a replay needs them framed. The
    caller skips repeated writes before keeping an entry (they are recognised in
    stream order) and parses what :meth:`take` gives back.
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0  # events in the entries kept
        self.size = 0  # bytes of their fields
        self.newest = 0  # the position of the newest event kept (0: nothing is kept)
        self._entries: deque[tuple[bytes, dict[bytes, bytes], int, int]] = deque()

    def __len__(self) -> int:
        """How many entries are kept."""
        return len(self._entries)

    def keep(self, raw_id: bytes, fields: dict[bytes, bytes]) -> None:
        """Keep one entry, newer than every entry kept."""
        events = entry_events(fields)
        size = sum(map(len, fields.values()))
        self._entries.append((raw_id, fields, events, size))
        self.events += events
        self.size += size
        self.newest = entry_position(raw_id) | (events - 1)

    def trim(self) -> int:
        """Let the oldest entries go while the newer ones fill the bound without them (the
        newest entry stays, however large).

        Returns the position of the last event let go, or 0 when none was: what a memory
        ring holding these events would have dropped.
        """
        entries = self._entries
        dropped = 0
        while len(entries) > 1:
            raw_id, _, events, size = entries[0]
            if self.events - events < self.max_events and self.size - size < self.max_bytes:
                break
            entries.popleft()
            self.events -= events
            self.size -= size
            dropped = entry_position(raw_id) | (events - 1)
        return dropped

    def take(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Every entry kept, oldest first; none is kept afterwards."""
        entries = [(raw_id, fields) for raw_id, fields, _, _ in self._entries]
        self.clear()
        return entries

    def clear(self) -> None:
        """Keep nothing (the stream broke, or was read again from Redis)."""
        self._entries.clear()
        self.events = self.size = self.newest = 0


def batch_fields(producer: bytes, sequence: int, items: list[Pending]) -> dict[bytes, bytes]:
    """The fields of the entry holding ``items`` (event, correlation ID, payload JSON, _)."""
    header = orjson.dumps([[event.type, event.timestamp, cid] for event, cid, _, _ in items])
    return {
        b"o": b"%b:%d" % (producer, sequence),
        b"h": header,
        b"p": _SEPARATOR.join(item[2] for item in items),
    }
