"""The broadcaster: a WebSocket server at ``/ws/events`` that fans events out by subscription.

:class:`Broadcaster` runs on an asyncio loop (evkit's loop thread when started through
:func:`serve`). Events reach it from any thread through :meth:`Broadcaster.publish`,
which the global bus calls: the payload is serialised there, on the caller's thread,
and the event is appended to a bounded queue; one wake-up per batch hands the queue to
the loop. On the loop each event gets its stream id, is framed once, recorded in the
bounded history, routed through the :class:`~evkit.patterns.SubscriptionIndex` and
written to every recipient with :func:`websockets.asyncio.server.broadcast`, which
writes without awaiting: one slow client never delays the others. A client whose
outgoing buffer passes ``client_buffer_limit`` is dropped from routing at once and
closed with 1013 ``slow consumer``, so memory stays bounded.

Everything that touches connections happens on the loop, so a replay (``since``) and the
live stream meet with no gap and no duplicate.

The same port answers ``GET /healthz``. This module needs no pandas.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import http
import itertools
import logging
import os
import sqlite3
import string
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.asyncio.server import serve as websockets_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from evkit import messages
from evkit._loop import loop_thread
from evkit.bus import Event, EventBus, global_bus
from evkit.exceptions import InvalidEventError, PortInUseError, ProtocolError, ServerError
from evkit.messages import (
    Auth,
    BatchOptions,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    decode_client_message,
    encode,
    encode_event,
    encode_message,
    error_message,
)
from evkit.patterns import SubscriptionIndex, compile_pattern, validate_patterns
from evkit.store import Record, open_store

__all__ = ["Broadcaster", "Server", "ServerSettings", "flush", "running_servers", "serve"]

logger = logging.getLogger("evkit.server")

EVENTS_PATH = "/ws/events"
_BASE36 = string.digits + string.ascii_lowercase
_DRAIN_CHUNK = 2_000  # events per loop turn, so handshakes and client messages keep flowing


@dataclass(frozen=True)
class ServerSettings:
    """Everything that configures a broadcaster; equal settings mean the same server.

    Attributes:
        host: interface to bind (loopback by default).
        port: TCP port; 0 picks a free one.
        max_message_size: largest client frame accepted, in bytes (closed with 1009 past it).
        max_subscriptions: most patterns one client may hold.
        queue_size: most events waiting between ``emit()`` and the loop; past it they are
            dropped and counted.
        history_size: events kept in memory for replay (``since``).
        store: where history lives: ``memory://`` (a ring of ``history_size``) or
            ``sqlite:///path/events.db`` (durable; see :func:`evkit.store.open_store`).
        client_buffer_limit: bytes a client may have waiting to be sent before it is
            disconnected as a slow consumer (1013).
        compression: permessage-deflate; off by default (it costs CPU per client).
        ping_interval: seconds between keep-alive pings (None: never).
    """

    host: str = "127.0.0.1"
    port: int = 3000
    max_message_size: int = 64 * 1024
    max_subscriptions: int = 128
    queue_size: int = 100_000
    history_size: int = 10_000
    client_buffer_limit: int = 1024 * 1024
    compression: bool = False
    ping_interval: float | None = 20.0
    store: str = "memory://"

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, got {self.port!r}")
        for name in (
            "max_message_size",
            "max_subscriptions",
            "queue_size",
            "history_size",
            "client_buffer_limit",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class ClientState:
    """What the broadcaster knows about one connection."""

    client_id: str
    remote: str
    received: int = 0
    errors: int = 0


@dataclass(frozen=True)
class _ConnectOptions:
    """What a connection asked for in its URL (and headers)."""

    patterns: list[str]
    correlation_id: str | None
    since: str | None
    epoch: str | None
    batch: BatchOptions | None


@dataclass
class _Batch:
    """Events waiting for one batched client: flushed at ``max_events`` or after ``max_delay_ms``."""

    options: BatchOptions
    frames: list[bytes] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass
class BroadcasterStats:
    """Counters of one broadcaster; read them with :meth:`Broadcaster.stats`."""

    published: int = 0
    delivered: int = 0
    connections_total: int = 0
    slow_consumer_disconnects: int = 0
    replays: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)


def _client_id() -> str:
    number = int.from_bytes(os.urandom(6), "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, 36)
        chars.append(_BASE36[digit])
    return f"ws-{messages.now_ms()}-{''.join(chars)}"


class Broadcaster:
    """The WebSocket event server. Start and stop it on one asyncio loop.

    Most users call :func:`serve`, which runs one on evkit's loop thread and attaches it
    to the global bus. Use this class directly to embed the broadcaster in an asyncio
    application of your own.
    """

    def __init__(self, settings: ServerSettings | None = None, bus: EventBus | None = None) -> None:
        self.settings = settings or ServerSettings()
        self.bus = bus if bus is not None else global_bus
        self.store = open_store(self.settings.store, self.settings.history_size)
        self.epoch = self.store.epoch
        self._index: SubscriptionIndex[ServerConnection] = SubscriptionIndex()
        self._batches: dict[ServerConnection, _Batch] = {}
        self._clients: dict[ServerConnection, ClientState] = {}
        self._pending: deque[tuple[str, int, str | None, bytes]] = deque()
        self._wakeup_scheduled = False
        self._dropped = itertools.count()
        self._dropped_seen = 0
        self._unencodable = itertools.count()
        self._last_id = 0
        self._stats = BroadcasterStats()
        self._server: WebSocketServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._closers: set[asyncio.Future[None]] = set()
        self.port = self.settings.port

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises:
            PortInUseError: the port is held by another process.
            ServerError: binding failed for another reason (the message says which).
        """
        self._loop = asyncio.get_running_loop()
        settings = self.settings
        try:
            self.store.open()
        except (OSError, sqlite3.Error) as exc:
            raise ServerError(f"cannot open the store {settings.store}: {exc}") from None
        self.epoch = self.store.epoch
        self._last_id = self.store.last_id
        try:
            self._server = await websockets_serve(
                self._handle,
                settings.host,
                settings.port,
                process_request=self._process_request,
                max_size=settings.max_message_size,
                max_queue=64,
                compression="deflate" if settings.compression else None,
                ping_interval=settings.ping_interval,
                close_timeout=2,
                server_header="evkit",
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(settings.host, settings.port) from None
            self.store.close()
            raise ServerError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(
            "evkit broadcaster listening on ws://%s:%d%s", settings.host, self.port, EVENTS_PATH
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what was already published, close every client with 1001, stop listening.

        Finishes within about ``timeout`` seconds: clients that do not complete the
        closing handshake in time are cut.
        """
        if self._server is None or self._closing:
            return
        self._closing = True
        self._drain_all()
        server = self._server
        server.close(close_connections=False)
        closers = [
            asyncio.ensure_future(connection.close(1001, "server shutting down"))
            for connection in list(self._clients)
        ]
        if closers:
            await asyncio.wait(closers, timeout=timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout)
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    async def flush(self) -> None:
        """Hand every event published so far to its clients' connections and the store.

        Returns once a durable store has committed them.
        """
        self._drain_all()
        await asyncio.get_running_loop().run_in_executor(None, self.store.sync)

    # -- publishing (any thread) ------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Queue an event for broadcast. Safe from any thread; never blocks.

        The payload is serialised here, on the caller's thread. When the queue is full
        the event is dropped and counted (see :meth:`stats`).
        """
        if len(self._pending) >= self.settings.queue_size or self._closing:
            count = next(self._dropped)
            if count % 10_000 == 0:
                logger.warning(
                    "evkit broadcaster queue is full (%d events): dropping events; %d dropped so far",
                    self.settings.queue_size,
                    count + 1,
                )
            return
        try:
            payload_json = encode(event.payload)
        except InvalidEventError as exc:
            next(self._unencodable)
            logger.error("dropped %s: %s", event.type, exc)
            return
        correlation_id = event.payload.get("correlationId")
        self._pending.append(
            (
                event.type,
                event.timestamp,
                correlation_id if isinstance(correlation_id, str) else None,
                payload_json,
            )
        )
        if not self._wakeup_scheduled and self._loop is not None:
            # One wake-up per batch: the flag is cleared by the drain before it pops, so
            # an event appended meanwhile is either popped by it or schedules another.
            self._wakeup_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # loop closed: the server is gone
                self._wakeup_scheduled = False

    # -- the loop side ----------------------------------------------------------------

    def _drain(self) -> None:
        self._wakeup_scheduled = False
        pending = self._pending
        route = self._index.route
        append = self.store.append
        batches = self._batches
        stats = self._stats
        delivered = 0
        last_id = self._last_id
        for _ in range(min(len(pending), _DRAIN_CHUNK)):
            type_, timestamp, correlation_id, payload_json = pending.popleft()
            last_id += 1
            frame = encode_event(type_, timestamp, str(last_id), payload_json)
            append(Record(last_id, timestamp, type_, correlation_id, frame))
            targets = route(type_, correlation_id)
            if targets:
                delivered += len(targets)
                if batches:
                    targets = self._collect_batched(targets, frame)
                if targets:
                    broadcast(targets, frame, text=True)
        stats.published += last_id - self._last_id
        stats.delivered += delivered
        self._last_id = last_id
        if batches:
            self._schedule_batches()
        self._evict_slow_consumers()
        if pending and not self._wakeup_scheduled and self._loop is not None:
            self._wakeup_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain_all(self) -> None:
        while self._pending:
            self._drain()
        for connection in list(self._batches):
            self._flush_batch(connection)

    # -- batched delivery (clients that subscribed with "batch") -------------------------

    def _collect_batched(
        self, targets: list[ServerConnection], frame: bytes
    ) -> list[ServerConnection]:
        """Queue ``frame`` for the batched targets; return the targets sent to directly."""
        batches = self._batches
        direct = []
        for connection in targets:
            batch = batches.get(connection)
            if batch is None:
                direct.append(connection)
                continue
            batch.frames.append(frame)
            if len(batch.frames) >= batch.options.max_events:
                self._flush_batch(connection)
        return direct

    def _schedule_batches(self) -> None:
        assert self._loop is not None
        for connection, batch in self._batches.items():
            if batch.frames and batch.timer is None:
                delay = batch.options.max_delay_ms / 1000.0
                if delay <= 0:
                    self._flush_batch(connection)
                else:
                    batch.timer = self._loop.call_later(delay, self._flush_batch, connection)

    def _flush_batch(self, connection: ServerConnection) -> None:
        batch = self._batches.get(connection)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if batch.frames:
            frames, batch.frames = batch.frames, []
            broadcast(
                (connection,),
                b'{"type":"websocket.batch","timestamp":%d,"payload":{"events":[%b]}}'
                % (messages.now_ms(), b",".join(frames)),
                text=True,
            )

    def _evict_slow_consumers(self) -> None:
        limit = self.settings.client_buffer_limit
        index = self._index
        for connection in list(self._clients):
            transport = connection.transport
            if transport.is_closing():
                # Lost under us (the peer vanished): stop writing to it now rather than
                # until its handler notices, which asyncio would log once per write.
                index.remove_subscriber(connection)
            elif transport.get_write_buffer_size() > limit:
                self._drop_slow(connection)

    def _drop_slow(self, connection: ServerConnection) -> None:
        state = self._clients.pop(connection, None)
        if state is None:
            return
        self._index.remove_subscriber(connection)
        self._drop_batch(connection)
        self._stats.slow_consumer_disconnects += 1
        logger.warning(
            "client %s (%s) disconnected: slow consumer (more than %d bytes waiting)",
            state.client_id,
            state.remote,
            self.settings.client_buffer_limit,
        )

        async def close() -> None:
            # The close frame queues behind the backlog; if the peer does not read it in
            # time, websockets aborts the connection and the buffer is freed.
            await connection.close(1013, "slow consumer")

        task = asyncio.ensure_future(close())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # -- HTTP and handshake -----------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == EVENTS_PATH:
            try:
                connection.evkit_start = self._parse_connect(request, url.query)  # type: ignore[attr-defined]
            except ProtocolError as exc:
                return _json_response(
                    connection, http.HTTPStatus.BAD_REQUEST, {"error": exc.error, "code": exc.code}
                )
            return None
        if url.path == "/healthz":
            return _json_response(connection, http.HTTPStatus.OK, self.health())
        if url.path in ("/", "/dashboard"):
            return _page_response(_dashboard_page())
        return _json_response(
            connection,
            http.HTTPStatus.NOT_FOUND,
            {"error": f"no route for {url.path}; the event stream is at {EVENTS_PATH}"},
        )

    def _parse_connect(self, request: Request, query: str) -> _ConnectOptions:
        params = parse_qs(query, keep_blank_values=True)
        patterns = ["*"]
        if "eventTypes" in params:
            raw = ",".join(params["eventTypes"])
            patterns = validate_patterns([p.strip() for p in raw.split(",") if p.strip()])
            if len(patterns) > self.settings.max_subscriptions:
                raise ProtocolError(
                    "too_many_subscriptions",
                    f"{len(patterns)} patterns requested; this server allows "
                    f"{self.settings.max_subscriptions} per client",
                )
        correlation_id = params.get("correlationId", [None])[-1] or request.headers.get(
            "x-correlation-id"
        )
        correlation_id = messages.validate_correlation_id(correlation_id or None)
        since = params.get("since", [None])[-1] or None
        if since is not None and not since.isdigit():
            raise ProtocolError(
                "invalid_message",
                f"since must be an event id received from this server, got {since!r}",
            )
        epoch = params.get("epoch", [None])[-1] or None
        batch = None
        if params.get("batch"):
            raw = params["batch"][-1]
            try:
                max_events, max_delay = (float(part) for part in raw.split(","))
            except ValueError:
                raise ProtocolError(
                    "invalid_message",
                    f"batch must be 'maxEvents,maxDelayMs' such as batch=1000,50; got {raw!r}",
                    {"field": "batch"},
                ) from None
            batch = messages.validate_batch(
                {
                    "maxEvents": int(max_events) if max_events.is_integer() else max_events,
                    "maxDelayMs": max_delay,
                }
            )
        return _ConnectOptions(patterns, correlation_id, since, epoch, batch)

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document."""
        store = self.store.health()
        return {
            "status": "ok" if store["state"] == "ok" else "degraded",
            "clients": len(self._clients),
            "events": self._stats.published,
            "store": store,
        }

    # -- one connection ---------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        start: _ConnectOptions = connection.evkit_start  # type: ignore[attr-defined]
        patterns, correlation_id, since = start.patterns, start.correlation_id, start.since
        remote = connection.remote_address
        state = ClientState(_client_id(), f"{remote[0]}:{remote[1]}" if remote else "?")
        self._stats.connections_total += 1
        # Welcome, registration and replay happen with no await in between, so the first
        # live event this client gets is the first one after its replay.
        self._send(
            connection,
            encode_message(
                messages.CONNECTED,
                {
                    "clientId": state.client_id,
                    "correlationId": correlation_id,
                    "subscriptions": patterns,
                    "epoch": self.epoch,
                    "lastId": str(self._last_id),
                },
            ),
        )
        self._clients[connection] = state
        self._index.add_subscriber(connection, patterns, correlation_id)
        if start.batch is not None:
            self._set_batch(connection, start.batch)
        if since is not None:
            self._replay(connection, since, patterns, (), correlation_id, start.epoch)
        logger.info("client %s connected from %s", state.client_id, state.remote)
        try:
            async for message in connection:
                if connection not in self._clients:
                    break  # dropped as a slow consumer; its close is under way
                state.received += 1
                self._on_message(connection, state, message)
        except ConnectionClosed:
            pass
        finally:
            self._clients.pop(connection, None)
            self._index.remove_subscriber(connection)
            self._drop_batch(connection)
            logger.info(
                "client %s disconnected (code %s %s)",
                state.client_id,
                connection.close_code,
                connection.close_reason or "",
            )

    def _set_batch(self, connection: ServerConnection, options: BatchOptions) -> None:
        """Deliver to ``connection`` in ``websocket.batch`` messages from now on.

        ``maxEvents: 1`` turns batching off again (every event is sent alone).
        """
        self._flush_batch(connection)
        self._drop_batch(connection)
        if options.max_events > 1:
            self._batches[connection] = _Batch(options)

    def _drop_batch(self, connection: ServerConnection) -> None:
        batch = self._batches.pop(connection, None)
        if batch is not None and batch.timer is not None:
            batch.timer.cancel()

    def _send(self, connection: ServerConnection, frame: bytes) -> None:
        if connection in self._batches:
            self._flush_batch(connection)  # keep the stream order: queued events go first
        broadcast((connection,), frame, text=True)

    def _reject(self, connection: ServerConnection, state: ClientState, exc: ProtocolError) -> None:
        state.errors += 1
        errors = self._stats.client_errors
        errors[exc.code] = errors.get(exc.code, 0) + 1
        self._send(connection, error_message(exc))

    def _on_message(
        self, connection: ServerConnection, state: ClientState, data: str | bytes
    ) -> None:
        try:
            message = decode_client_message(data)
            if isinstance(message, Subscribe):
                self._subscribe(connection, message)
            elif isinstance(message, Unsubscribe):
                removed = self._index.remove(connection, message.event_types)
                self._send(
                    connection,
                    encode_message(
                        messages.UNSUBSCRIBED,
                        {
                            "eventTypes": removed,
                            "subscriptions": self._index.subscriptions(connection),
                        },
                    ),
                )
            elif isinstance(message, Ping):
                self._send(connection, encode_message(messages.PONG, {"echo": message.payload}))
            elif isinstance(message, Publish):
                for type_, payload in message.events:
                    self.bus.emit(type_, payload)
            elif isinstance(message, Auth):
                pass  # authentication is off on this server: credentials are not needed
        except ProtocolError as exc:
            self._reject(connection, state, exc)

    def _subscribe(self, connection: ServerConnection, message: Subscribe) -> None:
        index = self._index
        before = index.subscriptions(connection)
        if message.replace:
            wanted = message.event_types
        else:
            wanted = before + [p for p in message.event_types if p not in before]
        if len(wanted) > self.settings.max_subscriptions:
            raise ProtocolError(
                "too_many_subscriptions",
                f"this subscribe would hold {len(wanted)} patterns; the limit is "
                f"{self.settings.max_subscriptions} per client (unsubscribe some, or use "
                f"broader patterns such as 'repo.*')",
                {"limit": self.settings.max_subscriptions, "requested": len(wanted)},
            )
        if message.replace:
            index.replace(connection, wanted)
            added = [p for p in wanted if p not in before]
        else:
            added = index.add(connection, message.event_types)
        if message.correlation_id is not messages.UNSET:
            index.set_filter(connection, message.correlation_id)  # type: ignore[arg-type]
        if message.batch is not None:
            self._set_batch(connection, message.batch)
        correlation_id = index.filter_of(connection)
        self._send(
            connection,
            encode_message(
                messages.SUBSCRIBED,
                {
                    "eventTypes": message.event_types,
                    "subscriptions": index.subscriptions(connection),
                    "correlationId": correlation_id,
                },
            ),
        )
        if message.since is not None:
            self._replay(
                connection, message.since, added, [p for p in before if p in wanted], correlation_id
            )

    def _replay(
        self,
        connection: ServerConnection,
        since: str,
        patterns: Iterable[str],
        already: Iterable[str],
        correlation_id: str | None,
        epoch: str | None = None,
    ) -> None:
        """Send history after ``since`` matching ``patterns`` but none of ``already``.

        ``since`` from another epoch (another stream) does not apply here: the whole
        history is sent, and the replay is reported incomplete.
        """
        self._stats.replays += 1
        try:
            after = int(since)
        except ValueError:
            after = -1
        first = self.store.first_id()
        other_epoch = epoch is not None and epoch != self.epoch
        if other_epoch:
            after = 0
        # Complete when nothing after `since` has left the history, and `since` is an id
        # this stream has handed out (a larger one comes from another epoch).
        complete = not other_epoch and first - 1 <= after <= self._last_id
        wanted = [compile_pattern(p) for p in patterns]
        skip = [compile_pattern(p) for p in already]
        count = 0
        batch = self._batches.get(connection)
        if wanted and after < self._last_id:
            for record in self.store.read_after(after):
                if correlation_id is not None and record.correlation_id != correlation_id:
                    continue
                if any(m(record.type) for m in wanted) and not any(m(record.type) for m in skip):
                    if batch is None:
                        self._send(connection, record.frame)
                    else:
                        batch.frames.append(record.frame)
                        if len(batch.frames) >= batch.options.max_events:
                            self._flush_batch(connection)
                    count += 1
        self._send(
            connection,
            encode_message(
                messages.REPLAYED,
                {"since": since, "count": count, "complete": complete, "epoch": self.epoch},
            ),
        )

    # -- administration -----------------------------------------------------------------

    def disconnect(
        self, client_id: str | None = None, code: int = 1012, reason: str = "service restart"
    ) -> int:
        """Close one client (by id) or every client; returns how many were closed.

        They stop receiving at once; the closing handshakes finish in the background.
        Clients that resume (``since``) miss nothing that history still holds.
        """
        closed = 0
        for connection, state in list(self._clients.items()):
            if client_id is not None and state.client_id != client_id:
                continue
            self._clients.pop(connection, None)
            self._index.remove_subscriber(connection)
            self._drop_batch(connection)
            task = asyncio.ensure_future(connection.close(code, reason))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
            closed += 1
        return closed

    # -- introspection ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: clients, published, delivered, dropped, slow consumers, errors."""
        stats = self._stats
        return {
            "clients": len(self._clients),
            "connections_total": stats.connections_total,
            "published": stats.published,
            "delivered": stats.delivered,
            "pending": len(self._pending),
            "dropped": _peek(self._dropped),
            "unencodable": _peek(self._unencodable),
            "slow_consumer_disconnects": stats.slow_consumer_disconnects,
            "replays": stats.replays,
            "client_errors": dict(stats.client_errors),
            "last_id": str(self._last_id),
            "epoch": self.epoch,
        }


def _peek(counter: itertools.count[int]) -> int:
    # itertools.count is the thread-safe counter here; its repr is "count(N)".
    return int(repr(counter)[6:-1])


@functools.cache
def _dashboard_page() -> bytes:
    # One self-contained file (no CDN, no build step), read once per process.
    return resources.files("evkit").joinpath("static/dashboard.html").read_bytes()


def _page_response(body: bytes) -> Response:
    headers = Headers(
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(200, "OK", headers, body)


def _json_response(connection: ServerConnection, status: http.HTTPStatus, body: Any) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


# -- serve(): the broadcaster on evkit's loop thread ------------------------------------


class Server:
    """A running broadcaster on evkit's loop thread; the handle :func:`serve` returns.

    Use it as a context manager, or call :meth:`stop`.
    """

    def __init__(self, settings: ServerSettings, bus: EventBus | None = None) -> None:
        self.settings = settings
        self.broadcaster = Broadcaster(settings, bus)
        self._loop_thread = loop_thread()
        self._running = False

    def _start(self) -> None:
        self._loop_thread.run(self.broadcaster.start(), timeout=30)
        self.broadcaster.bus.on("*", self.broadcaster.publish)
        self._running = True

    @property
    def running(self) -> bool:
        """Whether it is accepting connections."""
        return self._running and self._loop_thread.alive

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        """The port bound (the real one when 0 was asked for)."""
        return self.broadcaster.port

    @property
    def url(self) -> str:
        """The event stream's URL, ``ws://HOST:PORT/ws/events``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{EVENTS_PATH}"

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP routes (``/healthz``)."""
        return self.url.replace("ws://", "http://", 1).removesuffix(EVENTS_PATH)

    def stats(self) -> dict[str, Any]:
        """The broadcaster's counters (see :meth:`Broadcaster.stats`)."""
        return self.broadcaster.stats()

    def disconnect(
        self, client_id: str | None = None, code: int = 1012, reason: str = "service restart"
    ) -> int:
        """Close one client (by its ``clientId``) or all of them; returns how many.

        See :meth:`Broadcaster.disconnect`.
        """

        async def run() -> int:
            return self.broadcaster.disconnect(client_id, code, reason)

        return self._loop_thread.run(run(), 10)

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every event emitted before this call was handed to the clients."""
        if self.running:
            self._loop_thread.run(self.broadcaster.flush(), timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what was emitted, close clients with 1001 and stop listening."""
        if not self._running:
            return
        self._running = False
        self.broadcaster.bus.off(self.broadcaster.publish)
        with _registry_lock:
            for key, server in list(_servers.items()):
                if server is self:
                    del _servers[key]
        if self._loop_thread.alive:
            self._loop_thread.run(self.broadcaster.stop(timeout), timeout + 5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<evkit.Server {self.url} {state}>"


_registry_lock = threading.RLock()
_servers: dict[tuple[str, int], Server] = {}


def serve(
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    bus: EventBus | None = None,
    **options: Any,
) -> Server:
    """Start a broadcaster on evkit's background loop thread and return at once.

    It listens on ``ws://host:port/ws/events`` when this returns and receives every
    event of ``bus`` (the global bus by default). Calling it again with the same
    arguments (a re-run notebook cell) returns the running server; with different ones
    it stops that server and starts a new one. ``options`` are the fields of
    :class:`ServerSettings`.

    Raises:
        PortInUseError: another process holds the port.
        TypeError: an unknown option.
        ValueError: an option out of range.
    """
    settings = ServerSettings(host=host, port=port, **options)
    key = (host, port)
    with _registry_lock:
        existing = _servers.get(key)
        if existing is not None:
            if (
                existing.running
                and existing.settings == settings
                and (bus is None or existing.broadcaster.bus is bus)
            ):
                return existing
            existing.stop()
        server = Server(settings, bus)
        server._start()
        _servers[key] = server
        return server


def running_servers() -> list[Server]:
    """The servers :func:`serve` started in this process that are still running."""
    with _registry_lock:
        return [s for s in _servers.values() if s.running]


def flush(timeout: float = 5.0) -> None:
    """Block until everything emitted before this call was handed to the clients.

    Covers every server started with :func:`serve` in this process.

    Raises:
        TimeoutError: not done within ``timeout`` seconds.
        LoopError: called on evkit's own loop thread.
    """
    for server in running_servers():
        server.flush(timeout)
