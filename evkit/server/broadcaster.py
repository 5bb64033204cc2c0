"""The broadcaster: a WebSocket server at ``/ws/events`` that fans events out by subscription.

:class:`Broadcaster` wires its parts and owns their lifecycle; each job has a module:

- :mod:`~evkit.server.ingress`: events queued from any thread (``publish``);
- :mod:`evkit.backplane`: how they get ids and reach history and delivery (one
  instance, or several sharing a Redis stream);
- :mod:`~evkit.server.fanout` and :mod:`~evkit.server.batching`: routing and the
  frame-once write path;
- :mod:`~evkit.server.replay`: history sent to resuming clients;
- :mod:`~evkit.server.session`: one connection's lifetime and messages;
- :mod:`~evkit.server.admission`: hosts, origins, credentials, scopes, limits;
- :mod:`~evkit.server.routes`: HTTP on the same port;
- :mod:`~evkit.server.counters`: the counters behind ``stats()``, ``/healthz``,
  ``/metrics``;
- :mod:`~evkit.server.wire`: what evkit needs from websockets' internals.

It runs on one asyncio loop (evkit's loop thread when started through
:func:`evkit.serve`). Everything that touches connections happens on that loop, so a
replay and the live stream meet with no gap and no duplicate. This package needs no
pandas.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import warnings
from typing import Any

from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection

from evkit._loop import LoopHandle
from evkit.backplane import open_backplane
from evkit.bus import Event, EventBus, global_bus
from evkit.exceptions import EvkitWarning, PortInUseError, ServerError, StoreUnavailable
from evkit.protocol import EVENTS_PATH
from evkit.protocol.vocabulary import (
    CLOSE_GOING_AWAY,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
)
from evkit.redaction import CredentialFilter, Redactor
from evkit.server.admission import Admission, Admitted, is_loopback
from evkit.server.counters import Counters
from evkit.server.fanout import Fanout, Writable
from evkit.server.ingress import Ingress
from evkit.server.replay import Replayer
from evkit.server.routes import Routes
from evkit.server.session import Session
from evkit.server.settings import ServerSettings
from evkit.server.wire import close_idle, http_connection_class, listen
from evkit.store.base import Record
from evkit.tls import server_context

__all__ = ["Broadcaster"]

logger = logging.getLogger("evkit.server")
# Nothing this server logs shows a credential, at any level (websockets' own logging
# goes through a scrubbing adapter: see wire.py).
logger.addFilter(CredentialFilter())


class Broadcaster:
    """The WebSocket event server. Start and stop it on one asyncio loop.

    Most users call :func:`evkit.serve`, which runs one on evkit's loop thread and
    attaches :meth:`publish` to the global bus. Use this class directly to embed the
    broadcaster in an asyncio application of your own.
    """

    def __init__(self, settings: ServerSettings | None = None, bus: EventBus | None = None) -> None:
        self.settings = settings = settings or ServerSettings()
        self.bus = bus if bus is not None else global_bus
        self.counters = Counters()
        self.ingress = Ingress(
            settings.queue_size,
            Redactor(settings.redact_keys, defaults=settings.redact_defaults),
            self.counters,
        )
        self.backplane = open_backplane(
            settings.store,
            history_size=settings.history_size,
            history_bytes=settings.history_bytes,
            stream=settings.stream,
            maxlen=settings.maxlen,
            clients=lambda: len(self.clients),
        )
        self.history = self.backplane.history
        self.admission = Admission(settings, self.counters)
        self.fanout = Fanout(settings.client_buffer_limit, self.counters, self._slow)
        self.replayer = Replayer(
            self.history,
            self.fanout,
            self.counters,
            settings.client_buffer_limit,
            lambda: self._closing,
            lambda: self.backplane.delivered_id,
        )
        self.routes = Routes(self)
        #: Handshakes let in, until their handler takes them.
        self.admitted: dict[ServerConnection, Admitted] = {}
        #: Live clients (routed to), by what the fan-out writes to.
        self.clients: dict[Writable, Session] = {}
        self._sessions: set[Session] = set()  # every connection past the handshake
        self._server: WebSocketServer | None = None
        self._connection_class: type[ServerConnection] = ServerConnection  # made by start()
        self._closing = False
        self._closers: set[asyncio.Future[None]] = set()
        self.port = settings.port

    def publish(self, event: Event) -> None:
        """Queue an event for broadcast. Safe from any thread; never blocks.

        The payload is redacted and serialised on the caller's thread. When the queue
        is full the event is dropped and counted (see :meth:`stats`). Once handed out,
        ``event.id`` holds the stream id it was given.
        """
        self.ingress.publish(event)

    def ingest(self, events: list[Event]) -> None:
        """Publish events that came from outside this process (``POST``, OTLP, ``publish``).

        They are dispatched on the bus, so local handlers see them too, and published
        here whether or not this broadcaster is attached to its bus (noted in time
        linear in the events). On the loop.
        """
        ingress, dispatch = self.ingress, self.bus.dispatch
        posted = ingress.capture()
        try:
            for event in events:
                dispatch(event)
        finally:
            ingress.end_capture()
        for event in events:
            if id(event) not in posted:
                ingress.publish(event)

    @property
    def epoch(self) -> str:
        """The stream's epoch: ids compare within one epoch only."""
        return self.history.epoch

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises:
            PortInUseError: the port is held by another process.
            ServerError: the store or the port could not be opened (the message says why).
            ValueError: a TLS certificate or key file is missing or unusable.
        """
        settings = self.settings
        tls = server_context(settings.ssl_certfile, settings.ssl_keyfile, settings.ssl_ca_certs)
        try:
            self.backplane.open()
        except (OSError, StoreUnavailable) as exc:
            raise ServerError(f"cannot open the store {settings.store}: {exc}") from None
        self.ingress.attach(LoopHandle(asyncio.get_running_loop()), self.backplane.wake)
        try:
            await self.backplane.start(self.ingress, self)
        except StoreUnavailable as exc:
            raise ServerError(str(exc)) from None
        self._connection_class = http_connection_class(
            self.routes.handle_http, lambda: settings.max_post_size, self._closers
        )
        try:
            self._server = await listen(
                self._handle,
                self.routes.process_request,
                self._connection_class,
                host=settings.host,
                port=settings.port,
                max_message_size=settings.max_message_size,
                compression=settings.compression,
                ping_interval=settings.ping_interval,
                ssl=tls,
            )
        except OSError as exc:
            await self.backplane.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(settings.host, settings.port) from None
            raise ServerError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        if not self.admission.auth.enabled and not is_loopback(settings.host):
            message = (
                f"evkit broadcaster bound to {settings.host}:{self.port} without authentication: "
                f"anyone who can reach it can read every event; pass token=... or jwt_secret=..."
            )
            logger.warning(message)
            warnings.warn(message, EvkitWarning, stacklevel=2)
        scheme = "wss" if settings.tls else "ws"
        logger.info(
            "evkit broadcaster listening on %s://%s:%d%s",
            scheme,
            settings.host,
            self.port,
            EVENTS_PATH,
        )

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what was already published, close every client with 1001, stop listening.

        Finishes within about ``timeout`` seconds: clients that do not complete the
        closing handshake in time are cut.
        """
        if self._server is None or self._closing:
            return
        self._closing = self.ingress.closing = True
        if not await self.backplane.settle(timeout / 2):
            logger.warning(
                "evkit broadcaster stopped with %d events not recorded (store %s)",
                self.backplane.waiting(),
                self.settings.store,
            )
        self.fanout.flush_all()
        server = self._server
        server.close(close_connections=False)
        close_idle(self._connection_class)  # keep-alive HTTP connections between requests
        closers = [
            asyncio.ensure_future(
                session.connection.close(CLOSE_GOING_AWAY, "server shutting down")
            )
            for session in list(self.clients.values())
        ]
        if closers:
            await asyncio.wait(closers, timeout=timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout)
        await self.backplane.close()

    async def flush(self) -> None:
        """Hand every event published so far to its clients' connections and the store.

        Returns once a durable store has committed them; with Redis, once they are in
        the stream and this instance has delivered them. The loop keeps turning between
        chunks (events published after the call are not waited for).
        """
        await self.backplane.settle()
        self.fanout.flush_all()
        await self.backplane.sync()

    # -- what the backplane hands over (the Sink) ------------------------------------------

    def deliver(self, records: list[Record]) -> None:
        self.fanout.deliver(records)

    def listening(self) -> bool:
        return bool(self.fanout.index)

    def published(self, items: list[Any]) -> None:
        self.counters.count_published(items)

    def stream_broken(self, reason: str) -> None:
        """The shared stream was lost or outran this instance: close every client (1012).

        Their resume then reports a gap: it is never silent.
        """
        self.disconnect(code=CLOSE_SERVICE_RESTART, reason=reason)
        for session in list(self._sessions):  # still authenticating or catching up
            if not session.live:
                self._schedule_close(session.connection, CLOSE_SERVICE_RESTART, reason)

    # -- connections ------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        admitted = self.admitted.pop(connection, None)
        if admitted is None:  # not a handshake admission let in
            return
        session = Session(self, connection, admitted.request, admitted.principal)
        waiting = admitted.principal is None
        admission = self.admission
        admission.opened(session.address, waiting)
        self._sessions.add(session)
        try:
            if waiting:
                authenticated = await session.authenticate()
                admission.authenticated()
                waiting = False
                if authenticated and admission.over_capacity():
                    authenticated = False
                    await self._refuse_after_auth(session)
                if not authenticated:
                    return
            if not self._closing:
                await session.serve()
        finally:
            self._sessions.discard(session)
            admission.closed(session.address, waiting)

    async def _refuse_after_auth(self, session: Session) -> None:
        """Close a client that authenticated while the server filled up (1013)."""
        self.counters.reject("max_connections")
        reason = self.admission.full_sentence()
        logger.info("closing %s after authentication: %s", session.address, reason)
        await session.connection.close(CLOSE_TRY_AGAIN_LATER, reason[:120])

    def register(self, session: Session) -> None:
        """Start routing live events to ``session`` (no await: see the replay module)."""
        request = session.request
        self.clients[session.peer] = session
        session.live = True
        self.fanout.index.add_subscriber(session.peer, request.patterns, request.correlation_id)

    def unregister(self, session: Session) -> None:
        """``session`` left: stop routing to it."""
        session.live = False
        self.clients.pop(session.peer, None)
        self.fanout.forget(session.peer)

    def close(self, session: Session, code: int, reason: str) -> None:
        """Drop ``session`` from routing at once and close its connection in the background."""
        if not session.live:
            return
        self.unregister(session)
        session.close_code = code
        self._schedule_close(session.connection, code, reason)

    def _schedule_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        # The close frame queues behind what is waiting; if the peer does not read it in
        # time, websockets aborts the connection and the buffer is freed.
        task = asyncio.ensure_future(connection.close(code, reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _slow(self, peer: Writable) -> None:
        """A client past ``client_buffer_limit``: closed with 1013 ``slow consumer``."""
        session = self.clients.get(peer)
        if session is None:
            return
        self.counters.slow_consumer_disconnects += 1
        logger.warning(
            "client %s (%s) disconnected: slow consumer (more than %d bytes waiting)",
            session.client_id,
            session.remote,
            self.settings.client_buffer_limit,
        )
        self.close(session, CLOSE_TRY_AGAIN_LATER, "slow consumer")

    def disconnect(
        self,
        client_id: str | None = None,
        code: int = CLOSE_SERVICE_RESTART,
        reason: str = "service restart",
    ) -> int:
        """Close one client (by id) or every client; returns how many were closed.

        They stop receiving at once; the closing handshakes finish in the background.
        Clients that resume (``since``) miss nothing that history still holds.
        """
        closed = 0
        for session in list(self.clients.values()):
            if client_id is None or session.client_id == client_id:
                self.close(session, code, reason)
                closed += 1
        return closed

    # -- introspection (on the loop) -----------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document."""
        store = self.backplane.health()
        return {
            "status": "ok" if store["state"] == "ok" else "degraded",
            "clients": len(self.clients),
            "events": self.counters.published,
            "store": store,
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        """The counters ``/metrics`` exposes (see :mod:`evkit.metrics`)."""
        return self.counters.metrics(
            len(self.clients), self.backplane.health(), self.backplane.waiting()
        )

    def stats(self) -> dict[str, Any]:
        """Counters: clients, published, delivered, dropped, slow consumers, errors."""
        history = self.history
        return self.counters.stats(
            clients=len(self.clients),
            pending=len(self.ingress.pending),
            last_id=history.format_id(self.backplane.delivered_id),
            epoch=history.epoch,
        )
