"""evkit.server.http11 as bytes in and bytes out: requests read whole, answers written."""

from __future__ import annotations

import pytest

from evkit.server.http11 import (
    MAX_HEAD,
    HttpAnswer,
    HttpRequest,
    Incomplete,
    encode_answer,
    keep_alive,
    read_request,
)


def read(data: bytes, limit: int = 100) -> tuple[HttpRequest, int]:
    result = read_request(data, limit)
    assert isinstance(result, tuple), result
    return result


def status_of(data: bytes, limit: int = 100) -> int:
    result = read_request(data, limit)
    assert isinstance(result, HttpAnswer), result
    return result.status


def test_a_get_is_read_with_lower_cased_headers_and_what_follows_is_left() -> None:
    data = b"GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\nX-Thing: 1\r\nx-thing: 2\r\n\r\nGET / "
    request, end = read(data)
    assert (request.method, request.target, request.version) == ("GET", "/healthz?x=1", "HTTP/1.1")
    assert request.headers == {"host": "a", "x-thing": "1, 2"}
    assert data[end:] == b"GET / "
    assert not request.upgrade


def test_a_body_is_read_by_length_or_by_chunks() -> None:
    data = b"POST /events HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcdef"
    request, end = read(data)
    assert (request.body, data[end:]) == (b"abc", b"def")
    chunked = (
        b"POST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\nNEXT"
    )
    request, end = read(chunked)
    assert request.body == b"abc"
    assert chunked[end:] == b"NEXT"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"POST /e HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
        b"POST /e HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
    ],
)
def test_an_unfinished_request_is_incomplete(data: bytes) -> None:
    assert read_request(data, 100) == Incomplete()


def test_a_client_expecting_100_continue_is_told_so() -> None:
    data = b"POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    assert read_request(data, 100) == Incomplete(continue_=True)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST /e HTTP/1.1\r\nHost: a\r\n\r\n", 411),
        (b"POST /e HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
        (b"POST /e HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD, 431),
    ],
)
def test_a_request_that_cannot_be_read_is_answered(data: bytes, status: int) -> None:
    assert status_of(data) == status


def test_a_websocket_handshake_is_left_for_websockets_whole() -> None:
    data = b"GET /ws/events HTTP/1.1\r\nUpgrade: WebSocket\r\nContent-Length: 9\r\n\r\n"
    request, end = read(data)
    assert request.upgrade
    assert end == 0


@pytest.mark.parametrize(
    ("version", "connection", "kept"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Keep-Alive, Close", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
    ],
)
def test_keep_alive_is_what_the_client_asked_for(
    version: str, connection: str | None, kept: bool
) -> None:
    headers = {} if connection is None else {"connection": connection}
    assert keep_alive(HttpRequest("GET", "/", version, headers)) is kept


def test_an_answer_to_head_has_the_headers_of_get_and_no_body() -> None:
    answer = HttpAnswer(200, b"<html></html>", "text/html", (("Cache-Control", "no-cache"),))
    full = encode_answer(answer, head_only=False, keep=True)
    head = encode_answer(answer, head_only=True, keep=True)
    assert full.startswith(b"HTTP/1.1 200 OK\r\n")
    assert full.endswith(b"\r\n\r\n<html></html>")
    assert head == full.removesuffix(b"<html></html>")
    for header in (b"Content-Length: 13", b"Content-Type: text/html", b"Connection: keep-alive"):
        assert header in head
    closing = encode_answer(
        HttpAnswer(204, headers=(("Allow", "GET"),)), head_only=False, keep=False
    )
    assert b"Content-Length" not in closing
    assert b"Connection: close\r\nAllow: GET\r\n\r\n" in closing
