"""``evkit.LoggingHandler``: log records as ``log.*`` events, inside their trace.

Records go through the real ``logging`` machinery to a real bus; one test follows them
over a real socket to a collector.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import evkit
from evkit.bus import Event, EventBus
from evkit.logs import LoggingHandler


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def log(bus: EventBus) -> Iterator[logging.Logger]:
    """A logger of its own with the handler on it, propagating nowhere."""
    logger = logging.getLogger("evkit_logs_test.orders")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = LoggingHandler(bus=bus)
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)


def recorded(bus: EventBus, pattern: str = "*") -> list[Event]:
    events: list[Event] = []
    bus.on(pattern, events.append)
    return events


def test_a_record_becomes_an_event_of_its_level(bus: EventBus, log: logging.Logger) -> None:
    events = recorded(bus)
    log.info("loaded %d orders", 3)
    log.warning("slow page")
    [info, warning] = events
    assert (info.type, warning.type) == ("log.info", "log.warning")
    assert info.payload == {
        "level": "INFO",
        "logger": "evkit_logs_test.orders",
        "message": "loaded 3 orders",
        "location": info.payload["location"],
        "spanId": None,
    }
    assert info.payload["location"].startswith("test_logs.py:")
    assert info.correlation_id is None


def test_the_record_carries_the_trace_it_was_logged_in(bus: EventBus, log: logging.Logger) -> None:
    events = recorded(bus)
    with evkit.correlation("req-7"), evkit.span("orders.load", bus=bus) as step:
        log.debug("page %d", 1)
    log_event = next(event for event in events if event.type == "log.debug")
    assert log_event.correlation_id == "req-7"
    assert log_event.payload["spanId"] == step.span_id
    assert [event.type for event in events] == [
        "orders.load.started",
        "log.debug",
        "orders.load.completed",
    ]


def test_an_exception_is_carried_as_text_with_its_type(bus: EventBus, log: logging.Logger) -> None:
    events = recorded(bus)
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed")
    [event] = events
    assert event.type == "log.error"
    assert event.payload["errorType"] == "KeyError"
    assert event.payload["exception"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in event.payload["exception"]


def test_extra_fields_come_along_and_the_handlers_own_win(
    bus: EventBus, log: logging.Logger
) -> None:
    events = recorded(bus)
    log.info("paid", extra={"orderId": 42, "spanId": "forged"}, stack_info=True)
    [event] = events
    assert event.payload["orderId"] == 42
    assert event.payload["spanId"] is None
    assert event.payload["stack"].startswith("Stack (most recent call last):")


def test_custom_levels_and_level_filtering(bus: EventBus, log: logging.Logger) -> None:
    events = recorded(bus)
    logging.addLevelName(25, "NOTICE me")
    log.setLevel(1)
    log.log(25, "custom")
    log.log(7, "unnamed")
    handler = log.handlers[0]
    handler.setLevel(logging.WARNING)
    log.info("filtered out")
    assert [event.type for event in events] == ["log.notice_me", "log.level_7"]


def test_evkits_own_loggers_are_ignored_and_a_logging_bus_handler_cannot_loop(
    bus: EventBus,
) -> None:
    root = logging.getLogger("evkit_logs_test")
    root.setLevel(logging.INFO)
    handler = LoggingHandler(bus=bus, ignore=("evkit_logs_test.quiet",))
    root.addHandler(handler)
    events = recorded(bus)

    def noisy(event: Event) -> None:
        logging.getLogger("evkit_logs_test.handler").info("saw %s", event.type)

    bus.on("log.*", noisy)
    try:
        logging.getLogger("evkit_logs_test.quiet").info("not an event")
        logging.getLogger("evkit_logs_test.quiet.child").info("nor this")
        logging.getLogger("evkit_logs_test.app").info("an event")
    finally:
        root.removeHandler(handler)
    assert [event.payload["logger"] for event in events] == ["evkit_logs_test.app"]
    assert LoggingHandler().ignore == ("evkit", "websockets")


def test_a_failing_emit_goes_to_handle_error(
    log: logging.Logger, bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[logging.LogRecord] = []
    handler = log.handlers[0]
    monkeypatch.setattr(handler, "handleError", failures.append)

    def broken(event: Event) -> None:
        raise AssertionError("never called: handler errors are the bus's")

    log.info("fine")  # a bus handler's error never reaches logging
    bus.on("*", broken)
    log.info("still fine")
    assert failures == []
    handler.bus = "not a bus"  # type: ignore[assignment]
    log.info("breaks")
    assert [record.getMessage() for record in failures] == ["breaks"]


def test_log_lines_reach_a_collector_over_the_wire(server: evkit.Server) -> None:
    logger = logging.getLogger("evkit_logs_test.wire")
    logger.setLevel(logging.INFO)
    handler = evkit.LoggingHandler()
    logger.addHandler(handler)
    try:
        with evkit.collect(server, ["log.*"]) as col:
            with evkit.correlation("req-9"):
                logger.warning("over the wire")
            evkit.flush()
            col.wait(count=1)
            df = col.df
    finally:
        logger.removeHandler(handler)
    row = df.iloc[0]
    assert (row["type"], row["correlation_id"], row["message"]) == (
        "log.warning",
        "req-9",
        "over the wire",
    )
    assert row["level"] == "WARNING"
