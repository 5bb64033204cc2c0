"""Forwarding a service's event bus to a remote broadcaster: :func:`connect`.

Responsible for: taking the events a process emits on its bus and publishing them to a
broadcaster elsewhere (``ws://HOST:PORT/ws/events``) on one WebSocket connection that
is kept open, re-opened with exponential backoff and jitter when it drops, and
authenticated with ``Authorization: Bearer <token>``. Payloads are redacted before
they leave the process.

A :class:`Forwarder` is three parts: the bus handler, an
:class:`~evkit.client.outbox.Outbox` the handler appends to, and a
:class:`~evkit.client.publisher.Publisher` on evkit's loop thread that drains it
(bursts of ``publish`` messages, each confirmed by a ``ping``; at least once, in
order; rejections counted and not retried).

What it must not do:

- Slow down ``emit()``. The bus handler runs on the emitting thread and only appends
  the event to the bounded outbox and, once per batch, wakes the sender through
  :meth:`evkit._loop.LoopThread.call_soon`. Redaction, serialisation and every byte
  of I/O happen on the loop thread.
- Grow without bound. Past ``queue_size`` waiting events the *oldest* is dropped and
  counted (``stats()["dropped"]``; a warning is logged at the first and every
  10,000th): the newest events describe what the service is doing now.
- Change events. Each is sent as ``{"type", "payload"}`` and nothing is added: the
  receiving broadcaster stamps its own ``timestamp`` and stream ``id``; correlation
  and span ids travel in the payload, untouched.
- Import the server: a forwarder and a broadcaster meet on the wire only.
- Forward to a broadcaster attached to the same bus in the same process: every
  published event would be emitted on that bus again, and forwarded again.

It logs as ``evkit.forward`` (where it lived before :mod:`evkit.client`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import weakref
from collections.abc import Iterable
from typing import Self, TypedDict, Unpack
from urllib.parse import urlsplit

from evkit._loop import loop_thread
from evkit.bus import EventBus, global_bus
from evkit.client.deprecation import renamed_attribute, renamed_keyword
from evkit.client.outbox import Outbox
from evkit.client.publisher import Publisher
from evkit.client.stats import Stats
from evkit.exceptions import ConnectError, WaitTimeout
from evkit.patterns import validate_patterns
from evkit.redaction import DEFAULT_REDACT_KEYS, Redactor
from evkit.tls import SSLOption

__all__ = ["DEFAULT_REDACT_KEYS", "Forwarder", "ForwarderOptions", "connect"]

logger = logging.getLogger("evkit.forward")

DEFAULT_QUEUE_SIZE = 100_000


class ForwarderOptions(TypedDict, total=False):
    """The keyword options of :func:`connect`, as documented on :class:`Forwarder`."""

    patterns: Iterable[str]
    bus: EventBus | None
    queue_size: int
    max_buffer: int | None
    batch_size: int
    flush_interval: float
    redact_keys: Iterable[str]
    connect_timeout: float
    max_message_size: int
    messages_per_second: float
    backoff: tuple[float, float]
    ssl: SSLOption


def connect(url: str, token: str | None = None, **options: Unpack[ForwarderOptions]) -> Forwarder:
    """Forward the events of a bus (the global bus by default) to a remote broadcaster.

    Call it once in a service process; it returns when the first connection is open
    and welcomed, and keeps it open (reconnecting as needed) until
    :meth:`Forwarder.stop`. Events emitted from this call on, whose type matches one of
    the ``patterns``, are sent; the ones emitted while the connection is down are sent
    after it is back, up to ``queue_size`` of them. ``options`` are the keyword
    arguments of :class:`Forwarder`.

    Raises:
        ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL, or an option is out of
            range (InvalidPatternError, a ValueError, for a malformed pattern).
        ConnectError: no connection within ``connect_timeout`` seconds (a
            ConnectionError); the message gives the URL and the last error (a refused
            token shows as HTTP 401).
        LoopError: called on evkit's own loop thread.
    """
    forwarder = Forwarder(url, token, **options)
    forwarder.start()
    return forwarder


class Forwarder:
    """A forward of one bus to one broadcaster; :func:`connect` makes and starts one.

    Use it as a context manager, or call :meth:`stop` (it is also stopped, with a
    short flush, when the interpreter exits). Thread-safe.

    Args:
        url: the broadcaster's ``ws://HOST:PORT/ws/events`` (or ``wss://``).
        token: bearer token (a static token, or a JWT with the ``publish`` scope), sent
            as ``Authorization: Bearer <token>``.
        patterns: which event types to forward (globs).
        bus: the bus to forward (default: the global one).
        queue_size: most events waiting to be sent; past it the oldest are dropped and
            counted in ``stats()["dropped"]``. ``max_buffer`` is its deprecated name.
        batch_size: most events in one ``publish`` message.
        flush_interval: longest an event waits, in seconds, for more to batch with
            (a full batch, :meth:`flush` and :meth:`stop` go at once).
        redact_keys: payload keys (any depth; case and separators ignored) whose values
            are replaced by ``[redacted]`` before anything leaves the process, besides
            the default patterns of :mod:`evkit.redaction`.
        connect_timeout: seconds to wait for the first connection, and for each
            later handshake.
        max_message_size: most bytes in one message; must not exceed the server's
            ``max_message_size`` (64 KiB by default), which closes the connection for
            larger frames. An event that does not fit alone is dropped, logged and
            counted in ``stats()["unsendable"]``.
        messages_per_second: the forwarder paces itself under the server's per-client
            rate limit (200 messages a second by default); raise both together.
        backoff: first and largest delay between reconnection attempts, in seconds
            (each delay is drawn at random up to the exponential bound).
        ssl: for a ``wss://`` URL: an :class:`ssl.SSLContext`, or the path of a CA file
            (PEM) to trust instead of the system's CAs.

    Raises:
        ValueError: a malformed URL or an option out of range.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        patterns: Iterable[str] = ("*",),
        bus: EventBus | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_buffer: int | None = None,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        redact_keys: Iterable[str] = (),
        connect_timeout: float = 10.0,
        max_message_size: int = 64 * 1024,
        messages_per_second: float = 150.0,
        backoff: tuple[float, float] = (0.05, 5.0),
        ssl: SSLOption = None,
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(
                "connect() needs the broadcaster's WebSocket URL, such as "
                f"ws://127.0.0.1:3000/ws/events; got {url!r}"
            )
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ValueError("token must be a non-empty string, or None for a server without auth")
        queue_size = renamed_keyword(
            "connect", "max_buffer", max_buffer, "queue_size", queue_size, DEFAULT_QUEUE_SIZE
        )
        _check_positive_int("queue_size" if max_buffer is None else "max_buffer", queue_size)
        _check_positive_int("batch_size", batch_size)
        _check_positive_int("max_message_size", max_message_size)
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("messages_per_second", messages_per_second),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not flush_interval >= 0:
            raise ValueError(f"flush_interval must be >= 0 seconds, got {flush_interval!r}")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(
                f"backoff must be (first, largest) with 0 < first <= largest, got {backoff!r}"
            )
        self.url = url
        self.patterns = validate_patterns(list(patterns))
        self.bus = bus if bus is not None else global_bus
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.connect_timeout = connect_timeout
        self._loop_thread = loop_thread()
        self._outbox = Outbox(queue_size, batch_size, self._wake, self._overflowed)
        self._publisher = Publisher(
            url,
            self._outbox,
            prepare=Redactor(redact_keys),
            name="forwarder",
            logger=logger,
            token=token,
            connect_timeout=connect_timeout,
            backoff=backoff,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_message_size=max_message_size,
            messages_per_second=messages_per_second,
            ssl=ssl,
        )
        self._handler = self._outbox.put
        self._task: asyncio.Task[None] | None = None  # the loop thread's
        self._stopped = False  # stop() was called
        self._closed = False  # and the connection is closed
        self._attached = False

    @property
    def max_buffer(self) -> int:
        """Deprecated name of :attr:`queue_size`."""
        renamed_attribute("Forwarder", "max_buffer", "queue_size")
        return self.queue_size

    # -- the emitting thread ------------------------------------------------------------------

    def _wake(self, full: bool) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the interpreter is exiting
            self._loop_thread.call_soon(self._publisher.wake, full)

    def _overflowed(self, dropped: int) -> None:
        logger.warning(
            "forwarder to %s holds its maximum of %d events (%s): dropping the oldest; "
            "%d dropped so far",
            self.url,
            self.queue_size,
            self._publisher.connection.status.state,
            dropped,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Attach to the bus, start the sender, and wait for the first connection.

        Raises:
            ConnectError: no connection within ``connect_timeout`` seconds.
            LoopError: called on evkit's own loop thread.
        """
        for pattern in self.patterns:
            self.bus.on(pattern, self._handler)
        self._attached = True
        connection = self._publisher.connection

        async def started() -> bool:
            self._task = asyncio.create_task(
                self._publisher.run(), name=f"evkit-forward {self.url}"
            )
            self._task.add_done_callback(self._on_task_done)
            return await connection.wait_started(self._task, self.connect_timeout)

        try:
            connected = self._loop_thread.run(started(), self.connect_timeout + 10)
        except BaseException:
            self._close(timeout=2.0)
            raise
        if not connected:
            error = connection.status.last_error or "no answer"
            self._close(timeout=2.0)
            raise ConnectError(
                f"could not forward events to {self.url}: not connected within "
                f"{self.connect_timeout:g} s; last error: {error}"
            )
        _live.add(self)
        return self

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every event emitted before this call was sent and confirmed.

        Confirmed means the server answered the ``ping`` that followed it, so it has
        handled the event (published it, or rejected it: see ``stats()["rejected"]``).

        Raises:
            WaitTimeout: not done within ``timeout`` seconds (a TimeoutError; the
                message says how many are waiting and why, when the connection is down).
            LoopError: called on evkit's own loop thread.
        """
        target = self._outbox.appended
        if self._outbox.confirmed(target):
            return
        if self._publisher.connection.status.state == "stopped":
            raise WaitTimeout(
                f"forwarder to {self.url} is stopped with {self.stats()['buffered']} events "
                "not sent"
            )
        try:
            self._loop_thread.run(self._publisher.confirmed(target), timeout)
        except TimeoutError:
            stats = self.stats()
            raise WaitTimeout(
                f"forwarder to {self.url} did not send everything within {timeout:g} s: "
                f"{stats['buffered']} events waiting, state {stats['state']}, "
                f"last error: {stats['last_error']}"
            ) from None

    def stop(self, timeout: float = 5.0) -> None:
        """Detach from the bus, send what is waiting (within ``timeout``), and close.

        Events still waiting after ``timeout`` are not sent (a warning says how many).
        Calling it again does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        _live.discard(self)
        self._detach()
        if self._publisher.connection.status.state != "stopped":
            try:
                self.flush(timeout)
            except TimeoutError:
                stats = self.stats()
                logger.warning(
                    "forwarder to %s stopped with %d events not sent (last error: %s)",
                    self.url,
                    stats["buffered"],
                    stats["last_error"],
                )
        self._close(timeout=min(timeout, 5.0))

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            self.bus.off(self._handler)

    def _close(self, timeout: float) -> None:
        self._stopped = True
        self._detach()

        async def shutdown() -> None:
            await self._publisher.stop()
            task = self._task
            if task is not None and not task.done():
                # The run loop ends once stopping; cut it if closing takes too long.
                done, _ = await asyncio.wait((task,), timeout=timeout)
                if not done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

        if self._loop_thread.alive:
            with contextlib.suppress(TimeoutError):
                self._loop_thread.run(shutdown(), timeout + 5)
        self._closed = True

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("forwarder to %s failed", self.url, exc_info=task.exception())
            self._publisher.connection.error(
                f"{type(task.exception()).__name__}: {task.exception()}"
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what it did --------------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """Counters and state; call it (``stats()``) for a plain dict.

        ``state`` is connecting, connected, backoff or stopped; ``forwarded`` events the
        server confirmed; ``dropped`` events pushed out of a full queue; ``rejected``
        events the server refused (``websocket.error``; when it refused only some
        messages of a burst, which is rare, the last ones are counted);
        ``unsendable`` events that could not be serialised or exceed
        ``max_message_size`` alone; ``reconnects`` connections opened after the
        first; ``buffered`` events not yet confirmed (waiting or in flight);
        ``last_error`` the latest connection error or rejection, or None.
        """
        counts = self._outbox.counts()
        status = self._publisher.connection.status
        return Stats(
            state="stopped" if self._closed else status.state,
            forwarded=counts["forwarded"],
            dropped=counts["dropped"],
            rejected=counts["rejected"],
            unsendable=counts["unsendable"],
            reconnects=max(0, status.connections - 1),
            buffered=counts["buffered"],
            last_error=status.last_error,
        )

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"<evkit.Forwarder {self.url} {stats['state']} forwarded={stats['forwarded']} "
            f"buffered={stats['buffered']} dropped={stats['dropped']} rejected={stats['rejected']}>"
        )


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


_live: weakref.WeakSet[Forwarder] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # Registered after evkit's loop thread's own exit hook, so it runs first: a service
    # that exits normally still sends its last events (briefly: 2 s at most each).
    for forwarder in list(_live):
        with contextlib.suppress(Exception):
            forwarder.stop(timeout=2.0)
