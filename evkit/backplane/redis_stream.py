"""What evkit keeps in a Redis stream: ids, entries, the scripts that write them.

An entry holds one event: ``t`` (type), ``ts`` (timestamp, ms), ``c`` (correlation ID,
when there is one), ``p`` (the payload JSON) and ``o`` (``producer:sequence``, so a
write retried after a lost reply is recognised and skipped by every reader). The Redis
stream id (``1764171234567-0``) is the event id on the wire; inside evkit it is the
integer ``ms << 32 | seq``, so positions compare as integers.

Pure apart from logging: entries in, records out. No connection is made here.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from evkit.exceptions import ProtocolError
from evkit.protocol import encode_event, validate_correlation_id, validate_event_type
from evkit.store.base import Record

__all__ = [
    "APPEND_SCRIPT",
    "ROTATE_SCRIPT",
    "EntryParser",
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

# XADD every event of a batch. ARGV: maxlen, then per event a header
# "<type> <timestamp> <producer:sequence> <correlation ID or nothing>" and the payload
# JSON (two arguments per event keep the command cheap to encode). Returns the ids.
APPEND_SCRIPT = """
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
        return parse_stream_id(text(info["last-generated-id"]))
    return parse_stream_id(text(first)) - 1


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
        append = records.append
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
                    validate_event_type(type_)
                    if not isinstance(orjson.loads(payload_json), dict):
                        raise ValueError("payload is not a JSON object")
                    if correlation is not None:
                        validate_correlation_id(correlation.decode())
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
        return records

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
