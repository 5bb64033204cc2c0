"""Events as an async iterator: ``async for event in evkit.subscribe(source, patterns)``.

:func:`subscribe` gives an :class:`EventStream` over a broadcaster (a server handle or a
``ws://`` URL) or over an in-process :class:`~evkit.bus.EventBus`. It is for code that
awaits: a notebook cell with top-level ``await`` and asyncio services.

Threads and loops: the stream is consumed on the caller's loop, whichever it is (the
Jupyter kernel's, an application's). The WebSocket side runs on evkit's own loop
thread, reached only through :mod:`evkit._loop`; a bus delivers on the emitting thread.
Either hands events over through a bounded inbox that wakes the caller's loop with
``call_soon_threadsafe``: nothing touches or patches the caller's loop otherwise.
Iteration ends when the caller breaks out of it, closes the stream, or its loop
closes (the async generator is finalised then), and the subscription ends with it.

No pandas here; events are :class:`~evkit.bus.Event` objects in either case.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import types
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final, Protocol, Self

from evkit._loop import loop_thread
from evkit.bus import Event, EventBus, global_bus
from evkit.client.subscriber import Subscriber
from evkit.exceptions import ConnectError
from evkit.patterns import validate_patterns
from evkit.protocol import validate_correlation_id
from evkit.tls import SSLOption

__all__ = ["DEFAULT_STREAM_BUFFER", "EventStream", "subscribe"]

logger = logging.getLogger("evkit.client")

DEFAULT_STREAM_BUFFER: Final = 10_000
"""Events an :class:`EventStream` holds for a consumer that has not caught up."""

_CLOSED: Final = object()


class _Inbox:
    """Events from any thread for one consumer loop: bounded, oldest dropped first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self._size = size
        self._items: deque[Event] = deque()
        self._lock = threading.Lock()
        self._wakeup_pending = False
        self._waiter: asyncio.Future[None] | None = None
        self._ending: BaseException | object | None = None
        self.received = 0
        self.dropped = 0

    def put(self, events: Iterable[Event]) -> None:
        """Take events in (any thread); wake the consumer's loop once per batch."""
        with self._lock:
            if self._ending is not None:
                return
            before = len(self._items)
            self._items.extend(events)
            self.received += len(self._items) - before
            over = len(self._items) - self._size
            if over > 0:
                for _ in range(over):
                    self._items.popleft()
                if not self.dropped:
                    logger.warning(
                        "evkit.subscribe: the consumer fell behind; dropping the oldest events "
                        "past buffer_size=%d (counted in stats()['dropped'])",
                        self._size,
                    )
                self.dropped += over
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        self._call_soon(self._wake)

    def end(self, reason: BaseException | None = None) -> None:
        """No more events (any thread): the consumer gets what is held, then ``reason``."""
        with self._lock:
            if self._ending is None:
                self._ending = reason if reason is not None else _CLOSED
        self._call_soon(self._wake)

    def _call_soon(self, callback: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the consumer's loop is closed: nobody is waiting
            with self._lock:
                self._ending = self._ending or _CLOSED

    def _wake(self) -> None:
        with self._lock:
            self._wakeup_pending = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Event | None:
        """The next event; None once ended. Raises what ended it, if it was an error."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                ending = self._ending
            if isinstance(ending, BaseException):
                raise ending
            if ending is not None:
                return None
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def held(self) -> int:
        return len(self._items)


class _Feed(Protocol):
    """Where a stream's events come from."""

    description: str

    async def start(self, inbox: _Inbox) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class _BusFeed:
    def __init__(self, bus: EventBus, patterns: list[str], correlation_id: str | None) -> None:
        self.description = "in-process bus"
        self._bus = bus
        self._patterns = patterns
        self._correlation_id = correlation_id
        self._inbox: _Inbox | None = None

    async def start(self, inbox: _Inbox) -> None:
        self._inbox = inbox
        for pattern in self._patterns:
            self._bus.on(pattern, self._on_event)

    def _on_event(self, event: Event) -> None:
        wanted = self._correlation_id
        if wanted is not None and event.correlation_id != wanted:
            return
        assert self._inbox is not None
        self._inbox.put((event,))

    async def stop(self) -> None:
        self._bus.off(self._on_event)

    def stats(self) -> dict[str, Any]:
        return {}


class _WireFeed:
    def __init__(
        self,
        url: str,
        patterns: list[str],
        correlation_id: str | None,
        connect_timeout: float,
        options: dict[str, Any],
    ) -> None:
        self.description = url
        self._connect_timeout = connect_timeout
        self._inbox: _Inbox | None = None
        self._started = False
        # Made now (it checks its arguments, no I/O), run on evkit's loop by start().
        self._subscriber = Subscriber(
            url, patterns, correlation_id, on_event=self._one, on_events=self._many, **options
        )

    def _one(self, event: dict[str, Any]) -> None:
        assert self._inbox is not None
        self._inbox.put((_as_event(event),))

    def _many(self, events: Sequence[dict[str, Any]]) -> None:
        assert self._inbox is not None
        self._inbox.put([_as_event(event) for event in events])

    async def start(self, inbox: _Inbox) -> None:
        self._inbox = inbox
        self._started = True
        subscriber, timeout = self._subscriber, self._connect_timeout

        async def started() -> None:  # on evkit's loop
            task = asyncio.create_task(subscriber.run())
            task.add_done_callback(lambda done: inbox.end(_ended_by(done)))
            if not await subscriber.connection.wait_started(task, timeout):
                await subscriber.stop()
                raise ConnectError(
                    f"could not connect to {self.description} within {timeout:g} s "
                    f"({subscriber.stats()['last_error'] or 'no answer'}); is the server running?"
                )

        await asyncio.wrap_future(loop_thread().submit(started()))

    async def stop(self) -> None:
        evkit_loop = loop_thread()
        if self._started and evkit_loop.alive:
            await asyncio.wrap_future(evkit_loop.submit(self._subscriber.stop()))

    def stats(self) -> dict[str, Any]:
        if not self._started:
            return {}
        stats = self._subscriber.stats()
        return {key: stats[key] for key in ("connection", "reconnects", "gaps", "last_id")}


def _as_event(message: dict[str, Any]) -> Event:
    identifier = message.get("id")
    return Event(
        message["type"],
        message.get("timestamp", 0),
        message.get("payload") or {},
        None if identifier is None else str(identifier),
    )


def _ended_by(task: asyncio.Task[None]) -> BaseException | None:
    if task.cancelled():
        return None
    return task.exception()


class EventStream:
    """Events of one subscription, for ``async for``; made by :func:`subscribe`.

    ::

        async for event in evkit.subscribe(srv, ["github.*"]):
            print(event.type, event.payload)
            if event.type == "github.api.failed":
                break                           # the subscription ends here

    It starts on the first ``async for`` step (or ``async with``); ``async with`` also
    closes it at the end of the block. Only one ``async for`` should read a stream.
    """

    def __init__(self, feed: _Feed, buffer_size: int) -> None:
        self._feed = feed
        self._buffer_size = buffer_size
        self._inbox: _Inbox | None = None
        self._state = "new"
        self._starting: asyncio.Lock | None = None

    @property
    def source(self) -> str:
        """What the events come from: a URL, or ``in-process bus``."""
        return self._feed.description

    async def start(self) -> None:
        """Subscribe now (``async for`` and ``async with`` do it for you).

        Raises:
            ConnectError: no connection within ``connect_timeout`` (a ConnectionError).
            ProtocolError: the server refused the subscription.
            RuntimeError: the stream was closed.
        """
        if self._state == "closed":
            raise RuntimeError("this event stream was closed; call evkit.subscribe() again")
        if self._state != "new":
            return
        self._state = "starting"
        self._inbox = _Inbox(asyncio.get_running_loop(), self._buffer_size)
        try:
            await self._feed.start(self._inbox)
        except BaseException:
            self._state = "closed"
            await self._feed.stop()
            raise
        self._state = "open"

    async def aclose(self) -> None:
        """End the subscription; an ``async for`` over the stream then ends. Idempotent."""
        if self._state == "closed":
            return
        was = self._state
        self._state = "closed"
        if self._inbox is not None:
            self._inbox.end()
        if was in ("open", "starting"):
            await self._feed.stop()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        try:
            await self.start()
            assert self._inbox is not None
            while (event := await self._inbox.get()) is not None:
                yield event
        finally:
            await self.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    def stats(self) -> dict[str, Any]:
        """``state`` (new, starting, open, closed), ``received``, ``held`` (not read
        yet), ``dropped`` (pushed out of a full buffer); over WebSocket also
        ``connection``, ``reconnects``, ``gaps`` and ``last_id``."""
        inbox = self._inbox
        return {
            "state": self._state,
            "received": inbox.received if inbox else 0,
            "held": inbox.held if inbox else 0,
            "dropped": inbox.dropped if inbox else 0,
            **self._feed.stats(),
        }

    def __repr__(self) -> str:
        return f"<evkit.EventStream {self.source} {self._state}>"


def subscribe(
    source: Any,
    patterns: Iterable[str] | str = ("*",),
    correlation_id: str | None = None,
    *,
    buffer_size: int = DEFAULT_STREAM_BUFFER,
    since: str | None = None,
    epoch: str | None = None,
    batch: tuple[int, float] | None = (1000, 20.0),
    token: str | None = None,
    connect_timeout: float = 10.0,
    ssl: SSLOption = None,
) -> EventStream:
    """Iterate over events with ``async for``, from a broadcaster or the in-process bus.

    ``source`` is a server handle (anything with a ``url``), a ``ws://`` / ``wss://``
    URL, an :class:`~evkit.bus.EventBus`, or the module ``evkit.bus`` (the global bus).
    ``patterns`` and ``correlation_id`` filter as for :func:`evkit.collect`. Over
    WebSocket the stream reconnects and resumes like a collector (``since``, ``epoch``,
    ``batch``, ``token`` and ``ssl`` as there; ``token`` defaults to ``$EVKIT_TOKEN``);
    from a bus it receives what is emitted after its first step, synchronously with ``emit``. A consumer that falls more than
    ``buffer_size`` events behind loses the oldest (counted in ``stats()``).

    Nothing happens until the first ``async for`` step: calling this never blocks.

    Raises:
        TypeError: ``source`` is none of the above.
        ValueError: a URL that is not ``ws://`` / ``wss://``; ``buffer_size`` below 1;
            ``since`` or ``epoch`` with a bus (it keeps no history).
        InvalidPatternError: a pattern is malformed.
        ProtocolError: the correlation id is not a non-empty string.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    wanted = validate_patterns(list(patterns))
    correlation_id = validate_correlation_id(correlation_id)
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
        raise ValueError(f"buffer_size must be a positive integer, got {buffer_size!r}")
    is_bus_module = isinstance(source, types.ModuleType) and source.__name__ == "evkit.bus"
    bus = global_bus if is_bus_module else source
    if isinstance(bus, EventBus):
        if since is not None or epoch is not None:
            raise ValueError(
                "since and epoch resume a broadcaster's stream; the in-process bus keeps "
                "no history: subscribe to a server (evkit.serve()) to replay"
            )
        return EventStream(_BusFeed(bus, wanted, correlation_id), buffer_size)
    url = getattr(source, "url", source)
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise (ValueError if isinstance(url, str) else TypeError)(
            "subscribe() needs a server, a ws:// URL such as ws://127.0.0.1:3000/ws/events, "
            f"an EventBus or evkit.bus; got {url if isinstance(url, str) else source!r}"
        )
    options = {"since": since, "epoch": epoch, "batch": batch, "ssl": ssl}
    options["token"] = token if token is not None else os.environ.get("EVKIT_TOKEN") or None
    return EventStream(
        _WireFeed(url, wanted, correlation_id, connect_timeout, options), buffer_size
    )
