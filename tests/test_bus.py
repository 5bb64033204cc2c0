"""Tests for evkit.bus: the in-process EventBus and request_bus (spans: test_tracing.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

import evkit
from evkit._loop import loop_thread
from evkit.bus import Event, EventBus, RequestBus, emits, global_bus, request_bus
from evkit.context import correlation, current_correlation_id
from evkit.exceptions import InvalidEventError, InvalidPatternError, ProtocolError


def recorder(bus: EventBus, pattern: str = "*") -> list[Event]:
    """Subscribe a list's append on ``bus`` and return the list."""
    events: list[Event] = []
    bus.on(pattern, events.append)
    return events


def types(events: list[Event]) -> list[str]:
    return [event.type for event in events]


# Event


def test_event_to_dict_and_correlation_id() -> None:
    event = Event("a.b", 17, {"correlationId": "r", "n": 1})
    assert event.correlation_id == "r"
    assert event.to_dict() == {
        "type": "a.b",
        "timestamp": 17,
        "payload": {"correlationId": "r", "n": 1},
    }
    event.id = "9"
    assert list(event.to_dict()) == ["type", "timestamp", "id", "payload"]
    assert Event("a.b", 1).correlation_id is None
    assert Event("a.b", 1, {"correlationId": 5}).correlation_id is None


# on / off


def test_on_calls_matching_sync_handlers_with_the_event() -> None:
    bus = EventBus()
    repo = recorder(bus, "repo.*")
    everything = recorder(bus, "*")
    event = bus.emit("repo.commit.created", {"path": "/src"})
    bus.emit("claude.session.started")
    assert repo == [event]
    assert types(everything) == ["repo.commit.created", "claude.session.started"]
    assert event.type == "repo.commit.created"
    assert event.payload == {"path": "/src"}
    assert event.id is None
    assert bus.emitted == 2


def test_emit_without_handlers_returns_the_event() -> None:
    bus = EventBus()
    event = bus.emit("a.b")
    assert event.payload == {}
    assert bus.emitted == 1


def test_emit_timestamp_is_epoch_milliseconds() -> None:
    before = int(time.time() * 1000)
    event = EventBus().emit("a.b")
    after = int(time.time() * 1000)
    assert before - 1 <= event.timestamp <= after + 1
    assert isinstance(event.timestamp, int)


def test_on_as_decorator_returns_the_function() -> None:
    bus = EventBus()
    seen: list[str] = []

    @bus.on("github.api.*")
    def handler(event: Event) -> None:
        seen.append(event.type)

    assert callable(handler)
    assert handler.__name__ == "handler"
    bus.emit("github.api.completed")
    bus.emit("github.workflow.triggered")
    assert seen == ["github.api.completed"]


def test_same_handler_under_two_matching_patterns_is_called_once() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.on("repo.*", seen.append)
    bus.on("*.created", seen.append)
    bus.on("repo.*", seen.append)
    bus.emit("repo.commit.created")
    assert types(seen) == ["repo.commit.created"]
    bus.emit("repo.push.completed")
    bus.emit("issue.comment.created")
    assert types(seen) == ["repo.commit.created", "repo.push.completed", "issue.comment.created"]


def test_handlers_run_in_registration_order() -> None:
    bus = EventBus()
    order: list[str] = []

    def first(event: Event) -> None:
        order.append("first")

    def second(event: Event) -> None:
        order.append("second")

    def third(event: Event) -> None:
        order.append("third")

    bus.on("*", first)
    bus.on("a.*", second)
    bus.on("*", third)
    bus.emit("a.b")
    assert order == ["first", "second", "third"]


def test_off_for_one_pattern_keeps_the_others() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.on("repo.*", seen.append)
    bus.on("claude.*", seen.append)
    bus.off(seen.append, "repo.*")
    bus.emit("repo.commit.created")
    bus.emit("claude.session.started")
    assert types(seen) == ["claude.session.started"]
    bus.off(seen.append, "claude.*")
    bus.emit("claude.session.started")
    assert types(seen) == ["claude.session.started"]
    assert seen.append not in bus._index


def test_off_without_pattern_removes_every_pattern() -> None:
    bus = EventBus()
    seen: list[Event] = []
    other = recorder(bus, "*")
    bus.on("repo.*", seen.append)
    bus.on("claude.*", seen.append)
    bus.off(seen.append)
    bus.emit("repo.commit.created")
    bus.emit("claude.session.started")
    assert seen == []
    assert len(other) == 2


def test_off_of_unknown_handler_or_pattern_is_a_no_op() -> None:
    bus = EventBus()
    seen = recorder(bus, "a.*")
    bus.off(print)
    bus.off(seen.append, "b.*")
    bus.emit("a.b")
    assert len(seen) == 1


def test_handler_can_be_registered_again_after_off() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.on("a.*", seen.append)
    bus.off(seen.append)
    bus.on("a.*", seen.append)
    bus.emit("a.b")
    assert len(seen) == 1


def test_on_rejects_invalid_patterns_and_non_callables() -> None:
    bus = EventBus()
    with pytest.raises(InvalidPatternError):
        bus.on("bad pattern", print)
    with pytest.raises(InvalidPatternError):
        bus.on("")
    with pytest.raises(TypeError, match="handler must be callable, got int"):
        bus.on("*", 5)  # type: ignore[call-overload]
    assert len(bus._index) == 0


# emit: validation, correlation, copying


@pytest.mark.parametrize("type_", ["", "bad type", "a..b", "a.*", 5, None])
def test_emit_rejects_invalid_types(type_: Any) -> None:
    bus = EventBus()
    seen = recorder(bus)
    with pytest.raises(InvalidEventError):
        bus.emit(type_)
    assert seen == []
    assert bus.emitted == 0


def test_emit_rejects_an_invalid_type_every_time() -> None:
    bus = EventBus()
    for _ in range(3):
        with pytest.raises(InvalidEventError):
            bus.emit("not valid")


@pytest.mark.parametrize("payload", [["a"], "text", 5, (("a", 1),)])
def test_emit_rejects_non_mapping_payloads(payload: Any) -> None:
    bus = EventBus()
    seen = recorder(bus)
    with pytest.raises(InvalidEventError, match=r"^payload of a\.b must be a mapping"):
        bus.emit("a.b", payload)
    assert seen == []


@pytest.mark.parametrize("value", [5, 0, False, ["req"], {"id": "r"}])
def test_emit_rejects_non_string_correlation_ids(value: Any) -> None:
    bus = EventBus()
    seen = recorder(bus)
    with pytest.raises(InvalidEventError, match=r"^correlationId of a\.b must be a string"):
        bus.emit("a.b", {"correlationId": value})
    with pytest.raises(InvalidEventError, match=r"^correlationId of a\.b must be a string"):
        bus.emit("a.b", correlation_id=value)
    with correlation("ctx"), pytest.raises(InvalidEventError):
        bus.emit("a.b", {"correlationId": value})
    assert seen == []


def test_emit_correlation_precedence() -> None:
    bus = EventBus()
    with correlation("ctx"):
        assert bus.emit("a.b", {"correlationId": "pay"}, correlation_id="arg").payload == {
            "correlationId": "arg"
        }
        assert bus.emit("a.b", {"correlationId": "pay"}).payload == {"correlationId": "pay"}
        assert bus.emit("a.b", {"n": 1}).payload == {"n": 1, "correlationId": "ctx"}
        assert bus.emit("a.b", {"correlationId": None}).payload == {"correlationId": "ctx"}
        assert bus.emit("a.b", correlation_id="arg").correlation_id == "arg"
    assert bus.emit("a.b", {"correlationId": "pay"}).correlation_id == "pay"
    assert bus.emit("a.b", correlation_id="arg").payload == {"correlationId": "arg"}
    assert bus.emit("a.b", {"n": 1}).payload == {"n": 1}


def test_emit_copies_the_payload() -> None:
    bus = EventBus()
    seen = recorder(bus)
    payload: dict[str, Any] = {"path": "/src"}
    event = bus.emit("repo.commit.created", payload, correlation_id="r")
    payload["path"] = "/changed"
    payload["extra"] = 1
    assert event.payload == {"path": "/src", "correlationId": "r"}
    assert seen[0] is event
    assert "correlationId" not in payload


def test_emit_accepts_any_mapping() -> None:
    from types import MappingProxyType

    event = EventBus().emit("a.b", MappingProxyType({"k": "v"}))
    assert event.payload == {"k": "v"}
    assert type(event.payload) is dict


# failing handlers


def test_raising_handler_is_logged_and_counted_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    before = recorder(bus)

    def broken(event: Event) -> None:
        raise ValueError("handler broke")

    bus.on("*", broken)
    after = recorder(bus)
    with caplog.at_level(logging.ERROR, logger="evkit.bus"):
        event = bus.emit("a.b", {"n": 1})
        bus.emit("a.c")
    assert before == [event, before[1]]
    assert after == before
    assert bus.handler_errors == 2
    records = [r for r in caplog.records if r.name == "evkit.bus"]
    assert [r.getMessage() for r in records] == [
        f"event handler {broken!r} failed on a.b",
        f"event handler {broken!r} failed on a.c",
    ]
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is ValueError


# async handlers


def test_async_handler_without_running_loop_runs_on_evkit_loop_thread() -> None:
    bus = EventBus()
    done = threading.Event()
    seen: list[tuple[str, threading.Thread]] = []

    async def handler(event: Event) -> None:
        seen.append((event.type, threading.current_thread()))
        done.set()

    bus.on("a.*", handler)
    bus.emit("a.b")
    assert done.wait(timeout=5)
    assert seen == [("a.b", loop_thread().thread)]


def test_async_handler_from_a_worker_thread_runs_on_evkit_loop_thread() -> None:
    bus = EventBus()
    done = threading.Event()
    seen: list[threading.Thread] = []

    async def handler(event: Event) -> None:
        seen.append(threading.current_thread())
        done.set()

    bus.on("a.*", handler)
    worker = threading.Thread(target=bus.emit, args=("a.b",))
    worker.start()
    worker.join(timeout=5)
    assert done.wait(timeout=5)
    assert seen == [loop_thread().thread]
    assert seen[0] is not worker


def test_raising_async_handler_on_evkit_loop_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    done = threading.Event()

    async def broken(event: Event) -> None:
        raise RuntimeError("async broke")

    async def marker(event: Event) -> None:
        done.set()

    bus.on("*", broken)
    bus.on("*", marker)
    with caplog.at_level(logging.ERROR, logger="evkit.bus"):
        bus.emit("a.b")
        assert done.wait(timeout=5)
    assert bus.handler_errors == 1
    assert "async event handler failed" in [r.getMessage() for r in caplog.records]


def test_async_handler_inside_asyncio_run_runs_on_that_loop() -> None:
    bus = EventBus()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()
        seen: list[tuple[str, asyncio.AbstractEventLoop, threading.Thread]] = []

        async def handler(event: Event) -> None:
            seen.append((event.type, asyncio.get_running_loop(), threading.current_thread()))
            fired.set()

        bus.on("a.*", handler)
        bus.emit("a.b")
        assert seen == []  # scheduled, not run inside emit
        await asyncio.wait_for(fired.wait(), timeout=5)
        assert seen == [("a.b", loop, threading.current_thread())]

    asyncio.run(main())


def test_raising_async_handler_inside_asyncio_run_is_counted() -> None:
    bus = EventBus()

    async def main() -> None:
        fired = asyncio.Event()

        async def broken(event: Event) -> None:
            raise RuntimeError("async broke")

        async def marker(event: Event) -> None:
            fired.set()

        bus.on("*", broken)
        bus.on("*", marker)
        bus.emit("a.b")
        await asyncio.wait_for(fired.wait(), timeout=5)
        assert bus.handler_errors == 1

    asyncio.run(main())


def test_sync_and_async_handlers_mixed() -> None:
    bus = EventBus()
    done = threading.Event()
    sync_seen = recorder(bus)

    async def handler(event: Event) -> None:
        done.set()

    bus.on("*", handler)
    bus.emit("a.b")
    assert types(sync_seen) == ["a.b"]
    assert done.wait(timeout=5)


# global bus


def test_global_bus_functions() -> None:
    seen: list[Event] = []
    evkit.bus.on("evkit-test.global.*", seen.append)
    try:
        event = evkit.emit("evkit-test.global.happened", {"n": 1}, correlation_id="g-1")
        evkit.emit("evkit-test.other.happened")
        assert seen == [event]
        assert event.payload == {"n": 1, "correlationId": "g-1"}
    finally:
        evkit.bus.off(seen.append)
    evkit.emit("evkit-test.global.happened")
    assert len(seen) == 1
    assert evkit.bus.global_bus is global_bus
    assert seen.append not in global_bus._index


def test_global_bus_on_as_decorator() -> None:
    seen: list[str] = []

    def handler(event: Event) -> None:
        seen.append(event.type)

    # the decorator form, spelled out: evkit.bus.on(pattern) returns the decorator
    assert evkit.bus.on("evkit-test.decorated.*")(handler) is handler
    try:
        evkit.emit("evkit-test.decorated.x")
    finally:
        evkit.bus.off(handler)
    assert seen == ["evkit-test.decorated.x"]


# request_bus


def test_request_bus_stamps_its_id_over_the_payloads() -> None:
    bus = EventBus()
    seen = recorder(bus)
    request = request_bus("req-8", parent=bus)
    assert isinstance(request, RequestBus)
    assert request.correlation_id == "req-8"
    assert request.parent is bus
    assert repr(request) == "RequestBus('req-8')"
    with correlation("ctx"):
        event = request.emit("repo.commit.created", {"correlationId": "other", "path": "/"})
    assert event.payload == {"correlationId": "req-8", "path": "/"}
    assert request.emit("repo.push.completed").payload == {"correlationId": "req-8"}
    assert seen == [event, seen[1]]
    assert types(seen) == ["repo.commit.created", "repo.push.completed"]


def test_request_bus_as_context_manager_sets_correlation_for_emits() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("github.api", bus=bus)
    def call() -> None:
        pass

    with request_bus("req-8", parent=bus) as request:
        assert isinstance(request, RequestBus)
        assert current_correlation_id() == "req-8"
        call()
        bus.emit("plain.event.emitted")
    assert current_correlation_id() is None
    assert types(seen) == ["github.api.started", "github.api.completed", "plain.event.emitted"]
    assert [e.payload["correlationId"] for e in seen] == ["req-8", "req-8", "req-8"]


def test_request_bus_context_manager_nests_and_restores() -> None:
    with correlation("outer"):
        with request_bus("req-8", parent=EventBus()):
            assert current_correlation_id() == "req-8"
        assert current_correlation_id() == "outer"


def test_request_bus_defaults_to_the_global_bus() -> None:
    seen: list[Event] = []
    evkit.bus.on("evkit-test.request.*", seen.append)
    try:
        request = evkit.request_bus("req-g")
        assert request.parent is global_bus
        event = request.emit("evkit-test.request.made", {"n": 1})
    finally:
        evkit.bus.off(seen.append)
    assert seen == [event]
    assert event.payload == {"n": 1, "correlationId": "req-g"}


@pytest.mark.parametrize("bad", ["", 5, "x" * 257])
def test_request_bus_rejects_invalid_correlation_ids(bad: Any) -> None:
    with pytest.raises(ProtocolError):
        request_bus(bad)
