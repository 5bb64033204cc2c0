"""evkit.protocol with plain values: client messages, encoding, connect parameters, refusals."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evkit.exceptions import InvalidEventError, InvalidPatternError, ProtocolError
from evkit.protocol import (
    ERROR,
    MAX_PAYLOAD_DEPTH,
    UNSET,
    Auth,
    BatchOptions,
    ConnectRequest,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    connect_query,
    credential,
    decode_client_message,
    encode,
    encode_event,
    encode_message,
    error_from,
    error_message,
    now_ms,
    parse_connect,
    refusal,
    stream_event_format,
    validate_correlation_id,
    validate_event_type,
    with_query,
)

EXPECTED_TYPES = ["subscribe", "unsubscribe", "ping", "publish", "auth"]


def message(type_: Any, payload: Any = None, **extra: Any) -> bytes:
    return orjson.dumps({"type": type_, "timestamp": 1, "payload": payload, **extra})


def rejected(data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_client_message(data)
    return caught.value


# subscribe


def test_subscribe_from_the_seed_client() -> None:
    decoded = decode_client_message(
        message(
            "subscribe",
            {
                "eventTypes": ["claude.*", "repo.commit.created", "performance.*"],
                "correlationId": "optional-id",
            },
        )
    )
    assert decoded == Subscribe(
        event_types=["claude.*", "repo.commit.created", "performance.*"],
        correlation_id="optional-id",
        replace=False,
        since=None,
        batch=None,
    )


def test_subscribe_without_correlation_key_leaves_filter_unset() -> None:
    decoded = decode_client_message(message("subscribe", {"eventTypes": ["*"]}))
    assert isinstance(decoded, Subscribe)
    assert decoded.correlation_id is UNSET
    assert decoded.event_types == ["*"]
    assert decoded.replace is False
    assert decoded.since is None
    assert decoded.batch is None


def test_subscribe_with_null_correlation_clears_the_filter() -> None:
    decoded = decode_client_message(
        message("subscribe", {"eventTypes": ["*"], "correlationId": None})
    )
    assert isinstance(decoded, Subscribe)
    assert decoded.correlation_id is None
    assert decoded.correlation_id is not UNSET


def test_unset_is_a_falsy_singleton() -> None:
    assert repr(UNSET) == "UNSET"
    assert not UNSET
    assert type(UNSET)() is UNSET


def test_subscribe_with_only_a_correlation_id_changes_just_the_filter() -> None:
    decoded = decode_client_message(message("subscribe", {"correlationId": "req-7"}))
    assert decoded == Subscribe(event_types=[], correlation_id="req-7")


def test_subscribe_dedupes_patterns_keeping_order() -> None:
    decoded = decode_client_message(message("subscribe", {"eventTypes": ["b.*", "a.*", "b.*"]}))
    assert isinstance(decoded, Subscribe)
    assert decoded.event_types == ["b.*", "a.*"]


def test_subscribe_with_replace_since_and_batch() -> None:
    decoded = decode_client_message(
        message(
            "subscribe",
            {
                "eventTypes": ["repo.*"],
                "replace": True,
                "since": "1042",
                "batch": {"maxEvents": 50, "maxDelayMs": 20},
            },
        )
    )
    assert decoded == Subscribe(
        event_types=["repo.*"],
        correlation_id=UNSET,
        replace=True,
        since="1042",
        batch=BatchOptions(max_events=50, max_delay_ms=20.0),
    )
    assert isinstance(decoded, Subscribe)
    assert decoded.batch is not None
    assert isinstance(decoded.batch.max_delay_ms, float)


@pytest.mark.parametrize(
    ("since", "expected"),
    [(0, "0"), (1042, "1042"), ("1042", "1042"), ("x" * 64, "x" * 64), (None, None)],
)
def test_subscribe_since_accepted_forms(since: object, expected: str | None) -> None:
    decoded = decode_client_message(message("subscribe", {"eventTypes": ["*"], "since": since}))
    assert isinstance(decoded, Subscribe)
    assert decoded.since == expected


@pytest.mark.parametrize(
    "batch",
    [
        {"maxEvents": 1, "maxDelayMs": 0},
        {"maxEvents": 10_000, "maxDelayMs": 10_000},
        {"maxEvents": 5, "maxDelayMs": 2.5},
    ],
)
def test_subscribe_batch_bounds_accepted(batch: dict[str, Any]) -> None:
    decoded = decode_client_message(message("subscribe", {"eventTypes": ["*"], "batch": batch}))
    assert isinstance(decoded, Subscribe)
    assert decoded.batch == BatchOptions(batch["maxEvents"], float(batch["maxDelayMs"]))


def test_subscribe_batch_null_means_no_batching() -> None:
    decoded = decode_client_message(message("subscribe", {"eventTypes": ["*"], "batch": None}))
    assert isinstance(decoded, Subscribe)
    assert decoded.batch is None


# unsubscribe, ping, publish, auth


def test_unsubscribe() -> None:
    decoded = decode_client_message(
        message("unsubscribe", {"eventTypes": ["claude.*", "repo.*", "claude.*"]})
    )
    assert decoded == Unsubscribe(["claude.*", "repo.*"])


@pytest.mark.parametrize(
    "payload", [{"n": 1}, "hello", 42, [1, "two"], None, True, {"nested": {"a": [1]}}]
)
def test_ping_echoes_any_payload(payload: Any) -> None:
    assert decode_client_message(message("ping", payload)) == Ping(payload)


def test_ping_without_payload_gives_none() -> None:
    assert decode_client_message(b'{"type": "ping"}') == Ping(None)


def test_decode_accepts_str_as_well_as_bytes() -> None:
    assert decode_client_message('{"type": "ping", "payload": "é"}') == Ping("é")


def test_publish_single_event() -> None:
    decoded = decode_client_message(
        message(
            "publish",
            {"type": "repo.commit.created", "payload": {"path": "/src", "correlationId": "r"}},
        )
    )
    assert decoded == Publish([("repo.commit.created", {"path": "/src", "correlationId": "r"})])


def test_publish_event_without_payload_gets_an_empty_one() -> None:
    decoded = decode_client_message(message("publish", {"type": "a.b"}))
    assert decoded == Publish([("a.b", {})])


def test_publish_list_of_events_keeps_order() -> None:
    decoded = decode_client_message(
        message(
            "publish",
            [
                {"type": "a.started", "payload": {"n": 1}},
                {"type": "a.completed", "payload": {"n": 2, "correlationId": None}},
            ],
        )
    )
    assert decoded == Publish(
        [("a.started", {"n": 1}), ("a.completed", {"n": 2, "correlationId": None})]
    )


def test_auth() -> None:
    assert decode_client_message(message("auth", {"token": "s3cret"})) == Auth("s3cret")


def test_decoded_messages_are_immutable() -> None:
    decoded = decode_client_message(message("auth", {"token": "s3cret"}))
    assert isinstance(decoded, Auth)
    with pytest.raises(AttributeError):
        decoded.token = "other"  # type: ignore[misc]


# errors: invalid_json


@pytest.mark.parametrize(
    ("data", "position"), [(b"{", 1), (b"", 0), (b"nope", 0), (b'{"type": }', 9), ('"ab', 3)]
)
def test_invalid_json(data: str | bytes, position: int) -> None:
    error = rejected(data)
    assert error.code == "invalid_json"
    assert error.error.startswith("message is not valid JSON: ")
    assert error.detail == {"position": position}


# errors: invalid_message


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"[]", "message must be a JSON object with 'type' and 'payload', got list []"),
        (b'"ping"', "message must be a JSON object with 'type' and 'payload', got str 'ping'"),
        (b"42", "message must be a JSON object with 'type' and 'payload', got int 42"),
        (b"null", "message must be a JSON object with 'type' and 'payload', got NoneType None"),
    ],
)
def test_message_not_an_object(data: bytes, error: str) -> None:
    exc = rejected(data)
    assert exc.code == "invalid_message"
    assert exc.error == error
    assert exc.detail is None


@pytest.mark.parametrize(
    ("data", "got"),
    [
        (b'{"payload": {}}', "NoneType None"),
        (b'{"type": 3, "payload": {}}', "int 3"),
        (b'{"type": ["ping"]}', "list ['ping']"),
        (b'{"type": null}', "NoneType None"),
    ],
)
def test_message_type_missing_or_not_a_string(data: bytes, got: str) -> None:
    exc = rejected(data)
    assert exc.code == "invalid_message"
    assert exc.error == f"message 'type' must be a string, got {got}"
    assert exc.detail == {"field": "type"}


@pytest.mark.parametrize(
    ("type_", "payload", "got"),
    [
        ("subscribe", ["claude.*"], "list ['claude.*']"),
        ("subscribe", None, "NoneType None"),
        ("unsubscribe", "claude.*", "str 'claude.*'"),
        ("auth", "token", "str 'token'"),
        ("auth", None, "NoneType None"),
    ],
)
def test_payload_not_an_object(type_: str, payload: Any, got: str) -> None:
    exc = rejected(message(type_, payload))
    assert exc.code == "invalid_message"
    assert exc.error == f"{type_} needs an object payload, got {got}"
    assert exc.detail == {"field": "payload"}


def test_payload_missing_for_subscribe() -> None:
    exc = rejected(b'{"type": "subscribe"}')
    assert exc.code == "invalid_message"
    assert exc.error == "subscribe needs an object payload, got NoneType None"


@pytest.mark.parametrize(
    ("type_", "payload"),
    [
        ("subscribe", {}),
        ("subscribe", {"replace": True}),
        ("unsubscribe", {}),
        ("unsubscribe", {"correlationId": "r"}),
    ],
)
def test_event_types_missing(type_: str, payload: dict[str, Any]) -> None:
    exc = rejected(message(type_, payload))
    assert exc.code == "invalid_message"
    assert exc.error == f"{type_} needs payload.eventTypes, a list of patterns"
    assert exc.detail == {"field": "eventTypes"}


@pytest.mark.parametrize(
    ("type_", "event_types", "got"),
    [
        ("subscribe", "claude.*", "str 'claude.*'"),
        ("subscribe", {"claude.*": 1}, "dict {'claude.*': 1}"),
        ("subscribe", None, "NoneType None"),
        ("unsubscribe", 5, "int 5"),
    ],
)
def test_event_types_not_a_list(type_: str, event_types: Any, got: str) -> None:
    exc = rejected(message(type_, {"eventTypes": event_types}))
    assert exc.code == "invalid_message"
    assert exc.error == f"payload.eventTypes must be a list of patterns, got {got}"
    assert exc.detail == {"field": "eventTypes"}


@pytest.mark.parametrize(
    ("correlation_id", "got"),
    [(7, "int 7"), ("", "str ''"), (["r"], "list ['r']"), (True, "bool True"), ("r" * 257, None)],
)
def test_correlation_id_wrong_type_or_empty(correlation_id: Any, got: str | None) -> None:
    exc = rejected(message("subscribe", {"eventTypes": ["*"], "correlationId": correlation_id}))
    assert exc.code == "invalid_message"
    assert exc.error.startswith(
        "correlationId must be a non-empty string of at most 256 characters, "
        "or null to clear it; got "
    )
    if got is not None:
        assert exc.error.endswith(f"; got {got}")
    assert exc.detail == {"field": "correlationId"}


def test_correlation_id_of_256_characters_is_accepted() -> None:
    decoded = decode_client_message(
        message("subscribe", {"eventTypes": ["*"], "correlationId": "r" * 256})
    )
    assert isinstance(decoded, Subscribe)
    assert decoded.correlation_id == "r" * 256


@pytest.mark.parametrize(
    ("replace", "got"), [("yes", "str 'yes'"), (1, "int 1"), (None, "NoneType None")]
)
def test_replace_not_a_bool(replace: Any, got: str) -> None:
    exc = rejected(message("subscribe", {"eventTypes": ["*"], "replace": replace}))
    assert exc.code == "invalid_message"
    assert exc.error == f"replace must be true or false, got {got}"
    assert exc.detail == {"field": "replace"}


@pytest.mark.parametrize("since", [-1, 1.5, True, "", "x" * 65, ["1"], {"id": "1"}])
def test_since_wrong_type(since: Any) -> None:
    exc = rejected(message("subscribe", {"eventTypes": ["*"], "since": since}))
    assert exc.code == "invalid_message"
    assert exc.error.startswith(
        "since must be an event id (a string, as received in an event's 'id'), got "
    )
    assert exc.detail == {"field": "since"}


@pytest.mark.parametrize(
    "batch",
    [
        5,
        "fast",
        [],
        {},
        {"maxEvents": 10},
        {"maxDelayMs": 10},
        {"maxEvents": 0, "maxDelayMs": 10},
        {"maxEvents": 10_001, "maxDelayMs": 10},
        {"maxEvents": 10, "maxDelayMs": -1},
        {"maxEvents": 10, "maxDelayMs": 10_001},
        {"maxEvents": 2.0, "maxDelayMs": 10},
        {"maxEvents": True, "maxDelayMs": 10},
        {"maxEvents": 10, "maxDelayMs": False},
        {"maxEvents": 10, "maxDelayMs": "10"},
    ],
)
def test_batch_malformed(batch: Any) -> None:
    exc = rejected(message("subscribe", {"eventTypes": ["*"], "batch": batch}))
    assert exc.code == "invalid_message"
    assert exc.error.startswith(
        "batch must be {'maxEvents': 1..10000, 'maxDelayMs': 0..10000}, got "
    )
    assert exc.detail == {"field": "batch"}


@pytest.mark.parametrize(
    ("token", "payload"),
    [("missing", {}), ("empty", {"token": ""}), ("number", {"token": 123})],
)
def test_auth_token_missing_or_not_a_string(token: str, payload: dict[str, Any]) -> None:
    exc = rejected(message("auth", payload))
    assert exc.code == "invalid_message", token
    assert exc.error == "auth needs payload.token, a non-empty string"
    assert exc.detail == {"field": "token"}


# errors: unknown_type


@pytest.mark.parametrize("type_", ["subscribed", "SUBSCRIBE", "", "websocket.connected", "pong"])
def test_unknown_type(type_: str) -> None:
    exc = rejected(message(type_, {}))
    assert exc.code == "unknown_type"
    assert exc.error == (
        f"unknown message type {type_!r}; expected one of "
        "subscribe, unsubscribe, ping, publish, auth"
    )
    assert exc.detail == {"type": type_, "expected": EXPECTED_TYPES}


def test_unknown_type_is_truncated_to_64_characters() -> None:
    exc = rejected(message("x" * 100, {}))
    assert exc.code == "unknown_type"
    assert exc.detail == {"type": "x" * 64, "expected": EXPECTED_TYPES}
    assert "x" * 65 not in exc.error


# errors: invalid_pattern


def test_one_bad_pattern_among_good_ones_rejects_the_whole_subscribe() -> None:
    exc = rejected(message("subscribe", {"eventTypes": ["claude.*", "repo.*", "bad pattern!"]}))
    assert isinstance(exc, InvalidPatternError)
    assert exc.code == "invalid_pattern"
    assert exc.error.startswith("eventTypes[2]: pattern 'bad pattern!' contains ' !'; ")
    assert exc.detail == {"index": 2, "pattern": "bad pattern!", "invalid": [" ", "!"]}


@pytest.mark.parametrize(
    ("event_types", "index"),
    [([""], 0), (["*", 5], 1), (["a.*", "b.*", "c" * 257], 2), (["a", "b", None], 2)],
)
def test_invalid_pattern_in_subscribe_and_unsubscribe(event_types: list[Any], index: int) -> None:
    for type_ in ("subscribe", "unsubscribe"):
        exc = rejected(message(type_, {"eventTypes": event_types}))
        assert exc.code == "invalid_pattern"
        assert exc.error.startswith(f"eventTypes[{index}]: ")
        assert exc.detail["index"] == index


# errors: invalid_event


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (None, "an event must be an object with 'type' and 'payload', got NoneType None"),
        ("a.b", "an event must be an object with 'type' and 'payload', got str 'a.b'"),
        ({"payload": {}}, "event type must be a string, got NoneType"),
        ({"type": 5}, "event type must be a string, got int"),
        (
            {"type": "bad type"},
            "event type 'bad type' is not a dotted name like 'service.entity.action' "
            "(letters, digits, '_' and '-' between dots, at most 256 characters)",
        ),
        ({"type": "a.b", "payload": [1]}, "payload must be an object, got list [1]"),
        ({"type": "a.b", "payload": None}, "payload must be an object, got NoneType None"),
        (
            {"type": "a.b", "payload": {"correlationId": 5}},
            "payload.correlationId must be a string, got int 5",
        ),
    ],
)
def test_publish_single_bad_event(payload: Any, error: str) -> None:
    exc = rejected(message("publish", payload))
    assert exc.code == "invalid_event"
    assert exc.error == error
    assert exc.detail == {"index": None}


def test_publish_bad_event_in_a_list_names_its_index() -> None:
    exc = rejected(
        message(
            "publish",
            [{"type": "a.b"}, {"type": "a.c", "payload": {}}, {"type": "a..d", "payload": {}}],
        )
    )
    assert exc.code == "invalid_event"
    assert exc.error.startswith("event[2]: event type 'a..d' is not a dotted name")
    assert exc.detail == {"index": 2}


def test_publish_non_object_in_a_list_names_its_index() -> None:
    exc = rejected(message("publish", [{"type": "a.b"}, 7]))
    assert exc.code == "invalid_event"
    assert exc.error == (
        "event[1]: an event must be an object with 'type' and 'payload', got int 7"
    )
    assert exc.detail == {"index": 1}


def test_publish_bad_payload_in_a_list_names_its_index() -> None:
    exc = rejected(message("publish", [{"type": "a.b", "payload": "text"}]))
    assert exc.code == "invalid_event"
    assert exc.error == "event[0]: payload must be an object, got str 'text'"
    assert exc.detail == {"index": 0}


def test_publish_empty_list() -> None:
    exc = rejected(message("publish", []))
    assert exc.code == "invalid_event"
    assert exc.error == "publish needs at least one event"


# encoding


@given(
    st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){2}", fullmatch=True),
    st.integers(min_value=0, max_value=1 << 53),
    st.integers(min_value=0, max_value=1 << 45),
    st.integers(min_value=0, max_value=(1 << 32) - 1),
    st.dictionaries(
        st.text(max_size=5), st.integers(-(1 << 53), 1 << 53) | st.text(max_size=5), max_size=3
    ),
)
def test_stream_event_format_frames_exactly_as_encode_event(
    type_: str, timestamp: int, ms: int, sequence: int, payload: dict[str, Any]
) -> None:
    payload_json = orjson.dumps(payload)
    frame = stream_event_format(b"%d" % ms) % (type_.encode(), timestamp, sequence, payload_json)
    assert frame == encode_event(type_, timestamp, f"{ms}-{sequence}", payload_json)


def test_encode_event_parses_to_the_exact_dict_in_wire_key_order() -> None:
    payload_json = orjson.dumps({"correlationId": "req-7", "path": "/src", "commitHash": "ab12"})
    frame = encode_event("repo.commit.created", 1732612345678, "1042", payload_json)
    assert isinstance(frame, bytes)
    decoded = orjson.loads(frame)
    assert decoded == {
        "type": "repo.commit.created",
        "timestamp": 1732612345678,
        "id": "1042",
        "payload": {"correlationId": "req-7", "path": "/src", "commitHash": "ab12"},
    }
    assert list(decoded) == ["type", "timestamp", "id", "payload"]
    assert list(decoded["payload"]) == ["correlationId", "path", "commitHash"]
    assert isinstance(decoded["timestamp"], int)


def test_encode_message_shape_and_order() -> None:
    frame = encode_message("pong", {"echo": {"n": 1}}, timestamp=1700000000000)
    decoded = orjson.loads(frame)
    assert decoded == {"type": "pong", "timestamp": 1700000000000, "payload": {"echo": {"n": 1}}}
    assert list(decoded) == ["type", "timestamp", "payload"]


def test_encode_message_stamps_now_when_no_timestamp() -> None:
    before = now_ms()
    decoded = orjson.loads(encode_message("websocket.connected", {}))
    after = now_ms()
    assert before <= decoded["timestamp"] <= after
    assert isinstance(decoded["timestamp"], int)


def test_now_ms_is_epoch_milliseconds() -> None:
    import time

    assert abs(now_ms() - time.time() * 1000) < 1000


def test_error_message_for_a_rejected_message() -> None:
    exc = rejected(message("subscribe", {"eventTypes": "claude.*"}))
    decoded = orjson.loads(error_message(exc))
    assert decoded["type"] == ERROR == "websocket.error"
    assert isinstance(decoded["timestamp"], int)
    assert decoded["payload"] == {
        "error": "payload.eventTypes must be a list of patterns, got str 'claude.*'",
        "code": "invalid_message",
        "detail": {"field": "eventTypes"},
    }
    assert list(decoded["payload"]) == ["error", "code", "detail"]


def test_error_message_for_a_pattern_error() -> None:
    decoded = orjson.loads(error_message(InvalidPatternError("nope", {"index": 0})))
    assert decoded["payload"] == {
        "error": "nope",
        "code": "invalid_pattern",
        "detail": {"index": 0},
    }


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


def test_encode_values_json_cannot_represent_does_not_raise() -> None:
    value = {
        "set": {3},
        "frozen": frozenset({"x"}),
        "decimal": decimal.Decimal("1.50"),
        "aware": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        "naive": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "object": Opaque(),
        7: "int key",
        "nested": [{"inner": {decimal.Decimal("2")}}],
    }
    assert orjson.loads(encode(value)) == {
        "set": [3],
        "frozen": ["x"],
        "decimal": "1.50",
        "aware": "2024-01-02T03:04:05+00:00",
        "naive": "2024-01-02T03:04:05",
        "object": "opaque!",
        "7": "int key",
        "nested": [{"inner": ["2"]}],
    }


def test_encode_cyclic_structure_raises_invalid_event_error() -> None:
    cyclic: dict[str, Any] = {"a": 1}
    cyclic["self"] = cyclic
    with pytest.raises(InvalidEventError, match=r"^payload cannot be serialised to JSON: "):
        encode(cyclic)


def test_encode_integer_beyond_64_bits_raises_invalid_event_error() -> None:
    with pytest.raises(InvalidEventError, match="cannot be serialised"):
        encode({"n": 2**70})


def test_encode_message_with_cyclic_payload_raises_invalid_event_error() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(InvalidEventError):
        encode_message("x.y", cyclic, timestamp=1)


# validate_event_type / validate_correlation_id


@pytest.mark.parametrize(
    "type_",
    ["repo.commit.created", "a", "a-b_c.D9", "performance.slowOperation.detected", "x" * 256],
)
def test_validate_event_type_accepts_dotted_names(type_: str) -> None:
    assert validate_event_type(type_) is type_


@pytest.mark.parametrize(
    "type_",
    ["", ".a", "a.", "a..b", "a b", "a.*", "a.?", "x" * 257, "é.a", "a.b\n"],
)
def test_validate_event_type_rejects_malformed_names(type_: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        validate_event_type(type_)
    assert str(caught.value) == (
        f"event type {type_[:80]!r} is not a dotted name like 'service.entity.action' "
        "(letters, digits, '_' and '-' between dots, at most 256 characters)"
    )
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("type_", "name"), [(None, "NoneType"), (5, "int"), (b"a.b", "bytes")])
def test_validate_event_type_rejects_non_strings(type_: object, name: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        validate_event_type(type_)
    assert str(caught.value) == f"event type must be a string, got {name}"


def test_validate_correlation_id() -> None:
    assert validate_correlation_id(None) is None
    assert validate_correlation_id("req-7") == "req-7"
    with pytest.raises(ProtocolError) as caught:
        validate_correlation_id("", field="x-correlation-id")
    assert caught.value.code == "invalid_message"
    assert caught.value.error.startswith("x-correlation-id must be a non-empty string")
    assert caught.value.detail == {"field": "x-correlation-id"}


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = {"l": value} if level % 2 else [value]
    return value


def test_payloads_nested_past_the_limit_are_refused_before_anything_happens() -> None:
    ok = nested(MAX_PAYLOAD_DEPTH)
    assert decode_client_message(orjson.dumps({"type": "ping", "payload": ok})) == Ping(ok)
    too_deep = nested(MAX_PAYLOAD_DEPTH + 1)
    with pytest.raises(ProtocolError) as info:
        decode_client_message(orjson.dumps({"type": "ping", "payload": too_deep}))
    assert info.value.code == "invalid_message"
    assert f"more than {MAX_PAYLOAD_DEPTH} levels" in info.value.error
    event = {"type": "a.b", "payload": {"deep": nested(MAX_PAYLOAD_DEPTH)}}
    with pytest.raises(ProtocolError) as info:
        decode_client_message(orjson.dumps({"type": "publish", "payload": [event]}))
    assert info.value.code == "invalid_event"
    assert info.value.detail == {"index": 0, "maxDepth": MAX_PAYLOAD_DEPTH}


# -- connect parameters, both ways -------------------------------------------------------------


def test_a_client_query_reads_back_as_the_same_request() -> None:
    query = connect_query(["repo.*", "claude.*"], "req-7", since="42", epoch="e1", batch=(100, 5))
    request = parse_connect(query, {}, 128, int)
    assert request == ConnectRequest(
        ["repo.*", "claude.*"], "req-7", "42", "e1", BatchOptions(100, 5.0), explicit_patterns=True
    )
    assert parse_connect("", {"x-correlation-id": "hdr"}, 128, int).correlation_id == "hdr"
    assert parse_connect("", {}, 128, int) == ConnectRequest(["*"])
    assert with_query("ws://h/ws/events", "a=1") == "ws://h/ws/events?a=1"
    assert with_query("ws://h/ws/events?t=1", "a=1") == "ws://h/ws/events?t=1&a=1"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("eventTypes=a%20b", "invalid_pattern"),
        ("eventTypes=a,b,c", "too_many_subscriptions"),
        ("since=nope", "invalid_message"),
        ("batch=3", "invalid_message"),
    ],
)
def test_bad_connect_parameters_are_refused_with_a_code(query: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_connect(query, {}, 2, int)
    assert info.value.code == code


def test_credentials_from_the_bearer_header_then_the_query() -> None:
    assert credential({"Authorization": "Bearer abc"}, "token=def") == "abc"
    assert credential({"authorization": "bearer abc"}, "") == "abc"
    assert credential({}, "token=def") == "def"
    assert credential({"Authorization": "Basic abc"}, "") is None


def test_a_refused_handshake_reads_as_one_sentence_and_one_error() -> None:
    refused = refusal(401, "Unauthorized", b'{"error": "token expired", "code": "unauthorized"}')
    assert refused.permanent
    assert refused.describe() == (
        "the server refused the connection: HTTP 401 Unauthorized: token expired (check the token)"
    )
    error = refused.as_error()
    assert (error.code, error.detail) == ("unauthorized", {"status": 401})
    busy = refusal(503, "Service Unavailable", b"not json")
    assert not busy.permanent
    assert busy.error == "not json"
    assert error_from({"code": "forbidden", "error": "no"}).code == "forbidden"
