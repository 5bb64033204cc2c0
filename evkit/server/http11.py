"""Plain HTTP/1.1 on the event stream's port, as bytes in and bytes out.

websockets reads only the ``GET`` of a WebSocket handshake; evkit reads every other
request itself (``GET`` of a page or ``/healthz``, ``HEAD``, ``POST``, ``OPTIONS``, any
method a client may send), with keep-alive. This module is the pure part: it finds a
whole request in a buffer (:func:`read_request`: the head, then a body framed by
``Content-Length`` or ``chunked``), tells a WebSocket upgrade from the rest, says
whether the connection stays open (:func:`keep_alive`), and writes an answer's bytes
(:func:`encode_answer`; a ``HEAD`` gets the headers of the ``GET`` and no body).

No sockets, no asyncio, no policy: which route answers and how is
:mod:`evkit.server.routes`'s job.
"""

from __future__ import annotations

import email.utils
import http
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "MAX_HEAD",
    "HttpAnswer",
    "HttpRequest",
    "Incomplete",
    "encode_answer",
    "keep_alive",
    "read_request",
]

#: Most bytes of a request line and headers (431 past it).
MAX_HEAD = 16 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(frozen=True)
class HttpRequest:
    """A request read whole: header names lower-cased, the body de-chunked."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    remote: str = "?"

    @property
    def upgrade(self) -> bool:
        """Whether this is a WebSocket handshake (for websockets to answer)."""
        return self.method == "GET" and "websocket" in self.headers.get("upgrade", "").lower()


@dataclass(frozen=True)
class HttpAnswer:
    """An answer: status, body bytes, their content type, extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def json(cls, status: int, document: Any, *headers: tuple[str, str]) -> HttpAnswer:
        return cls(status, orjson.dumps(document), "application/json", headers)

    def with_headers(self, *headers: tuple[str, str]) -> HttpAnswer:
        """The same answer with ``headers`` added."""
        return HttpAnswer(self.status, self.body, self.content_type, self.headers + headers)


@dataclass(frozen=True)
class Incomplete:
    """Not a whole request yet. ``continue_``: the client waits for ``100 Continue``."""

    continue_: bool = False


def read_request(
    buffer: bytes | bytearray, body_limit: int
) -> tuple[HttpRequest, int] | Incomplete | HttpAnswer:
    """The first request of ``buffer`` and the bytes it took; :class:`Incomplete` while
    more is needed; or the error answer for a request that cannot be read (then the
    connection is closed).

    The body of a WebSocket upgrade is not read: websockets reads the whole request.
    """
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buffer) > MAX_HEAD:
            return HttpAnswer.json(431, {"error": "request headers too large"})
        return Incomplete()
    if head_end > MAX_HEAD:
        return HttpAnswer.json(431, {"error": "request headers too large"})
    head = _parse_head(bytes(buffer[:head_end]))
    if isinstance(head, HttpAnswer):
        return head
    method, target, version, headers = head
    request = HttpRequest(method, target, version, headers)
    start = head_end + 4
    if request.upgrade:
        return request, 0
    what = f"{method} {target.partition('?')[0][:100]}"
    framed = _body(buffer, start, headers, what, body_limit)
    if isinstance(framed, HttpAnswer | Incomplete):
        return framed
    body, end = framed
    return HttpRequest(method, target, version, headers, body), end


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]] | HttpAnswer:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        return HttpAnswer.json(400, {"error": f"malformed request line {lines[0][:80]!r}"})
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return HttpAnswer.json(505, {"error": f"HTTP/1.1 only, got {version[:20]!r}"})
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return HttpAnswer.json(400, {"error": f"malformed header line {line[:80]!r}"})
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method.upper(), target, version, headers


def _body(
    buffer: bytes | bytearray, start: int, headers: dict[str, str], what: str, limit: int
) -> tuple[bytes, int] | Incomplete | HttpAnswer:
    """The body from ``start`` and where the request ends, once whole.

    A body past ``limit`` (declared or sent) is answered with 413; a request with a
    body but no framing with 411; malformed chunks with 400.
    """
    expects = headers.get("expect", "").lower() == "100-continue"
    if headers.get("transfer-encoding", "").lower() == "chunked":
        try:
            chunked = _dechunk(buffer, start, limit)
        except ValueError as exc:
            status = 413 if "max_post_size" in str(exc) else 400
            return HttpAnswer.json(status, {"error": str(exc)})
        return Incomplete(expects) if chunked is None else chunked
    length_text = headers.get("content-length")
    if length_text is None:
        if what.startswith("POST "):  # a body is what a POST route reads
            return HttpAnswer.json(
                411, {"error": f"{what} needs a Content-Length header (or chunked encoding)"}
            )
        return b"", start
    if not (length_text.isascii() and length_text.isdigit()):
        return HttpAnswer.json(400, {"error": f"malformed Content-Length {length_text[:20]!r}"})
    length = int(length_text)
    if length > limit:
        return HttpAnswer.json(
            413, {"error": f"body of {length} bytes exceeds max_post_size={limit}"}
        )
    if len(buffer) - start < length:
        return Incomplete(expects)
    return bytes(buffer[start : start + length]), start + length


def _dechunk(buffer: bytes | bytearray, start: int, limit: int) -> tuple[bytes, int] | None:
    """A ``Transfer-Encoding: chunked`` body from ``start`` and where it ends; None while
    incomplete.

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
            end = buffer.find(b"\r\n\r\n", line_end)
            return None if end < 0 else (bytes(body), end + 4)
        if len(buffer) < data_start + size + 2:
            return None
        if buffer[data_start + size : data_start + size + 2] != b"\r\n":
            raise ValueError("malformed chunk: its data does not end with CRLF")
        body += buffer[data_start : data_start + size]
        at = data_start + size + 2


def keep_alive(request: HttpRequest) -> bool:
    """Whether the client asked to keep the connection (HTTP/1.1 unless ``close``;
    HTTP/1.0 only with ``keep-alive``)."""
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def encode_answer(answer: HttpAnswer, *, head_only: bool, keep: bool) -> bytes:
    """The bytes of ``answer``: its headers, and its body unless ``head_only`` (HEAD)."""
    status = answer.status
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}", f"Date: {email.utils.formatdate(usegmt=True)}"]
    lines.append("Server: evkit")
    has_body = status not in _NO_BODY_STATUSES
    if has_body:
        if answer.body or head_only:
            lines.append(f"Content-Type: {answer.content_type}")
        lines.append(f"Content-Length: {len(answer.body)}")
    lines.append("Connection: keep-alive" if keep else "Connection: close")
    lines += [f"{name}: {value}" for name, value in answer.headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only or not has_body else head + answer.body
