"""Everything evkit needs from websockets' internals, in one place.

websockets (the asyncio API) serves the handshake, the protocol state machine, pings,
closing handshakes and compression. evkit goes beneath its public API in three ways,
each pinned by ``tests/test_wire.py`` so that a new websockets major is a change here:

- :class:`Peer` writes whole, unmasked text frames straight to a connection's transport
  (``connection.transport.write``), one write per delivery call, so an event is framed
  once for all its clients. It relies on websockets writing only whole frames itself,
  so its pings and close frames land between evkit's; on ``connection.protocol.state``
  telling an open connection from one whose closing handshake started; and, for a
  connection with permessage-deflate, on ``protocol.send_text`` plus
  ``connection.send_data()`` to send through the connection's compressor.
- :func:`http_connection_class` makes a connection class that reads plain HTTP itself
  (websockets' HTTP parser handles only the ``GET`` of a handshake, and closes the
  connection after any other answer), with keep-alive (:mod:`evkit.server.http11`):
  the first request whose ``Upgrade`` header says ``websocket`` goes to websockets
  unchanged. It relies on ``ServerConnection.connection_made`` doing nothing but
  ``Connection.connection_made`` and starting ``server.handler`` as a task registered
  in ``server.handler_tasks``, which it then does itself when the handshake comes, so
  websockets' ``open_timeout`` applies to WebSocket handshakes only.
- :func:`listen` is the one call of websockets' ``serve`` with evkit's options (TLS
  included).

Must not decide policy (who may connect, what to send): that is the broadcaster's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from ssl import SSLContext

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.http11 import Request, Response
from websockets.protocol import State

from evkit.redaction import ScrubbingLogger
from evkit.server.http11 import (
    HttpAnswer,
    HttpRequest,
    Incomplete,
    encode_answer,
    keep_alive,
    read_request,
)

__all__ = [
    "HttpAnswer",
    "HttpHandler",
    "HttpRequest",
    "Peer",
    "PostAnswer",
    "http_connection_class",
    "listen",
]

logger = logging.getLogger("evkit.server")

_OPEN = State.OPEN
_MAX_HEADERS = 16 * 1024
# websockets' own logging (request lines, headers, frames at DEBUG) goes through a
# scrubbing adapter: it would show tokens.
_WIRE_LOGGER = ScrubbingLogger(logging.getLogger("websockets.server"))


#: The former name of :class:`~evkit.server.http11.HttpAnswer` (POST routes use it).
PostAnswer = HttpAnswer
#: ``handler(request)`` answers a plain HTTP request (anything but a WebSocket upgrade).
HttpHandler = Callable[[HttpRequest], Awaitable[HttpAnswer]]
#: Seconds a connection has to send a whole request, from its opening or the previous
#: answer (an idle keep-alive connection is closed then).
REQUEST_TIMEOUT = 10.0


class Peer:
    """One client connection as the fan-out writes to it.

    ``name`` (the client id, once known) is what a failed write is logged under.
    """

    __slots__ = ("compressed", "connection", "name", "protocol", "transport")

    def __init__(self, connection: ServerConnection, name: str = "?") -> None:
        self.connection = connection
        self.transport = connection.transport
        self.protocol = connection.protocol
        self.compressed = bool(connection.protocol.extensions)
        self.name = name

    def write(self, data: bytes) -> int:
        """Write whole frames now; the bytes then waiting, 0 if not open, -1 if lost.

        Nothing is written to a connection whose closing handshake started, or whose
        transport is closing.
        """
        return self._put(self.transport.write, data)

    def send_message(self, message: bytes) -> int:
        """Send one text message through websockets' protocol (it compresses); as :meth:`write`."""
        return self._put(self._send_text, message)

    def _send_text(self, message: bytes) -> None:
        self.protocol.send_text(message)
        self.connection.send_data()

    def _put(self, put: Callable[[bytes], object], data: bytes) -> int:
        transport = self.transport
        if transport.is_closing():
            return -1
        if self.protocol.state is not _OPEN:
            return 0
        try:
            put(data)
        except Exception as exc:  # as broadcast(): one connection never stops the rest
            logger.warning("skipped a write to client %s: %r", self.name, exc)
        return transport.get_write_buffer_size()

    def buffered(self) -> int:
        """Bytes waiting to be sent, or -1 when the connection is lost."""
        transport = self.transport
        return -1 if transport.is_closing() else transport.get_write_buffer_size()

    @property
    def closing(self) -> bool:
        """Whether the connection is going: transport closing or closing handshake started."""
        return self.transport.is_closing() or self.protocol.state is not _OPEN


def http_connection_class(
    handler: HttpHandler, max_body: Callable[[], int], tasks: set[asyncio.Future[None]]
) -> type[ServerConnection]:
    """A connection class that answers plain HTTP requests with ``handler``.

    ``max_body()`` is the largest body accepted (413 past it); each answer's task is
    kept in ``tasks`` while it runs. Call :func:`close_idle` with the class when the
    server stops.
    """

    return type(
        "EvkitServerConnection",
        (_HttpConnection,),
        {
            "http_handler": staticmethod(handler),
            "body_limit": staticmethod(max_body),
            "answer_tasks": tasks,
            "idle": set(),
        },
    )


def close_idle(connection_class: type[ServerConnection]) -> int:
    """Close the connections of ``connection_class`` waiting for their next request (a
    stopping server's keep-alive connections); returns how many."""
    idle: set[_HttpConnection] = getattr(connection_class, "idle", set())
    closing = list(idle)
    for connection in closing:
        connection.transport.close()
    idle.clear()
    return len(closing)


class _HttpConnection(ServerConnection):
    """A connection that reads plain HTTP itself, with keep-alive, and hands a WebSocket
    handshake to websockets, whose handler starts only then."""

    http_handler: HttpHandler
    body_limit: Callable[[], int]
    answer_tasks: set[asyncio.Future[None]]
    idle: set[_HttpConnection]  # waiting for a request: closed when the server stops
    _buffer: bytearray
    _websocket = False
    _busy = False  # a request is being answered: the next waits in the buffer
    _eof = False
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # websockets' ServerConnection starts its handler (and its open_timeout) here;
        # evkit starts it once the request is a WebSocket handshake.
        Connection.connection_made(self, transport)
        self._buffer = bytearray()
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._websocket:
            super().data_received(data)
            return
        self._buffer += data
        if not self._busy:
            self._next()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's signature
        if self._websocket:
            return super().eof_received()
        self._eof = True
        if not self._busy:
            self._next()
        return True  # the transport stays open to write what is being answered

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(REQUEST_TIMEOUT, self._timed_out)
        self.idle.add(self)

    def _disarm(self) -> None:
        self.idle.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        if not self._busy and not self._websocket:
            self.transport.close()

    def _next(self) -> None:
        """Answer the next request of the buffer once it is whole."""
        read = read_request(self._buffer, self.body_limit())
        if isinstance(read, Incomplete):
            if read.continue_:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif self._eof:
                self.transport.close()
            return
        if isinstance(read, HttpAnswer):
            self._write(read, head_only=False, keep=False)
            return
        request, end = read
        if request.upgrade:
            self._to_websocket()
            return
        del self._buffer[:end]
        remote = self.transport.get_extra_info("peername")
        request = replace(request, remote=str(remote[0]) if remote else "?")
        self._busy = True
        self._disarm()
        task = asyncio.ensure_future(self._answer(request))
        self.answer_tasks.add(task)
        task.add_done_callback(self.answer_tasks.discard)

    async def _answer(self, request: HttpRequest) -> None:
        if self.server.is_serving():
            try:
                answer = await self.http_handler(request)
            except Exception:
                logger.exception("answering %s %s failed", request.method, request.target[:100])
                answer = HttpAnswer.json(500, {"error": "internal error; see the server's log"})
        else:
            answer = HttpAnswer.json(503, {"error": "the server is shutting down"})
        if self.transport.is_closing():
            return
        keep = keep_alive(request) and self.server.is_serving()
        self._write(answer, head_only=request.method == "HEAD", keep=keep)
        if keep:
            self._busy = False
            self._arm()
            self._next()  # a pipelined request, or the end after the client's EOF

    def _write(self, answer: HttpAnswer, *, head_only: bool, keep: bool) -> None:
        self.transport.write(encode_answer(answer, head_only=head_only, keep=keep))
        if not keep:
            self._busy = True  # nothing more is read
            self.transport.close()

    def _to_websocket(self) -> None:
        """Hand the connection to websockets, from the handshake's first byte on."""
        self._websocket = True
        self._disarm()
        # What ServerConnection.connection_made does (see the module docstring).
        handler_task = self.loop.create_task(self.server.handler(self))
        self.server.handler_tasks.add(handler_task)
        data, self._buffer = bytes(self._buffer), bytearray()
        super().data_received(data)


async def listen(
    handler: Callable[[ServerConnection], Awaitable[None]],
    process_request: Callable[
        [ServerConnection, Request], Awaitable[Response | None] | Response | None
    ],
    connection_class: type[ServerConnection],
    *,
    host: str,
    port: int,
    max_message_size: int,
    compression: bool,
    ping_interval: float | None,
    ssl: SSLContext | None = None,
) -> WebSocketServer:
    """Start websockets' server with evkit's options (TLS with ``ssl``); raises OSError
    when it cannot bind."""
    return await websockets_serve(
        handler,
        host,
        port,
        process_request=process_request,
        max_size=max_message_size,
        max_queue=64,
        compression="deflate" if compression else None,
        ping_interval=ping_interval,
        close_timeout=2,
        server_header="evkit",
        logger=_WIRE_LOGGER,
        create_connection=connection_class,
        ssl=ssl,
    )
