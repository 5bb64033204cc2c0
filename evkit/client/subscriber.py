"""An asyncio subscriber of ``/ws/events`` that reconnects and resumes where it left off.

:class:`Subscriber` connects with its patterns and correlation filter in the URL, so
they apply atomically from the first event, and hands every event to a callback. Its
connection is kept by the reconnect core (:mod:`evkit.client.reconnect`: backoff with
full jitter, refusals); its resume position (``since`` and ``epoch``) and the replay
and gap counts are a :class:`~evkit.client.resume.ResumeCursor`, put in the URL of
every new connection.

No pandas here: this is the wire side of the collector, usable on its own. A
subscriber lives on one asyncio loop; only :meth:`Subscriber.stats` may be called
from other threads. It logs as ``evkit.client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from orjson import loads
from websockets.asyncio.client import ClientConnection

from evkit.client.reconnect import Reconnecting
from evkit.client.resume import ResumeCursor
from evkit.exceptions import ConnectError
from evkit.patterns import validate_patterns
from evkit.protocol import (
    BATCH,
    ERROR,
    GAP,
    REPLAYED,
    connect_query,
    decode_server_message,
    error_from,
    subscribe_message,
    unsubscribe_message,
    validate_correlation_id,
    with_query,
)
from evkit.protocol.vocabulary import REPLY_TYPES
from evkit.tls import SSLOption

__all__ = ["Subscriber", "SubscriberStats"]

logger = logging.getLogger("evkit.client")

EventCallback = Callable[[dict[str, Any]], None]

#: HTTP statuses of a refused subscription that no retry would fix: a bad pattern or
#: filter (400), missing or refused credentials (401, 403).
_FATAL_REFUSALS = (400, 401, 403)


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
        ssl: for a ``wss://`` URL: an :class:`ssl.SSLContext`, or the path of a CA file
            (PEM) to trust instead of the system's CAs.

    Raises:
        InvalidPatternError: a pattern is malformed (at construction).
        ValueError: ``ssl`` for a ``ws://`` URL, or a CA file that cannot be used.
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
        ssl: SSLOption = None,
    ) -> None:
        self.url = url
        self.patterns = validate_patterns(list(patterns))
        self.correlation_id = validate_correlation_id(correlation_id)
        self.on_event = on_event
        self.on_message = on_message
        self.on_events = on_events
        self.batch = batch
        self.token = token
        self.cursor = ResumeCursor(since, epoch)
        self.connection = Reconnecting(
            self.connect_url,
            name="subscriber",
            logger=logger,
            token=token,
            open_timeout=open_timeout,
            backoff=backoff,
            fatal_refusals=_FATAL_REFUSALS,
            max_size=None,
            ssl=ssl,
        )
        self._received = 0
        self._client_id: str | None = None
        # For stats() on other threads, replaced (never changed) after every message:
        # (received, last_id, epoch), and (replayed, gaps, client_id).
        self._position: tuple[int, str | None, str | None] = (0, since, epoch)
        self._seen: tuple[int, int, str | None] = (0, 0, None)
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        self._control = asyncio.Lock()

    # -- connection -------------------------------------------------------------------------

    def connect_url(self) -> str:
        """The URL of the next connection: patterns, filter, and where to resume."""
        cursor = self.cursor
        query = connect_query(
            self.patterns,
            self.correlation_id,
            since=cursor.last_id,
            epoch=cursor.epoch,
            batch=self.batch,
        )
        return with_query(self.url, query)

    async def run(self) -> None:
        """Connect, receive, and reconnect until :meth:`stop`.

        Raises:
            ProtocolError: the server refused the subscription itself (HTTP 400, 401 or
                403 at the handshake: bad patterns or filter, credentials), which no
                retry would fix.
            InvalidURI: ``url`` is not a WebSocket URL.
        """
        await self.connection.run(self._welcomed, self._receive)

    def _welcomed(self, welcome: dict[str, Any]) -> None:
        payload = welcome.get("payload") or {}
        self._client_id = payload.get("clientId")
        self.cursor.welcomed(payload)
        self._publish()
        if self.on_message is not None:
            self.on_message(welcome)

    async def _receive(self, ws: ClientConnection) -> None:
        cursor = self.cursor
        on_event = self.on_event
        on_events = self.on_events
        async for raw in ws:
            # The hot path: decoded here, not through decode_server_message, which only
            # says what is wrong with a message that is not a JSON object.
            try:
                message = loads(raw)
                event_id = message.get("id")
            except (ValueError, AttributeError):
                decode_server_message(raw)
                raise
            if event_id is not None:
                self._received += 1
                if cursor.pending_epoch is None:
                    cursor.last_id = event_id
                else:
                    cursor.advanced(event_id)
                self._position = (self._received, event_id, cursor.epoch)
                on_event(message)
                continue
            kind = message.get("type")
            payload = message.get("payload") or {}
            if kind == BATCH:
                events = payload.get("events") or []
                if events:
                    self._received += len(events)
                    cursor.advanced(events[-1].get("id", cursor.last_id))
                    self._position = (self._received, cursor.last_id, cursor.epoch)
                    if on_events is not None:
                        on_events(events)
                    else:
                        for event in events:
                            on_event(event)
                continue
            if kind == GAP:
                # Announced before the replayed events after the gap: counted now, so a
                # connection cut before websocket.replayed still leaves it counted.
                if cursor.gap(payload):
                    logger.warning("resumed with a gap: %s", payload)
            elif kind == REPLAYED:
                if cursor.replay_ended(payload):  # a server that does not announce gaps
                    logger.warning("resumed with a gap: %s", payload)
            elif kind in REPLY_TYPES:
                with contextlib.suppress(asyncio.QueueFull):
                    self._replies.put_nowait(message)
            self._publish()
            if self.on_message is not None:
                self.on_message(message)

    def _publish(self) -> None:
        cursor = self.cursor
        self._position = (self._received, cursor.last_id, cursor.epoch)
        self._seen = (cursor.replayed, cursor.gaps, self._client_id)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self.connection.stopping

    @property
    def connected(self) -> bool:
        """Whether a connection is open and welcomed now."""
        return self.connection.connected

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a connection is open and welcomed (None: however long it takes).

        Raises:
            TimeoutError: not connected in time (``stats()["last_error"]`` says why).
        """
        await self.connection.wait_connected(timeout)

    async def stop(self) -> None:
        """Close the connection and end :meth:`run`."""
        await self.connection.stop()

    async def drop_connection(self) -> None:
        """Cut the current connection without a closing handshake (it will resume)."""
        self.connection.drop()

    # -- what it saw --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What the subscriber has seen, as a plain dict; safe from any thread.

        ``state`` (connecting, connected, backoff or stopped), ``received`` events,
        ``reconnects`` (attempts after a failure or a drop), ``replayed`` events,
        ``gaps`` (resumes that could not replay everything), ``last_id`` and ``epoch``
        (where it resumes), ``client_id``, ``last_error``.
        """
        received, last_id, epoch = self._position
        replayed, gaps, client_id = self._seen
        status = self.connection.status
        return {
            "state": status.state,
            "received": received,
            "reconnects": status.retries,
            "replayed": replayed,
            "gaps": gaps,
            "last_id": last_id,
            "epoch": epoch,
            "client_id": client_id,
            "last_error": status.last_error,
        }

    @property
    def counters(self) -> SubscriberStats:
        """The same counters as a :class:`SubscriberStats`, with the gap reports.

        Read it on the subscriber's loop (the gap reports are the loop's own list).
        """
        return SubscriberStats(**self.stats(), gap_reports=list(self.cursor.gap_reports))

    # -- live subscription changes ------------------------------------------------------------

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
            ConnectError: not connected (a ConnectionError).
        """
        wanted = validate_patterns(list(patterns))
        if correlation_id is not ...:
            correlation_id = validate_correlation_id(correlation_id)
        message = subscribe_message(wanted, replace=replace, correlation_id=correlation_id)
        reply = await self._request(message, timeout)
        self.patterns = list(reply["subscriptions"])
        self.correlation_id = reply.get("correlationId")
        return reply

    async def unsubscribe(self, patterns: Iterable[str], timeout: float = 10.0) -> dict[str, Any]:
        """Remove patterns and wait for the confirmation (see :meth:`subscribe`)."""
        message = unsubscribe_message(validate_patterns(list(patterns)))
        reply = await self._request(message, timeout)
        self.patterns = list(reply["subscriptions"])
        return reply

    async def _request(self, message: bytes, timeout: float) -> dict[str, Any]:
        async with self._control:
            ws = self.connection.current
            if ws is None or not self.connected:
                status = self.connection.status
                raise ConnectError(
                    f"not connected to {self.url} (state {status.state}; "
                    f"last error: {status.last_error})"
                )
            while not self._replies.empty():
                self._replies.get_nowait()
            await ws.send(message, text=True)
            reply = await asyncio.wait_for(self._replies.get(), timeout)
            if reply.get("type") == ERROR:
                raise error_from(reply.get("payload"))
            payload: dict[str, Any] = reply["payload"]
            return payload
