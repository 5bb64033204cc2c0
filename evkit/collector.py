"""The notebook collector: subscribed events buffered column-wise, as a pandas DataFrame.

:func:`collect` runs a :class:`~evkit.client.Subscriber` on evkit's loop thread and
returns a :class:`Collector` at once (after the first connection is welcomed). Each
event is flattened on arrival into per-column lists (``id``, ``timestamp``, ``type``,
``correlation_id``, ``duration_ms`` and one list per payload key, nested keys joined
by ``.``), so :meth:`Collector.to_dataframe` only converts what arrived since the
previous call and appends it to the frame it already built (the columns and their
conversion are :mod:`evkit.columns`). The buffer is bounded by ``buffer_size`` events:
the oldest go first, and that is counted in ``stats()``.

:func:`capture` is the same collector fed straight from the in-process bus, with no
socket: for tests and quick looks.

Methods are thread-safe; blocking ones (``wait``, ``subscribe``...) must not be called
on evkit's loop thread, which they reach only through :mod:`evkit._loop`. This module
never imports the server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self

from evkit._loop import loop_thread
from evkit.bus import Event, EventBus, global_bus
from evkit.client.deprecation import renamed_attribute, renamed_keyword
from evkit.client.stats import Stats
from evkit.client.subscriber import Subscriber
from evkit.columns import FIXED_COLUMNS, ColumnBuffer, empty_frame
from evkit.exceptions import ConnectError, WaitTimeout
from evkit.patterns import validate_patterns
from evkit.protocol import validate_correlation_id
from evkit.tls import SSLOption

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FIXED_COLUMNS", "Collector", "capture", "collect"]

logger = logging.getLogger("evkit.collector")

_RECENT = 1_000
DEFAULT_BUFFER_SIZE = 1_000_000


class Collector:
    """Events of one subscription, buffered and convertible to a DataFrame.

    Made by :func:`collect` (over WebSocket) or :func:`capture` (from the bus).
    Use it as a context manager, or call :meth:`stop`. ``buffer_size`` is the most
    events held (``max_events``, its deprecated name, still works).
    """

    def __init__(
        self,
        source: str,
        patterns: Iterable[str],
        correlation_id: str | None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        max_events: int | None = None,
    ) -> None:
        buffer_size = renamed_keyword(
            "Collector", "max_events", max_events, "buffer_size", buffer_size, DEFAULT_BUFFER_SIZE
        )
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive integer, got {buffer_size!r}")
        self.url = source
        self.buffer_size = buffer_size
        self._patterns = validate_patterns(list(patterns))
        self._correlation_id = correlation_id
        self._lock = threading.Condition()
        self._pending = ColumnBuffer()
        self._frame: pd.DataFrame | None = None
        self._frame_rows = 0
        self._recent: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        self._type_counts: Counter[str] = Counter()
        self._received = 0
        self._dropped = 0
        self._started = time.monotonic()
        self._rate_window: deque[tuple[float, int]] = deque(maxlen=64)
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._state = "running"

    # -- ingest (loop thread or emitting thread) -----------------------------------------

    def _ingest(self, event: dict[str, Any]) -> None:
        self._ingest_many((event,))

    def _ingest_many(self, events: Sequence[dict[str, Any]]) -> None:
        """Take in events (one lock and one wake-up per call, whatever the count)."""
        with self._lock:
            append = self._pending.append
            counts = self._type_counts
            for event in events:
                append(event)
                counts[event.get("type", "")] += 1
            self._recent.extend(events)
            self._received += len(events)
            over = self._frame_rows + len(self._pending) - self.buffer_size
            # Trim in steps of a tenth, so dropping stays cheap per event.
            if over > max(1, self.buffer_size // 10):
                self._drop_oldest(over)
            self._lock.notify_all()
        for listener in self._listeners:
            try:
                for event in events:
                    listener(event)
            except Exception:
                # A listener (a dashboard, say) must never stop the stream it watches.
                logger.exception("collector listener %r failed", listener)

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call ``listener(event)`` for every event taken in, on the ingesting thread.

        It must be quick and must not block (mark something dirty, count); an exception
        it raises is logged and does not stop the collector.
        """
        self._listeners = [*self._listeners, listener]  # replaced, never mutated in place

    def remove_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        self._listeners = [known for known in self._listeners if known is not listener]

    def _drop_oldest(self, count: int) -> None:
        from_frame = min(count, self._frame_rows)
        if from_frame:
            assert self._frame is not None
            self._frame = self._frame.iloc[from_frame:].reset_index(drop=True)
            self._frame_rows -= from_frame
        rest = count - from_frame
        if rest:
            self._pending.drop_oldest(rest)
        self._dropped += count

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return min(self._frame_rows + len(self._pending), self.buffer_size)

    def to_dataframe(self) -> pd.DataFrame:
        """The buffered events as a DataFrame (a new object each call; safe to modify).

        Columns: ``id, timestamp, type, service, entity, action, correlation_id,
        duration_ms``, then one per payload key (nested keys joined by ``.``; a key named
        like a fixed column becomes ``payload.<key>``). Only events that arrived since
        the previous call are converted.
        """
        import pandas as pd

        with self._lock:
            if len(self._pending):
                chunk = self._pending.to_frame()
                self._pending = ColumnBuffer()
                if self._frame is None or not self._frame_rows:
                    self._frame = chunk
                else:
                    self._frame = pd.concat([self._frame, chunk], ignore_index=True, sort=False)
                self._frame_rows = len(self._frame)
            over = self._frame_rows - self.buffer_size
            if over > 0:
                self._drop_oldest(over)
            frame = self._frame if self._frame is not None else empty_frame()
            return frame.copy(deep=False)

    @property
    def df(self) -> pd.DataFrame:
        """Same as :meth:`to_dataframe`."""
        return self.to_dataframe()

    def recent(self, count: int = 50) -> list[dict[str, Any]]:
        """The latest events as received (newest last), at most 1,000."""
        with self._lock:
            return list(self._recent)[-count:]

    @property
    def max_events(self) -> int:
        """Deprecated name of :attr:`buffer_size`."""
        renamed_attribute("Collector", "max_events", "buffer_size")
        return self.buffer_size

    @property
    def stats(self) -> Stats:
        """Counts and state; call it (``col.stats()``) for a plain dict.

        ``state`` (running, failed or stopped), ``received``, ``held``, ``dropped``
        (pushed out of a full buffer), ``rate`` per second, ``types`` (count per event
        type), ``reconnects``, ``replayed``, ``gaps``; over WebSocket also
        ``connection`` (the subscriber's state), ``last_id`` and ``last_error``.
        """
        with self._lock:
            rows = self._frame_rows + len(self._pending)
            return Stats(
                state=self._state,
                received=self._received,
                held=min(rows, self.buffer_size),
                # Rows past buffer_size are trimmed lazily but already count as dropped.
                dropped=self._dropped + max(0, rows - self.buffer_size),
                rate=self._rate(),
                types=dict(self._type_counts),
                **self._connection_stats(),
            )

    def _connection_stats(self) -> dict[str, Any]:
        return {"reconnects": 0, "replayed": 0, "gaps": 0}

    def _rate(self) -> float:
        now = time.monotonic()
        window = self._rate_window
        window.append((now, self._received))
        while len(window) > 2 and now - window[0][0] > 5.0:
            window.popleft()
        then, count = window[0]
        if now - then < 0.5:
            elapsed = now - self._started
            return self._received / elapsed if elapsed > 0 else 0.0
        return (self._received - count) / (now - then)

    @property
    def patterns(self) -> list[str]:
        return list(self._patterns)

    @property
    def correlation_id(self) -> str | None:
        return self._correlation_id

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, count: int | None = None, timeout: float = 10.0) -> Collector:
        """Block until ``count`` events are held (default: one more than now).

        Returns self, so ``col.wait(100).df`` reads naturally.

        Raises:
            WaitTimeout: not enough events in ``timeout`` seconds; the message says how
                many arrived, of which types, and the connection's state.
            ValueError: ``count`` exceeds ``buffer_size`` (it could never be reached).
        """
        with self._lock:
            target = self._received + 1 if count is None else count
            if count is not None and count > self.buffer_size:
                raise ValueError(
                    f"wait(count={count}) can never be satisfied: this collector holds at "
                    f"most buffer_size={self.buffer_size} events"
                )

            def held() -> int:
                return self._frame_rows + len(self._pending)

            condition = (
                (lambda: self._received >= target) if count is None else (lambda: held() >= target)
            )
            if not self._lock.wait_for(condition, timeout):
                raise WaitTimeout(
                    f"waited {timeout:g} s for {'another event' if count is None else f'{count} events'}; "
                    f"{held()} held ({self._describe_arrivals()})"
                )
        return self

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Block until an event satisfies ``predicate`` and return it.

        The last 1,000 events already received are checked first, then each new one.

        Raises:
            WaitTimeout: none did in ``timeout`` seconds (the message says what arrived).
        """
        deadline = time.monotonic() + timeout
        checked = 0
        with self._lock:
            while True:
                recent = list(self._recent)
                new = self._received - checked
                for event in recent[-new:] if checked and new < len(recent) else recent:
                    if predicate(event):
                        return event
                checked = self._received
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"waited {timeout:g} s for an event matching the predicate; none did "
                        f"({self._describe_arrivals()})"
                    )
                self._lock.wait_for(functools.partial(self._received_more_than, checked), remaining)

    def _received_more_than(self, count: int) -> bool:
        return self._received > count

    def _describe_arrivals(self) -> str:
        top = ", ".join(f"{t} {n}" for t, n in self._type_counts.most_common(5)) or "nothing"
        connection = self._connection_stats()
        return (
            f"arrived: {self._received} events ({top}); patterns {self._patterns}, "
            f"correlation {self._correlation_id!r}; source {self.url}, state {self._state}, "
            f"{connection.get('reconnects', 0)} reconnects"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget every buffered event (counters other than ``held`` are kept)."""
        with self._lock:
            self._pending = ColumnBuffer()
            self._frame = None
            self._frame_rows = 0
            self._recent.clear()

    def stop(self) -> None:
        """Stop receiving. The buffered events stay readable."""
        with self._lock:
            self._state = "stopped"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"<evkit.Collector {self.url} patterns={self._patterns} "
            f"held={stats['held']} state={stats['state']}>"
        )

    def _repr_html_(self) -> str:
        from evkit._notebook_repr import collector_html

        return collector_html(
            self.url, self._patterns, self._correlation_id, self.buffer_size, self.stats()
        )


class WebSocketCollector(Collector):
    """A collector fed by a :class:`~evkit.client.Subscriber` on evkit's loop thread."""

    def __init__(
        self,
        url: str,
        patterns: Iterable[str],
        correlation_id: str | None,
        buffer_size: int,
        connect_timeout: float,
        *,
        since: str | None = None,
        epoch: str | None = None,
        batch: tuple[int, float] | None = (1000, 20.0),
        token: str | None = None,
        ssl: SSLOption = None,
    ) -> None:
        super().__init__(url, patterns, correlation_id, buffer_size)
        self._loop_thread = loop_thread()
        self._subscriber = Subscriber(
            url,
            self._patterns,
            correlation_id,
            on_event=self._ingest,
            on_events=self._ingest_many,
            since=since,
            epoch=epoch,
            batch=batch,
            token=token,
            ssl=ssl,
        )
        subscriber = self._subscriber

        async def started() -> None:
            task = asyncio.create_task(subscriber.run())
            task.add_done_callback(self._on_done)
            # Raises what ended the subscriber (a refused subscription).
            if not await subscriber.connection.wait_started(task, connect_timeout):
                await subscriber.stop()
                raise ConnectError(
                    f"could not connect to {url} within {connect_timeout:g} s "
                    f"({subscriber.stats()['last_error'] or 'no answer'}); is the server running?"
                )

        self._loop_thread.run(started(), timeout=connect_timeout + 5)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            if self._state != "stopped":
                self._state = "failed" if not task.cancelled() and task.exception() else "stopped"

    def _connection_stats(self) -> dict[str, Any]:
        stats = self._subscriber.stats()
        return {
            "connection": stats["state"],
            "reconnects": stats["reconnects"],
            "replayed": stats["replayed"],
            "gaps": stats["gaps"],
            "last_id": stats["last_id"],
            "last_error": stats["last_error"],
        }

    def subscribe(
        self, patterns: Iterable[str], *, replace: bool = False, timeout: float = 10.0
    ) -> list[str]:
        """Add patterns (or, with ``replace``, set exactly these); returns the set now held.

        Raises:
            InvalidPatternError, ProtocolError: rejected (nothing changed).
            ConnectError: not connected right now (a ConnectionError).
        """
        reply = self._loop_thread.run(
            self._subscriber.subscribe(patterns, replace=replace, timeout=timeout), timeout + 1
        )
        self._patterns = list(reply["subscriptions"])
        return self.patterns

    def unsubscribe(self, patterns: Iterable[str], timeout: float = 10.0) -> list[str]:
        """Remove patterns; returns the set now held (raises as :meth:`subscribe`)."""
        reply = self._loop_thread.run(self._subscriber.unsubscribe(patterns, timeout), timeout + 1)
        self._patterns = list(reply["subscriptions"])
        return self.patterns

    def set_correlation(self, correlation_id: str | None, timeout: float = 10.0) -> None:
        """Receive only events of ``correlation_id`` from now on (None: all)."""
        self._loop_thread.run(
            self._subscriber.subscribe([], correlation_id=correlation_id, timeout=timeout),
            timeout + 1,
        )
        self._correlation_id = correlation_id

    def drop_connection(self) -> None:
        """Cut the connection abruptly (it reconnects and resumes); for tests and drills."""
        self._loop_thread.run(self._subscriber.drop_connection(), 5)

    def stop(self) -> None:
        with self._lock:
            if self._state == "stopped":
                return
        super().stop()
        if self._loop_thread.alive:
            self._loop_thread.run(self._subscriber.stop(), 10)


class BusCollector(Collector):
    """A collector fed straight from an in-process :class:`~evkit.bus.EventBus`."""

    def __init__(
        self, bus: EventBus, patterns: Iterable[str], correlation_id: str | None, buffer_size: int
    ) -> None:
        super().__init__("in-process bus", patterns, correlation_id, buffer_size)
        self._bus = bus
        for pattern in self._patterns:
            bus.on(pattern, self._on_event)

    def subscribe(self, patterns: Iterable[str], *, replace: bool = False) -> list[str]:
        """Add patterns (or, with ``replace``, set exactly these); returns the set now held."""
        wanted = validate_patterns(list(patterns))
        if replace:
            self._bus.off(self._on_event)
            self._patterns = []
        for pattern in wanted:
            if pattern not in self._patterns:
                self._bus.on(pattern, self._on_event)
                self._patterns.append(pattern)
        return self.patterns

    def unsubscribe(self, patterns: Iterable[str]) -> list[str]:
        """Remove patterns; returns the set now held."""
        for pattern in validate_patterns(list(patterns)):
            if pattern in self._patterns:
                self._bus.off(self._on_event, pattern)
                self._patterns.remove(pattern)
        return self.patterns

    def set_correlation(self, correlation_id: str | None) -> None:
        """Keep only events of ``correlation_id`` from now on (None: all)."""
        self._correlation_id = validate_correlation_id(correlation_id)

    def _on_event(self, event: Event) -> None:
        if self._state == "stopped":
            return
        if self._correlation_id is not None and event.correlation_id != self._correlation_id:
            return
        # No stream id in process: a broadcaster may be assigning one on its own thread
        # right now, so it is left out rather than read half the time.
        self._ingest({"type": event.type, "timestamp": event.timestamp, "payload": event.payload})

    def stop(self) -> None:
        super().stop()
        self._bus.off(self._on_event)


def collect(
    url_or_server: Any,
    patterns: Iterable[str] = ("*",),
    correlation_id: str | None = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    *,
    connect_timeout: float = 10.0,
    since: str | None = None,
    epoch: str | None = None,
    batch: tuple[int, float] | None = (1000, 20.0),
    token: str | None = None,
    ssl: SSLOption = None,
    max_events: int | None = None,
) -> WebSocketCollector:
    """Subscribe to a broadcaster and buffer what arrives; returns once connected.

    ``url_or_server`` is a ``ws://.../ws/events`` URL or a server handle (anything with
    a ``url``). The subscription (patterns and correlation filter) applies from the
    first event. The collector reconnects and resumes on its own when the connection
    drops. ``buffer_size`` is the most events held; past it the oldest go (counted in
    ``stats()["dropped"]``); ``max_events`` is its deprecated name. ``since`` (an event
    id, with the ``epoch`` it came from when known) starts with the history after it:
    a collector can pick up where a saved one stopped. ``batch`` is
    ``(maxEvents, maxDelayMs)`` for batched delivery (the default: up to 1,000 events a
    frame, held at most 20 ms); None asks for one frame per event. ``token``
    authenticates to a server with auth on (default: ``$EVKIT_TOKEN``). ``ssl``, for a
    ``wss://`` URL: an :class:`ssl.SSLContext`, or the path of a CA file (PEM) to trust
    instead of the system's CAs (a server with a private or self-signed certificate).

    Raises:
        ValueError: the URL is not a ``ws://`` or ``wss://`` URL, or ``ssl`` was given for
            a ``ws://`` URL or names a CA file that cannot be used.
        InvalidPatternError: a pattern is malformed.
        ProtocolError: the server refused the subscription.
        ConnectError: no connection within ``connect_timeout`` seconds (a
            ConnectionError).
    """
    buffer_size = renamed_keyword(
        "collect", "max_events", max_events, "buffer_size", buffer_size, DEFAULT_BUFFER_SIZE
    )
    url = getattr(url_or_server, "url", url_or_server)
    if not isinstance(url, str):
        raise TypeError(
            f"collect() needs a ws:// URL or a server, got {type(url_or_server).__name__}"
        )
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(
            f"collect() needs a WebSocket URL such as ws://127.0.0.1:3000/ws/events, got {url!r}"
        )
    if isinstance(patterns, str):
        patterns = [patterns]
    return WebSocketCollector(
        url,
        patterns,
        correlation_id,
        buffer_size,
        connect_timeout,
        since=since,
        epoch=epoch,
        batch=batch,
        token=token if token is not None else os.environ.get("EVKIT_TOKEN") or None,
        ssl=ssl,
    )


def capture(
    patterns: Iterable[str] = ("*",),
    correlation_id: str | None = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    *,
    bus: EventBus | None = None,
    max_events: int | None = None,
) -> BusCollector:
    """Collect events straight from the in-process bus (no server, no socket).

    Events emitted after this call are captured synchronously on the emitting thread,
    so ``to_dataframe()`` sees them as soon as ``emit()`` returns. ``buffer_size`` as
    for :func:`collect`.
    """
    buffer_size = renamed_keyword(
        "capture", "max_events", max_events, "buffer_size", buffer_size, DEFAULT_BUFFER_SIZE
    )
    if isinstance(patterns, str):
        patterns = [patterns]
    return BusCollector(
        bus if bus is not None else global_bus, patterns, correlation_id, buffer_size
    )
