"""The in-process event bus: emit events, subscribe handlers by pattern, instrument calls.

The global bus is reached through this module's functions (``evkit.bus.on(...)``,
``evkit.emit(...)``); :func:`request_bus` gives a bus bound to one correlation ID that
forwards to the global one. ``serve()`` attaches a broadcaster to the global bus as one
more handler. Spans (``evkit.span``, ``@evkit.emits``) are :mod:`evkit.tracing`'s, which
emits through this bus; ``evkit.bus.emits`` still names that decorator.

Handlers run on the emitting thread, synchronously, in registration order. An async
handler is scheduled on the emitting thread's running loop, or on evkit's loop thread
when the emitter has none. A handler that raises is logged and counted; it never
breaks ``emit`` or the other handlers.

This module does no network I/O.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from evkit.context import correlation, current_correlation_id
from evkit.exceptions import InvalidEventError
from evkit.patterns import SubscriptionIndex, validate_pattern
from evkit.protocol import now_ms, validate_event_type

if TYPE_CHECKING:
    from evkit.tracing import emits as emits

__all__ = [
    "Event",
    "EventBus",
    "Handler",
    "RequestBus",
    "emit",
    "emits",
    "global_bus",
    "off",
    "on",
    "request_bus",
]

logger = logging.getLogger("evkit.bus")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class Event:
    """One event: a dotted ``type``, a ``timestamp`` in ms (UTC) and a ``payload`` dict.

    ``id`` is None in process; the broadcaster's stream assigns it on the wire.
    """

    type: str
    timestamp: int
    payload: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    @property
    def correlation_id(self) -> str | None:
        """``payload["correlationId"]``, or None."""
        value = self.payload.get("correlationId")
        return value if isinstance(value, str) else None

    def to_dict(self) -> dict[str, Any]:
        """The wire shape ``{"type", "timestamp", "id"?, "payload"}``."""
        result: dict[str, Any] = {"type": self.type, "timestamp": self.timestamp}
        if self.id is not None:
            result["id"] = self.id
        result["payload"] = self.payload
        return result


Handler = Callable[[Event], Any]

_TYPE_CACHE_SIZE = 10_000


class EventBus:
    """Handlers subscribed by glob pattern, called for every matching emitted event.

    Thread-safe: ``on``, ``off`` and ``emit`` may be called from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index: SubscriptionIndex[Handler] = SubscriptionIndex()
        self._valid_types: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.emitted = 0
        self.handler_errors = 0

    @overload
    def on(self, pattern: str, handler: None = None) -> Callable[[F], F]: ...
    @overload
    def on(self, pattern: str, handler: F) -> F: ...
    def on(self, pattern: str, handler: F | None = None) -> F | Callable[[F], F]:
        """Call ``handler(event)`` for every event whose type matches ``pattern``.

        Usable as a decorator (``@bus.on("repo.*")``). The same handler under several
        matching patterns is called once per event.

        Raises:
            InvalidPatternError: the pattern is malformed.
            TypeError: ``handler`` is not callable.
        """
        validate_pattern(pattern)
        if handler is None:
            return lambda function: self.on(pattern, function)
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        with self._lock:
            if handler not in self._index:
                self._index.add_subscriber(handler)
            self._index.add(handler, [pattern])
        return handler

    def off(self, handler: Handler, pattern: str | None = None) -> None:
        """Stop calling ``handler`` for ``pattern``, or for every pattern when omitted."""
        with self._lock:
            if handler not in self._index:
                return
            if pattern is not None:
                self._index.remove(handler, [pattern])
            if pattern is None or not self._index.subscriptions(handler):
                self._index.remove_subscriber(handler)

    def emit(
        self,
        type_: str,
        payload: Mapping[str, Any] | None = None,
        *,
        correlation_id: str | None = None,
    ) -> Event:
        """Emit an event to every matching handler and return it.

        The correlation ID is, in order: ``correlation_id``, the payload's own
        ``correlationId``, the one set by an enclosing :func:`evkit.correlation`.
        The payload is copied (shallowly), so later changes by the caller do not leak.

        Raises:
            InvalidEventError: ``type_`` is not a dotted name, or ``payload`` is not a
                mapping, or the correlation ID is not a string.
        """
        if type_ not in self._valid_types:
            validate_event_type(type_)
            if len(self._valid_types) >= _TYPE_CACHE_SIZE:
                self._valid_types.clear()
            self._valid_types.add(type_)
        if payload is None:
            body: dict[str, Any] = {}
        elif isinstance(payload, Mapping):
            body = dict(payload)
        else:
            raise InvalidEventError(
                f"payload of {type_} must be a mapping (a dict), got {type(payload).__name__}"
            )
        if correlation_id is None:
            correlation_id = body.get("correlationId")
        if correlation_id is None:
            correlation_id = current_correlation_id()
        if correlation_id is not None:
            if not isinstance(correlation_id, str):
                raise InvalidEventError(
                    f"correlationId of {type_} must be a string, got {type(correlation_id).__name__}"
                )
            body["correlationId"] = correlation_id
        event = Event(type_, now_ms(), body)
        self.dispatch(event)
        return event

    def dispatch(self, event: Event) -> None:
        """Hand an already-built event to the matching handlers."""
        with self._lock:
            handlers = self._index.route(event.type, None)
            self.emitted += 1
        for handler in handlers:
            try:
                result = handler(event)
                # async def, or an object with async __call__; most handlers return None
                if result is not None and inspect.isawaitable(result):
                    self._schedule(result)
            except Exception:
                self.handler_errors += 1
                logger.exception("event handler %r failed on %s", handler, event.type)

    def _schedule(self, awaitable: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await awaitable
            except Exception:
                self.handler_errors += 1
                logger.exception("async event handler failed")

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            from evkit._loop import loop_thread

            loop_thread().submit(guarded())
            return
        task = loop.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


global_bus = EventBus()


def on(pattern: str, handler: Handler | None = None) -> Any:
    """Subscribe ``handler`` on the global bus (see :meth:`EventBus.on`)."""
    return global_bus.on(pattern, handler)


def off(handler: Handler, pattern: str | None = None) -> None:
    """Unsubscribe ``handler`` from the global bus (see :meth:`EventBus.off`)."""
    global_bus.off(handler, pattern)


def emit(
    type_: str, payload: Mapping[str, Any] | None = None, *, correlation_id: str | None = None
) -> Event:
    """Emit an event on the global bus (see :meth:`EventBus.emit`).

    Cheap and thread-safe; it never blocks on network clients.
    """
    return global_bus.emit(type_, payload, correlation_id=correlation_id)


class RequestBus:
    """A bus bound to one correlation ID: every event it emits carries it.

    Events go to the parent bus (the global one by default). As a context manager it
    also sets the correlation context, so ``@emits`` calls inside are stamped too.
    """

    def __init__(self, correlation_id: str, parent: EventBus | None = None) -> None:
        self._correlation = correlation(correlation_id)
        self.correlation_id: str = correlation_id
        self.parent = parent if parent is not None else global_bus

    def emit(self, type_: str, payload: Mapping[str, Any] | None = None) -> Event:
        """Emit on the parent bus with this bus's correlation ID (it wins over the payload's)."""
        return self.parent.emit(type_, payload, correlation_id=self.correlation_id)

    def __enter__(self) -> RequestBus:
        self._correlation.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._correlation.__exit__(*exc_info)

    def __repr__(self) -> str:
        return f"RequestBus({self.correlation_id!r})"


def request_bus(correlation_id: str, parent: EventBus | None = None) -> RequestBus:
    """A request-scoped bus that stamps ``correlation_id`` on every event it emits.

    Raises:
        ProtocolError: the correlation ID is empty, not a string, or too long.
    """
    return RequestBus(correlation_id, parent)


def __getattr__(name: str) -> Any:
    # ``from evkit.bus import emits`` predates evkit.tracing, which imports this module:
    # resolved on first use, so the import graph stays tracing -> bus.
    if name == "emits":
        from evkit.tracing import emits

        return emits
    raise AttributeError(f"module 'evkit.bus' has no attribute {name!r}")
