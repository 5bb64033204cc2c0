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
- :func:`post_connection_class` makes a connection class that reads ``POST`` requests
  itself (websockets' HTTP parser handles only the ``GET`` of a handshake): the first
  bytes decide, and anything but a ``POST`` goes to websockets unchanged.
- :func:`listen` is the one call of websockets' ``serve`` with evkit's options.

Must not decide policy (who may connect, what to send): that is the broadcaster's.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.http11 import Request, Response
from websockets.protocol import State

from evkit.redaction import ScrubbingLogger

__all__ = ["Peer", "PostAnswer", "PostHandler", "listen", "post_connection_class"]

logger = logging.getLogger("evkit.server")

_OPEN = State.OPEN
_MAX_HEADERS = 16 * 1024
# websockets' own logging (request lines, headers, frames at DEBUG) goes through a
# scrubbing adapter: it would show tokens.
_WIRE_LOGGER = ScrubbingLogger(logging.getLogger("websockets.server"))


@dataclass(frozen=True)
class PostAnswer:
    """The answer to a POST: status, body bytes, their content type, extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, document: Any) -> PostAnswer:
        return cls(status, orjson.dumps(document))


#: ``handler(target, headers, body)`` answers a POST.
PostHandler = Callable[[str, dict[str, str], bytes], Awaitable[PostAnswer]]


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


def post_connection_class(
    handler: PostHandler, max_body: Callable[[], int], tasks: set[asyncio.Future[None]]
) -> type[ServerConnection]:
    """A connection class that answers ``POST`` requests with ``handler``.

    ``max_body()`` is the largest body accepted (413 past it); the answer's task is
    kept in ``tasks`` while it runs.
    """

    return type(
        "EvkitServerConnection",
        (_PostConnection,),
        {
            "post_handler": staticmethod(handler),
            "post_limit": staticmethod(max_body),
            "post_tasks": tasks,
        },
    )


class _PostConnection(ServerConnection):
    """A connection that also answers ``POST``, which websockets' parser cannot read."""

    post_handler: PostHandler
    post_limit: Callable[[], int]
    post_tasks: set[asyncio.Future[None]]
    _evkit_http: bytearray | None = None
    _evkit_mode: str | None = None  # None (undecided), "ws", "post", "answered"

    def data_received(self, data: bytes) -> None:
        if self._evkit_mode == "ws":
            super().data_received(data)
            return
        if self._evkit_http is None:
            self._evkit_http = bytearray()
        buffer = self._evkit_http
        buffer += data
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
            self._maybe_answer(buffer)

    def _maybe_answer(self, buffer: bytearray) -> None:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buffer) > _MAX_HEADERS:
                self._answer(PostAnswer.json(431, {"error": "request headers too large"}))
            return
        lines = bytes(buffer[:head_end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self._body(buffer, head_end + 4, headers)
        if body is None:
            return  # the rest of the body is still to come (or the request was answered)
        self._evkit_mode = "answered"
        parts = lines[0].split(" ")
        target = parts[1] if len(parts) > 1 else "/"
        self._evkit_http = None
        task = asyncio.ensure_future(self._answer_later(target, headers, body))
        self.post_tasks.add(task)
        task.add_done_callback(self.post_tasks.discard)

    def _body(self, buffer: bytearray, start: int, headers: dict[str, str]) -> bytes | None:
        """The request body once whole: ``Content-Length`` or ``chunked``; None until then.

        A body past ``post_limit()`` (declared or sent) is answered with 413, one with
        neither framing with 411, malformed chunks with 400.
        """
        limit = self.post_limit()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            try:
                body = _dechunk(buffer, start, limit)
            except ValueError as exc:
                status = 413 if "max_post_size" in str(exc) else 400
                self._answer(PostAnswer.json(status, {"error": str(exc)}))
                return None
            return body
        length_text = headers.get("content-length")
        if length_text is None or not (length_text.isascii() and length_text.isdigit()):
            self._answer(
                PostAnswer.json(411, {"error": "POST /events needs a Content-Length header"})
            )
            return None
        length = int(length_text)
        if length > limit:
            error = f"body of {length} bytes exceeds max_post_size={limit}"
            self._answer(PostAnswer.json(413, {"error": error}))
            return None
        if len(buffer) - start < length:
            return None  # wait for the rest of the body
        return bytes(buffer[start : start + length])

    async def _answer_later(self, target: str, headers: dict[str, str], body: bytes) -> None:
        answer = await self.post_handler(target, headers, body)
        if not self.transport.is_closing():
            self._answer(answer)

    def _answer(self, answer: PostAnswer) -> None:
        self._evkit_mode = "answered"
        phrase = http.HTTPStatus(answer.status).phrase
        extra = "".join(f"{name}: {value}\r\n" for name, value in answer.headers)
        self.transport.write(
            f"HTTP/1.1 {answer.status} {phrase}\r\nContent-Type: {answer.content_type}\r\n"
            f"Content-Length: {len(answer.body)}\r\nConnection: close\r\nServer: evkit\r\n"
            f"{extra}\r\n".encode()
            + answer.body
        )
        self.transport.close()


def _dechunk(buffer: bytearray, start: int, limit: int) -> bytes | None:
    """A ``Transfer-Encoding: chunked`` body from ``start``; None while incomplete.

    Raises:
        ValueError: a malformed chunk, or more than ``limit`` bytes of body (the message
            names max_post_size).
    """
    body = bytearray()
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            if len(buffer) - at > 64:
                raise ValueError("malformed chunk size line")
            return None
        size_text = bytes(buffer[at:line_end]).partition(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"malformed chunk size {size_text[:20]!r}") from None
        if len(body) + size > limit:
            raise ValueError(f"chunked body exceeds max_post_size={limit}")
        data_start = line_end + 2
        if size == 0:  # the last chunk; trailers (ignored) end with an empty line
            return bytes(body) if buffer.find(b"\r\n\r\n", line_end) >= 0 else None
        if len(buffer) < data_start + size + 2:
            return None
        if buffer[data_start + size : data_start + size + 2] != b"\r\n":
            raise ValueError("malformed chunk: its data does not end with CRLF")
        body += buffer[data_start : data_start + size]
        at = data_start + size + 2


async def listen(
    handler: Callable[[ServerConnection], Awaitable[None]],
    process_request: Callable[[ServerConnection, Request], Response | None],
    connection_class: type[ServerConnection],
    *,
    host: str,
    port: int,
    max_message_size: int,
    compression: bool,
    ping_interval: float | None,
) -> WebSocketServer:
    """Start websockets' server with evkit's options; raises OSError when it cannot bind."""
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
    )
