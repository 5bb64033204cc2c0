"""Forwarding a service's event bus to a remote broadcaster: :func:`connect`.

Responsible for: taking the events a process emits on its bus and publishing them to a
broadcaster elsewhere (``ws://HOST:PORT/ws/events``), as ``publish`` messages on one
WebSocket connection that is kept open, re-opened with exponential backoff and jitter
when it drops, and authenticated with ``Authorization: Bearer <token>``. Payloads are
redacted before they leave the process.

What it must not do:

- Slow down ``emit()``. The bus handler runs on the emitting thread and only appends
  the event to a bounded deque and, once per batch, wakes the sender on evkit's loop
  thread (a flag and ``loop.call_soon_threadsafe``, as the broadcaster does).
  Redaction, serialisation and every byte of I/O happen on the loop thread.
- Grow without bound. Past ``max_buffer`` waiting events the *oldest* is dropped and
  counted (``stats["dropped"]``; a warning is logged at the first and every 10,000th).
  The oldest goes because a full buffer means the broadcaster has been unreachable for
  a while: the newest events describe what the service is doing now, which is what a
  live view needs, and it is the same policy as a collector's ``max_events``.
- Change events. Each is sent as ``{"type", "payload"}`` and nothing is added: the
  receiving broadcaster stamps its own ``timestamp`` (when it received the event) and
  stream ``id``. The emitting process's timestamp is not sent; correlation and span
  ids travel in the payload, untouched.
- Import the server: a forwarder and a broadcaster meet on the wire only.
- Forward to a broadcaster attached to the same bus in the same process: every
  published event would be emitted on that bus again, and forwarded again.

Delivery is at least once, in order. The sender publishes what is waiting in messages
of up to ``batch_size`` events (and at most ``max_message_size`` bytes), then a
``ping``; it sends nothing more until the ``pong`` comes back, which confirms every
message before it (a broadcaster handles a connection's messages in order). Events in
a burst that was not confirmed when the connection dropped are put back at the head
of the buffer and sent again after reconnecting, so the server sees them twice only
if it handled them just before the connection died. A ``websocket.error`` reply (for
example ``forbidden``: the token lacks the ``publish`` scope) is logged once per code,
counted in ``stats["rejected"]`` (in events) and not retried; the connection stays.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import random
import threading
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from evkit._loop import LoopThread, loop_thread
from evkit.bus import Event, EventBus, global_bus
from evkit.exceptions import WaitTimeout
from evkit.patterns import validate_patterns
from evkit.protocol import encode
from evkit.redaction import CLIENT_WIRE_LOGGER, DEFAULT_REDACT_KEYS, Redactor

__all__ = ["DEFAULT_REDACT_KEYS", "Forwarder", "connect"]

logger = logging.getLogger("evkit.forward")

_BURST_MESSAGES = 32  # publish messages sent before the ping that confirms them
_REPING_AFTER = 1.0  # seconds without a pong after a rate_limited reply: ping again
_PUBLISH_ENVELOPE = len(b'{"type":"publish","payload":[]}')
_PROBE = b'{"type":"ping","payload":"evkit.forward.probe"}'


def connect(
    url: str,
    token: str | None = None,
    *,
    patterns: Iterable[str] = ("*",),
    bus: EventBus | None = None,
    max_buffer: int = 100_000,
    batch_size: int = 500,
    flush_interval: float = 0.05,
    redact_keys: Iterable[str] = (),
    connect_timeout: float = 10.0,
    max_message_size: int = 64 * 1024,
    messages_per_second: float = 150.0,
    backoff: tuple[float, float] = (0.05, 5.0),
) -> Forwarder:
    """Forward the events of ``bus`` (the global bus by default) to a remote broadcaster.

    Call it once in a service process; it returns when the first connection is open
    and welcomed, and keeps it open (reconnecting as needed) until
    :meth:`Forwarder.stop`. Events emitted from this call on, whose type matches one of
    ``patterns``, are sent; the ones emitted while the connection is down are sent
    after it is back, up to ``max_buffer`` of them.

    Args:
        url: the broadcaster's ``ws://HOST:PORT/ws/events`` (or ``wss://``).
        token: bearer token (a static token, or a JWT with the ``publish`` scope), sent
            as ``Authorization: Bearer <token>``.
        patterns: which event types to forward (globs).
        bus: the bus to forward (default: the global one).
        max_buffer: most events waiting to be sent; past it the oldest are dropped and
            counted in ``stats["dropped"]``.
        batch_size: most events in one ``publish`` message.
        flush_interval: longest an event waits, in seconds, for more to batch with
            (a full batch, :meth:`~Forwarder.flush` and :meth:`~Forwarder.stop` go at
            once).
        redact_keys: payload keys (any depth; case and separators ignored) whose values
            are replaced by ``[redacted]`` before anything leaves the process, besides
            the default patterns of :mod:`evkit.redaction`.
        connect_timeout: seconds to wait for the first connection, and for each
            later handshake.
        max_message_size: most bytes in one message; must not exceed the server's
            ``max_message_size`` (64 KiB by default), which closes the connection for
            larger frames. An event that does not fit alone is dropped, logged and
            counted in ``stats["unsendable"]``.
        messages_per_second: the forwarder paces itself under the server's per-client
            rate limit (200 messages a second by default); raise both together.
        backoff: first and largest delay between reconnection attempts, in seconds
            (each delay is drawn at random up to the exponential bound).

    Raises:
        ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL, or an option is out of
            range (InvalidPatternError, a ValueError, for a malformed pattern).
        ConnectionError: no connection within ``connect_timeout`` seconds; the message
            gives the URL and the last error (a refused token shows as HTTP 401).
        LoopError: called on evkit's own loop thread.
    """
    forwarder = Forwarder(
        url,
        token,
        patterns=patterns,
        bus=bus,
        max_buffer=max_buffer,
        batch_size=batch_size,
        flush_interval=flush_interval,
        redact_keys=redact_keys,
        connect_timeout=connect_timeout,
        max_message_size=max_message_size,
        messages_per_second=messages_per_second,
        backoff=backoff,
    )
    forwarder._start()
    return forwarder


class _Refused(Exception):
    """The server closed a new connection before welcoming it (auth failed)."""


@dataclass(eq=False)
class _Burst:
    """Messages sent and waiting for the pong of the ping that followed them."""

    id: int
    end: int  # events that had left the buffer when this burst was taken
    events: list[Event]  # as taken from the buffer, in order
    kept: list[Event] = field(default_factory=list)  # the encodable ones, in order
    processed: int = 0  # how many of ``events`` were encoded (or found unsendable)
    message_sizes: list[int] = field(default_factory=list)  # events per publish message
    errors: list[str] = field(default_factory=list)  # websocket.error codes, in order
    pings: int = 0
    confirmed: asyncio.Future[None] | None = None


class Forwarder:
    """A running forward of one bus to one broadcaster; made by :func:`connect`.

    Use it as a context manager, or call :meth:`stop` (it is also stopped, with a
    short flush, when the interpreter exits). Thread-safe.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        patterns: Iterable[str] = ("*",),
        bus: EventBus | None = None,
        max_buffer: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        redact_keys: Iterable[str] = (),
        connect_timeout: float = 10.0,
        max_message_size: int = 64 * 1024,
        messages_per_second: float = 150.0,
        backoff: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(
                "connect() needs the broadcaster's WebSocket URL, such as "
                f"ws://127.0.0.1:3000/ws/events; got {url!r}"
            )
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ValueError("token must be a non-empty string, or None for a server without auth")
        _check_positive_int("max_buffer", max_buffer)
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
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size
        self.backoff = backoff
        self._token = token
        self._redact = Redactor(redact_keys)
        query = [
            (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "eventTypes"
        ]
        # Subscribed to nothing: this connection only publishes.
        self._connect_url = urlunsplit(
            parts._replace(query=urlencode([*query, ("eventTypes", "")]))
        )
        self._headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        self._pace_interval = 1.0 / messages_per_second
        self._pace_at = 0.0
        self._loop_thread: LoopThread = loop_thread()
        self._loop = self._loop_thread.loop

        # Shared with emitting threads, under _lock.
        self._lock = threading.Lock()
        self._buffer: deque[Event] = deque(maxlen=max_buffer)
        self._appended = 0
        self._dropped = 0
        self._wakeup_scheduled = False

        # Loop thread only (read elsewhere for stats).
        self._ready = asyncio.Event()  # something was appended since the last take
        self._hurry = asyncio.Event()  # send now: a full batch, flush() or stop()
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._state = "connecting"
        self._burst: _Burst | None = None
        self._burst_ids = 0
        self._confirmed_through = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._forwarded = 0
        self._rejected = 0
        self._unsendable = 0
        self._connections = 0
        self._last_error: str | None = None
        self._warned: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._attached = False

    # -- the emitting thread ------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        with self._lock:
            buffer = self._buffer
            dropped = len(buffer) == self.max_buffer
            if dropped:
                self._dropped += 1  # the deque's maxlen pushes the oldest out
            buffer.append(event)
            self._appended += 1
            wake = not self._wakeup_scheduled
            self._wakeup_scheduled = True
            full = len(buffer) == self.batch_size
            drops = self._dropped
        if wake or full:
            with contextlib.suppress(RuntimeError):  # a closed loop: the interpreter is exiting
                self._loop.call_soon_threadsafe(self._wake, full)
        if dropped and drops % 10_000 == 1:
            logger.warning(
                "forwarder to %s holds its maximum of %d events (%s): dropping the oldest; "
                "%d dropped so far",
                self.url,
                self.max_buffer,
                self._state,
                drops,
            )

    # -- lifecycle ----------------------------------------------------------------------

    def _start(self) -> None:
        """Attach to the bus, start the sender, wait for the first connection."""
        for pattern in self.patterns:
            self.bus.on(pattern, self._on_event)
        self._attached = True

        async def start() -> bool:
            self._task = asyncio.create_task(self._run(), name=f"evkit-forward {self.url}")
            self._task.add_done_callback(self._on_task_done)
            welcomed = asyncio.ensure_future(self._connected.wait())
            await asyncio.wait(
                (welcomed, self._task),
                timeout=self.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            welcomed.cancel()
            return self._connected.is_set()

        try:
            connected = self._loop_thread.run(start(), self.connect_timeout + 10)
        except BaseException:
            self._close(timeout=2.0)
            raise
        if not connected:
            error = self._last_error or "no answer"
            self._close(timeout=2.0)
            raise ConnectionError(
                f"could not forward events to {self.url}: not connected within "
                f"{self.connect_timeout:g} s; last error: {error}"
            )
        _live.add(self)

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every event emitted before this call was sent and confirmed.

        Confirmed means the server answered the ``ping`` that followed it, so it has
        handled the event (published it, or rejected it: see ``stats["rejected"]``).

        Raises:
            WaitTimeout: not done within ``timeout`` seconds (a TimeoutError; the
                message says how many are waiting and why, when the connection is down).
            LoopError: called on evkit's own loop thread.
        """
        with self._lock:
            target = self._appended
        if self._confirmed_through >= target:
            return
        if self._task is None or self._task.done():
            raise WaitTimeout(
                f"forwarder to {self.url} is stopped with {self.stats['buffered']} events not sent"
            )

        async def confirmed() -> None:
            if self._confirmed_through >= target:
                return
            waiter = asyncio.get_running_loop().create_future()
            entry = (target, waiter)
            self._waiters.append(entry)
            self._hurry.set()
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)

        try:
            self._loop_thread.run(confirmed(), timeout)
        except TimeoutError:
            stats = self.stats
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
        if self._task is not None and not self._task.done():
            try:
                self.flush(timeout)
            except TimeoutError:
                logger.warning(
                    "forwarder to %s stopped with %d events not sent (last error: %s)",
                    self.url,
                    self.stats["buffered"],
                    self._last_error,
                )
        self._close(timeout=min(timeout, 5.0))

    def _detach(self) -> None:
        if self._attached:
            self._attached = False
            self.bus.off(self._on_event)

    def _close(self, timeout: float) -> None:
        self._stopped = True
        self._detach()

        async def shutdown() -> None:
            self._stopping.set()
            task = self._task
            if task is not None and not task.done():
                # The run loop closes its connection when _stopping is set; cut it if
                # the closing handshake takes too long.
                done, _ = await asyncio.wait((task,), timeout=timeout)
                if not done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._state = "stopped"
            for _, waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(ConnectionError(f"forwarder to {self.url} was stopped"))

        if self._loop_thread.alive:
            with contextlib.suppress(TimeoutError):
                self._loop_thread.run(shutdown(), timeout + 5)
        self._state = "stopped"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what it did -------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """Counters and state.

        ``state`` is connecting, connected, backoff or stopped; ``forwarded`` events the
        server confirmed; ``dropped`` events pushed out of a full buffer; ``rejected``
        events the server refused (``websocket.error``; when it refused only some
        messages of a burst, which is rare, the last ones are counted);
        ``unsendable`` events that could not be serialised or exceed
        ``max_message_size`` alone; ``reconnects`` connections opened after the
        first; ``buffered`` events not yet confirmed (waiting or in flight);
        ``last_error`` the latest connection error or rejection, or None.
        """
        with self._lock:
            waiting = len(self._buffer)
            dropped = self._dropped
        burst = self._burst
        return {
            "state": self._state,
            "forwarded": self._forwarded,
            "dropped": dropped,
            "rejected": self._rejected,
            "unsendable": self._unsendable,
            "reconnects": max(0, self._connections - 1),
            "buffered": waiting + (len(burst.events) if burst is not None else 0),
            "last_error": self._last_error,
        }

    def __repr__(self) -> str:
        stats = self.stats
        return (
            f"<evkit.Forwarder {self.url} {stats['state']} forwarded={stats['forwarded']} "
            f"buffered={stats['buffered']} dropped={stats['dropped']} rejected={stats['rejected']}>"
        )

    # -- the loop thread: connection ----------------------------------------------------

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("forwarder to %s failed", self.url, exc_info=task.exception())
            self._last_error = f"{type(task.exception()).__name__}: {task.exception()}"
            self._state = "stopped"

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._stopping.is_set():
                self._state = "connecting"
                welcomed = False
                try:
                    async with websocket_connect(
                        self._connect_url,
                        logger=CLIENT_WIRE_LOGGER,
                        additional_headers=self._headers,
                        open_timeout=self.connect_timeout,
                        close_timeout=2,
                    ) as ws:
                        if self._stopping.is_set():
                            break
                        await self._welcome(ws)
                        welcomed = True
                        await self._session(ws)
                except InvalidStatus as exc:
                    self._refused_handshake(exc)
                except _Refused as exc:
                    self._error(str(exc), warn="closed-before-welcome")
                except (OSError, ConnectionClosed, TimeoutError, InvalidHandshake) as exc:
                    # InvalidHandshake: the peer closed or garbled the handshake (a server
                    # restarting, a proxy); like a refused connection, retry.
                    self._error(f"{type(exc).__name__}: {exc}")
                except Exception as exc:
                    # Anything else (a garbled message) ends this connection, not the
                    # forwarder: it is logged, and the next connection may do better.
                    logger.exception("forwarder to %s: unexpected error", self.url)
                    self._error(f"{type(exc).__name__}: {exc}")
                finally:
                    self._connected.clear()
                    self._requeue_burst()
                if self._stopping.is_set():
                    break
                attempt = 1 if welcomed else attempt + 1
                self._state = "backoff"
                first, largest = self.backoff
                delay = random.uniform(0, min(largest, first * 2 ** min(attempt, 16)))
                logger.info(
                    "forwarder reconnecting to %s in %.2f s (%s)", self.url, delay, self._last_error
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            self._state = "stopped"
            self._connected.clear()

    async def _welcome(self, ws: ClientConnection) -> None:
        """Wait for ``websocket.connected``.

        Raises:
            _Refused: the server closed the connection first (authentication).
            TimeoutError: no welcome within ``connect_timeout``.
        """
        if self._token is None:
            # Without credentials, a server with auth waits for an auth message until its
            # auth_timeout; any other first message makes it refuse at once.
            await ws.send(_PROBE, text=True)
        try:
            async with asyncio.timeout(self.connect_timeout):
                while True:
                    message = orjson.loads(await ws.recv())
                    if isinstance(message, dict) and message.get("type") == "websocket.connected":
                        break
        except ConnectionClosed as exc:
            close = exc.rcvd
            reason = (
                f"{close.code} {close.reason}".strip() if close is not None else "no close frame"
            )
            if close is not None and close.code == 1008:
                hint = (
                    "the server requires a token: pass token=..."
                    if self._token is None
                    else "the server refused the token"
                )
                raise _Refused(
                    f"unauthorized: {hint} (it closed the connection with {reason})"
                ) from None
            raise
        self._connections += 1
        self._state = "connected"
        self._connected.set()
        if self._connections > 1:
            logger.info("forwarder reconnected to %s", self.url)

    def _refused_handshake(self, exc: InvalidStatus) -> None:
        response = exc.response
        detail = ""
        try:
            body = orjson.loads(bytes(response.body or b"{}"))
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                detail = f": {body['error']}"
        except orjson.JSONDecodeError:
            detail = f": {bytes(response.body or b'').decode(errors='replace')[:200]}"
        status = response.status_code
        message = (
            f"the server refused the connection: HTTP {status} {response.reason_phrase}{detail}"
        )
        if status == 401:
            message += " (check the token)"
        elif status == 403:
            message += " (the token may lack a scope, or the origin is not allowed)"
        # 400, 401, 403 and 404 are configuration errors a retry will not fix by itself.
        self._error(message, warn=f"http-{status}" if status in (400, 401, 403, 404) else None)

    def _error(self, message: str, warn: str | None = None) -> None:
        """Record an error; log a warning the first time for ``warn`` (a config error)."""
        self._last_error = message
        if warn is not None and warn not in self._warned:
            self._warned.add(warn)
            logger.warning("forwarder to %s: %s; retrying with backoff", self.url, message)

    async def _session(self, ws: ClientConnection) -> None:
        """Send and read on one open connection until it closes (raises ConnectionClosed)."""
        reader = asyncio.ensure_future(self._read(ws))
        sender = asyncio.ensure_future(self._send_loop(ws))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((reader, sender, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, sender, stopping):
                task.cancel()
            results = await asyncio.gather(reader, sender, stopping, return_exceptions=True)
        if self._stopping.is_set():
            return  # leaving the `async with` closes the connection
        for result in results:
            if isinstance(result, Exception):
                raise result
        self._error(f"the server closed the connection ({ws.close_code} {ws.close_reason})")

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            message = orjson.loads(raw)
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            payload = message.get("payload")
            payload = payload if isinstance(payload, dict) else {}
            if kind == "pong":
                burst = self._burst
                if burst is not None and payload.get("echo") == burst.id:
                    self._settle(burst)
            elif kind == "websocket.error":
                self._rejected_message(payload)
            # Nothing else is expected: this connection is subscribed to no event.

    def _rejected_message(self, payload: dict[str, Any]) -> None:
        code = str(payload.get("code") or "unknown")
        error = str(payload.get("error") or "")
        burst = self._burst
        if burst is not None:
            burst.errors.append(code)
        self._last_error = f"rejected: {code}: {error}"
        if f"rejected-{code}" not in self._warned:
            self._warned.add(f"rejected-{code}")
            hint = (
                "; lower messages_per_second, or raise the server's limit"
                if code == "rate_limited"
                else ""
            )
            logger.warning(
                "broadcaster %s rejected forwarded events: %s (%s); they are counted in "
                "stats['rejected'] and not sent again%s",
                self.url,
                error,
                code,
                hint,
            )

    # -- the loop thread: sending -------------------------------------------------------

    def _wake(self, full: bool) -> None:
        self._ready.set()
        if full:
            self._hurry.set()

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            while events := self._take():
                await self._send_burst(ws, events)
            await self._ready.wait()
            if not self._hurry.is_set() and self.flush_interval > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self.flush_interval)
            self._ready.clear()
            self._hurry.clear()

    def _take(self) -> list[Event]:
        """Pop the next burst's events (the flag is cleared first: see _on_event)."""
        limit = self.batch_size * _BURST_MESSAGES
        with self._lock:
            self._wakeup_scheduled = False
            buffer = self._buffer
            count = min(len(buffer), limit)
            events = [buffer.popleft() for _ in range(count)]
            end = self._appended - len(buffer)
        if events:
            self._burst_ids += 1
            self._burst = _Burst(self._burst_ids, end, events)
        return events

    async def _send_burst(self, ws: ClientConnection, events: list[Event]) -> None:
        burst = self._burst
        assert burst is not None
        parts: list[bytes] = []
        size = 0
        limit = self.max_message_size - _PUBLISH_ENVELOPE
        for event in events:
            body = self._encode(event, limit)
            if body is not None:
                if parts and (len(parts) >= self.batch_size or size + len(body) + 1 > limit):
                    await self._publish(ws, burst, parts)
                    parts, size = [], 0
                parts.append(body)
                size += len(body) + 1
                burst.kept.append(event)
            burst.processed += 1
        if parts:
            await self._publish(ws, burst, parts)
        if not burst.message_sizes:
            self._settle(burst)  # nothing was encodable: nothing to confirm
            return
        burst.confirmed = asyncio.get_running_loop().create_future()
        await self._ping(ws, burst)
        while True:
            done, _ = await asyncio.wait((burst.confirmed,), timeout=_REPING_AFTER)
            if done:
                return
            if burst.errors and burst.errors[-1] == "rate_limited":
                # The ping itself may have been refused: ask again (a later pong with
                # this id confirms the same messages).
                await self._ping(ws, burst)

    def _encode(self, event: Event, limit: int) -> bytes | None:
        try:
            body = b'{"type":%b,"payload":%b}' % (
                orjson.dumps(event.type),
                encode(self._redact(event.payload)),
            )
        except Exception as exc:  # InvalidEventError, RecursionError (too deep to redact)...
            # One event that cannot be encoded must never wedge the stream behind it.
            self._unsendable += 1
            logger.error("forwarder cannot send %s: %s: %s", event.type, type(exc).__name__, exc)
            return None
        if len(body) > limit:
            self._unsendable += 1
            logger.error(
                "forwarder cannot send %s: %d bytes encoded, more than max_message_size=%d "
                "allows (the server would close the connection)",
                event.type,
                len(body),
                self.max_message_size,
            )
            return None
        return body

    async def _publish(self, ws: ClientConnection, burst: _Burst, parts: list[bytes]) -> None:
        await self._pace()
        await ws.send(b'{"type":"publish","payload":[%b]}' % b",".join(parts), text=True)
        burst.message_sizes.append(len(parts))

    async def _ping(self, ws: ClientConnection, burst: _Burst) -> None:
        await self._pace()
        await ws.send(b'{"type":"ping","payload":%d}' % burst.id, text=True)
        burst.pings += 1

    async def _pace(self) -> None:
        # A token bucket in its "theoretical arrival time" form: up to 2 s worth of
        # messages go at once, then one every 1 / messages_per_second.
        now = asyncio.get_running_loop().time()
        self._pace_at = max(self._pace_at, now) + self._pace_interval
        delay = self._pace_at - now - 2.0
        if delay > 0:
            await asyncio.sleep(delay)

    def _settle(self, burst: _Burst) -> None:
        """The server answered the burst's ping: count it, and release flush() waiters."""
        if self._burst is not burst:
            return
        self._burst = None
        if burst.confirmed is not None and not burst.confirmed.done():
            burst.confirmed.set_result(None)
        # Each refused ping also got an error; the rest are publish messages refused.
        refused = min(len(burst.message_sizes), max(0, len(burst.errors) - (burst.pings - 1)))
        rejected = sum(burst.message_sizes[len(burst.message_sizes) - refused :])
        self._rejected += rejected
        self._forwarded += len(burst.kept) - rejected
        self._confirmed_through = burst.end
        if self._waiters:
            through = self._confirmed_through
            for target, waiter in self._waiters:
                if target <= through and not waiter.done():
                    waiter.set_result(None)

    def _requeue_burst(self) -> None:
        """Put an unconfirmed burst back at the head of the buffer (at least once)."""
        burst = self._burst
        if burst is None:
            return
        self._burst = None
        events = burst.kept + burst.events[burst.processed :]
        with self._lock:
            room = self.max_buffer - len(self._buffer)
            if len(events) > room:  # drop the oldest, as _on_event does
                self._dropped += len(events) - room
                events = events[len(events) - room :]
            self._buffer.extendleft(reversed(events))


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
