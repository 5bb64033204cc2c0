"""Publishing events to a broadcaster on one kept-open connection, each burst confirmed.

A :class:`Publisher` drains an :class:`~evkit.client.outbox.Outbox` on its asyncio
loop: it takes what is waiting (a burst of up to ``batch_size * 32`` events), sends it
as ``publish`` messages of up to ``batch_size`` events and ``max_message_size`` bytes,
then a ``ping``, and sends nothing more until the ``pong`` comes back, which confirms
every message before it (a broadcaster handles a connection's messages in order).
Messages are paced under the server's per-client rate limit. A burst not confirmed
when the connection dropped goes back to the head of the outbox and is sent again
after reconnecting: delivery is at least once, in order.

A ``websocket.error`` reply (``forbidden``: the token lacks the ``publish`` scope;
``rate_limited``) is logged once per code, counted as rejected (in events) and not
retried; the connection stays. The connection itself is the reconnect core's
(:mod:`evkit.client.reconnect`), subscribed to nothing.

Used by :class:`~evkit.client.forwarder.Forwarder` (on evkit's loop thread) and by
``evkit publish`` / ``evkit replay`` (on their own loop). Everything here runs on the
publisher's loop; other threads see only the outbox's counts and ``connection.status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection

from evkit.bus import Event
from evkit.client.outbox import Outbox
from evkit.client.reconnect import Reconnecting
from evkit.exceptions import ConnectError
from evkit.protocol import (
    ERROR,
    PONG,
    connect_query,
    decode_server_message,
    encode,
    event_body,
    ping_message,
    publish_message,
    with_query,
)
from evkit.protocol.encoding import PUBLISH_ENVELOPE
from evkit.tls import SSLOption

__all__ = ["BURST_MESSAGES", "Publisher"]

BURST_MESSAGES = 32  # publish messages sent before the ping that confirms them
_REPING_AFTER = 1.0  # seconds without a pong after a rate_limited reply: ping again
_PACE_BURST = 2.0  # seconds' worth of messages that may go at once


@dataclass(eq=False)
class _Burst:
    """Messages sent and waiting for the pong of the ping that followed them."""

    id: int
    end: int  # the outbox position after this burst's events
    events: list[Event]  # as taken from the outbox, in order
    kept: list[Event] = field(default_factory=list)  # the encodable ones, in order
    processed: int = 0  # how many of ``events`` were encoded (or found unsendable)
    message_sizes: list[int] = field(default_factory=list)  # events per publish message
    errors: list[str] = field(default_factory=list)  # websocket.error codes, in order
    pings: int = 0
    confirmed: asyncio.Future[None] | None = None


def _publishing_url(url: str) -> str:
    """``url`` with the subscription replaced by none: the connection only publishes."""
    parts = urlsplit(url)
    nothing = connect_query([])
    ours = {key for key, _ in parse_qsl(nothing, keep_blank_values=True)}
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    return with_query(urlunsplit(parts._replace(query=urlencode(kept))), nothing)


class Publisher:
    """Send what an outbox holds to ``url``, reconnecting as needed, until :meth:`stop`.

    Args:
        url: the broadcaster's ``ws://HOST:PORT/ws/events``.
        outbox: where the events wait; its ``wake`` must end in :meth:`wake` on this
            publisher's loop.
        prepare: applied to each payload before it is encoded (redaction), or None.
        name: what owns it, for log lines ("forwarder", "evkit replay").
        logger: where to log rejections and unsendable events.
        token, connect_timeout, backoff, fatal_refusals, ssl: the connection's
            (see :class:`~evkit.client.reconnect.Reconnecting`).
        batch_size: most events in one ``publish`` message.
        flush_interval: longest an event waits, in seconds, for more to batch with.
        max_message_size: most bytes in one message (the server closes the connection
            past its own limit).
        messages_per_second: the pace kept under the server's rate limit.
        source_time: send each event's own ``timestamp`` (the time of ``emit()``), which
            the server keeps; False lets the server stamp the time it takes them.
    """

    def __init__(
        self,
        url: str,
        outbox: Outbox,
        *,
        prepare: Callable[[dict[str, Any]], Any] | None,
        name: str,
        logger: logging.Logger,
        token: str | None = None,
        connect_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.05, 5.0),
        fatal_refusals: tuple[int, ...] = (),
        batch_size: int = 500,
        flush_interval: float = 0.05,
        max_message_size: int = 64 * 1024,
        messages_per_second: float = 150.0,
        source_time: bool = True,
        ssl: SSLOption = None,
    ) -> None:
        self.url = url
        self.source_time = source_time
        self.outbox = outbox
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_message_size = max_message_size
        self._prepare = prepare
        self._name = name
        self._logger = logger
        connect_url = _publishing_url(url)
        self.connection = Reconnecting(
            lambda: connect_url,
            name=name,
            logger=logger,
            token=token,
            open_timeout=connect_timeout,
            backoff=backoff,
            fatal_refusals=fatal_refusals,
            probe=True,
            survive_errors=True,
            close_timeout=2.0,
            ssl=ssl,
        )
        self._pace_interval = 1.0 / messages_per_second
        self._pace_at = 0.0
        self._ready = asyncio.Event()  # something was appended since the last take
        self._hurry = asyncio.Event()  # send now: a full batch, a flush or a stop
        self._burst: _Burst | None = None
        self._burst_ids = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._warned: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Publish until :meth:`stop`, reconnecting after drops.

        Raises:
            ProtocolError: a refusal with one of ``fatal_refusals``.
        """
        try:
            await self.connection.run(self._welcomed, self._session)
        finally:
            self._release_waiters()

    async def stop(self) -> None:
        """Close the connection and end :meth:`run`; waiting :meth:`confirmed` calls fail."""
        await self.connection.stop()
        self._release_waiters()

    def _release_waiters(self) -> None:
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectError(f"{self._name} to {self.url} was stopped"))

    def wake(self, full: bool) -> None:
        """Events were appended to the outbox (``full``: a whole batch is waiting)."""
        self._ready.set()
        if full:
            self._hurry.set()

    async def confirmed(self, position: int) -> None:
        """Return once the outbox is confirmed through ``position`` (sent now, unbatched).

        Raises:
            ConnectError: the publisher stopped first (was stopped, or :meth:`run` ended).
        """
        if self.outbox.confirmed(position):
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (position, waiter)
        self._waiters.append(entry)
        self._hurry.set()
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    # -- one connection -----------------------------------------------------------------------

    def _welcomed(self, welcome: dict[str, Any]) -> None:
        if self.connection.status.connections:
            self._logger.info("%s reconnected to %s", self._name, self.url)

    async def _session(self, ws: ClientConnection) -> None:
        """Send and read on one open connection until it closes."""
        reader = asyncio.ensure_future(self._read(ws))
        sender = asyncio.ensure_future(self._send_loop(ws))
        stopping = asyncio.ensure_future(self.connection.wait_stopping())
        try:
            await asyncio.wait((reader, sender, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, sender, stopping):
                task.cancel()
            results = await asyncio.gather(reader, sender, stopping, return_exceptions=True)
            self._requeue_burst()
        if self.connection.stopping:
            return  # leaving the connection closes it
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            message = decode_server_message(raw)
            kind = message.get("type")
            payload = message.get("payload")
            payload = payload if isinstance(payload, dict) else {}
            if kind == PONG:
                burst = self._burst
                if burst is not None and payload.get("echo") == burst.id:
                    self._settle(burst)
            elif kind == ERROR:
                self._rejected_message(payload)
            # Nothing else is expected: this connection is subscribed to no event.

    def _rejected_message(self, payload: dict[str, Any]) -> None:
        code = str(payload.get("code") or "unknown")
        error = str(payload.get("error") or "")
        burst = self._burst
        if burst is not None:
            burst.errors.append(code)
        self.connection.error(f"rejected: {code}: {error}")
        if code not in self._warned:
            self._warned.add(code)
            hint = (
                "; lower messages_per_second, or raise the server's limit"
                if code == "rate_limited"
                else ""
            )
            self._logger.warning(
                "broadcaster %s rejected forwarded events: %s (%s); they are counted in "
                "stats()['rejected'] and not sent again%s",
                self.url,
                error,
                code,
                hint,
            )

    # -- sending ------------------------------------------------------------------------------

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
        events, end = self.outbox.take(self.batch_size * BURST_MESSAGES)
        if events:
            self._burst_ids += 1
            self._burst = _Burst(self._burst_ids, end, events)
        return events

    async def _send_burst(self, ws: ClientConnection, events: list[Event]) -> None:
        burst = self._burst
        assert burst is not None
        parts: list[bytes] = []
        size = 0
        limit = self.max_message_size - PUBLISH_ENVELOPE
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
            payload = event.payload if self._prepare is None else self._prepare(event.payload)
            stamp = event.timestamp if self.source_time else None
            body = event_body(event.type, encode(payload), stamp)
        except Exception as exc:  # InvalidEventError, RecursionError (too deep to redact)...
            # One event that cannot be encoded must never wedge the stream behind it.
            self.outbox.count_unsendable()
            self._logger.error(
                "%s cannot send %s: %s: %s", self._name, event.type, type(exc).__name__, exc
            )
            return None
        if len(body) > limit:
            self.outbox.count_unsendable()
            self._logger.error(
                "%s cannot send %s: %d bytes encoded, more than max_message_size=%d "
                "allows (the server would close the connection)",
                self._name,
                event.type,
                len(body),
                self.max_message_size,
            )
            return None
        return body

    async def _publish(self, ws: ClientConnection, burst: _Burst, parts: list[bytes]) -> None:
        await self._pace()
        await ws.send(publish_message(parts), text=True)
        burst.message_sizes.append(len(parts))

    async def _ping(self, ws: ClientConnection, burst: _Burst) -> None:
        await self._pace()
        await ws.send(ping_message(burst.id), text=True)
        burst.pings += 1

    async def _pace(self) -> None:
        # A token bucket in its "theoretical arrival time" form: up to 2 s worth of
        # messages go at once, then one every 1 / messages_per_second.
        now = asyncio.get_running_loop().time()
        self._pace_at = max(self._pace_at, now) + self._pace_interval
        delay = self._pace_at - now - _PACE_BURST
        if delay > 0:
            await asyncio.sleep(delay)

    def _settle(self, burst: _Burst) -> None:
        """The server answered the burst's ping: count it, and release confirmed() waiters."""
        if self._burst is not burst:
            return
        self._burst = None
        if burst.confirmed is not None and not burst.confirmed.done():
            burst.confirmed.set_result(None)
        # Each refused ping also got an error; the rest are publish messages refused.
        refused = min(len(burst.message_sizes), max(0, len(burst.errors) - (burst.pings - 1)))
        rejected = sum(burst.message_sizes[len(burst.message_sizes) - refused :])
        self.outbox.settle(burst.end, len(burst.kept) - rejected, rejected)
        for position, waiter in self._waiters:
            if position <= burst.end and not waiter.done():
                waiter.set_result(None)

    def _requeue_burst(self) -> None:
        """Put an unconfirmed burst back at the head of the outbox (at least once)."""
        burst = self._burst
        if burst is None:
            return
        self._burst = None
        self.outbox.requeue(burst.kept + burst.events[burst.processed :])
