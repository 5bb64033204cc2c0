"""Encoding both directions: server messages, event frames, batches, client messages.

Server messages are encoded once (orjson) into UTF-8 bytes ready for a text frame;
an event's frame is built around its payload JSON without decoding it again; a batch
joins already-encoded events. :func:`text_frame` wraps a message in the unmasked
WebSocket frame a server sends. The client builders return the bytes of a text
message for ``publish``, ``ping``, ``auth``, ``subscribe`` and ``unsubscribe``.

Pure: no I/O; the clock is read only where a caller did not give a time.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import orjson

from evkit.exceptions import InvalidEventError, ProtocolError
from evkit.protocol.vocabulary import (
    AUTH,
    BATCH,
    ERROR,
    PING,
    PUBLISH,
    SUBSCRIBE,
    UNSUBSCRIBE,
)

__all__ = [
    "PUBLISH_ENVELOPE",
    "auth_message",
    "batch_message",
    "encode",
    "encode_event",
    "encode_message",
    "error_message",
    "event_body",
    "now_ms",
    "ping_message",
    "publish_message",
    "stream_event_format",
    "subscribe_message",
    "text_frame",
    "unsubscribe_message",
]

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_BATCH = b'{"type":"' + BATCH.encode() + b'","timestamp":%d,"payload":{"events":[%b]}}'
_PUBLISH = b'{"type":"' + PUBLISH.encode() + b'","payload":[%b]}'
#: Bytes a ``publish`` message adds around its events.
PUBLISH_ENVELOPE = len(_PUBLISH % b"")


def now_ms() -> int:
    """Milliseconds since the epoch (UTC), the protocol's timestamp unit."""
    return time.time_ns() // 1_000_000


def _fallback(value: Any) -> Any:
    # Values JSON cannot represent (sets, Decimals, arbitrary objects) travel as text
    # rather than failing an emit deep inside a service.
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def encode(value: Any) -> bytes:
    """Serialise ``value`` to UTF-8 JSON bytes.

    Values JSON cannot represent natively are sent as their ``str()``.

    Raises:
        InvalidEventError: the value cannot be serialised at all (a reference cycle,
            an integer beyond 64 bits, a string that is not valid UTF-8, nesting past
            the encoder's 254 levels).
    """
    try:
        return orjson.dumps(value, default=_fallback, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidEventError(f"payload cannot be serialised to JSON: {exc}") from None


def encode_message(type_: str, payload: Any, timestamp: int | None = None) -> bytes:
    """Encode a server (system) message ``{"type", "timestamp", "payload"}``."""
    return encode(
        {
            "type": type_,
            "timestamp": now_ms() if timestamp is None else timestamp,
            "payload": payload,
        }
    )


def encode_event(type_: str, timestamp: int, event_id: str, payload_json: bytes) -> bytes:
    """Encode an event frame around a payload that is already JSON.

    ``type_`` must be a valid event type and ``event_id`` an id made of JSON-safe
    characters (both are, when they come from evkit): they are not escaped.
    """
    return b'{"type":"%b","timestamp":%d,"id":"%b","payload":%b}' % (
        type_.encode(),
        timestamp,
        event_id.encode(),
        payload_json,
    )


def stream_event_format(ms: bytes) -> bytes:
    """:func:`encode_event`'s frame for ids ``<ms>-<sequence>`` (Redis stream positions),
    as a ``%`` format of (type as bytes, timestamp, sequence, payload JSON).

    For framing many events of one stream entry: one formatting per event, no id string.
    """
    return b'{"type":"%%b","timestamp":%%d,"id":"%b-%%d","payload":%%b}' % ms


def batch_message(events: list[bytes], timestamp: int | None = None) -> bytes:
    """A ``websocket.batch`` message holding encoded events, in order."""
    return _BATCH % (now_ms() if timestamp is None else timestamp, b",".join(events))


def error_message(exc: ProtocolError) -> bytes:
    """Encode the ``websocket.error`` reply to a rejected client message."""
    return encode_message(ERROR, {"error": exc.error, "code": exc.code, "detail": exc.detail})


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one final, unmasked WebSocket text frame: what a server sends."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


# -- what clients send ---------------------------------------------------------------------


def event_body(type_: str, payload_json: bytes, timestamp: int | None = None) -> bytes:
    """One event ``{"type", "payload"}`` of a ``publish`` message, its payload already JSON;
    ``timestamp`` (ms) is the event's source time, kept by the server."""
    if timestamp is None:
        return b'{"type":%b,"payload":%b}' % (orjson.dumps(type_), payload_json)
    return b'{"type":%b,"timestamp":%d,"payload":%b}' % (
        orjson.dumps(type_),
        timestamp,
        payload_json,
    )


def publish_message(bodies: list[bytes]) -> bytes:
    """A ``publish`` message holding events built with :func:`event_body`."""
    return _PUBLISH % b",".join(bodies)


def ping_message(payload: Any) -> bytes:
    """A ``ping``; the server's ``pong`` echoes ``payload``."""
    return orjson.dumps({"type": PING, "payload": payload})


def auth_message(token: str) -> bytes:
    """The ``auth`` message a client sends first when its handshake had no credentials."""
    return orjson.dumps({"type": AUTH, "payload": {"token": token}})


def subscribe_message(
    patterns: list[str],
    *,
    replace: bool = False,
    correlation_id: Any = ...,
    since: str | None = None,
    batch: tuple[int, float] | None = None,
) -> bytes:
    """A ``subscribe``; ``correlation_id`` is left out when omitted (None clears it)."""
    payload: dict[str, Any] = {"eventTypes": patterns}
    if replace:
        payload["replace"] = True
    if correlation_id is not ...:
        payload["correlationId"] = correlation_id
    if since is not None:
        payload["since"] = since
    if batch is not None:
        payload["batch"] = {"maxEvents": batch[0], "maxDelayMs": batch[1]}
    return orjson.dumps({"type": SUBSCRIBE, "payload": payload})


def unsubscribe_message(patterns: list[str]) -> bytes:
    """An ``unsubscribe``."""
    return orjson.dumps({"type": UNSUBSCRIBE, "payload": {"eventTypes": patterns}})
