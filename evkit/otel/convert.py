"""OpenTelemetry spans as evkit span events, from OTLP (protobuf or JSON) or the SDK.

One span becomes one event that every analysis reads as a finished operation:

- type ``<service>.<operation>.completed`` (``.failed`` for an error status): the
  resource's ``service.name`` and the span name, each made of the characters an event
  type allows (``GET /users/:id`` becomes ``GET_users_id``; dots in a span name stay
  segments: ``graphql.query``);
- ``timestamp``: the span's end (ms), not its arrival;
- payload: ``correlationId`` (the trace id, 32 hex), ``spanId`` / ``parentSpanId`` (16
  hex), ``duration`` (ms, float, from the span's own start and end), ``kind``,
  ``service``, ``statusMessage``, ``scope`` (the instrumentation scope), ``source``
  (``"otel"``), ``resource`` (its other attributes), ``events`` (the span's events:
  ``exception`` and others, each ``{"name", "timestamp", "attributes"}``),
  ``errorType`` / ``errorMessage`` for a failed span (from its ``exception`` event or
  its status), and every span attribute as a payload field (an attribute named like
  one of these goes under ``attributes`` instead).

No ``.started`` event: an exporter sends a span once it has ended, so a start event
would arrive with its end and tell a live view nothing. A span that cannot be an event
(ids of the wrong length, an end before its start, a time more than a day ahead) is
refused with the reason, and the others are kept (OTLP's partial success).

Pure apart from reading the objects given: no I/O, no imports of the SDK or protobuf.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from evkit.bus import Event
from evkit.protocol.client_messages import MAX_CLOCK_AHEAD_MS, MAX_EVENT_TYPE_LENGTH

__all__ = [
    "SPAN_KINDS",
    "OTLPError",
    "events_from_json",
    "events_from_request",
    "span_event",
    "span_type",
]

#: OTLP's span kinds, by their number, as the ``kind`` payload field names them.
SPAN_KINDS = {
    0: "unspecified",
    1: "internal",
    2: "server",
    3: "client",
    4: "producer",
    5: "consumer",
}
_STATUS_ERROR = 2
_RESERVED = frozenset(
    {
        "correlationId",
        "spanId",
        "parentSpanId",
        "duration",
        "kind",
        "service",
        "statusMessage",
        "scope",
        "source",
        "resource",
        "events",
        "errorType",
        "errorMessage",
        "attributes",
    }
)
_NOT_TYPE_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-.]+")
_NOT_SERVICE_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-]+")
_HEX_DIGITS = "0123456789abcdef"


class OTLPError(ValueError):
    """An OTLP request whose structure is wrong as a whole (not one bad span)."""


@functools.lru_cache(maxsize=4096)
def span_type(service: str, name: str, failed: bool) -> str:
    """The event type of a span of ``service`` named ``name``."""
    service = _NOT_SERVICE_CHARACTERS.sub("-", service).strip("-") or "unknown_service"
    segments = [
        segment.strip("_")
        for segment in _NOT_TYPE_CHARACTERS.sub("_", name).split(".")
        if segment.strip("_")
    ]
    operation = ".".join(segments) or "span"
    outcome = "failed" if failed else "completed"
    room = MAX_EVENT_TYPE_LENGTH - len(service) - len(outcome) - 2
    return f"{service[:64]}.{operation[: max(1, room)].strip('.')}.{outcome}"


def span_event(
    *,
    service: str,
    resource: Mapping[str, Any],
    scope: str,
    trace_id: str,
    span_id: str,
    parent_span_id: str,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any],
    status_code: int,
    status_message: str,
    span_events: Iterable[tuple[str, int, Mapping[str, Any]]],
    now_ms: int,
) -> Event | str:
    """The event of one span (ids as lower-case hex), or why it cannot be one."""
    if len(trace_id) != 32 or trace_id.strip(_HEX_DIGITS) or not trace_id.strip("0"):
        return f"span {name!r}: trace id must be 16 bytes, not all zero"
    if len(span_id) != 16 or span_id.strip(_HEX_DIGITS) or not span_id.strip("0"):
        return f"span {name!r}: span id must be 8 bytes, not all zero"
    if parent_span_id and (len(parent_span_id) != 16 or parent_span_id.strip(_HEX_DIGITS)):
        return f"span {name!r}: parent span id must be 8 bytes"
    if end_ns < start_ns or start_ns <= 0:
        return f"span {name!r}: it ends before it starts, or has no start time"
    end_ms = end_ns // 1_000_000
    if end_ms > now_ms + MAX_CLOCK_AHEAD_MS:
        return f"span {name!r}: it ends more than a day ahead of this server's clock"
    failed = status_code == _STATUS_ERROR
    payload: dict[str, Any] = {
        "correlationId": trace_id,
        "spanId": span_id,
        "duration": (end_ns - start_ns) / 1e6,
        "kind": SPAN_KINDS.get(kind, "unspecified"),
        "service": service,
        "source": "otel",
    }
    if parent_span_id and parent_span_id.strip("0"):
        payload["parentSpanId"] = parent_span_id
    if status_message:
        payload["statusMessage"] = status_message
    if scope:
        payload["scope"] = scope
    if resource:
        payload["resource"] = dict(resource)
    if _RESERVED.isdisjoint(attributes):
        payload.update(attributes)
    else:
        for key, value in attributes.items():
            if key in _RESERVED:
                payload.setdefault("attributes", {})[key] = value
            else:
                payload[key] = value
    events = [
        {"name": event_name, "timestamp": at // 1_000_000, "attributes": dict(event_attributes)}
        for event_name, at, event_attributes in span_events
    ]
    if events:
        payload["events"] = events
    if failed:
        _describe_failure(payload, events, status_message)
    return Event(span_type(service, name, failed), end_ms, payload)


def _describe_failure(payload: dict[str, Any], events: list[dict[str, Any]], message: str) -> None:
    for event in events:
        if event["name"] == "exception":
            attributes = event["attributes"]
            payload["errorType"] = attributes.get("exception.type", "")
            payload["errorMessage"] = attributes.get("exception.message", message)
            return
    payload["errorType"] = ""
    payload["errorMessage"] = message


# -- protobuf (opentelemetry-proto's ExportTraceServiceRequest, parsed) ----------------------


def events_from_request(request: Any, now_ms: int) -> tuple[list[Event], list[str]]:
    """The events of a parsed ``ExportTraceServiceRequest``, and why spans were refused."""
    events: list[Event] = []
    refused: list[str] = []
    for resource_spans in request.resource_spans:
        resource = _proto_attributes(resource_spans.resource.attributes)
        service = str(resource.pop("service.name", "unknown_service"))
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                result = span_event(
                    service=service,
                    resource=resource,
                    scope=scope,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    kind=span.kind,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=_proto_attributes(span.attributes),
                    status_code=span.status.code,
                    status_message=span.status.message,
                    span_events=[
                        (e.name, e.time_unix_nano, _proto_attributes(e.attributes))
                        for e in span.events
                    ]
                    if span.events
                    else (),
                    now_ms=now_ms,
                )
                (refused if isinstance(result, str) else events).append(result)  # type: ignore[arg-type]
    return events, refused


def _proto_attributes(pairs: Iterable[Any]) -> dict[str, Any]:
    attributes = {}
    for pair in pairs:
        value = pair.value
        kind = value.WhichOneof("value")
        # The scalars first, without a call each: most attributes are.
        if kind == "string_value":
            attributes[pair.key] = value.string_value
        elif kind == "int_value":
            attributes[pair.key] = value.int_value
        else:
            attributes[pair.key] = _proto_value(value)
    return attributes


def _proto_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_proto_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _proto_attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


# -- JSON (OTLP's JSON encoding: lowerCamelCase, hex ids, int64 as strings) --------------------


def events_from_json(document: Any, now_ms: int) -> tuple[list[Event], list[str]]:
    """The events of an OTLP/JSON request body, and why spans were refused.

    Raises:
        OTLPError: the document is not an ``ExportTraceServiceRequest``.
    """
    events: list[Event] = []
    refused: list[str] = []
    for resource_spans in _list(document, "resourceSpans", "the request"):
        resource = _json_attributes(_object(resource_spans.get("resource")).get("attributes"))
        service = str(resource.pop("service.name", "unknown_service"))
        for scope_spans in _list(resource_spans, "scopeSpans", "resourceSpans[]"):
            scope = str(_object(scope_spans.get("scope")).get("name") or "")
            for span in _list(scope_spans, "spans", "scopeSpans[]"):
                try:
                    result = _json_span(span, service, resource, scope, now_ms)
                except (TypeError, ValueError, AttributeError) as exc:
                    result = f"span {_object(span).get('name')!r}: {exc}"
                (refused if isinstance(result, str) else events).append(result)  # type: ignore[arg-type]
    return events, refused


def _json_span(
    span: Any, service: str, resource: dict[str, Any], scope: str, now_ms: int
) -> Event | str:
    if not isinstance(span, dict):
        raise TypeError("a span must be an object")
    status = _object(span.get("status"))
    return span_event(
        service=service,
        resource=resource,
        scope=scope,
        trace_id=str(span.get("traceId") or "").lower(),
        span_id=str(span.get("spanId") or "").lower(),
        parent_span_id=str(span.get("parentSpanId") or "").lower(),
        name=str(span.get("name") or ""),
        kind=_enum(span.get("kind"), _KIND_NAMES),
        start_ns=int(span.get("startTimeUnixNano") or 0),
        end_ns=int(span.get("endTimeUnixNano") or 0),
        attributes=_json_attributes(span.get("attributes")),
        status_code=_enum(status.get("code"), _STATUS_NAMES),
        status_message=str(status.get("message") or ""),
        span_events=[
            (
                str(_object(e).get("name") or ""),
                int(_object(e).get("timeUnixNano") or 0),
                _json_attributes(_object(e).get("attributes")),
            )
            for e in span.get("events") or []
        ],
        now_ms=now_ms,
    )


# OTLP/JSON gives enums as numbers; protobuf's canonical JSON, as names: both are read.
_KIND_NAMES = {f"SPAN_KIND_{name.upper()}": number for number, name in SPAN_KINDS.items()}
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _enum(value: Any, names: dict[str, int]) -> int:
    if isinstance(value, str) and value in names:
        return names[value]
    return int(value or 0)


def _list(document: Any, key: str, where: str) -> list[Any]:
    if not isinstance(document, dict):
        raise OTLPError(f"{where} must be an object with {key!r}")
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise OTLPError(f"{where}.{key} must be a list")
    return value


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _json_attributes(pairs: Any) -> dict[str, Any]:
    if not isinstance(pairs, list):
        return {}
    return {
        str(pair.get("key")): _json_value(pair.get("value"))
        for pair in pairs
        if isinstance(pair, dict) and pair.get("key") is not None
    }


def _json_value(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    kind, inner = next(iter(value.items()))
    if kind == "intValue":
        return int(inner)
    if kind == "doubleValue":
        return float(inner)
    if kind == "arrayValue":
        return [_json_value(item) for item in _object(inner).get("values") or []]
    if kind == "kvlistValue":
        return _json_attributes(_object(inner).get("values"))
    if kind == "bytesValue":
        return base64.b64decode(str(inner)).hex()
    return inner  # stringValue, boolValue
