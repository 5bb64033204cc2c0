"""evkit.otel.convert and evkit.otel.propagation with plain values and real OTLP messages."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from evkit.bus import Event
from evkit.context import correlation, current_correlation_id, current_span_id, span
from evkit.otel import (
    continue_trace,
    inject,
    new_trace_id,
    parse_traceparent,
    span_type,
    trace_id_of,
    traceparent,
)
from evkit.otel.convert import OTLPError, events_from_json, events_from_request, span_event

NOW = 1_800_000_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
PARENT = "a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("service", "name", "failed", "expected"),
    [
        ("checkout", "GET /users/:id", False, "checkout.GET_users_id.completed"),
        ("checkout", "graphql.query", True, "checkout.graphql.query.failed"),
        ("my.service", "SELECT users", False, "my-service.SELECT_users.completed"),
        ("", "", False, "unknown_service.span.completed"),
        ("unknown_service:python", "x..y", False, "unknown_service-python.x.y.completed"),
    ],
)
def test_span_types_are_valid_event_types(
    service: str, name: str, failed: bool, expected: str
) -> None:
    assert span_type(service, name, failed) == expected


def test_a_very_long_span_name_still_makes_a_type_within_the_limit() -> None:
    assert len(span_type("s" * 300, "n" * 500, True)) <= 256


def one(**overrides: Any) -> Event | str:
    fields: dict[str, Any] = {
        "service": "checkout",
        "resource": {"host.name": "h1"},
        "scope": "app",
        "trace_id": TRACE,
        "span_id": SPAN,
        "parent_span_id": PARENT,
        "name": "charge card",
        "kind": 3,
        "start_ns": (NOW - 250) * 1_000_000 + 500,
        "end_ns": NOW * 1_000_000 + 500,
        "attributes": {"http.method": "POST", "duration": "clash"},
        "status_code": 0,
        "status_message": "",
        "span_events": [],
        "now_ms": NOW,
    }
    fields.update(overrides)
    return span_event(**fields)


def test_a_span_becomes_one_finished_operation_at_its_own_end_time() -> None:
    event = one()
    assert isinstance(event, Event)
    assert event.type == "checkout.charge_card.completed"
    assert event.timestamp == NOW
    assert event.payload == {
        "correlationId": TRACE,
        "spanId": SPAN,
        "parentSpanId": PARENT,
        "duration": 250.0,
        "kind": "client",
        "service": "checkout",
        "source": "otel",
        "scope": "app",
        "resource": {"host.name": "h1"},
        "http.method": "POST",
        "attributes": {"duration": "clash"},  # an attribute never hides a span field
    }


def test_a_failed_span_carries_its_exception() -> None:
    exception = (
        "exception",
        NOW * 1_000_000,
        {"exception.type": "CardDeclined", "exception.message": "no"},
    )
    event = one(status_code=2, status_message="declined", span_events=[exception])
    assert isinstance(event, Event)
    assert event.type.endswith(".failed")
    assert (event.payload["errorType"], event.payload["errorMessage"]) == ("CardDeclined", "no")
    assert event.payload["events"] == [
        {"name": "exception", "timestamp": NOW, "attributes": dict(exception[2])}
    ]
    assert event.payload["statusMessage"] == "declined"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"trace_id": "00" * 16}, "trace id"),
        ({"trace_id": "abc"}, "trace id"),
        ({"span_id": "zz" * 8}, "span id"),
        ({"parent_span_id": "123"}, "parent span id"),
        ({"start_ns": NOW * 1_000_000 + 1, "end_ns": NOW * 1_000_000}, "ends before"),
        ({"end_ns": (NOW + 2 * 86_400_000) * 1_000_000}, "a day ahead"),
    ],
)
def test_a_span_that_cannot_be_an_event_is_refused_with_a_reason(
    overrides: dict[str, Any], reason: str
) -> None:
    result = one(**overrides)
    assert isinstance(result, str)
    assert reason in result


def request_message() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "api"
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests"
    good = scope_spans.spans.add()
    good.trace_id = bytes.fromhex(TRACE)
    good.span_id = bytes.fromhex(SPAN)
    good.name = "work"
    good.kind = 2
    good.start_time_unix_nano = (NOW - 10) * 1_000_000
    good.end_time_unix_nano = NOW * 1_000_000
    good.attributes.add(key="n").value.int_value = 7
    good.attributes.add(key="tags").value.array_value.values.add().string_value = "a"
    good.attributes.add(key="raw").value.bytes_value = b"\x01\x02"
    bad = scope_spans.spans.add()
    bad.name = "no ids"
    return request


def test_a_protobuf_request_keeps_the_good_spans_and_says_why_others_were_refused() -> None:
    request = ExportTraceServiceRequest()
    request.ParseFromString(request_message().SerializeToString())
    events, refused = events_from_request(request, NOW)
    assert [e.type for e in events] == ["api.work.completed"]
    payload = events[0].payload
    assert (payload["n"], payload["tags"], payload["raw"], payload["kind"]) == (
        7,
        ["a"],
        "0102",
        "server",
    )
    assert "parentSpanId" not in payload  # a root span
    assert len(refused) == 1
    assert "trace id" in refused[0]


def test_json_spans_read_as_the_protobuf_ones() -> None:
    document = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "tests"},
                        "spans": [
                            {
                                "traceId": TRACE.upper(),
                                "spanId": SPAN,
                                "name": "work",
                                "kind": "SPAN_KIND_SERVER",  # a name, as canonical JSON has it
                                "startTimeUnixNano": str((NOW - 10) * 1_000_000),
                                "endTimeUnixNano": str(NOW * 1_000_000),
                                "attributes": [
                                    {"key": "n", "value": {"intValue": "7"}},
                                    {
                                        "key": "tags",
                                        "value": {"arrayValue": {"values": [{"stringValue": "a"}]}},
                                    },
                                    {
                                        "key": "raw",
                                        "value": {
                                            "bytesValue": base64.b64encode(b"\x01\x02").decode()
                                        },
                                    },
                                    {
                                        "key": "kv",
                                        "value": {
                                            "kvlistValue": {
                                                "values": [
                                                    {"key": "x", "value": {"doubleValue": 1.5}}
                                                ]
                                            }
                                        },
                                    },
                                ],
                            },
                            {"name": "no ids"},
                            "not a span",
                        ],
                    }
                ],
            }
        ]
    }
    events, refused = events_from_json(document, NOW)
    protobuf, _ = events_from_request(request_message(), NOW)
    assert events[0].type == protobuf[0].type
    assert {k: v for k, v in events[0].payload.items() if k != "kv"} == protobuf[0].payload
    assert events[0].payload["kv"] == {"x": 1.5}
    assert len(refused) == 2


@pytest.mark.parametrize(
    "document", [[], {"resourceSpans": {}}, {"resourceSpans": [{"scopeSpans": 3}]}]
)
def test_a_json_document_of_the_wrong_shape_is_an_error(document: Any) -> None:
    with pytest.raises(OTLPError):
        events_from_json(document, NOW)


# -- trace context ------------------------------------------------------------------------------


def test_a_trace_id_correlation_id_is_the_trace_id_and_others_map_to_a_stable_one() -> None:
    trace = new_trace_id()
    assert trace_id_of(trace) == trace
    derived = trace_id_of("req-7")
    assert derived == trace_id_of("req-7") != trace_id_of("req-8")
    assert len(derived) == 32


def test_traceparent_goes_out_and_comes_back_in() -> None:
    trace = new_trace_id()
    with correlation(trace), span(SPAN):
        headers = inject({})
        assert headers == {"traceparent": f"00-{trace}-{SPAN}-01"}
    assert traceparent() is None  # no correlation: nothing to carry
    with continue_trace({"TraceParent": headers["traceparent"]}) as context:
        assert context is not None
        assert (current_correlation_id(), current_span_id()) == (trace, SPAN)
    assert current_correlation_id() is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"ff-{TRACE}-{SPAN}-01",
        f"00-{'0' * 32}-{SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
    ],
)
def test_a_bad_traceparent_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None
    with continue_trace({"traceparent": value} if value is not None else {}) as context:
        assert context is None
        assert current_correlation_id() is None
