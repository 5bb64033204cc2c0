"""The broadcaster: a WebSocket server at ``/ws/events`` that fans events out by subscription.

:class:`Broadcaster` runs on an asyncio loop (evkit's loop thread when started through
:func:`serve`). Events reach it from any thread through :meth:`Broadcaster.publish`,
which the global bus calls: the payload is serialised there, on the caller's thread,
and the event is appended to a bounded queue; one wake-up per batch hands the queue to
the loop. On the loop each event gets its stream id, is encoded once, recorded in the
bounded history and routed through the :class:`~evkit.patterns.SubscriptionIndex`.

Writing does not go through :func:`websockets.asyncio.server.broadcast`, which builds
and sends a frame per event per connection: at 100 clients that topped out near
185,000 deliveries a second on the benchmark machine, so 2,000 events/s to 100 clients
backed up to a p99 latency of 350 ms (``bench/README.md``). Instead each event becomes
one WebSocket text frame, built here (a server's frames are unmasked), and each
connection gets one ``transport.write`` per loop turn holding all its frames of that
turn, in order. These are whole frames, as websockets writes its own, so its pings and
close frames land between them; nothing is written to a connection that is not open
(closing handshake started) or whose transport is closing, and evkit never sends a
fragmented message. A connection using permessage-deflate goes through websockets'
protocol, which keeps the compression state of each connection.

Batched clients (``websocket.batch``) with the same patterns, correlation filter and
batch options share a batch group: an event is queued once per group and each batch is
framed once for all its members. One timer sends the batches whose window ends.

Writes never await: one slow client never delays the others. A client whose outgoing
buffer passes ``client_buffer_limit`` after a write is dropped from routing at once and
closed with 1013 ``slow consumer``, so memory stays bounded.

Everything that touches connections happens on the loop, so a replay (``since``) and the
live stream meet with no gap and no duplicate.

The same port answers ``GET /healthz``. This module needs no pandas.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fnmatch
import functools
import http
import ipaddress
import itertools
import logging
import os
import sqlite3
import string
import struct
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from evkit import protocol as messages
from evkit._loop import loop_thread
from evkit.auth import ANONYMOUS, Authenticator, Principal
from evkit.bus import Event, EventBus, global_bus
from evkit.exceptions import (
    EvkitWarning,
    InvalidEventError,
    PortInUseError,
    ProtocolError,
    ServerError,
)
from evkit.limits import AddressLimits, TokenBucket
from evkit.metrics import LATENCY_BUCKETS
from evkit.patterns import SubscriptionIndex, compile_pattern, validate_patterns
from evkit.protocol import (
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
from evkit.redaction import CredentialFilter, Redactor, ScrubbingLogger
from evkit.store import Record, open_store
from evkit.store.redis import RedisStore, StoreUnavailable

__all__ = ["Broadcaster", "Server", "ServerSettings", "flush", "running_servers", "serve"]

logger = logging.getLogger("evkit.server")
# Nothing this server logs shows a credential, at any level: its own records are
# filtered, and websockets logs through a scrubbing adapter (request lines, headers and
# frames at DEBUG would show tokens).
logger.addFilter(CredentialFilter())
_WIRE_LOGGER = ScrubbingLogger(logging.getLogger("websockets.server"))

EVENTS_PATH = "/ws/events"
_BASE36 = string.digits + string.ascii_lowercase
_DRAIN_CHUNK = 2_000  # most events per loop turn
_REDIS_REPLAY_COUNT = 500  # most entries per XRANGE of a replay
# Most deliveries per loop turn: with many clients a turn takes fewer events, so pings,
# handshakes, client messages and the slow-consumer check are never held for long. A
# delivery costs little (each connection gets one write per turn, holding all its frames
# of the turn); what a turn costs is mostly one write per connection, so the budget is
# large: at 1,000 clients a turn takes 100 events (6.9M deliveries/s, worst loop lag 37
# ms in bench/fanout.py; with 20,000 it was 20 events, 2.7M/s and 102 ms).
_DRAIN_DELIVERIES = 100_000
#: Event-type categories counted by name in the stats and /metrics; the rest are "other".
MAX_CATEGORIES = 100
OTHER_CATEGORY = "other"
_CLAIM_RETRY = 0.001  # seconds before asking a durable store again for ids
_PLAN_CACHE_SIZE = 1_024  # write plans kept, one per distinct list of recipients
# A batch is sent this much before its window ends (at most half the window), so that
# with the loop's lateness and the write it still reaches the client within maxDelayMs.
_BATCH_LEAD = 0.001
_BATCH_SLACK = 0.0005  # a batch timer also sends the batches due this soon after it
_BATCH_MESSAGE = b'{"type":"websocket.batch","timestamp":%d,"payload":{"events":[%b]}}'
_OPEN = State.OPEN


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
        history_bytes: most bytes of encoded events kept in memory for replay: past it
            (or past ``history_size``) the oldest are dropped.
        store: where history lives: ``memory://`` (a ring of ``history_size``),
            ``sqlite:///path/events.db`` (durable) or ``redis://host:6379/0`` (a Redis
            stream shared by several broadcasters; see :func:`evkit.store.open_store`).
        stream: the Redis stream key (``store="redis://..."`` only).
        maxlen: events the Redis stream keeps, trimmed approximately (Redis only).
        client_buffer_limit: bytes a client may have waiting to be sent before it is
            disconnected as a slow consumer (1013).
        compression: permessage-deflate; off by default (it costs CPU per client).
        ping_interval: seconds between keep-alive pings (None: never).
        token: a static bearer token every client must present (all scopes).
        jwt_secret / jwt_public_key: accept JWTs signed HS256 / RS256 (``exp`` and
            ``nbf`` checked; claims ``scope`` and ``patterns``).
        auth_timeout: seconds a client without credentials in the handshake has to send
            ``{"type": "auth"}`` as its first message before it is closed with 1008.
        allowed_origins: globs of the browser origins allowed to connect (``("*",)``
            for any); None allows the server's own origin only. Requests without an
            Origin header (non-browser clients) are allowed when
            ``allow_missing_origin``.
        allowed_hosts: globs of the host names (the ``Host`` header, port left out) the
            server answers to, besides loopback names. None: a server bound to loopback
            answers loopback names only (``localhost``, ``*.localhost``, ``127.0.0.1``,
            ``[::1]``), which defeats DNS rebinding; one bound elsewhere answers any.
            Behind a proxy that passes its public name (``Host: events.example.com``)
            to a server on loopback, list that name.
        allow_publish: whether clients may publish (with auth on: those with the
            ``publish`` scope).
        max_connections, max_connections_per_ip, connections_per_second_per_ip: limits
            on clients (refused at the handshake with 503 / 429).
        max_authenticating: most connections waiting to send their credentials as a first
            message (refused with 503 past it); they do not count towards
            ``max_connections`` until they have authenticated.
        messages_per_second, message_burst: a token bucket per client; excess messages
            get ``rate_limited`` and change nothing; after ``rate_limit_strikes`` of them
            the client is closed with 1008.
        redact_keys: payload keys (any depth; case and separators ignored; ``*`` globs)
            whose values are replaced before an event leaves the process or reaches the
            store, besides the default patterns (see :mod:`evkit.redaction`).
        redact_defaults: whether the default patterns apply (password, token, secret,
            api key, auth, cookie, session, credential, private key...).
        max_post_size: largest ``POST /events`` body, in bytes.
        public_metrics: with auth on, ``/metrics`` and the full ``/healthz`` need a
            credential with the ``metrics`` scope (``/healthz`` answers only its status
            without one); True opens them to anyone who can reach the port.
    """

    host: str = "127.0.0.1"
    port: int = 3000
    max_message_size: int = 64 * 1024
    max_subscriptions: int = 128
    queue_size: int = 100_000
    history_size: int = 10_000
    history_bytes: int = 16 * 1024 * 1024
    client_buffer_limit: int = 1024 * 1024
    compression: bool = False
    ping_interval: float | None = 20.0
    store: str = "memory://"
    stream: str = "evkit:events"
    maxlen: int = 1_000_000
    token: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    auth_timeout: float = 5.0
    allowed_origins: tuple[str, ...] | None = None
    allow_missing_origin: bool = True
    allowed_hosts: tuple[str, ...] | None = None
    allow_publish: bool = True
    max_connections: int = 10_000
    max_authenticating: int = 100
    max_connections_per_ip: int = 1_000
    connections_per_second_per_ip: float = 100.0
    messages_per_second: float = 200.0
    message_burst: int = 400
    rate_limit_strikes: int = 100
    redact_keys: tuple[str, ...] = ()
    redact_defaults: bool = True
    max_post_size: int = 1024 * 1024
    public_metrics: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, got {self.port!r}")
        for name in ("allowed_origins", "allowed_hosts", "redact_keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        for name in (
            "max_message_size",
            "max_subscriptions",
            "queue_size",
            "history_size",
            "history_bytes",
            "maxlen",
            "client_buffer_limit",
            "max_connections",
            "max_authenticating",
            "max_connections_per_ip",
            "message_burst",
            "rate_limit_strikes",
            "max_post_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class ClientState:
    """What the broadcaster knows about one connection."""

    client_id: str
    remote: str
    principal: Principal = ANONYMOUS
    bucket: TokenBucket | None = None
    received: int = 0
    errors: int = 0
    strikes: int = 0
    close_code: int | None = None  # set when the server itself closes the connection


@dataclass(frozen=True)
class _ConnectOptions:
    """What a connection asked for in its URL (and headers)."""

    patterns: list[str]
    correlation_id: str | None
    since: str | None
    epoch: str | None
    batch: BatchOptions | None
    explicit_patterns: bool = False
    principal: Principal | None = None  # None: credentials still to come as a first message


# A batch group's key: the patterns, correlation filter and batch options its clients share.
_GroupKey = tuple[frozenset[str], str | None, BatchOptions]


@dataclass(eq=False)
class _BatchGroup:
    """Live events waiting for the batched clients that get the same ones, batched alike.

    Clients with equal patterns, correlation filter and batch options are routed the same
    events, so one list of frames serves them all and each batch is framed once for all.
    ``deadline`` is the loop time by which the oldest waiting frame must be sent.
    """

    key: _GroupKey
    options: BatchOptions
    members: dict[ServerConnection, None] = field(default_factory=dict)
    frames: list[bytes] = field(default_factory=list)
    deadline: float = 0.0


@dataclass
class _Batch:
    """A batched client: its options, its group, and the frames queued for it alone.

    ``frames`` holds what only this client gets: history it asked to replay, sent in
    batches of ``max_events`` and the rest when the replay ends. Its live events wait in
    ``group``, sent at ``max_events`` or within ``max_delay_ms``.
    """

    options: BatchOptions
    frames: list[bytes] = field(default_factory=list)
    group: _BatchGroup | None = None


@dataclass(frozen=True, slots=True)
class _WritePlan:
    """How the recipients of one ``route()`` answer are written to."""

    recipients: list[ServerConnection]  # the answer itself: its identity keys the cache
    plain: list[ServerConnection]  # unbatched, uncompressed: frames written as bytes
    deflate: list[ServerConnection]  # unbatched with permessage-deflate: through websockets
    groups: list[_BatchGroup]  # batched: every member of these groups is a recipient


@dataclass
class _WriteState:
    """The write path's state: batch groups, write plans, and the one batch timer."""

    groups: dict[_GroupKey, _BatchGroup] = field(default_factory=dict)
    due: dict[_BatchGroup, None] = field(default_factory=dict)  # groups holding frames
    plans: dict[int, _WritePlan] = field(default_factory=dict)  # by id() of the answer
    plans_by_route: dict[tuple[str, str | None], _WritePlan] = field(default_factory=dict)
    # Connections a write found lost or past the buffer limit, to act on after the writes.
    suspects: list[ServerConnection] = field(default_factory=list)
    # While a _deliver call runs, every frame it sends (batches included) waits here, so
    # that each connection gets one write at its end: plain frames, and messages for
    # connections that compress.
    pending: dict[ServerConnection, list[bytes]] | None = None
    deflated: dict[ServerConnection, list[bytes]] | None = None
    timer: asyncio.TimerHandle | None = None
    timer_at: float = 0.0

    def forget_plans(self) -> None:
        """Drop every plan: a client's batching or group changed, or it left."""
        self.plans.clear()
        self.plans_by_route.clear()


@dataclass
class BroadcasterStats:
    """Counters of one broadcaster; read them with :meth:`Broadcaster.stats`."""

    published: int = 0
    delivered: int = 0
    connections_total: int = 0
    slow_consumer_disconnects: int = 0
    replays: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    disconnects: dict[str, int] = field(default_factory=dict)
    published_by_category: dict[str, int] = field(default_factory=dict)
    delivered_by_category: dict[str, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0


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
        self.store = open_store(
            self.settings.store,
            self.settings.history_size,
            stream=self.settings.stream,
            maxlen=self.settings.maxlen,
            history_bytes=self.settings.history_bytes,
        )
        self.epoch = self.store.epoch
        self._index: SubscriptionIndex[ServerConnection] = SubscriptionIndex()
        self._batches: dict[ServerConnection, _Batch] = {}
        self._clients: dict[ServerConnection, ClientState] = {}
        # Every connection past the handshake, including those still to authenticate or
        # catching up on history: what max_connections bounds.
        self._handling: set[ServerConnection] = set()
        # Of those, the ones still to send their credentials (max_authenticating bounds it).
        self._authenticating: set[ServerConnection] = set()
        self._pending: deque[tuple[Event, str | None, bytes, float]] = deque()
        settings = self.settings
        self.auth = Authenticator(settings.token, settings.jwt_secret, settings.jwt_public_key)
        self.redact = Redactor(settings.redact_keys, defaults=settings.redact_defaults)
        self._addresses = AddressLimits(
            settings.max_connections_per_ip, settings.connections_per_second_per_ip
        )
        self._dropped_by_category: dict[str, int] = {}
        self._drop_lock = threading.Lock()
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
        self._loopback = _is_loopback(self.settings.host)
        # Events a POST /events handed to this broadcaster's publish() through its bus.
        self._posted: set[int] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises:
            PortInUseError: the port is held by another process.
            ServerError: binding failed for another reason (the message says which).
        """
        self._loop = asyncio.get_running_loop()
        settings = self.settings
        store = self.store
        try:
            store.open()
        except (OSError, sqlite3.Error) as exc:
            raise ServerError(f"cannot open the store {settings.store}: {exc}") from None
        if isinstance(store, RedisStore):
            try:
                await store.start(
                    self._pending,
                    self._deliver_read,
                    self._count_published,
                    functools.partial(self._stream_broken, "event stream reset"),
                    functools.partial(self._stream_broken, "event stream gap"),
                )
            except StoreUnavailable as exc:
                raise ServerError(str(exc)) from None
        self.epoch = store.epoch
        self._last_id = store.last_id
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
                logger=_WIRE_LOGGER,
                create_connection=type(
                    "EvkitServerConnection", (_HTTPPostConnection,), {"broadcaster": self}
                ),
            )
        except OSError as exc:
            self.store.close()
            if isinstance(store, RedisStore):
                await store.aclose()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(settings.host, settings.port) from None
            raise ServerError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        if not self.auth.enabled and not _is_loopback(settings.host):
            message = (
                f"evkit broadcaster bound to {settings.host}:{self.port} without authentication: "
                f"anyone who can reach it can read every event; pass token=... or jwt_secret=..."
            )
            logger.warning(message)
            warnings.warn(message, EvkitWarning, stacklevel=2)
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
        await self._hand_out_queued(timeout / 2)
        self._drain_all()
        store = self.store
        if isinstance(store, RedisStore):
            # Write what is queued, and deliver it, while there is time.
            try:
                await asyncio.wait_for(store.flush(), timeout / 2)
            except TimeoutError:
                logger.warning(
                    "evkit broadcaster stopped with %d events not written to Redis at %s",
                    store.health()["waiting"],
                    store.display_url,
                )
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
        if isinstance(store, RedisStore):
            await store.aclose()
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    async def flush(self) -> None:
        """Hand every event published so far to its clients' connections and the store.

        Returns once a durable store has committed them. The loop keeps turning between
        chunks (events published after the call are not waited for). With a Redis store:
        once they are in the stream and this instance has delivered them.
        """
        if isinstance(self.store, RedisStore):
            await self.store.flush()
            for connection in list(self._batches):
                self._flush_batch(connection)
            return
        await self._hand_out_queued()
        for connection in list(self._batches):
            self._flush_batch(connection)
        await asyncio.get_running_loop().run_in_executor(None, self.store.sync)

    # -- publishing (any thread) ------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Queue an event for broadcast. Safe from any thread; never blocks.

        The payload is redacted and serialised here, on the caller's thread. When the
        queue is full the event is dropped and counted (see :meth:`stats`). Once handed
        out, ``event.id`` holds the stream id it was given.
        """
        posted = self._posted
        if posted is not None:  # a POST /events on the loop is emitting on the bus
            posted.add(id(event))
        if len(self._pending) >= self.settings.queue_size or self._closing:
            count = next(self._dropped)
            self._count_drop(event.type)
            if count % 10_000 == 0:
                logger.warning(
                    "evkit broadcaster queue is full (%d events): dropping events; %d dropped so far",
                    self.settings.queue_size,
                    count + 1,
                )
            return
        try:
            payload_json = encode(self.redact(event.payload))
        except (InvalidEventError, RecursionError) as exc:  # too deep for the redactor
            next(self._unencodable)
            self._count_drop(event.type)
            logger.error("dropped %s: %s", event.type, exc)
            return
        correlation_id = event.payload.get("correlationId")
        self._pending.append(
            (
                event,
                correlation_id if isinstance(correlation_id, str) else None,
                payload_json,
                time.perf_counter(),
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

    def _count_drop(self, type_: str) -> None:
        with self._drop_lock:
            dropped = self._dropped_by_category
            category = _category(dropped, type_)
            dropped[category] = dropped.get(category, 0) + 1

    # -- the loop side ----------------------------------------------------------------

    def _drain(self) -> int:
        """Give queued events their ids, record them, and deliver them (one loop turn).

        Returns how many were handed out: fewer than queued while a durable store
        commits how far ids may go (the drain then comes back shortly).
        """
        self._wakeup_scheduled = False
        if self.store.shared:
            # Redis assigns the ids; what the reader reads back is delivered.
            self.store.kick()  # type: ignore[attr-defined]
            return 0
        pending = self._pending
        append = self.store.append
        last_id = self._last_id
        chunk = min(_DRAIN_CHUNK, max(1, _DRAIN_DELIVERIES // max(1, len(self._clients))))
        wanted = min(len(pending), chunk)
        allowed = self.store.claim(wanted) if wanted else 0
        items = [pending.popleft() for _ in range(allowed)]
        records = []
        for event, correlation_id, payload_json, _ in items:
            type_ = event.type
            last_id += 1
            event_id = str(last_id)
            event.id = event_id
            record = Record(
                last_id,
                event.timestamp,
                type_,
                correlation_id,
                encode_event(type_, event.timestamp, event_id, payload_json),
            )
            append(record)
            records.append(record)
        self._last_id = last_id
        if items:
            self._count_published(items)
            self._deliver(records)
        if pending and not self._wakeup_scheduled and self._loop is not None:
            self._wakeup_scheduled = True
            if allowed < wanted:
                self._loop.call_later(_CLAIM_RETRY, self._drain)
            else:
                self._loop.call_soon(self._drain)
        return allowed

    def _deliver_read(self, records: list[Record]) -> None:
        """Deliver what the Redis reader read (every instance's events, in stream order)."""
        self._last_id = self.store.last_id
        self._deliver(records)

    def _count_published(self, items: list[tuple[Event, str | None, bytes, float]]) -> None:
        """Count events handed out: by category, and how long they waited since emit()."""
        stats = self._stats
        published_by = stats.published_by_category
        latency_counts = stats.latency_counts
        latency_sum = 0.0
        now = time.perf_counter()
        for event, _, _, stamp in items:
            category = _category(published_by, event.type)
            published_by[category] = published_by.get(category, 0) + 1
            waited = now - stamp
            latency_sum += waited
            latency_counts[bisect.bisect_left(LATENCY_BUCKETS, waited)] += 1
        stats.latency_sum += latency_sum
        stats.published += len(items)

    def _stream_broken(self, reason: str) -> None:
        """The shared stream was lost or outran this instance: close every client (1012).

        Its resume then reports ``complete: false``: a gap is never silent.
        """
        self.epoch = self.store.epoch
        self._last_id = self.store.last_id
        self.disconnect(code=1012, reason=reason)
        for connection in list(self._handling):  # still authenticating or catching up
            if connection not in self._clients:
                task = asyncio.ensure_future(connection.close(1012, reason))
                self._closers.add(task)
                task.add_done_callback(self._closers.discard)

    @functools.cached_property
    def _writes(self) -> _WriteState:
        """The write path's state (made on first use)."""
        return _WriteState()

    def _deliver(self, records: list[Record]) -> None:
        """Route recorded events, in order, to the live clients that match them.

        Each event is framed once. Every connection gets one write for the whole call,
        holding its frames (events, or batches of batched clients) in stream order.
        """
        route = self._index.route
        writes = self._writes
        plans = writes.plans
        pending: dict[ServerConnection, list[bytes]] = {}
        deflated: dict[ServerConnection, list[bytes]] = {}
        writes.pending, writes.deflated = pending, deflated
        # A run: consecutive events with the same plain recipients, joined once for all.
        run_to: list[ServerConnection] = []
        run: list[bytes] = []
        delivered_by_type: dict[str, int] = {}
        now = -1.0
        try:
            for record in records:
                targets = route(record.type, record.correlation_id)
                if not targets:
                    continue
                type_ = record.type
                delivered_by_type[type_] = delivered_by_type.get(type_, 0) + len(targets)
                plan = plans.get(id(targets))
                if plan is None or plan.recipients is not targets:
                    plan = self._write_plan(targets, record)
                if plan.plain:
                    if plan.plain is not run_to:
                        if run:
                            _spread(run, run_to, pending)
                            run = []
                        run_to = plan.plain
                    run.append(_text_frame(record.frame))
                for connection in plan.deflate:
                    deflated.setdefault(connection, []).append(record.frame)
                if plan.groups:
                    if now < 0:
                        assert self._loop is not None
                        now = self._loop.time()
                    self._collect_batched(plan.groups, record.frame, now)
            if run:
                _spread(run, run_to, pending)
            if writes.due:
                self._schedule_batches()
        finally:
            writes.pending = writes.deflated = None
        if pending or deflated:
            self._write_pending(pending, deflated)
        if delivered_by_type:
            delivered_by = self._stats.delivered_by_category
            for type_, count in delivered_by_type.items():
                category = _category(delivered_by, type_)
                delivered_by[category] = delivered_by.get(category, 0) + count
            self._stats.delivered += sum(delivered_by_type.values())
        self._evict_slow_consumers()

    def _write_plan(self, recipients: list[ServerConnection], record: Record) -> _WritePlan:
        """How to write to ``recipients`` (a ``route()`` answer); cached until clients change.

        Each batched recipient is put in the group of its patterns, filter and options
        (joining one, or moving when its subscription changed). A group's member that is
        not a recipient has a subscription of its own now: it leaves (after a flush) and
        joins its new group when it next is one. So every member of a planned group is a
        recipient, and a group's batch goes to exactly the clients that should get it.
        """
        writes = self._writes
        route_key = (record.type, record.correlation_id)
        plan = writes.plans_by_route.get(route_key)
        if plan is not None and plan.recipients == recipients:
            return plan  # the same recipients in a list built afresh (correlation filters)
        batches = self._batches
        plain: list[ServerConnection] = []
        deflate: list[ServerConnection] = []
        groups: dict[_BatchGroup, int] = {}
        for connection in recipients:
            batch = batches.get(connection)
            if batch is None:
                (deflate if connection.protocol.extensions else plain).append(connection)
            else:
                group = self._place_in_group(connection, batch)
                groups[group] = groups.get(group, 0) + 1
        for group, count in groups.items():
            if count < len(group.members):
                wanted = set(recipients)
                for member in [m for m in group.members if m not in wanted]:
                    self._leave_group(member, batches[member], flush=True)
        plan = _WritePlan(recipients, plain, deflate, list(groups))
        if len(writes.plans) >= _PLAN_CACHE_SIZE:
            writes.forget_plans()
        writes.plans[id(recipients)] = plan
        writes.plans_by_route[route_key] = plan
        return plan

    def _write_pending(
        self,
        pending: dict[ServerConnection, list[bytes]],
        deflated: dict[ServerConnection, list[bytes]],
    ) -> None:
        """Write each connection's frames of this turn at once."""
        limit = self.settings.client_buffer_limit
        suspects = self._writes.suspects
        for connection, frames in pending.items():
            transport = connection.transport
            if transport.is_closing():
                suspects.append(connection)
            elif connection.protocol.state is _OPEN:
                try:
                    transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
                except Exception as exc:  # as broadcast(): one connection never stops the rest
                    _log_write_failure(connection, exc)
                if transport.get_write_buffer_size() > limit:
                    suspects.append(connection)
        for connection, messages_ in deflated.items():
            for message in messages_:
                self._write_message((connection,), message)

    def _write_message(self, connections: Iterable[ServerConnection], message: bytes) -> None:
        """Write one text message to each connection; framed once for all uncompressed ones.

        During a ``_deliver`` call it joins that call's writes instead.
        """
        writes = self._writes
        frame = b""
        if writes.pending is not None and writes.deflated is not None:
            for connection in connections:
                if connection.protocol.extensions:
                    writes.deflated.setdefault(connection, []).append(message)
                else:
                    if not frame:
                        frame = _text_frame(message)
                    writes.pending.setdefault(connection, []).append(frame)
            return
        limit = self.settings.client_buffer_limit
        suspects = writes.suspects
        for connection in connections:
            transport = connection.transport
            if transport.is_closing():
                suspects.append(connection)
                continue
            protocol = connection.protocol
            if protocol.state is not _OPEN:
                continue
            try:
                if protocol.extensions:  # permessage-deflate: websockets compresses it
                    protocol.send_text(message)
                    connection.send_data()
                else:
                    if not frame:
                        frame = _text_frame(message)
                    transport.write(frame)
            except Exception as exc:  # as broadcast(): one connection never stops the rest
                _log_write_failure(connection, exc)
            if transport.get_write_buffer_size() > limit:
                suspects.append(connection)

    async def _hand_out_queued(self, timeout: float | None = None) -> None:
        """Drain what is queued now, letting the loop turn between chunks.

        Events queued after the call are not waited for. Ends early after ``timeout``
        seconds (a durable store that cannot commit).
        """
        assert self._loop is not None
        deadline = None if timeout is None else self._loop.time() + timeout
        target = self._last_id + len(self._pending)
        while self._last_id < target and self._pending:
            if deadline is not None and self._loop.time() > deadline:
                return
            await asyncio.sleep(0 if self._drain() else _CLAIM_RETRY)

    def _drain_all(self) -> None:
        """Hand out everything queued that the store allows now (see :meth:`_drain`)."""
        while self._pending and not self.store.shared:
            if not self._drain():
                break
        if self.store.shared:
            self.store.kick()  # type: ignore[attr-defined]
        for connection in list(self._batches):
            self._flush_batch(connection)

    # -- batched delivery (clients that subscribed with "batch") -------------------------

    def _collect_batched(self, groups: list[_BatchGroup], frame: bytes, now: float) -> None:
        """Queue ``frame`` once in each group; send a group's batch once it is full."""
        due = self._writes.due
        for group in groups:
            frames = group.frames
            if not frames:
                delay = group.options.max_delay_ms / 1000.0
                group.deadline = now + delay - min(_BATCH_LEAD, delay / 2)
                due[group] = None
            frames.append(frame)
            if len(frames) >= group.options.max_events:
                self._flush_group(group)

    def _schedule_batches(self) -> None:
        """Send the batches whose time has come; set the one timer for the next."""
        writes = self._writes
        due = writes.due
        if not due:
            return
        assert self._loop is not None
        now = self._loop.time() + _BATCH_SLACK
        for group in [group for group in due if group.deadline <= now]:
            self._flush_group(group)
        if due:
            earliest = min(group.deadline for group in due)
            timer = writes.timer
            if timer is None or earliest < writes.timer_at:
                if timer is not None:
                    timer.cancel()
                writes.timer = self._loop.call_at(earliest, self._flush_due_batches)
                writes.timer_at = earliest

    def _flush_due_batches(self) -> None:
        self._writes.timer = None
        self._schedule_batches()
        self._evict_slow_consumers()

    def _flush_batch(self, connection: ServerConnection) -> None:
        """Send what waits for ``connection`` now: its own frames, then its group's batch.

        The group's batch goes to all its members at once (earlier than their window:
        never later, and never to one of them twice).
        """
        batch = self._batches.get(connection)
        if batch is None:
            return
        if batch.frames:
            frames, batch.frames = batch.frames, []
            self._write_message(
                (connection,), _BATCH_MESSAGE % (messages.now_ms(), b",".join(frames))
            )
        if batch.group is not None:
            self._flush_group(batch.group)

    def _flush_group(self, group: _BatchGroup) -> None:
        frames = group.frames
        if not frames:
            return
        group.frames = []
        self._writes.due.pop(group, None)
        self._write_message(group.members, _BATCH_MESSAGE % (messages.now_ms(), b",".join(frames)))

    def _place_in_group(self, connection: ServerConnection, batch: _Batch) -> _BatchGroup:
        """The batch group of a routed client, joining or changing group as its key says."""
        index = self._index
        key = (
            frozenset(index.subscriptions(connection)),
            index.filter_of(connection),
            batch.options,
        )
        group = batch.group
        if group is not None:
            if group.key == key:
                return group
            self._leave_group(connection, batch, flush=True)
        writes = self._writes
        group = writes.groups.get(key)
        if group is None:
            group = writes.groups[key] = _BatchGroup(key, batch.options)
        else:
            self._flush_group(group)  # what it holds was routed before this client joined
        group.members[connection] = None
        batch.group = group
        writes.forget_plans()
        return group

    def _leave_group(self, connection: ServerConnection, batch: _Batch, flush: bool) -> None:
        """Take a client out of its group, first sending the group's batch when ``flush``."""
        group = batch.group
        if group is None:
            return
        if flush:
            self._flush_group(group)
        batch.group = None
        group.members.pop(connection, None)
        writes = self._writes
        if not group.members:
            if writes.groups.get(group.key) is group:
                del writes.groups[group.key]
            writes.due.pop(group, None)
        writes.forget_plans()

    def _evict_slow_consumers(self) -> None:
        """Act on the connections a write found lost or past ``client_buffer_limit``.

        A lost one (the peer vanished) stops being routed to; a slow one is dropped as a
        slow consumer.
        """
        suspects = self._writes.suspects
        if not suspects:
            return
        self._writes.suspects = []
        limit = self.settings.client_buffer_limit
        for connection in dict.fromkeys(suspects):
            transport = connection.transport
            if transport.is_closing():
                # Stop writing to it now rather than when its handler notices, which
                # asyncio would log once per write.
                self._index.remove_subscriber(connection)
                self._drop_batch(connection)
            elif transport.get_write_buffer_size() > limit:
                self._drop_slow(connection)

    def _drop_slow(self, connection: ServerConnection) -> None:
        state = self._clients.pop(connection, None)
        if state is None:
            return
        state.close_code = 1013
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
        host = request.headers.get("Host")
        if not self._host_allowed(host):
            return self._refuse(connection, http.HTTPStatus.FORBIDDEN, "host", _host_refusal(host))
        if url.path == EVENTS_PATH:
            return self._admit(connection, request, url.query)
        if url.path == "/healthz":
            if self._metrics_refusal(request, url.query) is not None:
                # Liveness stays open; counts, epoch and positions need the metrics scope.
                return _json_response(
                    connection, http.HTTPStatus.OK, {"status": self.health()["status"]}
                )
            return _json_response(connection, http.HTTPStatus.OK, self.health())
        if url.path == "/metrics":
            refusal = self._metrics_refusal(request, url.query)
            if refusal is not None:
                status, code, error = refusal
                return self._refuse(connection, status, code, {"error": error, "code": code})
            from evkit.metrics import render

            try:
                body, content_type = render(self.metrics_snapshot())
            except ImportError:
                return _json_response(
                    connection,
                    http.HTTPStatus.NOT_IMPLEMENTED,
                    {"error": "metrics need prometheus_client: pip install 'evkit[metrics]'"},
                )
            headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return Response(200, "OK", headers, body)
        if url.path in ("/", "/dashboard"):
            return _page_response(_dashboard_page())
        return _json_response(
            connection,
            http.HTTPStatus.NOT_FOUND,
            {"error": f"no route for {url.path}; the event stream is at {EVENTS_PATH}"},
        )

    def _metrics_refusal(
        self, request: Request, query: str
    ) -> tuple[http.HTTPStatus, str, str] | None:
        """Why this request may not read the counters (status, code, sentence), or None.

        With auth on, ``/metrics`` and the full ``/healthz`` need a credential with the
        ``metrics`` scope (a static token has every scope), unless ``public_metrics``.
        """
        if not self.auth.enabled or self.settings.public_metrics:
            return None
        credential = (
            _bearer(request.headers.get("Authorization"))
            or (parse_qs(query).get("token", [None])[-1])
        )
        try:
            principal = self.auth.authenticate(credential)
        except ProtocolError as exc:
            return http.HTTPStatus.UNAUTHORIZED, "unauthorized", exc.error
        if not principal.may("metrics"):
            return (
                http.HTTPStatus.FORBIDDEN,
                "forbidden",
                "this token does not grant the metrics scope",
            )
        return None

    def _refuse(
        self,
        connection: ServerConnection,
        status: http.HTTPStatus,
        reason: str,
        body: dict[str, Any],
    ) -> Response:
        rejected = self._stats.rejected
        rejected[reason] = rejected.get(reason, 0) + 1
        logger.info("refused a connection from %s: %s", _address(connection), body["error"])
        return _json_response(connection, status, body)

    def _admit(self, connection: ServerConnection, request: Request, query: str) -> Response | None:
        """Decide at the handshake whether a WebSocket client may connect."""
        address = _address(connection)
        origin = request.headers.get("Origin")
        if not self._origin_allowed(origin, request.headers.get("Host")):
            return self._refuse(
                connection,
                http.HTTPStatus.FORBIDDEN,
                "origin",
                {"error": f"origin {origin!r} is not allowed", "code": "forbidden"},
            )
        limited = self._addresses.admit(address)
        if limited is not None:
            return self._refuse(
                connection,
                http.HTTPStatus.TOO_MANY_REQUESTS,
                limited,
                {
                    "error": f"too many connections from {address} ({limited})",
                    "code": "rate_limited",
                },
            )
        try:
            start = self._parse_connect(request, query)
            credential = (
                _bearer(request.headers.get("Authorization"))
                or (parse_qs(query).get("token", [None])[-1])
            )
            principal = None
            if not self.auth.enabled:
                principal = ANONYMOUS
            elif credential:
                principal = self.auth.authenticate(credential)
            if principal is not None:
                start = self._authorize(start, principal)
        except ProtocolError as exc:
            status = {
                "unauthorized": http.HTTPStatus.UNAUTHORIZED,
                "forbidden": http.HTTPStatus.FORBIDDEN,
            }.get(exc.code, http.HTTPStatus.BAD_REQUEST)
            reason = exc.code if exc.code in ("unauthorized", "forbidden") else "bad_request"
            return self._refuse(connection, status, reason, {"error": exc.error, "code": exc.code})
        full = self._capacity_refusal(waiting_for_auth=start.principal is None)
        if full is not None:
            reason, error = full
            return self._refuse(
                connection, http.HTTPStatus.SERVICE_UNAVAILABLE, reason, {"error": error}
            )
        connection.evkit_start = start  # type: ignore[attr-defined]
        return None

    def _capacity_refusal(self, waiting_for_auth: bool) -> tuple[str, str] | None:
        """Why one more connection cannot be taken (reason, sentence), or None.

        Connections still to authenticate have a budget of their own
        (``max_authenticating``), so unauthenticated handshakes cannot lock valid
        clients out of ``max_connections``.
        """
        settings = self.settings
        waiting = len(self._authenticating)
        if waiting_for_auth:
            if waiting >= settings.max_authenticating:
                return "max_authenticating", (
                    f"{waiting} connections are already waiting to authenticate (the limit is "
                    f"{settings.max_authenticating}); send credentials in the handshake "
                    "(Authorization: Bearer ...) or retry later"
                )
        elif len(self._handling) - waiting >= settings.max_connections:
            return "max_connections", (
                f"the server holds its maximum of {settings.max_connections} clients"
            )
        return None

    def _authorize(self, start: _ConnectOptions, principal: Principal) -> _ConnectOptions:
        """The connect options as this principal may have them.

        Raises:
            ProtocolError: ``forbidden`` (no subscribe scope, or patterns it may not hold).
        """
        wants_events = (
            bool(start.patterns) or not start.explicit_patterns or start.since is not None
        )
        if wants_events and not principal.may("subscribe"):
            # A publish-only client connects with ?eventTypes= (nothing) and is let in.
            raise ProtocolError(
                "forbidden",
                "this token does not grant the subscribe scope (a publisher may connect "
                "with ?eventTypes= to receive nothing)",
            )
        patterns = start.patterns
        if principal.patterns is not None and not start.explicit_patterns:
            patterns = list(principal.patterns)  # a restricted client starts with what it may see
        forbidden = principal.forbidden(patterns)
        if forbidden:
            raise ProtocolError(
                "forbidden",
                f"not allowed to subscribe to {forbidden}; this token allows {list(principal.patterns or ())}",
                {"patterns": forbidden},
            )
        return replace(start, patterns=patterns, principal=principal)

    def _origin_allowed(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return self.settings.allow_missing_origin
        allowed = self.settings.allowed_origins
        if allowed is None:  # same origin only: the page this server itself served
            # Scheme, host and port: the Host header was already checked (_host_allowed).
            return host is not None and origin == f"http://{host}"
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in allowed)

    def _host_allowed(self, host: str | None) -> bool:
        """Whether a request's ``Host`` header names this server (DNS rebinding defence).

        A page of ``attacker.example`` whose name was rebound to 127.0.0.1 sends
        ``Host: attacker.example:PORT`` and an Origin to match: on a server bound to
        loopback only loopback names (and ``allowed_hosts``) are answered.
        """
        allowed = self.settings.allowed_hosts
        if allowed is None and not self._loopback:
            return True
        if host is None:
            return False
        name = _host_name(host)
        if name is None:
            return False
        if _is_loopback_name(name):
            return True
        return allowed is not None and any(fnmatch.fnmatchcase(name, p) for p in allowed)

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
        if since is not None:
            try:
                self.store.parse_id(since)
            except ValueError as exc:
                raise ProtocolError(
                    "invalid_message", f"since must be an event id received from this server: {exc}"
                ) from None
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
        return _ConnectOptions(
            patterns, correlation_id, since, epoch, batch, explicit_patterns="eventTypes" in params
        )

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

    async def _first_message_auth(
        self, connection: ServerConnection, start: _ConnectOptions
    ) -> _ConnectOptions | None:
        """Wait for ``{"type": "auth"}`` as the first message; None when it failed (closed)."""
        try:
            async with asyncio.timeout(self.settings.auth_timeout):
                data = await connection.recv()
            message = decode_client_message(data)
            if not isinstance(message, Auth):
                raise ProtocolError(
                    "unauthorized",
                    "authentication required: send {'type': 'auth', 'payload': {'token': ...}} "
                    "first, or credentials in the handshake",
                )
            return self._authorize(start, self.auth.authenticate(message.token))
        except TimeoutError:
            reason, error = (
                "unauthorized",
                f"no auth message within {self.settings.auth_timeout:g} s",
            )
        except ProtocolError as exc:
            reason = exc.code if exc.code in ("unauthorized", "forbidden") else "unauthorized"
            error = exc.error
        except ConnectionClosed:
            return None
        rejected = self._stats.rejected
        rejected[reason] = rejected.get(reason, 0) + 1
        logger.info("closing %s: %s", _address(connection), error)
        # A close reason must fit a 125-byte control frame: cut on bytes, not characters.
        await connection.close(1008, error.encode()[:120].decode(errors="ignore"))
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        start: _ConnectOptions | None = connection.evkit_start  # type: ignore[attr-defined]
        address = _address(connection)
        self._addresses.opened(address)
        self._handling.add(connection)
        try:
            if start is not None and start.principal is None:
                self._authenticating.add(connection)
                try:
                    start = await self._first_message_auth(connection, start)
                finally:
                    self._authenticating.discard(connection)
                if start is not None and (
                    len(self._handling) - len(self._authenticating) > self.settings.max_connections
                ):
                    start = None
                    await self._refuse_after_auth(connection)
            if start is not None and not self._closing:
                await self._serve_client(connection, start)
        finally:
            self._handling.discard(connection)
            self._addresses.closed(address)

    async def _refuse_after_auth(self, connection: ServerConnection) -> None:
        """Close a client that authenticated while the server filled up (1013)."""
        rejected = self._stats.rejected
        rejected["max_connections"] = rejected.get("max_connections", 0) + 1
        reason = f"the server holds its maximum of {self.settings.max_connections} clients"
        logger.info("closing %s after authentication: %s", _address(connection), reason)
        await connection.close(1013, reason[:120])

    async def _serve_client(self, connection: ServerConnection, start: _ConnectOptions) -> None:
        patterns, correlation_id, since = start.patterns, start.correlation_id, start.since
        remote = connection.remote_address
        settings = self.settings
        state = ClientState(
            _client_id(),
            f"{remote[0]}:{remote[1]}" if remote else "?",
            principal=start.principal or ANONYMOUS,
            bucket=TokenBucket(settings.messages_per_second, settings.message_burst),
        )
        self._stats.connections_total += 1
        # The welcome goes first; a resuming client then gets its history (in chunks, as
        # fast as it reads) and only then live events.
        self._send(
            connection,
            encode_message(
                messages.CONNECTED,
                {
                    "clientId": state.client_id,
                    "correlationId": correlation_id,
                    "subscriptions": patterns,
                    "epoch": self.epoch,
                    "lastId": self.store.format_id(self._last_id),
                },
            ),
        )
        if start.batch is not None:
            self._set_batch(connection, start.batch)
        connection.evkit_state = state  # type: ignore[attr-defined]
        if since is None:
            self._register(connection, start)
        elif not await self._replay_at_connect(connection, start):
            self._drop_batch(connection)
            return
        logger.info("client %s connected from %s", state.client_id, state.remote)
        try:
            async for message in connection:
                if connection not in self._clients:
                    # Dropped by the server (slow consumer, rate limit, disconnect()): its
                    # close is under way. Keep reading, so the peer's close frame is not
                    # stuck behind unread messages, and do not return, or the handler's
                    # exit would close with 1000 before that close is sent.
                    continue
                state.received += 1
                replay = self._on_message(connection, state, message)
                if replay is not None:
                    # The client's next message waits until its history is sent.
                    await replay
        except ConnectionClosed:
            pass
        finally:
            self._clients.pop(connection, None)
            self._index.remove_subscriber(connection)
            self._drop_batch(connection)
            code = state.close_code or connection.close_code or 1006
            reason = _DISCONNECT_REASONS.get(code, "other")
            disconnects = self._stats.disconnects
            disconnects[reason] = disconnects.get(reason, 0) + 1
            logger.info(
                "client %s disconnected: %s (code %s %s)",
                state.client_id,
                reason,
                connection.close_code,
                connection.close_reason or "",
            )

    def _register(self, connection: ServerConnection, start: _ConnectOptions) -> None:
        """Start routing live events to ``connection``."""
        self._clients[connection] = connection.evkit_state  # type: ignore[attr-defined]
        self._index.add_subscriber(connection, start.patterns, start.correlation_id)

    def _set_batch(self, connection: ServerConnection, options: BatchOptions) -> None:
        """Deliver to ``connection`` in ``websocket.batch`` messages from now on.

        ``maxEvents: 1`` turns batching off again (every event is sent alone).
        """
        self._flush_batch(connection)
        self._drop_batch(connection)
        if options.max_events > 1:
            self._batches[connection] = _Batch(options)

    def _drop_batch(self, connection: ServerConnection) -> None:
        """Stop batching for ``connection``, discarding what waits for it alone.

        Called for every client that leaves, too: no write plan keeps it afterwards.
        """
        batch = self._batches.pop(connection, None)
        if batch is not None:
            self._leave_group(connection, batch, flush=False)
        self._writes.forget_plans()

    def _send(self, connection: ServerConnection, frame: bytes) -> None:
        if connection in self._batches:
            self._flush_batch(connection)  # keep the stream order: queued events go first
        self._write_message((connection,), frame)

    def _reject(self, connection: ServerConnection, state: ClientState, exc: ProtocolError) -> None:
        state.errors += 1
        errors = self._stats.client_errors
        errors[exc.code] = errors.get(exc.code, 0) + 1
        self._send(connection, error_message(exc))

    def _on_message(
        self, connection: ServerConnection, state: ClientState, data: str | bytes
    ) -> Coroutine[Any, Any, None] | None:
        """Act on one client message; a replay it started is returned, to be awaited."""
        try:
            assert state.bucket is not None
            if not state.bucket.take():
                state.strikes += 1
                if state.strikes > self.settings.rate_limit_strikes:
                    self.disconnect(state.client_id, 1008, "rate limited")
                    return None
                raise ProtocolError(
                    "rate_limited",
                    f"more than {self.settings.messages_per_second:g} messages per second; "
                    f"this message was ignored (after {self.settings.rate_limit_strikes} such, "
                    f"the connection is closed)",
                )
            message = decode_client_message(data)
            if isinstance(message, Subscribe):
                if not state.principal.may("subscribe"):
                    raise ProtocolError(
                        "forbidden",
                        "this token does not grant the subscribe scope: it may not "
                        "subscribe, change its filter or replay history",
                    )
                forbidden = state.principal.forbidden(message.event_types)
                if forbidden:
                    raise ProtocolError(
                        "forbidden",
                        f"not allowed to subscribe to {forbidden}; allowed: "
                        f"{list(state.principal.patterns or ())}",
                        {"patterns": forbidden},
                    )
                return self._subscribe(connection, message)
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
                self._check_publish(state.principal)
                for type_, payload in message.events:
                    self.bus.emit(type_, payload)
            elif isinstance(message, Auth):
                pass  # already authenticated (or auth is off): nothing to do
        except ProtocolError as exc:
            self._reject(connection, state, exc)
        return None

    async def handle_post(
        self, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Answer ``POST /events``: one event or a list; 202 with their ids, or why not.

        Runs on the loop. The events are emitted on this broadcaster's bus (so local
        handlers see them too) and handed out before the answer, so the ids are known.
        With a Redis store the answer waits (up to 2 s) for Redis to assign them; while
        Redis is unreachable the events stay queued and the ids are null.

        ``?wait=durable`` (the default with a durable store, SQLite) answers once the
        events are committed (``"durable": true``); ``?wait=delivered`` (the default
        otherwise) once they are written to the subscribers' connections. Events the
        full queue dropped have a null id and are counted in ``"dropped"``.
        """
        url = urlsplit(target)
        if url.path != "/events":
            return 404, {"error": f"no route for POST {url.path}; events are posted to /events"}
        host = headers.get("host")
        if not self._host_allowed(host):
            rejected = self._stats.rejected
            rejected["host"] = rejected.get("host", 0) + 1
            return 403, _host_refusal(host)
        origin = headers.get("origin")
        if not self._origin_allowed(origin, host):
            # The same rule as the WebSocket handshake: a page of another origin must not
            # publish through the user's browser (a cross-site POST needs no preflight).
            rejected = self._stats.rejected
            rejected["origin"] = rejected.get("origin", 0) + 1
            return 403, {"error": f"origin {origin!r} is not allowed", "code": "forbidden"}
        try:
            credential = (
                _bearer(headers.get("authorization"))
                or (parse_qs(url.query).get("token", [None])[-1])
            )
            principal = self.auth.authenticate(credential)
            self._check_publish(principal)
        except ProtocolError as exc:
            reason = exc.code
            rejected = self._stats.rejected
            rejected[reason] = rejected.get(reason, 0) + 1
            return (401 if exc.code == "unauthorized" else 403), {
                "error": exc.error,
                "code": exc.code,
            }
        query = parse_qs(url.query)
        wait = query.get("wait", ["durable" if self.store.durable else "delivered"])[-1]
        if wait not in ("durable", "delivered"):
            return 400, {
                "error": f"wait must be 'durable' or 'delivered', got {wait[:40]!r}",
                "code": "invalid_message",
            }
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return 400, {"error": f"body is not valid JSON: {exc}", "code": "invalid_json"}
        items = document if isinstance(document, list) else [document]
        if not items:
            return 400, {
                "error": "no events: post an event or a non-empty list",
                "code": "invalid_event",
            }
        valid, errors = [], []
        for position, item in enumerate(items):
            try:
                valid.append(
                    messages.validate_event(item, position if isinstance(document, list) else None)
                )
            except ProtocolError as exc:
                errors.append({"index": position, "error": exc.error})
        if errors:
            return 400, {
                "error": f"{len(errors)} of {len(items)} events are invalid; none was published",
                "code": "invalid_event",
                "errors": errors,
            }
        # Note which events reach publish() through the bus, in time linear in the events:
        # the ones that do not (this broadcaster is not attached to its bus) are handed
        # to it here.
        posted = self._posted = set()
        try:
            emitted = [self.bus.emit(type_, payload) for type_, payload in valid]
        finally:
            self._posted = None
        for event in emitted:
            if id(event) not in posted:
                self.publish(event)
        if isinstance(self.store, RedisStore):
            self._drain_all()
            await self.store.wait_for_ids(emitted, timeout=2.0)
        else:
            await self._hand_out_queued(timeout=2.0)
        ids = [event.id for event in emitted]
        durable = False
        if wait == "durable" and self.store.durable:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.store.sync)
                durable = True
            except TimeoutError as exc:
                return 503, {"error": f"the events were not committed: {exc}", "ids": ids}
        answer: dict[str, Any] = {"ids": ids, "durable": durable}
        dropped = ids.count(None)
        if dropped:
            answer["dropped"] = dropped
        return 202, answer

    def _check_publish(self, principal: Principal) -> None:
        if not self.settings.allow_publish:
            raise ProtocolError("forbidden", "publishing is disabled on this server")
        if not principal.may("publish"):
            raise ProtocolError("forbidden", "this token does not grant the publish scope")

    def _subscribe(
        self, connection: ServerConnection, message: Subscribe
    ) -> Coroutine[Any, Any, None] | None:
        """Apply a ``subscribe``; with ``since``, the replay to await before the next message.

        Patterns a replay is for start receiving live events only once it is done (the
        last slice, ``websocket.replayed`` and the change happen with no await between):
        no gap, no duplicate, however long the client takes to read its history.
        """
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
        since = message.since
        if since is not None:
            try:
                self.store.parse_id(since)
            except ValueError as exc:
                raise ProtocolError(
                    "invalid_message",
                    f"since must be an event id received from this server: {exc}",
                    {"field": "since"},
                ) from None
        added = [p for p in wanted if p not in before]
        if since is None:
            index.replace(connection, wanted)
        elif message.replace:
            # The patterns the replay is for are added once it is done.
            index.remove(connection, [p for p in before if p not in wanted])
        if message.correlation_id is not messages.UNSET:
            index.set_filter(connection, message.correlation_id)  # type: ignore[arg-type]
        if message.batch is not None:
            self._set_batch(connection, message.batch)
        correlation_id = index.filter_of(connection)
        self._send(
            connection,
            encode_message(
                messages.SUBSCRIBED,
                {"eventTypes": added, "subscriptions": wanted, "correlationId": correlation_id},
            ),
        )
        if since is None:
            return None
        return self._replay_subscribed(
            connection, since, wanted, [p for p in before if p in wanted], correlation_id
        )

    async def _replay_subscribed(
        self,
        connection: ServerConnection,
        since: str,
        wanted: list[str],
        already: list[str],
        correlation_id: str | None,
    ) -> None:
        """History after ``since`` matching ``wanted`` but none of ``already``; then live
        events for all of ``wanted``."""
        added = [p for p in wanted if p not in already]
        replayed = await self._replay(
            connection, since, None, _type_filter(added, already), correlation_id
        )
        if replayed is not None and connection in self._clients:
            self._send_replayed(connection, since, *replayed)
            self._index.replace(connection, wanted)

    def _replay_plan(self, since: str, epoch: str | None) -> tuple[int, str | None]:
        """Where a replay after ``since`` starts, and why it cannot be complete (or None).

        ``since`` from another epoch (another stream) does not apply here: the whole
        history is sent, and the replay is reported incomplete. From an epoch a crash
        replaced (ids never repeat across them) the replay starts at ``since``, and is
        reported incomplete too, since what followed it may be lost.
        """
        store = self.store
        try:
            after = store.parse_id(since)
        except ValueError:
            return 0, "unknown_position"
        if epoch is not None and epoch != self.epoch:
            if store.continues(epoch):
                return after, "lost"
            return 0, "epoch"
        if after > self._last_id:  # an id this stream never handed out: another stream's
            return after, "unknown_position"
        # A shared stream (Redis) is read beyond what this instance holds in memory.
        if not store.shared and store.trimmed_through() > after:
            return after, "trimmed"
        return after, None

    def _send_history(
        self,
        connection: ServerConnection,
        records: Iterable[Record],
        after: int,
        accepts: Callable[[str], bool],
        correlation_id: str | None,
        max_bytes: int | None = None,
    ) -> tuple[int, int, bool]:
        """Send the ``records`` (history after ``after``) that match, stopping past ``max_bytes``.

        Returns how many were sent, the last id looked at, and whether the records ran out.
        """
        count = sent_bytes = 0
        position = after
        batch = self._batches.get(connection)
        for record in records:
            if max_bytes is not None and sent_bytes >= max_bytes:
                return count, position, False
            position = record.id
            if correlation_id is not None and record.correlation_id != correlation_id:
                continue
            if accepts(record.type):
                if batch is None:
                    self._send(connection, record.frame)
                else:
                    batch.frames.append(record.frame)
                    if len(batch.frames) >= batch.options.max_events:
                        self._flush_batch(connection)
                count += 1
                sent_bytes += len(record.frame)
        return count, position, True

    def _send_gap(self, connection: ServerConnection, since: str, after: int, reason: str) -> None:
        """Tell the client, before the events that follow it, that its replay has a gap."""
        self._send(
            connection,
            encode_message(
                messages.GAP,
                {
                    "since": since,
                    "complete": False,
                    "after": self.store.format_id(after) if after > 0 else None,
                    "reason": reason,
                    "epoch": self.epoch,
                },
            ),
        )

    def _send_replayed(
        self, connection: ServerConnection, since: str, count: int, gap: str | None
    ) -> None:
        self._send(
            connection,
            encode_message(
                messages.REPLAYED,
                {
                    "since": since,
                    "count": count,
                    "complete": gap is None,
                    "epoch": self.epoch,
                    "lastId": self.store.format_id(self._last_id),
                },
            ),
        )

    async def _replay(
        self,
        connection: ServerConnection,
        since: str,
        epoch: str | None,
        accepts: Callable[[str], bool] | None,
        correlation_id: str | None,
    ) -> tuple[int, str | None] | None:
        """Send the history after ``since`` that ``accepts``, pausing while the client's buffer
        is full; returns how many events were sent and the gap's reason (None: complete).

        History goes out in slices of a quarter of ``client_buffer_limit``, each once the
        client has read the previous ones, so a client catching up is never cut as a slow
        consumer and the server's memory stays bounded. A gap is announced with
        ``websocket.gap`` before the events that follow it, so a client cut in the middle
        of its replay has already learnt of it. The caller registers the client for live
        events after the return, with no await between: no gap, no duplicate at the
        seam. Returns None if the client could not take its history within a minute
        (closed with 1013) or left.
        """
        self._stats.replays += 1
        store = self.store
        redis = store if isinstance(store, RedisStore) else None
        after, gap = self._replay_plan(since, epoch)
        if gap is not None:
            self._send_gap(connection, since, after, gap)
        slice_bytes = max(1, self.settings.client_buffer_limit // 4)
        count = 0
        while accepts is not None:
            deadline = time.monotonic() + 60
            while connection.transport.get_write_buffer_size() > slice_bytes:
                if self._replay_ended(connection):
                    return None
                if time.monotonic() > deadline:
                    await connection.close(1013, "slow consumer")
                    return None
                await asyncio.sleep(0.002)
            if self._replay_ended(connection):
                return None
            oldest_held = store.trimmed_through()
            found: str | None = None
            if redis is not None and after < oldest_held:
                # Older than this instance's memory: read the shared stream.
                try:
                    records, trimmed = await redis.read_range(after, _REDIS_REPLAY_COUNT)
                except StoreUnavailable as exc:
                    logger.warning("replay for a resuming client is incomplete: %s", exc)
                    found, records, next_after = "unavailable", [], oldest_held
                else:
                    if trimmed > after:  # Redis trimmed some of what the client missed
                        found = "trimmed"
                    next_after = max(after, redis.trimmed_through()) if not records else after
                if found is not None and gap is None:
                    gap = found
                    self._send_gap(connection, since, after, gap)
                if not records:
                    after = next_after
                    continue
                sent, after, _ = self._send_history(
                    connection, records, after, accepts, correlation_id, slice_bytes
                )
                count += sent
                self._flush_batch(connection)
                continue
            if oldest_held > after:  # the stream outran this replay: history moved on
                if gap is None:
                    gap = "trimmed"
                    self._send_gap(connection, since, after, gap)
                after = oldest_held
            sent, after, finished = self._send_history(
                connection, store.read_after(after), after, accepts, correlation_id, slice_bytes
            )
            count += sent
            if finished:
                break
            self._flush_batch(connection)
        return count, gap

    def _replay_ended(self, connection: ServerConnection) -> bool:
        """Whether a replay to ``connection`` should stop: it is closing, or the server is."""
        return (
            self._closing
            or connection.transport.is_closing()
            or connection.protocol.state is not _OPEN
        )

    async def _replay_at_connect(
        self, connection: ServerConnection, start: _ConnectOptions
    ) -> bool:
        """Send a resuming client its history (see :meth:`_replay`), then register it.

        Returns False if the client could not take it or left.
        """
        assert start.since is not None
        replayed = await self._replay(
            connection,
            start.since,
            start.epoch,
            _type_filter(start.patterns, ()),
            start.correlation_id,
        )
        if replayed is None:
            return False
        self._send_replayed(connection, start.since, *replayed)
        self._register(connection, start)
        return True

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
            state.close_code = code
            self._index.remove_subscriber(connection)
            self._drop_batch(connection)
            task = asyncio.ensure_future(connection.close(code, reason))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)
            closed += 1
        return closed

    # -- introspection ----------------------------------------------------------------

    def metrics_snapshot(self) -> dict[str, Any]:
        """The counters ``/metrics`` exposes (see :mod:`evkit.metrics`)."""
        stats = self._stats
        store = self.store.health()
        with self._drop_lock:
            dropped = dict(self._dropped_by_category)
        return {
            "connections": len(self._clients),
            "connections_total": stats.connections_total,
            "rejected": dict(stats.rejected),
            "published": dict(stats.published_by_category),
            "delivered": dict(stats.delivered_by_category),
            "dropped": dropped,
            "disconnects": dict(stats.disconnects),
            "slow_consumer_disconnects": stats.slow_consumer_disconnects,
            "replays": stats.replays,
            "client_errors": dict(stats.client_errors),
            "latency": (list(stats.latency_counts), stats.latency_sum),
            "store_up": 1 if store["state"] == "ok" else 0,
            "store_outages": store.get("outages", 0),
            "waiting": store.get("waiting", len(self._pending)),
        }

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
            "last_id": self.store.format_id(self._last_id),
            "epoch": self.epoch,
        }


class _HTTPPostConnection(ServerConnection):
    """A connection that also answers ``POST /events``, which websockets' parser cannot read.

    The first bytes decide: a POST is read here (headers and body, bounded) and answered
    by :meth:`Broadcaster.handle_post`; anything else goes to websockets unchanged.
    """

    broadcaster: Broadcaster
    _evkit_http: bytearray | None = None
    _evkit_mode: str | None = None

    def data_received(self, data: bytes) -> None:
        if self._evkit_mode == "ws":
            super().data_received(data)
            return
        buffer = self._evkit_http = (self._evkit_http or bytearray()) + data
        if self._evkit_mode is None:
            if len(buffer) < 5 and b"POST "[: len(buffer)] == bytes(buffer):
                return  # not enough to tell yet
            if not buffer.startswith(b"POST "):
                self._evkit_mode = "ws"
                self._evkit_http = None
                super().data_received(bytes(buffer))
                return
            self._evkit_mode = "post"
        if self._evkit_mode == "post":
            self._maybe_answer_post(buffer)

    def _maybe_answer_post(self, buffer: bytearray) -> None:
        limit = self.broadcaster.settings.max_post_size
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buffer) > 16 * 1024:
                self._answer(431, {"error": "request headers too large"})
            return
        lines = bytes(buffer[:head_end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length_text = headers.get("content-length")
        if length_text is None or not (length_text.isascii() and length_text.isdigit()):
            self._answer(411, {"error": "POST /events needs a Content-Length header"})
            return
        length = int(length_text)
        if length > limit:
            self._answer(413, {"error": f"body of {length} bytes exceeds max_post_size={limit}"})
            return
        body_start = head_end + 4
        if len(buffer) - body_start < length:
            return  # wait for the rest of the body
        self._evkit_mode = "answered"
        parts = lines[0].split(" ")
        target = parts[1] if len(parts) > 1 else "/"
        body = bytes(buffer[body_start : body_start + length])
        task = asyncio.ensure_future(self._answer_post(target, headers, body))
        self.broadcaster._closers.add(task)
        task.add_done_callback(self.broadcaster._closers.discard)

    async def _answer_post(self, target: str, headers: dict[str, str], body: bytes) -> None:
        status, answer = await self.broadcaster.handle_post(target, headers, body)
        if not self.transport.is_closing():
            self._answer(status, answer)

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        self._evkit_mode = "answered"
        data = orjson.dumps(body)
        phrase = http.HTTPStatus(status).phrase
        self.transport.write(
            f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\nServer: evkit\r\n\r\n".encode()
            + data
        )
        self.transport.close()


_DISCONNECT_REASONS = {
    1000: "normal",
    1001: "going_away",
    1006: "abnormal",
    1008: "policy",
    1009: "message_too_big",
    1011: "server_error",
    1012: "service_restart",
    1013: "slow_consumer",
}


def _address(connection: ServerConnection) -> str:
    remote = connection.remote_address
    return str(remote[0]) if remote else "?"


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _host_name(host: str) -> str | None:
    """The name of a ``Host`` header without its port (brackets kept off IPv6), or None."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:3000
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
        if rest and rest == port:
            return None
    else:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_refusal(host: str | None) -> dict[str, Any]:
    return {
        "error": f"host {host!r} is not allowed: this server answers loopback names "
        "(localhost, 127.0.0.1, [::1]) only; list other names in allowed_hosts",
        "code": "forbidden",
    }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _text_frame(payload: bytes) -> bytes:
    """``payload`` as one final, unmasked WebSocket text frame: what a server sends."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def _log_write_failure(connection: ServerConnection, exc: Exception) -> None:
    state = getattr(connection, "evkit_state", None)
    client = state.client_id if isinstance(state, ClientState) else _address(connection)
    logger.warning("skipped a write to client %s: %r", client, exc)


def _spread(
    frames: list[bytes],
    connections: list[ServerConnection],
    pending: dict[ServerConnection, list[bytes]],
) -> None:
    """Queue ``frames``, joined once, for each of ``connections``."""
    chunk = frames[0] if len(frames) == 1 else b"".join(frames)
    for connection in connections:
        queued = pending.get(connection)
        if queued is None:
            pending[connection] = [chunk]
        else:
            queued.append(chunk)


def _category(counts: dict[str, int], type_: str) -> str:
    """The label ``type_`` is counted under in ``counts``: its first segment, or ``other``
    once :data:`MAX_CATEGORIES` are counted (publishers choose types: the label set of
    ``/metrics`` and the stats stays bounded)."""
    category = type_.partition(".")[0]
    if category in counts or len(counts) < MAX_CATEGORIES:
        return category
    return OTHER_CATEGORY


def _type_filter(patterns: Iterable[str], already: Iterable[str]) -> Callable[[str], bool] | None:
    """Whether a type matches one of ``patterns`` and none of ``already``; None: no pattern.

    The answer is kept per type, so a replay runs the matchers once per distinct type,
    not once per event.
    """
    wanted = [compile_pattern(p) for p in patterns]
    if not wanted:
        return None
    skip = [compile_pattern(p) for p in already]
    known: dict[str, bool] = {}

    def accepts(type_: str) -> bool:
        answer = known.get(type_)
        if answer is None:
            answer = any(m(type_) for m in wanted) and not any(m(type_) for m in skip)
            if len(known) >= _PLAN_CACHE_SIZE:
                known.clear()
            known[type_] = answer
        return answer

    return accepts


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
    :class:`ServerSettings`; ``token`` defaults to the ``EVKIT_TOKEN`` environment
    variable when it is set.

    Raises:
        PortInUseError: another process holds the port.
        TypeError: an unknown option.
        ValueError: an option out of range.
    """
    if "token" not in options and os.environ.get("EVKIT_TOKEN"):
        options["token"] = os.environ["EVKIT_TOKEN"]
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
