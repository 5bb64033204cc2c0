"""An asyncio subscriber of ``/ws/events`` that reconnects and resumes where it left off.

:class:`Subscriber` connects with its patterns and correlation filter in the URL, so
they apply atomically from the first event; it hands every event to a callback, and
when the connection drops it reconnects with exponential backoff and full jitter,
resuming with ``since`` (the last id it saw) and ``epoch`` (the stream it saw it on).
The server then replays what was missed and says, in ``websocket.replayed``, whether
that was everything; when it was not, the subscriber counts a gap.

No pandas here: this is the wire side of the collector, usable on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from evkit.exceptions import ProtocolError
from evkit.patterns import validate_patterns
from evkit.protocol import validate_correlation_id
from evkit.redaction import CLIENT_WIRE_LOGGER

__all__ = ["Subscriber", "SubscriberStats"]

logger = logging.getLogger("evkit.client")

EventCallback = Callable[[dict[str, Any]], None]


@dataclass
class SubscriberStats:
    """What a subscriber has seen. ``state`` is connecting, connected, backoff or stopped."""

    state: str = "connecting"
    received: int = 0
    reconnects: int = 0
    replayed: int = 0
    gaps: int = 0
    last_id: str | None = None
    epoch: str | None = None
    client_id: str | None = None
    last_error: str | None = None
    gap_reports: list[dict[str, Any]] = field(default_factory=list)


class Subscriber:
    """Subscribe to a broadcaster and keep the subscription alive across disconnects.

    Args:
        url: ``ws://host:port/ws/events``.
        patterns: glob patterns to subscribe to.
        correlation_id: only events of this correlation ID (None: all).
        on_event: called on the loop with each event dict (``type``, ``timestamp``,
            ``id``, ``payload``); it must not block.
        on_message: called with every server message that is not an event.
        on_events: when given, called once per ``websocket.batch`` with its events
            (instead of ``on_event`` for each): cheaper at volume.
        backoff: first and largest reconnect delay in seconds.
        since: resume from this id at the first connection (history after it is
            replayed first); ``epoch`` is the stream that id belongs to, when known.
        batch: ``(maxEvents, maxDelayMs)``: ask the server to send events in
            ``websocket.batch`` messages of up to ``maxEvents``, held at most
            ``maxDelayMs``; far fewer frames at volume. None: one frame per event.
        token: a bearer token for a server with authentication (sent as the
            ``Authorization`` header, never in the URL).

    Raises:
        InvalidPatternError: a pattern is malformed (at construction).
    """

    def __init__(
        self,
        url: str,
        patterns: Iterable[str] = ("*",),
        correlation_id: str | None = None,
        *,
        on_event: EventCallback,
        on_message: EventCallback | None = None,
        on_events: Callable[[list[dict[str, Any]]], None] | None = None,
        backoff: tuple[float, float] = (0.05, 5.0),
        open_timeout: float = 10.0,
        since: str | None = None,
        epoch: str | None = None,
        batch: tuple[int, float] | None = (1000, 20.0),
        token: str | None = None,
    ) -> None:
        self.url = url
        self.patterns = validate_patterns(list(patterns))
        self.correlation_id = validate_correlation_id(correlation_id)
        self.on_event = on_event
        self.on_message = on_message
        self.on_events = on_events
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.batch = batch
        self.token = token
        self.stats = SubscriberStats(last_id=since, epoch=epoch)
        self._ws: ClientConnection | None = None
        self._stopping = False
        self._connected = asyncio.Event()
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        self._control = asyncio.Lock()
        self._last_gap: tuple[Any, str | None] | None = None

    # -- connection loop ------------------------------------------------------------------

    def connect_url(self) -> str:
        """The URL of the next connection: patterns, filter, and where to resume."""
        query: dict[str, str] = {"eventTypes": ",".join(self.patterns)}
        if self.correlation_id is not None:
            query["correlationId"] = self.correlation_id
        if self.stats.last_id is not None:
            query["since"] = self.stats.last_id
            if self.stats.epoch is not None:
                query["epoch"] = self.stats.epoch
        if self.batch is not None:
            query["batch"] = f"{self.batch[0]},{self.batch[1]:g}"
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}{urlencode(query)}"

    async def run(self) -> None:
        """Connect, receive, and reconnect until :meth:`stop`.

        Raises:
            ProtocolError: the server refused the subscription itself (HTTP 400 at the
                handshake: bad patterns or filter), which no retry would fix.
            InvalidURI: ``url`` is not a WebSocket URL.
        """
        attempt = 0
        try:
            while not self._stopping:
                self.stats.state = "connecting"
                try:
                    async with connect(
                        self.connect_url(),
                        logger=CLIENT_WIRE_LOGGER,
                        max_size=None,
                        open_timeout=self.open_timeout,
                        additional_headers=(
                            {"Authorization": f"Bearer {self.token}"} if self.token else None
                        ),
                    ) as ws:
                        self._ws = ws
                        if self.stopping:
                            break  # stop() came during the handshake, with nothing to close
                        attempt = 0
                        await self._receive(ws)
                except InvalidStatus as exc:
                    if exc.response.status_code in (400, 401, 403):
                        detail = _error_body(bytes(exc.response.body))
                        raise ProtocolError(
                            detail.get("code", "invalid_message"),
                            f"the server refused the subscription: {detail.get('error', exc)}",
                        ) from None
                    self.stats.last_error = str(exc)
                except InvalidURI:
                    raise
                except (OSError, ConnectionClosed, TimeoutError, InvalidHandshake) as exc:
                    # InvalidHandshake: the peer closed or garbled the handshake (a server
                    # shutting down, a proxy restarting); like a refused connection, retry.
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                finally:
                    self._ws = None
                    self._connected.clear()
                if self.stopping:
                    break
                attempt += 1
                self.stats.reconnects += 1
                self.stats.state = "backoff"
                first, largest = self.backoff
                delay = random.uniform(0, min(largest, first * 2 ** min(attempt, 16)))
                logger.info(
                    "reconnecting to %s in %.2f s (%s)", self.url, delay, self.stats.last_error
                )
                await asyncio.sleep(delay)
        finally:
            self.stats.state = "stopped"

    async def _receive(self, ws: ClientConnection) -> None:
        stats = self.stats
        on_event = self.on_event
        welcome_position: str | None = None
        gap_announced = False
        # The epoch of this connection's stream, adopted with its first id: until then
        # the cursor is an id of the stream it was read on (a resume cut before any event
        # of a new stream resumes from the old one's cursor again, not from a meaningless
        # position in the new one).
        new_epoch: str | None = None
        async for raw in ws:
            message = orjson.loads(raw)
            event_id = message.get("id")
            if event_id is not None:
                stats.received += 1
                stats.last_id = event_id
                if new_epoch is not None:
                    stats.epoch, new_epoch = new_epoch, None
                on_event(message)
                continue
            kind = message.get("type")
            payload = message.get("payload") or {}
            if kind == "websocket.batch":
                events = payload.get("events") or []
                if events:
                    stats.received += len(events)
                    stats.last_id = events[-1].get("id", stats.last_id)
                    if new_epoch is not None:
                        stats.epoch, new_epoch = new_epoch, None
                    if self.on_events is not None:
                        self.on_events(events)
                    else:
                        for event in events:
                            on_event(event)
                continue
            if kind == "websocket.connected":
                stats.client_id = payload.get("clientId")
                epoch = payload.get("epoch", stats.epoch)
                welcome_position = payload.get("lastId")
                if stats.last_id is None:
                    # No event yet: resume from the stream's position at subscription, so
                    # what is emitted while a first connection is down is still replayed.
                    stats.last_id = welcome_position
                    stats.epoch = epoch
                elif epoch != stats.epoch:
                    new_epoch = epoch
                stats.state = "connected"
                self._connected.set()
            elif kind == "websocket.gap":
                # Announced before the replayed events after the gap: counted now, so a
                # connection cut before websocket.replayed still leaves it counted.
                gap_announced = True
                self._count_gap(payload)
            elif kind == "websocket.replayed":
                stats.replayed += int(payload.get("count", 0))
                if payload.get("complete") is False and not gap_announced:
                    self._count_gap(payload)  # a server that does not announce gaps
                gap_announced = False
                new_epoch = None
                stats.epoch = payload.get("epoch", stats.epoch)
                covered = payload.get("lastId") or welcome_position
                if covered is not None:
                    # The replay covered this stream up to that position (after a resume into
                    # another stream, a new epoch, the old id means nothing here).
                    stats.last_id = covered
                welcome_position = None
            elif kind in ("websocket.subscribed", "websocket.unsubscribed", "websocket.error"):
                with contextlib.suppress(asyncio.QueueFull):
                    self._replies.put_nowait(message)
            if self.on_message is not None:
                self.on_message(message)

    def _count_gap(self, report: dict[str, Any]) -> None:
        stats = self.stats
        # The same gap announced again (a resume cut before it got past it) counts once.
        key = (report.get("since"), stats.epoch)
        if key == self._last_gap:
            return
        self._last_gap = key
        stats.gaps += 1
        if len(stats.gap_reports) < 100:
            stats.gap_reports.append(report)
        logger.warning("resumed with a gap: %s", report)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    async def wait_connected(self, timeout: float) -> None:
        """Wait until a connection is open and welcomed.

        Raises:
            TimeoutError: not connected in time (``stats.last_error`` says why).
        """
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def stop(self) -> None:
        """Close the connection and end :meth:`run`."""
        self._stopping = True
        self._connected.clear()
        if self._ws is not None:
            await self._ws.close()

    async def drop_connection(self) -> None:
        """Cut the current connection without a closing handshake (it will resume)."""
        if self._ws is not None and self._ws.transport is not None:
            self._ws.transport.abort()

    # -- live subscription changes ---------------------------------------------------------

    async def subscribe(
        self,
        patterns: Iterable[str],
        *,
        replace: bool = False,
        correlation_id: Any = ...,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Change the live subscription and wait for the server's confirmation.

        ``correlation_id`` is left alone when omitted; None clears it.

        Raises:
            ProtocolError: the server rejected it (the message says why).
            InvalidPatternError: a pattern is malformed (checked before sending).
            ConnectionError: not connected.
        """
        payload: dict[str, Any] = {"eventTypes": validate_patterns(list(patterns))}
        if replace:
            payload["replace"] = True
        if correlation_id is not ...:
            payload["correlationId"] = validate_correlation_id(correlation_id)
        reply = await self._request({"type": "subscribe", "payload": payload}, timeout)
        self.patterns = list(reply["subscriptions"])
        self.correlation_id = reply.get("correlationId")
        return reply

    async def unsubscribe(self, patterns: Iterable[str], timeout: float = 10.0) -> dict[str, Any]:
        """Remove patterns and wait for the confirmation (see :meth:`subscribe`)."""
        payload = {"eventTypes": validate_patterns(list(patterns))}
        reply = await self._request({"type": "unsubscribe", "payload": payload}, timeout)
        self.patterns = list(reply["subscriptions"])
        return reply

    async def _request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        async with self._control:
            ws = self._ws
            if ws is None or not self.connected:
                raise ConnectionError(
                    f"not connected to {self.url} (state {self.stats.state}; "
                    f"last error: {self.stats.last_error})"
                )
            while not self._replies.empty():
                self._replies.get_nowait()
            await ws.send(orjson.dumps(message).decode())
            reply = await asyncio.wait_for(self._replies.get(), timeout)
            payload: dict[str, Any] = reply["payload"]
            if reply["type"] == "websocket.error":
                raise ProtocolError(payload["code"], payload["error"], payload.get("detail"))
            return payload


def _error_body(body: bytes | None) -> dict[str, Any]:
    try:
        value = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        return {"error": (body or b"").decode(errors="replace")[:200]}
    return value if isinstance(value, dict) else {}
