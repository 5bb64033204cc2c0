"""Tests for evkit.tracing: spans as blocks (evkit.span) and as decorated calls (@emits).

Everything runs on real EventBus instances; the events recorded are what a handler
(a broadcaster, a collector) would receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import evkit
from evkit.bus import Event, EventBus, emits
from evkit.context import correlation, current_span_id
from evkit.exceptions import InvalidEventError
from evkit.testing import capture_events
from evkit.tracing import Span, span


def recorder(bus: EventBus, pattern: str = "*") -> list[Event]:
    """Subscribe a list's append on ``bus`` and return the list."""
    events: list[Event] = []
    bus.on(pattern, events.append)
    return events


def types(events: list[Event]) -> list[str]:
    return [event.type for event in events]


# @emits


def assert_span_id(value: Any) -> None:
    assert isinstance(value, str)
    assert len(value) == 16
    int(value, 16)


def test_emits_on_a_sync_function() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("github.api", bus=bus)
    def call_github(endpoint: str, *, method: str = "GET") -> str:
        """Call GitHub."""
        assert current_span_id() is not None
        return f"{method} {endpoint}"

    assert call_github.__name__ == "call_github"
    assert call_github.__doc__ == "Call GitHub."
    assert call_github("/repos", method="POST") == "POST /repos"
    assert types(seen) == ["github.api.started", "github.api.completed"]
    started, completed = seen
    span_id = started.payload["spanId"]
    assert_span_id(span_id)
    assert started.payload == {"spanId": span_id, "parentSpanId": None, "correlationId": None}
    duration = completed.payload["duration"]
    assert isinstance(duration, float)
    assert duration >= 0
    assert completed.payload == {
        "duration": duration,
        "spanId": span_id,
        "parentSpanId": None,
        "correlationId": None,
    }
    assert current_span_id() is None


def test_emits_stamps_the_enclosing_correlation() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("github.api", bus=bus)
    def call() -> None:
        pass

    with correlation("req-7"):
        call()
    assert [e.payload["correlationId"] for e in seen] == ["req-7", "req-7"]
    assert [e.correlation_id for e in seen] == ["req-7", "req-7"]


def test_emits_gives_each_call_a_new_span() -> None:
    bus = EventBus()
    seen = recorder(bus, "*.started")

    @emits("a.op", bus=bus)
    def call() -> None:
        pass

    call()
    call()
    assert seen[0].payload["spanId"] != seen[1].payload["spanId"]


def test_emits_on_a_raising_sync_function_reraises_the_same_exception() -> None:
    bus = EventBus()
    seen = recorder(bus)
    error = ValueError("bad endpoint")

    @emits("github.api", bus=bus)
    def call_github() -> None:
        raise error

    with correlation("req-9"), pytest.raises(ValueError, match="bad endpoint") as caught:
        call_github()
    assert caught.value is error
    assert types(seen) == ["github.api.started", "github.api.failed"]
    started, failed = seen
    span_id = started.payload["spanId"]
    assert started.payload == {"spanId": span_id, "parentSpanId": None, "correlationId": "req-9"}
    duration = failed.payload["duration"]
    assert isinstance(duration, float)
    assert duration >= 0
    assert failed.payload == {
        "duration": duration,
        "spanId": span_id,
        "parentSpanId": None,
        "correlationId": "req-9",
        "errorType": "ValueError",
        "errorMessage": "bad endpoint",
    }
    assert current_span_id() is None


def test_emits_truncates_long_error_messages() -> None:
    bus = EventBus()
    seen = recorder(bus, "*.failed")

    @emits("a.op", bus=bus)
    def call() -> None:
        raise KeyError("x" * 5000)

    with pytest.raises(KeyError):
        call()
    assert seen[0].payload["errorType"] == "KeyError"
    assert len(seen[0].payload["errorMessage"]) == 1000


def test_emits_on_an_async_function() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("graphql.query", bus=bus)
    async def query(name: str) -> str:
        await asyncio.sleep(0)
        return name.upper()

    assert asyncio.iscoroutinefunction(query)
    assert query.__name__ == "query"
    assert asyncio.run(query("repos")) == "REPOS"
    assert types(seen) == ["graphql.query.started", "graphql.query.completed"]
    span_id = seen[0].payload["spanId"]
    assert_span_id(span_id)
    assert seen[0].payload == {"spanId": span_id, "parentSpanId": None, "correlationId": None}
    duration = seen[1].payload["duration"]
    assert isinstance(duration, float)
    assert duration >= 0
    assert seen[1].payload == {
        "duration": duration,
        "spanId": span_id,
        "parentSpanId": None,
        "correlationId": None,
    }


def test_emits_on_a_raising_async_function() -> None:
    bus = EventBus()
    seen = recorder(bus)
    error = ConnectionError("gone")

    @emits("graphql.mutation", bus=bus)
    async def mutate() -> None:
        await asyncio.sleep(0)
        raise error

    @correlation("req-a")
    async def main() -> None:
        await mutate()

    with pytest.raises(ConnectionError) as caught:
        asyncio.run(main())
    assert caught.value is error
    assert types(seen) == ["graphql.mutation.started", "graphql.mutation.failed"]
    span_id = seen[0].payload["spanId"]
    duration = seen[1].payload["duration"]
    assert isinstance(duration, float)
    assert seen[1].payload == {
        "duration": duration,
        "spanId": span_id,
        "parentSpanId": None,
        "correlationId": "req-a",
        "errorType": "ConnectionError",
        "errorMessage": "gone",
    }


def test_emits_nested_sync_calls_get_the_parent_span() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("repo.scan", bus=bus)
    def inner() -> str | None:
        return current_span_id()

    @emits("claude.session", bus=bus)
    def outer() -> tuple[str | None, str | None]:
        mine = current_span_id()
        return mine, inner()

    outer_span, inner_span = outer()
    assert types(seen) == [
        "claude.session.started",
        "repo.scan.started",
        "repo.scan.completed",
        "claude.session.completed",
    ]
    assert seen[0].payload["spanId"] == outer_span
    assert seen[0].payload["parentSpanId"] is None
    assert seen[1].payload["spanId"] == inner_span
    assert seen[1].payload["parentSpanId"] == outer_span
    assert seen[2].payload["spanId"] == inner_span
    assert seen[2].payload["parentSpanId"] == outer_span
    assert seen[3].payload["spanId"] == outer_span
    assert seen[3].payload["parentSpanId"] is None
    assert outer_span != inner_span
    assert current_span_id() is None


def test_emits_nested_async_calls_get_the_parent_span() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("github.api", bus=bus)
    async def inner(n: int) -> int:
        await asyncio.sleep(0)
        return n

    @emits("claude.session", bus=bus)
    async def outer() -> list[int]:
        return list(await asyncio.gather(inner(1), inner(2)))

    assert asyncio.run(outer()) == [1, 2]
    outer_span = seen[0].payload["spanId"]
    assert seen[0].type == "claude.session.started"
    assert seen[-1].type == "claude.session.completed"
    assert seen[-1].payload["spanId"] == outer_span
    inner_events = [e for e in seen if e.type.startswith("github.api.")]
    assert sorted(types(inner_events)) == [
        "github.api.completed",
        "github.api.completed",
        "github.api.started",
        "github.api.started",
    ]
    assert {e.payload["parentSpanId"] for e in inner_events} == {outer_span}
    inner_spans = {e.payload["spanId"] for e in inner_events}
    assert len(inner_spans) == 2
    assert outer_span not in inner_spans


def test_emits_threshold_exceeded_emits_slow_operation() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("github.api", threshold_ms=1.0, bus=bus)
    def slow() -> None:
        time.sleep(0.02)

    with correlation("req-slow"):
        slow()
    assert types(seen) == [
        "github.api.started",
        "github.api.completed",
        "performance.slowOperation.detected",
    ]
    duration = seen[1].payload["duration"]
    assert duration >= 20.0
    assert seen[2].payload == {
        "service": "github",
        "operation": "github.api",
        "duration": duration,
        "threshold": 1.0,
        "spanId": seen[0].payload["spanId"],
        "correlationId": "req-slow",
    }


def test_emits_threshold_exceeded_by_an_async_function_without_correlation() -> None:
    bus = EventBus()
    seen = recorder(bus, "performance.*")

    @emits("graphql.query", threshold_ms=1, bus=bus)
    async def slow() -> None:
        await asyncio.sleep(0.02)

    asyncio.run(slow())
    assert len(seen) == 1
    payload = seen[0].payload
    assert payload["service"] == "graphql"
    assert payload["operation"] == "graphql.query"
    assert payload["threshold"] == 1
    assert payload["duration"] > 1
    assert payload["correlationId"] is None


def test_emits_threshold_exceeded_by_a_failing_function() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("repo.push", threshold_ms=1.0, bus=bus)
    def slow_failure() -> None:
        time.sleep(0.02)
        raise OSError("remote hung up")

    with pytest.raises(OSError, match="remote hung up"):
        slow_failure()
    assert types(seen) == [
        "repo.push.started",
        "repo.push.failed",
        "performance.slowOperation.detected",
    ]
    assert seen[2].payload["operation"] == "repo.push"
    assert seen[2].payload["service"] == "repo"


def test_emits_under_threshold_emits_no_slow_operation() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("github.api", threshold_ms=60_000, bus=bus)
    def quick() -> int:
        return 1

    assert quick() == 1
    assert types(seen) == ["github.api.started", "github.api.completed"]


def test_emits_without_threshold_never_emits_slow_operation() -> None:
    bus = EventBus()
    seen = recorder(bus, "performance.*")

    @emits("github.api", bus=bus)
    def slow() -> None:
        time.sleep(0.02)

    slow()
    assert seen == []


def test_emits_rejects_an_invalid_name_at_decoration_time() -> None:
    with pytest.raises(InvalidEventError):
        emits("not a name")
    with pytest.raises(InvalidEventError):
        emits("github.api.")


def test_emits_defaults_to_the_global_bus() -> None:
    seen: list[Event] = []
    evkit.bus.on("evkit-test.emits.*", seen.append)
    try:

        @emits("evkit-test.emits")
        def call() -> None:
            pass

        call()
    finally:
        evkit.bus.off(seen.append)
    assert types(seen) == ["evkit-test.emits.started", "evkit-test.emits.completed"]


def test_emits_fields_and_result_fields() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits(
        "github.api",
        bus=bus,
        fields=lambda endpoint, method="GET": {"endpoint": endpoint, "method": method},
        result_fields=lambda result: {"statusCode": result},
    )
    def call(endpoint: str, method: str = "GET") -> int:
        return 200

    assert call("/repos", method="POST") == 200
    started, completed = seen
    span_id = started.payload["spanId"]
    assert started.payload == {
        "correlationId": None,
        "endpoint": "/repos",
        "method": "POST",
        "spanId": span_id,
        "parentSpanId": None,
    }
    assert completed.payload == {
        "correlationId": None,
        "endpoint": "/repos",
        "method": "POST",
        "duration": completed.payload["duration"],
        "spanId": span_id,
        "parentSpanId": None,
        "statusCode": 200,
    }


def test_emits_fields_correlation_id_wins_over_the_context() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("a.op", bus=bus, fields=lambda: {"correlationId": "from-fields"})
    def call() -> None:
        pass

    call()
    with correlation("ctx"):
        call()
    assert [e.correlation_id for e in seen] == ["from-fields"] * 4


# evkit.span: a block as a span


def test_span_emits_started_and_completed_with_the_same_ids() -> None:
    bus = EventBus()
    seen = recorder(bus)

    with correlation("req-1"), span("orders.load", bus=bus, source="api") as step:
        assert isinstance(step, Span)
        assert current_span_id() == step.span_id
        assert step.status == "running"
        step.set(rows=3)

    assert current_span_id() is None
    assert types(seen) == ["orders.load.started", "orders.load.completed"]
    started, completed = seen
    assert_span_id(step.span_id)
    assert started.payload == {
        "correlationId": "req-1",
        "source": "api",
        "spanId": step.span_id,
        "parentSpanId": None,
    }
    assert completed.payload == {
        "correlationId": "req-1",
        "source": "api",
        "duration": step.duration_ms,
        "spanId": step.span_id,
        "parentSpanId": None,
        "rows": 3,
    }
    assert step.status == "completed"
    assert step.correlation_id == "req-1"


def test_span_and_emits_nest_both_ways() -> None:
    bus = EventBus()
    seen = recorder(bus, "*.started")

    @emits("github.api", bus=bus)
    def call() -> None:
        with span("github.parse", bus=bus):
            pass

    with span("cell.run", bus=bus) as root:
        call()
    ids = {event.type: (event.payload["spanId"], event.payload["parentSpanId"]) for event in seen}
    assert ids["cell.run.started"] == (root.span_id, None)
    assert ids["github.api.started"][1] == root.span_id
    assert ids["github.parse.started"][1] == ids["github.api.started"][0]


def test_a_failing_block_emits_failed_and_the_exception_propagates() -> None:
    bus = EventBus()
    seen = recorder(bus)
    error = ValueError("no such order")

    with (
        pytest.raises(ValueError, match="no such order") as caught,
        span("orders.load", bus=bus) as step,
    ):
        step.set(attempt=2)
        raise error

    assert caught.value is error
    assert types(seen) == ["orders.load.started", "orders.load.failed"]
    failed = seen[1].payload
    assert failed["errorType"] == "ValueError"
    assert failed["errorMessage"] == "no such order"
    assert failed["attempt"] == 2
    assert failed["spanId"] == step.span_id
    assert step.status == "failed"
    assert current_span_id() is None


def test_span_past_its_threshold_emits_a_slow_operation_event() -> None:
    bus = EventBus()
    seen = recorder(bus, "performance.*")
    with correlation("req-2"), span("repo.scan", bus=bus, threshold_ms=5) as step:
        time.sleep(0.02)
    [slow] = seen
    assert slow.payload == {
        "service": "repo",
        "operation": "repo.scan",
        "duration": step.duration_ms,
        "threshold": 5,
        "spanId": step.span_id,
        "correlationId": "req-2",
    }


def test_span_defaults_to_the_global_bus_and_field_correlation_wins() -> None:
    with (
        capture_events("tracing-test.*") as events,
        correlation("context"),
        evkit.span("tracing-test.op", correlationId="mine"),
    ):
        pass
    assert [event.correlation_id for event in events] == ["mine", "mine"]


def test_a_span_runs_once_and_its_name_is_checked() -> None:
    bus = EventBus()
    step = span("a.op", bus=bus)
    with step:
        pass
    with pytest.raises(RuntimeError, match="a span runs once"), step:
        pass
    with pytest.raises(InvalidEventError):
        span("not a name")
    with pytest.raises(RuntimeError, match="not running"):
        span("a.op", bus=bus).finish()


def test_async_spans_keep_their_parents_per_task() -> None:
    bus = EventBus()
    seen = recorder(bus, "*.started")

    async def fetch(number: int) -> str | None:
        async with span("http.get", bus=bus, n=number) as step:
            await asyncio.sleep(0.01)
            async with span("http.parse", bus=bus, n=number):
                await asyncio.sleep(0)
            return step.span_id

    async def main() -> tuple[str | None, list[str | None]]:
        async with span("batch.run", bus=bus) as root:
            children = await asyncio.gather(fetch(1), fetch(2))
        return root.span_id, list(children)

    root_id, child_ids = asyncio.run(main())
    parents = {
        (event.type, event.payload.get("n")): event.payload["parentSpanId"] for event in seen
    }
    assert parents[("http.get.started", 1)] == root_id
    assert parents[("http.get.started", 2)] == root_id
    assert parents[("http.parse.started", 1)] == child_ids[0]
    assert parents[("http.parse.started", 2)] == child_ids[1]


# @emits on generators: the iteration is the span


def test_a_generator_is_timed_over_its_iteration_not_its_call() -> None:
    bus = EventBus()
    seen = recorder(bus)
    inside: list[str | None] = []

    @emits("rows.read", bus=bus, fields=lambda count: {"count": count})
    def read(count: int) -> Iterator[int]:
        for number in range(count):
            inside.append(current_span_id())
            time.sleep(0.02)
            yield number

    assert inspect.isgeneratorfunction(read)
    rows = read(3)
    assert seen == []  # making the generator is not the work
    consumer: list[str | None] = []
    for row in rows:
        consumer.append(current_span_id())
        bus.emit("consumer.got", {"row": row})

    assert types(seen) == [
        "rows.read.started",
        "consumer.got",
        "consumer.got",
        "consumer.got",
        "rows.read.completed",
    ]
    started, completed = seen[0].payload, seen[-1].payload
    assert completed["yielded"] == 3
    assert completed["count"] == 3
    assert "stoppedEarly" not in completed
    assert completed["duration"] >= 60.0  # three sleeps of 20 ms happened inside it
    # Current inside the generator's own steps only, never in the consumer's loop body.
    assert inside == [started["spanId"]] * 3
    assert consumer == [None, None, None]


def test_a_generator_left_early_is_closed_inside_its_span() -> None:
    bus = EventBus()
    seen = recorder(bus)
    closed_in: list[str | None] = []

    @emits("rows.read", bus=bus)
    def read() -> Iterator[int]:
        try:
            yield from range(10)
        finally:
            closed_in.append(current_span_id())

    with span("consumer.run", bus=bus) as outer:
        for row in read():
            if row == 1:
                break
        assert current_span_id() == outer.span_id

    completed = next(event for event in seen if event.type == "rows.read.completed")
    assert completed.payload["yielded"] == 2
    assert completed.payload["stoppedEarly"] is True
    assert completed.payload["parentSpanId"] == outer.span_id
    assert closed_in == [completed.payload["spanId"]]


def test_a_raising_generator_fails_its_span() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("rows.read", bus=bus)
    def read() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(read())
    assert types(seen) == ["rows.read.started", "rows.read.failed"]
    assert seen[1].payload["errorType"] == "OSError"
    assert seen[1].payload["yielded"] == 1


def test_a_generator_keeps_send_throw_and_its_return_value() -> None:
    bus = EventBus()
    seen = recorder(bus, "*.completed")

    @emits("sum.run", bus=bus, result_fields=lambda total: {"total": total})
    def running_sum() -> Iterator[int]:
        total = 0
        while True:
            try:
                value = yield total
            except KeyError:
                value = 100
            if value is None:
                return total
            total += value

    summing = running_sum()
    assert next(summing) == 0
    assert summing.send(5) == 5
    assert summing.throw(KeyError("x")) == 105
    with pytest.raises(StopIteration) as stop:
        summing.send(None)
    assert stop.value.value == 105
    assert seen[0].payload["total"] == 105
    assert seen[0].payload["yielded"] == 3


def test_an_async_generator_is_timed_over_its_iteration() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("feed.read", bus=bus)
    async def feed(count: int) -> AsyncIterator[int]:
        for number in range(count):
            await asyncio.sleep(0.01)
            assert current_span_id() is not None
            yield number

    assert inspect.isasyncgenfunction(feed)

    async def main() -> list[int]:
        got = [number async for number in feed(3)]
        async with contextlib.aclosing(feed(5)) as early:
            async for number in early:
                assert current_span_id() is None
                if number == 1:
                    break
        return got

    assert asyncio.run(main()) == [0, 1, 2]
    ends = [event.payload for event in seen if event.type == "feed.read.completed"]
    assert [end["yielded"] for end in ends] == [3, 2]
    assert "stoppedEarly" not in ends[0]
    assert ends[1]["stoppedEarly"] is True
    assert ends[0]["duration"] >= 30.0


def test_a_raising_async_generator_fails_its_span() -> None:
    bus = EventBus()
    seen = recorder(bus)

    @emits("feed.read", bus=bus)
    async def feed() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("gone")

    async def main() -> None:
        async for _ in feed():
            pass

    with pytest.raises(ConnectionError):
        asyncio.run(main())
    assert types(seen) == ["feed.read.started", "feed.read.failed"]
