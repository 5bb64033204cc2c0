"""What clients send: validation of events, patterns' companions and client messages.

Client messages are decoded and validated here into small immutable objects, or
rejected with a :class:`~evkit.exceptions.ProtocolError` whose ``code`` is the stable
string the server sends back in ``websocket.error``. Nothing is partially applied: a
message with one bad part is rejected whole. The same validators check events posted
over HTTP and events written to a shared stream by someone other than evkit.

Pure: no I/O, no sockets, no clocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from evkit.exceptions import InvalidEventError, ProtocolError
from evkit.patterns import validate_patterns
from evkit.protocol.encoding import now_ms
from evkit.protocol.vocabulary import AUTH, CLIENT_TYPES, PING, PUBLISH, SUBSCRIBE, UNSUBSCRIBE

__all__ = [
    "MAX_BATCH_DELAY_MS",
    "MAX_BATCH_EVENTS",
    "MAX_CLOCK_AHEAD_MS",
    "MAX_CORRELATION_ID_LENGTH",
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_PAYLOAD_DEPTH",
    "UNSET",
    "Auth",
    "BatchOptions",
    "ClientMessage",
    "Ping",
    "Publish",
    "Subscribe",
    "Unsubscribe",
    "decode_client_message",
    "describe",
    "validate_batch",
    "validate_correlation_id",
    "validate_event",
    "validate_event_type",
    "validate_timestamp",
]

MAX_CORRELATION_ID_LENGTH = 256
MAX_EVENT_TYPE_LENGTH = 256
#: Deepest nesting of objects and arrays accepted in a published payload or a ping's
#: payload (the encoder stops at 254 levels; a limit well inside it keeps every reply
#: and every stored event encodable).
MAX_PAYLOAD_DEPTH = 64
#: How far ahead of the server's clock an event's source time may be (one day, in ms).
MAX_CLOCK_AHEAD_MS = 86_400_000
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_DELAY_MS = 10_000
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")


class _Unset:
    """Marker for "the key was absent" where None means "clear"."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = _Unset()


def validate_event_type(type_: object) -> str:
    """Return ``type_`` if it is a valid event type.

    Raises:
        InvalidEventError: it is not a dotted name of letters, digits, ``_`` and ``-``
            (for example ``repo.commit.created``), or is longer than 256 characters.
    """
    if not isinstance(type_, str):
        raise InvalidEventError(f"event type must be a string, got {type(type_).__name__}")
    if len(type_) > MAX_EVENT_TYPE_LENGTH or not _EVENT_TYPE.fullmatch(type_):
        raise InvalidEventError(
            f"event type {type_[:80]!r} is not a dotted name like 'service.entity.action' "
            f"(letters, digits, '_' and '-' between dots, at most {MAX_EVENT_TYPE_LENGTH} "
            f"characters)"
        )
    return type_


def validate_correlation_id(value: object, field: str = "correlationId") -> str | None:
    """Return a valid correlation ID or None.

    Raises:
        ProtocolError: ``invalid_message`` when it is neither a string nor null, is
            empty, or longer than :data:`MAX_CORRELATION_ID_LENGTH`.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_CORRELATION_ID_LENGTH:
        raise ProtocolError(
            "invalid_message",
            f"{field} must be a non-empty string of at most {MAX_CORRELATION_ID_LENGTH} "
            f"characters, or null to clear it; got {describe(value)}",
            {"field": field},
        )
    return value


def validate_event(event: object, position: int | None = None) -> tuple[str, dict[str, Any]]:
    """Validate one published event ``{"type", "payload"}``; return ``(type, payload)``.

    Raises:
        ProtocolError: ``invalid_event`` naming the field (and the position in a list).
    """
    where = "" if position is None else f"event[{position}]: "
    if not isinstance(event, Mapping):
        raise ProtocolError(
            "invalid_event",
            f"{where}an event must be an object with 'type' and 'payload', got {describe(event)}",
            {"index": position},
        )
    try:
        type_ = validate_event_type(event.get("type"))
    except InvalidEventError as exc:
        raise ProtocolError("invalid_event", where + str(exc), {"index": position}) from None
    payload = event.get("payload", {})
    if not isinstance(payload, Mapping):
        raise ProtocolError(
            "invalid_event",
            f"{where}payload must be an object, got {describe(payload)}",
            {"index": position},
        )
    if _too_deep(payload):
        raise ProtocolError(
            "invalid_event",
            f"{where}payload nests objects and arrays more than {MAX_PAYLOAD_DEPTH} levels deep",
            {"index": position, "maxDepth": MAX_PAYLOAD_DEPTH},
        )
    correlation_id = payload.get("correlationId")
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise ProtocolError(
            "invalid_event",
            f"{where}payload.correlationId must be a string, got {describe(correlation_id)}",
            {"index": position},
        )
    return type_, dict(payload)


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """A client's opt-in to ``websocket.batch`` delivery."""

    max_events: int
    max_delay_ms: float


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``subscribe``: add (or with ``replace``, set) patterns; maybe change the filter."""

    event_types: list[str]
    correlation_id: str | _Unset | None = UNSET
    replace: bool = False
    since: str | None = None
    batch: BatchOptions | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``unsubscribe``: remove patterns."""

    event_types: list[str]


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: answered by ``pong`` echoing ``payload``."""

    payload: Any


@dataclass(frozen=True, slots=True)
class Publish:
    """``publish``: one or more events to emit through the broadcaster.

    ``timestamps``: each event's source time (ms), None where it gave none; None when
    no event gave one.
    """

    events: list[tuple[str, dict[str, Any]]]
    timestamps: list[int | None] | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    """``auth``: credentials sent as the first message."""

    token: str


ClientMessage = Subscribe | Unsubscribe | Ping | Publish | Auth


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Decode and validate one client message.

    Raises:
        ProtocolError: with ``code`` ``invalid_json`` (not JSON), ``invalid_message``
            (not an object, missing or mistyped fields), ``unknown_type``,
            ``invalid_pattern`` or ``invalid_event``. Nothing is partially applied: a
            message with one bad pattern among good ones is rejected whole.
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(
            "invalid_json", f"message is not valid JSON: {exc}", {"position": exc.pos}
        ) from None
    if not isinstance(message, dict):
        raise ProtocolError(
            "invalid_message",
            f"message must be a JSON object with 'type' and 'payload', got {describe(message)}",
        )
    type_ = message.get("type")
    if not isinstance(type_, str):
        raise ProtocolError(
            "invalid_message",
            f"message 'type' must be a string, got {describe(type_)}",
            {"field": "type"},
        )
    if type_ not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type",
            f"unknown message type {type_[:64]!r}; expected one of {', '.join(CLIENT_TYPES)}",
            {"type": type_[:64], "expected": list(CLIENT_TYPES)},
        )
    payload = message.get("payload")
    if type_ == PING:
        if _too_deep(payload):
            raise ProtocolError(
                "invalid_message",
                f"ping payload nests objects and arrays more than {MAX_PAYLOAD_DEPTH} levels "
                "deep; the pong could not echo it",
                {"field": "payload", "maxDepth": MAX_PAYLOAD_DEPTH},
            )
        return Ping(payload)
    if type_ == PUBLISH:
        if not isinstance(payload, list):
            return _publish([payload], None)
        if not payload:
            raise ProtocolError("invalid_event", "publish needs at least one event")
        return _publish(payload, 0)
    if not isinstance(payload, dict):
        raise ProtocolError(
            "invalid_message",
            f"{type_} needs an object payload, got {describe(payload)}",
            {"field": "payload"},
        )
    if type_ == AUTH:
        token = payload.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(
                "invalid_message",
                "auth needs payload.token, a non-empty string",
                {"field": "token"},
            )
        return Auth(token)
    if "eventTypes" not in payload and not (type_ == SUBSCRIBE and "correlationId" in payload):
        raise ProtocolError(
            "invalid_message",
            f"{type_} needs payload.eventTypes, a list of patterns",
            {"field": "eventTypes"},
        )
    raw_types = payload.get("eventTypes", [])
    if not isinstance(raw_types, list):
        raise ProtocolError(
            "invalid_message",
            f"payload.eventTypes must be a list of patterns, got {describe(raw_types)}",
            {"field": "eventTypes"},
        )
    event_types = validate_patterns(raw_types)
    if type_ == UNSUBSCRIBE:
        return Unsubscribe(event_types)
    return Subscribe(
        event_types=event_types,
        correlation_id=(
            validate_correlation_id(payload["correlationId"])
            if "correlationId" in payload
            else UNSET
        ),
        replace=_optional_bool(payload, "replace"),
        since=_optional_since(payload),
        batch=_optional_batch(payload),
    )


def _publish(items: list[Any], first: int | None) -> Publish:
    """The events of a ``publish``; ``first``: the position of the first in a list."""
    events = []
    timestamps: list[int | None] = []
    for offset, item in enumerate(items):
        position = None if first is None else first + offset
        events.append(validate_event(item, position))
        timestamps.append(validate_timestamp(item, position))
    return Publish(events, timestamps if any(t is not None for t in timestamps) else None)


def validate_timestamp(
    event: object, position: int | None = None, now: int | None = None
) -> int | None:
    """An event's source time, ``timestamp`` (ms since the epoch), or None when absent.

    A number is rounded to whole milliseconds. Any time in the past is kept (a replayed
    recording has old times); more than :data:`MAX_CLOCK_AHEAD_MS` ahead of this
    server's clock is refused: that is a wrong clock or a wrong unit, not an event.

    Raises:
        ProtocolError: ``invalid_event`` for a timestamp that is not a finite number
            from 0 to now plus a day.
    """
    value = event.get("timestamp") if isinstance(event, Mapping) else None
    if value is None:
        return None
    where = "" if position is None else f"event[{position}]: "
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or value != value  # NaN
        or not 0 <= value < 1 << 62
    ):
        raise ProtocolError(
            "invalid_event",
            f"{where}timestamp must be milliseconds since the epoch (a number >= 0), "
            f"got {describe(value)}",
            {"index": position, "field": "timestamp"},
        )
    limit = (now_ms() if now is None else now) + MAX_CLOCK_AHEAD_MS
    if value > limit:
        raise ProtocolError(
            "invalid_event",
            f"{where}timestamp {value!r} is more than a day ahead of this server's clock "
            "(a wrong clock, or seconds or nanoseconds instead of milliseconds?)",
            {"index": position, "field": "timestamp"},
        )
    return round(value)


def _optional_bool(payload: dict[str, Any], field: str) -> bool:
    value = payload.get(field, False)
    if not isinstance(value, bool):
        raise ProtocolError(
            "invalid_message",
            f"{field} must be true or false, got {describe(value)}",
            {"field": field},
        )
    return value


def _optional_since(payload: dict[str, Any]) -> str | None:
    value = payload.get("since")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    raise ProtocolError(
        "invalid_message",
        f"since must be an event id (a string, as received in an event's 'id'), got {describe(value)}",
        {"field": "since"},
    )


def _optional_batch(payload: dict[str, Any]) -> BatchOptions | None:
    return validate_batch(payload.get("batch"))


def validate_batch(value: object) -> BatchOptions | None:
    """Validate a ``batch`` option ``{"maxEvents": N, "maxDelayMs": T}`` (None: absent).

    Raises:
        ProtocolError: ``invalid_message`` naming the accepted ranges.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        max_events = value.get("maxEvents")
        max_delay = value.get("maxDelayMs")
        if (
            isinstance(max_events, int)
            and not isinstance(max_events, bool)
            and 1 <= max_events <= MAX_BATCH_EVENTS
            and isinstance(max_delay, int | float)
            and not isinstance(max_delay, bool)
            and 0 <= max_delay <= MAX_BATCH_DELAY_MS
        ):
            return BatchOptions(max_events, float(max_delay))
    raise ProtocolError(
        "invalid_message",
        f"batch must be {{'maxEvents': 1..{MAX_BATCH_EVENTS}, 'maxDelayMs': "
        f"0..{MAX_BATCH_DELAY_MS}}}, got {describe(value)}",
        {"field": "batch"},
    )


def _too_deep(value: object, limit: int = MAX_PAYLOAD_DEPTH) -> bool:
    """Whether ``value`` nests dicts and lists more than ``limit`` levels (not recursive)."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        items = container.values() if isinstance(container, dict) else container
        for item in items:
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))
    return False


def describe(value: object) -> str:
    """A value as an error message shows it: its type and a short repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
