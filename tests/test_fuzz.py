"""Hypothesis fuzzing of client messages against a live broadcaster (DESIGN 1).

One server, one fuzzing connection and one bystander serve a whole test. Each example
sends one frame (arbitrary text, arbitrary bytes, arbitrary JSON, or a near-valid
message with random fields), then a ping with a unique payload, and reads up to the
matching pong within 5 s. What may come before the pong is checked against DESIGN 1:

- every message is well formed (``type``, ``timestamp``, ``payload``; events add ``id``);
- at most one direct reply per frame, of the kind the frame calls for (a rejected
  frame gets exactly one ``websocket.error``, with a code from DESIGN's list);
- events may be interleaved (the fuzzer publishes, and its subscriptions change), and
  so may ``websocket.batch`` and, after an accepted ``subscribe`` with ``since``,
  exactly one ``websocket.replayed``;
- the fuzzer's subscription is modelled from DESIGN 1 (patterns added or replaced,
  ``eventTypes`` = what was added / removed, the correlation filter set or cleared;
  a rejected message changes nothing): every ``websocket.subscribed`` /
  ``unsubscribed`` must agree with the model, every event received must be one the
  model routes (DESIGN 1.3), and a probe event emitted after each frame must arrive
  exactly when the model routes it.

The bystander, subscribed to ``fuzz.check.*``, must keep receiving: every 100 examples a
``fuzz.check.tick`` is emitted and must reach it.

Knobs: ``EVKIT_FUZZ_EXAMPLES`` sets the number of examples (default 2,000, derandomized
so CI runs the same inputs every time; ``EVKIT_FUZZ_RANDOM=1`` draws new ones).
``EVKIT_FUZZ_LONG=1`` also runs the long, randomized variant (``EVKIT_FUZZ_EXAMPLES`` or
20,000 examples), which is marked slow.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import evkit

ERROR_CODES = frozenset(
    {
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "invalid_pattern",
        "too_many_subscriptions",
        "unauthorized",
        "forbidden",
        "rate_limited",
        "invalid_event",
    }
)
KNOWN_TYPES = ("subscribe", "unsubscribe", "ping", "publish", "auth")
SYSTEM_TYPES = frozenset(
    {
        "websocket.subscribed",
        "websocket.unsubscribed",
        "websocket.error",
        "websocket.replayed",
        "websocket.gap",
        "websocket.batch",
        "pong",
    }
)
# Messages that are not a reply to one frame: they may come at any time.
STREAM_TYPES = frozenset({"websocket.batch", "websocket.replayed", "websocket.gap"})
GAP_REASONS = frozenset({"trimmed", "epoch", "lost", "unknown_position", "unavailable"})
REPLY_TIMEOUT = 5.0
MAX_MESSAGE_SIZE = 64 * 1024  # the server's default max_message_size
LARGEST_FUZZ_FRAME = 60_000  # generated frames stay below it: past it the connection closes
TICK_EVERY = 100
# No keep-alive pings anywhere: websockets draws their payloads from the random module on
# other threads, which Hypothesis would take for a strategy using it. The fuzzer sends
# three messages per example, far above a per-client message rate limit: that limit is
# lifted (where the server has one) so every frame is judged on its content.
FUZZ_SERVER_OPTIONS: dict[str, Any] = {
    name: value
    for name, value in {
        "ping_interval": None,
        "messages_per_second": 1_000_000.0,
        "message_burst": 1_000_000,
    }.items()
    if name in {option.name for option in dataclasses.fields(evkit.ServerSettings)}
}


# -- strategies -----------------------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too
    st.floats(),  # NaN and infinities too: json.dumps writes them, they are not JSON
    st.text(max_size=40),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=12), children, max_size=5),
    ),
    max_leaves=20,
)


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``valid`` about three times in four: near-valid messages must often be valid."""
    # (one_of(valid, valid, valid, invalid) would not do: one_of drops repeated strategies.)
    return st.integers(0, 3).flatmap(lambda k: invalid if k == 3 else valid)


patterns = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.*?-]{1,24}", fullmatch=True),
    st.sampled_from(["*", "fuzz.*", "fuzz.check.*", "*.completed", "a.?", "", "a b", "x" * 257]),
    st.text(max_size=12),
    json_values,
)
valid_patterns = st.lists(
    st.one_of(
        st.from_regex(r"[A-Za-z0-9_.*?-]{1,24}", fullmatch=True),
        st.sampled_from(["*", "fuzz.*", "fuzz.check.*", "*.completed", "a.?"]),
    ),
    max_size=6,
)
event_type_lists = mostly(valid_patterns, st.one_of(st.lists(patterns, max_size=6), json_values))
event_types = mostly(
    st.from_regex(r"[A-Za-z0-9_-]{1,8}(\.[A-Za-z0-9_-]{1,8}){0,3}", fullmatch=True),
    st.one_of(st.text(max_size=12), json_values),
)
correlation_ids = mostly(
    st.one_of(st.none(), st.text(min_size=1, max_size=12), st.sampled_from(["req-1", "req-2"])),
    st.one_of(st.just(""), st.text(min_size=257, max_size=260), json_values),
)
event_payloads = mostly(
    st.one_of(
        st.dictionaries(st.text(max_size=12), json_values, max_size=4),
        st.fixed_dictionaries({"correlationId": correlation_ids}),
    ),
    json_values,
)
events = st.fixed_dictionaries({"type": event_types}, optional={"payload": event_payloads})
sinces = mostly(
    st.one_of(
        st.none(),
        st.integers(min_value=0, max_value=10**6),
        st.from_regex(r"[0-9]{1,7}", fullmatch=True),
    ),
    st.one_of(st.integers(max_value=-1), st.text(max_size=70), json_values),
)
batches = mostly(
    st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"maxEvents": st.integers(1, 2_000), "maxDelayMs": st.integers(0, 200)}
        ),
    ),
    st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                "maxEvents": st.one_of(st.integers(-5, 20_000), json_values),
                "maxDelayMs": st.one_of(
                    st.integers(-5, 20_000), st.floats(-5, 20_000), json_values
                ),
            },
        ),
        json_values,
    ),
)
subscribe_payloads = st.fixed_dictionaries(
    {"eventTypes": event_type_lists},
    optional={
        "correlationId": correlation_ids,
        "replace": mostly(st.booleans(), json_values),
        "since": sinces,
        "batch": batches,
    },
)
unsubscribe_payloads = st.fixed_dictionaries({"eventTypes": event_type_lists})
publish_payloads = st.one_of(events, st.lists(events, max_size=4), json_values)
auth_payloads = st.fixed_dictionaries(
    {"token": mostly(st.text(min_size=1, max_size=20), st.one_of(st.just(""), json_values))}
)
PAYLOADS_BY_TYPE = {
    "subscribe": subscribe_payloads,
    "unsubscribe": unsubscribe_payloads,
    "ping": json_values,
    "publish": publish_payloads,
    "auth": auth_payloads,
}
any_payload = st.one_of(*PAYLOADS_BY_TYPE.values())


@st.composite
def near_valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    """``{"type", "payload"}`` mostly shaped for its type; sometimes mismatched or mangled."""
    type_ = draw(mostly(st.sampled_from(KNOWN_TYPES), st.one_of(st.text(max_size=12), json_values)))
    message: dict[str, Any] = {"type": type_}
    shape = draw(st.integers(0, 9))
    if shape < 7:
        shaped = PAYLOADS_BY_TYPE.get(type_) if isinstance(type_, str) else None
        message["payload"] = draw(any_payload if shaped is None else shaped)
    elif shape < 9:
        message["payload"] = draw(st.one_of(any_payload, json_values))
    if draw(st.integers(0, 9)) == 0:
        message[draw(st.text(max_size=8))] = draw(json_values)
    return message


def to_json(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


TRICKY = [
    "",
    " ",
    "null",
    "[]",
    "{}",
    '"ping"',
    '{"type": "ping"}',
    '{"type": "ping", "payload": 18446744073709551616}',
    '{"type": "ping", "payload": "\\ud800"}',
    '{"type": "ping", "payload": "\\udc00x"}',
    '{"type": "ping", "payload": 1e400}',
    '{"type": "ping", "payload": {"a": {"b": {"c": [[[[[[]]]]]]}}}}',
    '{"type": "ping", "payload": ' + "[" * 1100 + "]" * 1100 + "}",
    '{"type": "subscribe", "payload": {"eventTypes": ["*"], "since": "0"}}',
    '{"type": "subscribe", "payload": {"eventTypes": [], "correlationId": null}}',
    '{"type": "subscribe", "payload": {"eventTypes": ["*"], "replace": true}}',
    '{"type": "subscribe", "payload": {"eventTypes": ["a.*"], "since": "99999999999999999999"}}',
    '{"type": "subscribe", "payload": {"eventTypes": ["a.*"], "batch": {"maxEvents": 1, "maxDelayMs": 0}}}',
    '{"type": "publish", "payload": []}',
    '{"type": "publish", "payload": {"type": "fuzz.published.event", "payload": {}}}',
    '{"type": "auth", "payload": {"token": "x"}}',
    '{"type": "ping", "payload": 1, "type": "dance"}',
    "\x00",
    "\ufeff{}",
]

junk_frames = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.builds(to_json, json_values, st.booleans()),
    st.sampled_from(TRICKY),
)
near_valid_frames = st.one_of(
    st.builds(to_json, near_valid_messages(), st.booleans()),
    near_valid_messages().map(lambda m: json.dumps(m).encode()),  # JSON in a binary frame
)
# Events the test emits after each frame, to check routing against the model.
probe_types = st.one_of(
    st.sampled_from(["fuzz.probe.event", "a.b", "a.bc", "x.y.completed", "repo.commit.created"]),
    st.from_regex(r"[A-Za-z0-9_-]{1,8}(\.[A-Za-z0-9_-]{1,8}){0,3}", fullmatch=True),
)
probe_correlations = st.one_of(st.none(), st.sampled_from(["req-1", "req-2"]))
# Junk about one frame in four: most frames are messages the server must interpret.
frames = mostly(near_valid_frames, junk_frames)


# -- the oracle -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The direct reply a frame calls for: exactly one of ``kinds``, or also none."""

    kinds: frozenset[str]
    codes: frozenset[str] = frozenset()
    optional: bool = False
    echo: Any = None
    replay: bool = False


def expected_reply(frame: str | bytes) -> Expected:
    """What DESIGN 1 says the server answers to ``frame``."""
    error = frozenset({"websocket.error"})
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return Expected(error, frozenset({"invalid_json"}))
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return Expected(error, frozenset({"invalid_message"}))
    type_ = message["type"]
    payload = message.get("payload")
    if type_ not in KNOWN_TYPES:
        return Expected(error, frozenset({"unknown_type"}))
    if type_ == "ping":
        return Expected(frozenset({"pong"}), echo=payload)
    if type_ == "subscribe":
        return Expected(
            frozenset({"websocket.subscribed", "websocket.error"}),
            frozenset({"invalid_message", "invalid_pattern", "too_many_subscriptions"}),
            replay=isinstance(payload, dict) and payload.get("since") is not None,
        )
    if type_ == "unsubscribe":
        return Expected(
            frozenset({"websocket.unsubscribed", "websocket.error"}),
            frozenset({"invalid_message", "invalid_pattern"}),
        )
    if type_ == "publish":
        codes = frozenset({"invalid_event", "invalid_message", "forbidden", "rate_limited"})
        return Expected(error, codes, optional=True)
    return Expected(error, frozenset({"invalid_message", "unauthorized"}), optional=True)


def check_event(event: Any) -> None:
    assert isinstance(event, dict), event
    assert list(event) == ["type", "timestamp", "id", "payload"], event
    assert isinstance(event["type"], str)
    assert event["type"], event
    assert type(event["timestamp"]) is int, event
    assert isinstance(event["id"], str)
    assert event["id"].isdigit(), event
    assert isinstance(event["payload"], dict), event


def check_message(message: Any) -> None:
    """Well formed per DESIGN 1: an event, or a system message of a known type."""
    assert isinstance(message, dict), message
    if "id" in message:
        check_event(message)
        return
    assert set(message) == {"type", "timestamp", "payload"}, message
    assert type(message["timestamp"]) is int, message
    kind, payload = message["type"], message["payload"]
    assert kind in SYSTEM_TYPES, message
    if kind == "pong":
        assert isinstance(payload, dict), message
        assert set(payload) == {"echo"}, message
        return
    assert isinstance(payload, dict), message
    if kind == "websocket.error":
        assert payload["code"] in ERROR_CODES, message
        assert isinstance(payload["error"], str), message
        assert payload["error"], message
    elif kind == "websocket.batch":
        assert isinstance(payload["events"], list), message
        assert payload["events"], message
        for event in payload["events"]:
            check_event(event)
    elif kind == "websocket.gap":
        assert payload["complete"] is False, message
        assert payload["reason"] in GAP_REASONS, message
    elif kind == "websocket.replayed":
        assert type(payload["count"]) is int, message
        assert payload["count"] >= 0, message
        assert isinstance(payload["complete"], bool), message
    elif kind in ("websocket.subscribed", "websocket.unsubscribed"):
        assert isinstance(payload["eventTypes"], list), message
        assert isinstance(payload["subscriptions"], list), message
        assert all(isinstance(p, str) for p in payload["subscriptions"]), message
        if kind == "websocket.subscribed":
            assert payload["correlationId"] is None or isinstance(payload["correlationId"], str)


Subscription = tuple[list[str], str | None]  # patterns and correlation filter


def events_in(messages: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for message in messages:
        if "id" in message:
            yield message
        elif message["type"] == "websocket.batch":
            yield from message["payload"]["events"]


def routes(event: dict[str, Any], subscriptions: list[str], correlation_id: str | None) -> bool:
    """Whether DESIGN 1.3 routes ``event`` to a client holding this subscription."""
    if correlation_id is not None and event["payload"].get("correlationId") != correlation_id:
        return False
    # Patterns hold only [A-Za-z0-9_-.*?]: fnmatch's * and ? are exactly DESIGN's globs.
    return any(fnmatch.fnmatchcase(event["type"], pattern) for pattern in subscriptions)


# -- the session ----------------------------------------------------------------------------------


@dataclass
class FuzzSession:
    """A server, the fuzzing connection and a bystander, for one whole test."""

    server: evkit.Server
    fuzzer: ClientConnection
    bystander: ClientConnection
    examples: int = 0
    pings: int = 0
    probes: int = 0
    probes_delivered: int = 0
    ticks: int = 0
    replies: dict[str, int] = field(default_factory=dict)
    streamed: dict[str, int] = field(default_factory=dict)
    exchanging: float = 0.0
    bystander_last_id: int = 0
    # The model of the fuzzer's subscription, kept from what DESIGN 1 says each accepted
    # subscribe / unsubscribe does; a rejected message must leave it as it was.
    subscriptions: list[str] = field(default_factory=lambda: ["*"])
    correlation_id: str | None = None
    events_checked: int = 0

    def recv(self, ws: ClientConnection, deadline: float, what: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        try:
            raw = ws.recv(timeout=max(0.0, remaining))
        except TimeoutError:
            pytest.fail(f"no {what} within {REPLY_TIMEOUT:g} s: the server stopped answering")
        except ConnectionClosed as exc:
            pytest.fail(f"the connection closed while waiting for {what}: {exc!r}")
        message: dict[str, Any] = orjson.loads(raw)
        return message

    def exchange(self, frame: str | bytes | None) -> list[dict[str, Any]]:
        """Send ``frame`` (if any) then a marked ping; every message before the marked pong."""
        self.pings += 1
        marker = {"fuzz-marker": self.pings}
        if frame is not None:
            self.fuzzer.send(frame)
        self.fuzzer.send(orjson.dumps({"type": "ping", "payload": marker}).decode())
        started = time.monotonic()
        deadline = started + REPLY_TIMEOUT
        before: list[dict[str, Any]] = []
        while True:
            message = self.recv(self.fuzzer, deadline, f"the pong to ping {marker}")
            check_message(message)
            if message["type"] == "pong" and message["payload"] == {"echo": marker}:
                self.exchanging += time.monotonic() - started
                return before
            before.append(message)
            kind = "event" if "id" in message else message["type"]
            if kind == "event" or kind in STREAM_TYPES:
                self.streamed[kind] = self.streamed.get(kind, 0) + 1

    def check_routing(self, before: list[dict[str, Any]], states: list[Subscription]) -> None:
        for event in events_in(before):
            assert any(routes(event, *state) for state in states), (event, states)
            self.events_checked += 1

    def probe(self, type_: str, correlation_id: str | None) -> None:
        """Emit an event: it must reach the fuzzer exactly when the model routes it there."""
        self.probes += 1
        nonce = self.probes
        evkit.emit(type_, {"fuzz-probe": nonce}, correlation_id=correlation_id)
        evkit.flush()  # in the fuzzer's stream before the next pong
        before = self.exchange(None)
        state = (list(self.subscriptions), self.correlation_id)
        self.check_routing(before, [state])
        arrived = [e for e in events_in(before) if e["payload"].get("fuzz-probe") == nonce]
        probe = {"type": type_, "payload": {"correlationId": correlation_id}}
        expected = 1 if routes(probe, *state) else 0
        assert len(arrived) == expected, (type_, correlation_id, state, arrived)
        self.probes_delivered += expected

    def check(self, frame: str | bytes) -> None:
        self.examples += 1
        expected = expected_reply(frame)
        before = self.exchange(frame)
        direct = [m for m in before if "id" not in m and m["type"] not in STREAM_TYPES]
        context = f"frame {frame!r:.300} got {direct!r:.1000}"
        if expected.optional:
            assert len(direct) <= 1, context
        else:
            assert len(direct) == 1, context
        for reply in direct:
            kind = reply["type"]
            self.replies[kind] = self.replies.get(kind, 0) + 1
            assert kind in expected.kinds, context
            if kind == "websocket.error":
                assert reply["payload"]["code"] in expected.codes, context
            if kind == "pong":
                assert reply["payload"] == {"echo": expected.echo}, context
        replayed = [m for m in before if m["type"] == "websocket.replayed"]
        gaps = [m for m in before if m["type"] == "websocket.gap"]
        if expected.replay and direct and direct[0]["type"] == "websocket.subscribed":
            assert len(replayed) == 1, context  # the replay happened, and said so once
            # An incomplete replay was announced, once, before its events.
            assert len(gaps) == (0 if replayed[0]["payload"]["complete"] else 1), context
        else:
            assert not replayed, context
            assert not gaps, context
        routed_by = [(list(self.subscriptions), self.correlation_id)]
        if direct and direct[0]["type"] in ("websocket.subscribed", "websocket.unsubscribed"):
            self.apply(orjson.loads(frame)["payload"], direct[0], context)
            routed_by.append((list(self.subscriptions), self.correlation_id))
        # Routed under the subscription before this frame or after it (a replay).
        self.check_routing(before, routed_by)
        if self.examples % TICK_EVERY == 0:
            self.check_bystander()

    def apply(self, payload: dict[str, Any], reply: dict[str, Any], context: str) -> None:
        """Update the model by an accepted (un)subscribe; the reply must agree with it."""
        requested = list(dict.fromkeys(payload.get("eventTypes", [])))
        if reply["type"] == "websocket.unsubscribed":
            removed = [p for p in requested if p in self.subscriptions]
            self.subscriptions = [p for p in self.subscriptions if p not in requested]
            assert reply["payload"] == {
                "eventTypes": removed,
                "subscriptions": self.subscriptions,
            }, context
            return
        added = [p for p in requested if p not in self.subscriptions]
        if payload.get("replace") is True:
            self.subscriptions = requested
        else:
            self.subscriptions += added
        if "correlationId" in payload:
            self.correlation_id = payload["correlationId"]
        assert reply["payload"]["eventTypes"] == added, context
        assert reply["payload"]["subscriptions"] == self.subscriptions, context
        assert reply["payload"]["correlationId"] == self.correlation_id, context

    def check_bystander(self) -> None:
        """Emit a tick; the bystander must get it, and only well-formed events in order."""
        self.ticks += 1
        evkit.emit("fuzz.check.tick", {"tick": self.ticks})
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            message = self.recv(self.bystander, deadline, f"tick {self.ticks} at the bystander")
            check_event(message)
            assert message["type"].startswith("fuzz.check."), message
            assert int(message["id"]) > self.bystander_last_id, message
            self.bystander_last_id = int(message["id"])
            if message["type"] == "fuzz.check.tick" and message["payload"] == {"tick": self.ticks}:
                return


@pytest.fixture
def fuzz_session() -> Iterator[FuzzSession]:
    srv = evkit.serve(port=0, **FUZZ_SERVER_OPTIONS)
    try:
        with (
            connect(srv.url, max_size=None, ping_interval=None) as fuzzer,
            connect(
                f"{srv.url}?eventTypes=fuzz.check.*", max_size=None, ping_interval=None
            ) as bystander,
        ):
            for ws in (fuzzer, bystander):
                welcome = orjson.loads(ws.recv(timeout=REPLY_TIMEOUT))
                assert welcome["type"] == "websocket.connected", welcome
            yield FuzzSession(srv, fuzzer, bystander)
    finally:
        srv.stop()


def run_fuzz(session: FuzzSession, examples: int, derandomize: bool) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(frame=frames, probe_type=probe_types, probe_correlation=probe_correlations)
    def fuzz(frame: str | bytes, probe_type: str, probe_correlation: str | None) -> None:
        size = len(frame.encode() if isinstance(frame, str) else frame)
        assume(size <= LARGEST_FUZZ_FRAME)  # past max_message_size it closes: tested alone
        session.check(frame)
        session.probe(probe_type, probe_correlation)

    started = time.monotonic()
    fuzz()
    session.check_bystander()
    stats = session.server.stats()
    assert stats["clients"] == 2, stats  # nobody was disconnected
    assert stats["slow_consumer_disconnects"] == 0, stats
    print(
        f"{session.examples} frames in {time.monotonic() - started:.1f} s "
        f"({session.exchanging:.1f} s waiting for the server); direct replies "
        f"{session.replies}; also received {session.streamed}; {session.events_checked} "
        f"events checked against the subscription model, {session.probes_delivered} of "
        f"{session.probes} probes routed to the fuzzer; {session.ticks} ticks; "
        f"errors by code {stats['client_errors']}"
    )


def test_fuzzed_client_messages_never_break_the_server(fuzz_session: FuzzSession) -> None:
    """2,000 derandomized examples by default (``EVKIT_FUZZ_EXAMPLES``, ``EVKIT_FUZZ_RANDOM``)."""
    examples = int(os.environ.get("EVKIT_FUZZ_EXAMPLES", "2000"))
    run_fuzz(fuzz_session, examples, derandomize=os.environ.get("EVKIT_FUZZ_RANDOM") != "1")


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(
    os.environ.get("EVKIT_FUZZ_LONG") != "1", reason="the long fuzz runs with EVKIT_FUZZ_LONG=1"
)
def test_fuzzed_client_messages_long_run(fuzz_session: FuzzSession) -> None:
    """Randomized; ``EVKIT_FUZZ_EXAMPLES`` examples, 20,000 by default. Runs only with
    ``EVKIT_FUZZ_LONG=1`` (it takes minutes), e.g.::

        EVKIT_FUZZ_LONG=1 pytest tests/test_fuzz.py -k long_run
    """
    examples = int(os.environ.get("EVKIT_FUZZ_EXAMPLES", "20000"))
    run_fuzz(fuzz_session, examples, derandomize=False)


def test_oversized_frame_closes_only_that_connection_with_1009(fuzz_session: FuzzSession) -> None:
    session = fuzz_session
    too_big = orjson.dumps({"type": "ping", "payload": "x" * MAX_MESSAGE_SIZE}).decode()
    assert len(too_big) > MAX_MESSAGE_SIZE
    session.fuzzer.send(too_big)
    deadline = time.monotonic() + REPLY_TIMEOUT
    with pytest.raises(ConnectionClosed):
        while True:
            session.fuzzer.recv(timeout=max(0.0, deadline - time.monotonic()))
    assert session.fuzzer.close_code == 1009
    # The bystander is unaffected, and the server still takes new connections.
    session.check_bystander()
    with connect(session.server.url, max_size=None, open_timeout=10) as fresh:
        welcome = orjson.loads(fresh.recv(timeout=REPLY_TIMEOUT))
        assert welcome["type"] == "websocket.connected"
        fresh.send(orjson.dumps({"type": "ping", "payload": "after"}).decode())
        pong = orjson.loads(fresh.recv(timeout=REPLY_TIMEOUT))
        assert pong["payload"] == {"echo": "after"}
    # Exactly at the limit is still accepted.
    with connect(session.server.url, max_size=None, open_timeout=10) as edge:
        orjson.loads(edge.recv(timeout=REPLY_TIMEOUT))
        prefix = '{"type":"ping","payload":"'
        edge.send(prefix + "y" * (MAX_MESSAGE_SIZE - len(prefix) - 2) + '"}')
        pong = orjson.loads(edge.recv(timeout=REPLY_TIMEOUT))
        assert pong["type"] == "pong"


def test_subscribed_reports_only_what_the_message_added(fuzz_session: FuzzSession) -> None:
    """DESIGN 1: ``eventTypes`` is what this message added (regression: it echoed the request)."""
    fuzzer = fuzz_session.fuzzer

    def subscribe(event_types: list[str]) -> dict[str, Any]:
        message = {"type": "subscribe", "payload": {"eventTypes": event_types}}
        fuzzer.send(orjson.dumps(message).decode())
        reply: dict[str, Any] = orjson.loads(fuzzer.recv(timeout=REPLY_TIMEOUT))
        assert reply["type"] == "websocket.subscribed", reply
        payload: dict[str, Any] = reply["payload"]
        return payload

    assert subscribe(["a.*"])["eventTypes"] == ["a.*"]
    again = subscribe(["a.*", "b.*"])
    assert again["subscriptions"] == ["*", "a.*", "b.*"]
    assert again["eventTypes"] == ["b.*"]
