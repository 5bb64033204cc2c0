"""Operations timed as spans: the :func:`span` block and the :func:`emits` decorator.

A span is one run of an operation named like an event type (``github.api``). It emits
``NAME.started`` when it begins, then ``NAME.completed`` (with ``duration`` in ms) or
``NAME.failed`` (also ``errorType`` and ``errorMessage``) when it ends; each event
carries the span's ``spanId``, its parent's ``parentSpanId`` and the ``correlationId``
of the context it began in. Past ``threshold_ms``,
``performance.slowOperation.detected`` follows. While a span runs it is the current
span of :mod:`evkit.context`, so spans begun inside it are its children.

:class:`Span` is one such run: ``with``, ``async with``, and the wrappers :func:`emits`
puts around functions, coroutine functions, generators and async generators. A
generator's span covers its iteration, from the first ``next()`` to its end, not the
call that made it; it is the current span only while the generator's own code runs.

This module emits through an :class:`~evkit.bus.EventBus` and does no I/O. It must not
leave a span current while code that is not the span's own runs (a generator's
consumer between two items, another task).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import Token
from typing import Any, Final, TypeVar, cast

from evkit.bus import EventBus, global_bus
from evkit.context import current_correlation_id, current_span_id, enter_span, exit_span
from evkit.context import new_span_id as _new_span_id
from evkit.protocol import validate_event_type

__all__ = ["SLOW_OPERATION", "Span", "emits", "span"]

F = TypeVar("F", bound=Callable[..., Any])

SLOW_OPERATION: Final = "performance.slowOperation.detected"
"""The event a span emits when it ran past its ``threshold_ms``."""

_ERROR_MESSAGE_CHARS: Final = 1000
_PENDING, _RUNNING = "pending", "running"


class Span:
    """One run of the operation ``name``; made by :func:`span` and by :func:`emits`.

    Use it once, with ``with`` or ``async with``: entering emits ``NAME.started`` and
    makes it the current span, leaving emits ``NAME.completed``, or ``NAME.failed``
    when an exception is leaving the block (the exception is not swallowed).

    Attributes, set when it begins: ``span_id``, ``parent_span_id``,
    ``correlation_id``; when it ends: ``duration_ms`` and ``status`` (``pending``,
    ``running``, ``completed`` or ``failed``).
    """

    __slots__ = (
        "_began",
        "_bus",
        "_extra",
        "_fields",
        "_threshold_ms",
        "_token",
        "correlation_id",
        "duration_ms",
        "name",
        "parent_span_id",
        "span_id",
        "status",
    )

    def __init__(
        self,
        name: str,
        fields: Mapping[str, Any] | None = None,
        *,
        threshold_ms: float | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.name = name
        self._fields = dict(fields) if fields else {}
        self._extra: dict[str, Any] = {}
        self._threshold_ms = threshold_ms
        self._bus = bus
        self._began = 0.0
        self._token: Token[str | None] | None = None
        self.span_id: str | None = None
        self.parent_span_id: str | None = None
        self.correlation_id: str | None = None
        self.duration_ms: float | None = None
        self.status = _PENDING

    def set(self, **fields: Any) -> Span:
        """Add ``fields`` to the event that ends the span (a row count, a status code).

        Later values win over earlier ones and over the fields the span began with.
        Returns the span.
        """
        self._extra.update(fields)
        return self

    def start(self) -> None:
        """Emit ``NAME.started``; the span is running but not current (see :meth:`current`).

        ``with`` does this and more: call it only when driving a span by hand.

        Raises:
            RuntimeError: the span was started before (a span runs once).
        """
        if self.status != _PENDING:
            raise RuntimeError(
                f"span {self.name!r} was already {self.status}; a span runs once: "
                f"call evkit.span({self.name!r}) again for another run"
            )
        self.span_id = _new_span_id()
        self.parent_span_id = current_span_id()
        given = self._fields.get("correlationId")
        self.correlation_id = given if isinstance(given, str) else current_correlation_id()
        self.status = _RUNNING
        self._target().emit(
            f"{self.name}.started",
            {
                "correlationId": self.correlation_id,
                **self._fields,
                "spanId": self.span_id,
                "parentSpanId": self.parent_span_id,
            },
        )
        self._began = time.perf_counter()

    def finish(self, error: BaseException | None = None) -> None:
        """Emit ``NAME.completed``, or ``NAME.failed`` for ``error`` (and the slow event).

        Raises:
            RuntimeError: the span is not running.
        """
        if self.status != _RUNNING:
            raise RuntimeError(f"span {self.name!r} is {self.status}, not running")
        duration = round((time.perf_counter() - self._began) * 1000.0, 3)
        self.duration_ms = duration
        payload: dict[str, Any] = {
            "correlationId": self.correlation_id,
            **self._fields,
            "duration": duration,
            "spanId": self.span_id,
            "parentSpanId": self.parent_span_id,
            **self._extra,
        }
        target = self._target()
        if error is None:
            self.status = "completed"
            target.emit(f"{self.name}.completed", payload)
        else:
            self.status = "failed"
            payload["errorType"] = type(error).__name__
            payload["errorMessage"] = str(error)[:_ERROR_MESSAGE_CHARS]
            target.emit(f"{self.name}.failed", payload)
        if self._threshold_ms is not None and duration > self._threshold_ms:
            target.emit(
                SLOW_OPERATION,
                {
                    "service": self.name.split(".", 1)[0],
                    "operation": self.name,
                    "duration": duration,
                    "threshold": self._threshold_ms,
                    "spanId": self.span_id,
                    "correlationId": self.correlation_id,
                },
            )

    def current(self) -> Token[str | None]:
        """Make this running span the current one; pass the token to :meth:`restore`."""
        assert self.span_id is not None, "start() the span first"
        return enter_span(self.span_id)

    @staticmethod
    def restore(token: Token[str | None]) -> None:
        """Make current again the span that was before :meth:`current` gave ``token``."""
        exit_span(token)

    def _target(self) -> EventBus:
        # Looked up per run: the global bus is whatever it is when the span runs.
        return self._bus if self._bus is not None else global_bus

    def __enter__(self) -> Span:
        self.start()
        self._token = self.current()
        return self

    def __exit__(self, exc_type: object, error: BaseException | None, traceback: object) -> None:
        token, self._token = self._token, None
        try:
            self.finish(error)
        finally:
            if token is not None:
                exit_span(token)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: object, error: BaseException | None, traceback: object
    ) -> None:
        self.__exit__(exc_type, error, traceback)

    def __repr__(self) -> str:
        duration = "" if self.duration_ms is None else f" {self.duration_ms:g} ms"
        return f"<evkit.Span {self.name} {self.status}{duration} span_id={self.span_id}>"


def span(
    name: str,
    /,
    *,
    threshold_ms: float | None = None,
    bus: EventBus | None = None,
    **fields: Any,
) -> Span:
    """Time a block as the operation ``name``, with ``with`` or ``async with``::

        with evkit.span("orders.load", source="api") as step:
            rows = load()
            step.set(rows=len(rows))        # added to orders.load.completed

    The events are those of :func:`emits`: ``name.started`` with ``fields``, ``spanId``,
    ``parentSpanId`` (the enclosing span, if any) and ``correlationId`` (the enclosing
    :func:`evkit.correlation`, or null), then ``name.completed`` with ``duration`` in
    ms, or ``name.failed`` with ``errorType`` and ``errorMessage`` when an exception
    leaves the block (it propagates unchanged). Past ``threshold_ms``,
    ``performance.slowOperation.detected`` follows. Events go to ``bus`` (the global
    bus by default). Each ``span(...)`` is one run: enter it once.

    Raises:
        InvalidEventError: ``name`` is not a dotted name such as ``orders.load``.
    """
    validate_event_type(name)
    return Span(name, fields, threshold_ms=threshold_ms, bus=bus)


def emits(
    name: str,
    threshold_ms: float | None = None,
    *,
    bus: EventBus | None = None,
    fields: Callable[..., Mapping[str, Any]] | None = None,
    result_fields: Callable[[Any], Mapping[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Instrument a function as the operation ``name``: each call is one :class:`Span`.

    Works on functions, coroutine functions, generators and async generators; the
    wrapper is of the same kind. Each call emits ``name.started`` (``spanId``,
    ``parentSpanId``, ``correlationId``), then ``name.completed`` (``duration`` in ms,
    the same ids; ``correlationId`` is null outside any correlation) or, when it
    raises, ``name.failed`` (also ``errorType``, ``errorMessage``) before the
    exception propagates unchanged. A call inside another span gets that span as
    ``parentSpanId``. When ``threshold_ms`` is given and exceeded,
    ``performance.slowOperation.detected`` follows with ``service`` (the first segment
    of ``name``), ``operation`` (``name``), ``duration``, ``threshold``, ``spanId``
    and ``correlationId``.

    A generator's span times its iteration: it starts at the first ``next()`` (or
    ``async for`` step), ends when the generator is exhausted, raises, or is closed
    early (``break``), and its end event adds ``yielded`` (items produced) and, when
    the consumer stopped first, ``stoppedEarly: true``. Its duration includes the time
    the consumer spent between items; the span is current only while the
    generator's own code runs. A generator never iterated emits nothing.

    ``fields(*args, **kwargs)``, when given, is called with the call's arguments and its
    mapping is added to all the events (``@emits("github.api", fields=lambda endpoint:
    {"endpoint": endpoint})``); ``result_fields(result)`` adds to ``.completed`` what the
    return value tells (a status code, a row count; for a generator, what it returned).

    Raises:
        InvalidEventError: ``name`` is not a dotted name (raised at decoration time).
    """
    validate_event_type(name)
    return _Operation(name, threshold_ms, bus, fields, result_fields).instrument


class _Operation:
    """One ``@emits(...)`` operation: its name, bus and the fields its spans carry.

    Shared by every function it instruments and every call of them; each call is a
    :class:`Span` of its own.
    """

    __slots__ = ("_bus", "_fields", "_name", "_result_fields", "_threshold_ms")

    def __init__(
        self,
        name: str,
        threshold_ms: float | None,
        bus: EventBus | None,
        fields: Callable[..., Mapping[str, Any]] | None,
        result_fields: Callable[[Any], Mapping[str, Any]] | None,
    ) -> None:
        self._name = name
        self._threshold_ms = threshold_ms
        self._bus = bus
        self._fields = fields
        self._result_fields = result_fields

    def _span(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Span:
        fields = self._fields(*args, **kwargs) if self._fields is not None else None
        return Span(self._name, fields, threshold_ms=self._threshold_ms, bus=self._bus)

    def _keep(self, live: Span, result: Any) -> Any:
        if self._result_fields is not None:
            live._extra.update(self._result_fields(result))
        return result

    def instrument(self, function: F) -> F:
        """``function`` wrapped so that each call (or iteration) is one span."""
        if inspect.isasyncgenfunction(function):
            return cast(F, functools.wraps(function)(self._async_generator(function)))
        if inspect.isgeneratorfunction(function):
            return cast(F, functools.wraps(function)(self._generator(function)))
        if inspect.iscoroutinefunction(function):

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._span(args, kwargs) as live:
                    return self._keep(live, await function(*args, **kwargs))

            return cast(F, functools.wraps(function)(async_wrapper))

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._span(args, kwargs) as live:
                return self._keep(live, function(*args, **kwargs))

        return cast(F, functools.wraps(function)(wrapper))

    def _generator(self, function: Callable[..., Any]) -> Callable[..., Any]:
        keep = self._keep
        make_span = self._span

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            inner = function(*args, **kwargs)
            run = _Iteration(make_span(args, kwargs))
            step, value = inner.send, None
            while True:
                with run.step():
                    try:
                        item = step(value)
                    except StopIteration as stop:
                        return run.done(keep(run.live, stop.value))
                try:
                    value = yield item
                    step = inner.send
                except GeneratorExit:
                    with run.step(closing=True):
                        inner.close()
                    raise
                except BaseException as error:
                    step, value = inner.throw, error

        return wrapper

    def _async_generator(self, function: Callable[..., Any]) -> Callable[..., Any]:
        make_span = self._span

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            inner = function(*args, **kwargs)
            run = _Iteration(make_span(args, kwargs))
            sent: Any = None
            advance = inner.asend
            while True:
                with run.step():
                    try:
                        item = await advance(sent)
                    except StopAsyncIteration:
                        run.done(None)
                        return
                try:
                    sent = yield item
                except BaseException as error:
                    if isinstance(error, GeneratorExit):
                        with run.step(closing=True):
                            await inner.aclose()
                        raise
                    advance, sent = inner.athrow, error
                else:
                    advance = inner.asend

        return wrapper


class _Iteration:
    """One iteration of an instrumented generator: its span and the items it produced."""

    __slots__ = ("live", "yielded")

    def __init__(self, live: Span) -> None:
        live.start()
        self.live = live
        self.yielded = 0

    @contextmanager
    def step(self, closing: bool = False) -> Iterator[None]:
        """The generator's own code runs in the block, inside its span.

        An exception leaving the block fails the span; a step that ends normally counts
        an item, or, ``closing``, ends the span as stopped early by the consumer.
        """
        token = self.live.current()
        try:
            yield
        except BaseException as error:
            self.live.set(yielded=self.yielded).finish(error)
            raise
        finally:
            self.live.restore(token)
        if closing:
            self.live.set(yielded=self.yielded, stoppedEarly=True).finish(None)
        elif self.live.status == _RUNNING:
            self.yielded += 1

    def done(self, result: Any) -> Any:
        """The generator is exhausted: end the span; returns ``result``."""
        self.live.set(yielded=self.yielded).finish(None)
        return result
