"""One client connection past the handshake, from its welcome to its disconnect.

A :class:`Session` holds what the broadcaster knows about one connection (its id, who
it is, its rate-limit bucket and counts) instead of attributes patched onto websockets'
connection object. It waits for first-message auth when the handshake carried no
credentials, sends the welcome, replays history to a resuming client before it
receives live events, then reads the client's messages one at a time: ``subscribe``,
``unsubscribe``, ``ping``, ``publish``, ``auth``. A bad message gets one
``websocket.error`` and changes nothing; a ``subscribe`` with ``since`` is replayed
before the next message is read.

Must not write to the connection except through the fan-out (which keeps each
client's frames in order), and must not decide policy (admission does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import string
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from evkit.auth import ANONYMOUS, Principal
from evkit.bus import Event
from evkit.exceptions import ProtocolError
from evkit.limits import TokenBucket
from evkit.protocol import (
    CONNECTED,
    PONG,
    SUBSCRIBED,
    UNSET,
    UNSUBSCRIBED,
    Auth,
    ConnectRequest,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    decode_client_message,
    encode_message,
    error_message,
    now_ms,
)
from evkit.protocol.connect import too_many_subscriptions
from evkit.protocol.vocabulary import CLOSE_ABNORMAL, CLOSE_POLICY, CLOSE_REASONS
from evkit.server.replay import type_filter
from evkit.server.wire import Peer

__all__ = ["Session", "new_client_id"]

if TYPE_CHECKING:
    from evkit.server.broadcaster import Broadcaster

logger = logging.getLogger("evkit.server")

_BASE36 = string.digits + string.ascii_lowercase


def new_client_id() -> str:
    """``ws-<ms>-<9 base36 characters>``, as the original protocol's client ids."""
    number = int.from_bytes(os.urandom(6), "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, 36)
        chars.append(_BASE36[digit])
    return f"ws-{now_ms()}-{''.join(chars)}"


class Session:
    """What the broadcaster knows about one connection; see the module docstring."""

    def __init__(
        self,
        server: Broadcaster,
        connection: ServerConnection,
        request: ConnectRequest,
        principal: Principal | None,
    ) -> None:
        settings = server.settings
        self.server = server
        self.connection = connection
        self.peer = Peer(connection)
        self.request = request
        self.principal = principal  # None until first-message auth succeeds
        self.client_id = new_client_id()
        self.peer.name = self.client_id
        remote = connection.remote_address
        self.address = str(remote[0]) if remote else "?"
        self.remote = f"{remote[0]}:{remote[1]}" if remote else "?"
        self.bucket = TokenBucket(settings.messages_per_second, settings.message_burst)
        self.received = 0
        self.errors = 0
        self.strikes = 0
        self.live = False  # routed to (registered); False again once dropped or closing
        self.close_code: int | None = None  # set when the server itself closes it

    # -- first-message auth -------------------------------------------------------------------

    async def authenticate(self) -> bool:
        """Wait for ``{"type": "auth"}`` as the first message; False when it failed (closed)."""
        server = self.server
        timeout = server.settings.auth_timeout
        try:
            async with asyncio.timeout(timeout):
                data = await self.connection.recv()
            message = decode_client_message(data)
            if not isinstance(message, Auth):
                raise ProtocolError(
                    "unauthorized",
                    "authentication required: send {'type': 'auth', 'payload': {'token': ...}} "
                    "first, or credentials in the handshake",
                )
            await server.admission.auth.ready(message.token)  # a JWKS fetched if need be
            principal = server.admission.auth.authenticate(message.token)
            self.request = server.admission.authorize(self.request, principal)
            self.principal = principal
            return True
        except TimeoutError:
            reason, error = "unauthorized", f"no auth message within {timeout:g} s"
        except ProtocolError as exc:
            reason = exc.code if exc.code in ("unauthorized", "forbidden") else "unauthorized"
            error = exc.error
        except ConnectionClosed:
            return False
        server.counters.reject(reason)
        logger.info("closing %s: %s", self.address, error)
        # A close reason must fit a 125-byte control frame: cut on bytes, not characters.
        await self.connection.close(CLOSE_POLICY, error.encode()[:120].decode(errors="ignore"))
        return False

    # -- the client's lifetime ------------------------------------------------------------------

    async def serve(self) -> None:
        """Welcome, replay if asked, then read messages until the connection closes."""
        server, request, peer = self.server, self.request, self.peer
        fanout, history = server.fanout, server.history
        server.counters.connections_total += 1
        # The welcome goes first; a resuming client then gets its history (in slices, as
        # fast as it reads) and only then live events.
        fanout.send(
            peer,
            encode_message(
                CONNECTED,
                {
                    "clientId": self.client_id,
                    "correlationId": request.correlation_id,
                    "subscriptions": request.patterns,
                    "epoch": history.epoch,
                    "lastId": history.format_id(server.backplane.delivered_id),
                },
            ),
        )
        if request.batch is not None:
            fanout.set_batch(peer, request.batch)
        if request.since is not None:
            replayed = await server.replayer.replay(
                peer,
                request.since,
                request.epoch,
                type_filter(request.patterns, ()),
                request.correlation_id,
            )
            if replayed is None:
                fanout.drop_batch(peer)
                return
            server.replayer.send_replayed(peer, request.since, *replayed)
        server.register(self)
        logger.info("client %s connected from %s", self.client_id, self.remote)
        try:
            await self._read()
        finally:
            server.unregister(self)
            code = self.close_code or self.connection.close_code or CLOSE_ABNORMAL
            server.counters.disconnected(code)
            logger.info(
                "client %s disconnected: %s (code %s %s)",
                self.client_id,
                CLOSE_REASONS.get(code, "other"),
                self.connection.close_code,
                self.connection.close_reason or "",
            )

    async def _read(self) -> None:
        try:
            async for message in self.connection:
                if not self.live:
                    # Dropped by the server (slow consumer, rate limit, disconnect()): its
                    # close is under way. Keep reading, so the peer's close frame is not
                    # stuck behind unread messages, and do not return, or the handler's
                    # exit would close with 1000 before that close is sent.
                    continue
                self.received += 1
                replay = self.on_message(message)
                if replay is not None:
                    await replay  # the client's next message waits until its history is sent
        except ConnectionClosed:
            pass

    def on_message(self, data: str | bytes) -> Coroutine[Any, Any, None] | None:
        """Act on one client message; a replay it started is returned, to be awaited."""
        server = self.server
        principal = self.principal or ANONYMOUS
        try:
            if not self.bucket.take():
                self._over_rate()
                return None
            message = decode_client_message(data)
            if isinstance(message, Subscribe):
                server.admission.check_subscribe(principal, message.event_types)
                return self._subscribe(message)
            if isinstance(message, Unsubscribe):
                index = server.fanout.index
                removed = index.remove(self.peer, message.event_types)
                self._send(
                    UNSUBSCRIBED,
                    {"eventTypes": removed, "subscriptions": index.subscriptions(self.peer)},
                )
            elif isinstance(message, Ping):
                self._send(PONG, {"echo": message.payload})
            elif isinstance(message, Publish):
                server.admission.check_publish(principal)
                now = now_ms()
                times = message.timestamps or [None] * len(message.events)
                server.ingest(
                    [
                        Event(type_, now if at is None else at, payload)
                        for (type_, payload), at in zip(message.events, times, strict=True)
                    ]
                )
            # Auth: already authenticated (or auth is off): nothing to do.
        except ProtocolError as exc:
            self.reject(exc)
        return None

    def _over_rate(self) -> None:
        settings = self.server.settings
        self.strikes += 1
        if self.strikes > settings.rate_limit_strikes:
            self.server.close(self, CLOSE_POLICY, "rate limited")
            return
        raise ProtocolError(
            "rate_limited",
            f"more than {settings.messages_per_second:g} messages per second; this message "
            f"was ignored (after {settings.rate_limit_strikes} such, the connection is closed)",
        )

    def reject(self, exc: ProtocolError) -> None:
        """Answer a rejected message with ``websocket.error``; nothing else changes."""
        self.errors += 1
        self.server.counters.client_error(exc.code)
        self.server.fanout.send(self.peer, error_message(exc))

    def _send(self, type_: str, payload: dict[str, Any]) -> None:
        self.server.fanout.send(self.peer, encode_message(type_, payload))

    # -- subscribe ------------------------------------------------------------------------------

    def _subscribe(self, message: Subscribe) -> Coroutine[Any, Any, None] | None:
        """Apply a ``subscribe``; with ``since``, the replay to await before the next message.

        Patterns a replay is for start receiving live events only once it is done (the
        last slice, ``websocket.replayed`` and the change happen with no await between):
        no gap, no duplicate, however long the client takes to read its history.
        """
        server, peer = self.server, self.peer
        index = server.fanout.index
        before = index.subscriptions(peer)
        if message.replace:
            wanted = message.event_types
        else:
            wanted = before + [p for p in message.event_types if p not in before]
        limit = server.settings.max_subscriptions
        if len(wanted) > limit:
            raise too_many_subscriptions(len(wanted), limit, "this subscribe")
        since = message.since
        if since is not None:
            try:
                server.history.parse_id(since)
            except ValueError as exc:
                raise ProtocolError(
                    "invalid_message",
                    f"since must be an event id received from this server: {exc}",
                    {"field": "since"},
                ) from None
        added = [p for p in wanted if p not in before]
        if since is None:
            index.replace(peer, wanted)
        elif message.replace:
            # The patterns the replay is for are added once it is done.
            index.remove(peer, [p for p in before if p not in wanted])
        if message.correlation_id is not UNSET:
            index.set_filter(peer, message.correlation_id)  # type: ignore[arg-type]
        if message.batch is not None:
            server.fanout.set_batch(peer, message.batch)
        correlation_id = index.filter_of(peer)
        self._send(
            SUBSCRIBED,
            {"eventTypes": added, "subscriptions": wanted, "correlationId": correlation_id},
        )
        if since is None:
            return None
        return self._replay_subscribed(since, wanted, [p for p in before if p in wanted])

    async def _replay_subscribed(self, since: str, wanted: list[str], already: list[str]) -> None:
        """History after ``since`` matching ``wanted`` but none of ``already``; then live
        events for all of ``wanted``."""
        server, peer = self.server, self.peer
        added = [p for p in wanted if p not in already]
        correlation_id = server.fanout.index.filter_of(peer)
        replayed = await server.replayer.replay(
            peer, since, None, type_filter(added, already), correlation_id
        )
        if replayed is not None and self.live:
            server.replayer.send_replayed(peer, since, *replayed)
            server.fanout.index.replace(peer, wanted)
