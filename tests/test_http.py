"""HTTP on the broadcaster's port, over real sockets: HEAD, 405 with Allow, OPTIONS and
CORS for the POST routes, keep-alive, and a WebSocket handshake after plain requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

import evkit
from evkit.testing import recv_events, wait_until

GET_ROUTES = ["/healthz", "/metrics", "/", "/dashboard", "/ws/events"]
POST_ROUTES = ["/events", "/v1/traces"]


def connection(server: evkit.Server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)


def ask(
    server: evkit.Server, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[http.client.HTTPResponse, bytes]:
    client = connection(server)
    try:
        client.request(method, path, body=body, headers=headers)
        response = client.getresponse()
        return response, response.read()
    finally:
        client.close()


@pytest.mark.parametrize("path", GET_ROUTES)
def test_head_answers_the_headers_of_get_without_the_body(server: evkit.Server, path: str) -> None:
    got, body = ask(server, "GET", path)
    head, nothing = ask(server, "HEAD", path)
    assert nothing == b""
    assert head.status == got.status
    assert head.getheader("Content-Type") == got.getheader("Content-Type")
    if path != "/metrics":  # the counters move between the two requests
        assert head.getheader("Content-Length") == str(len(body))


def test_the_stream_path_without_upgrade_says_what_it_is(server: evkit.Server) -> None:
    response, body = ask(server, "GET", "/ws/events")
    assert response.status == 426
    assert response.getheader("Upgrade") == "websocket"
    assert "WebSocket endpoint" in orjson.loads(body)["error"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/healthz", "GET, HEAD, OPTIONS"),
        ("DELETE", "/", "GET, HEAD, OPTIONS"),
        ("POST", "/metrics", "GET, HEAD, OPTIONS"),
        ("GET", "/events", "OPTIONS, POST"),
        ("HEAD", "/v1/traces", "OPTIONS, POST"),
        ("BREW", "/events", "OPTIONS, POST"),
        ("PATCH", "/ws/events", "GET, HEAD, OPTIONS"),
    ],
)
def test_another_method_is_405_with_allow(
    server: evkit.Server, method: str, path: str, allow: str
) -> None:
    response, body = ask(server, method, path, body=b"{}" if method == "POST" else None)
    assert response.status == 405
    assert response.getheader("Allow") == allow
    if method != "HEAD":
        assert orjson.loads(body)["error"] == (
            f"{method} is not allowed on {path}; allowed: {allow}"
        )


def test_an_unknown_path_is_404_whatever_the_method(server: evkit.Server) -> None:
    for method in ("GET", "PUT", "OPTIONS"):
        response, body = ask(server, method, "/nothing")
        assert response.status == 404
        assert "the event stream is at /ws/events" in body.decode()


def test_options_without_a_preflight_lists_the_methods(server: evkit.Server) -> None:
    response, body = ask(server, "OPTIONS", "/healthz")
    assert (response.status, response.getheader("Allow"), body) == (204, "GET, HEAD, OPTIONS", b"")


def preflight(server: evkit.Server, path: str, origin: str) -> http.client.HTTPResponse:
    response, _ = ask(
        server,
        "OPTIONS",
        path,
        Origin=origin,
        **{
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    return response


@pytest.mark.parametrize("path", POST_ROUTES)
def test_a_preflight_from_an_allowed_origin_is_answered_for_every_post_route(
    server: evkit.Server, path: str
) -> None:
    response = preflight(server, path, "http://localhost:8000")
    assert response.status == 204
    assert response.getheader("Access-Control-Allow-Origin") == "http://localhost:8000"
    assert response.getheader("Access-Control-Allow-Methods") == "POST, OPTIONS"
    assert response.getheader("Access-Control-Allow-Headers") == "authorization, content-type"
    assert response.getheader("Vary") == "Origin"
    refused = preflight(server, path, "https://evil.example")
    assert refused.status == 403
    assert refused.getheader("Access-Control-Allow-Origin") is None


def test_posts_carry_cors_headers_for_allowed_origins_only() -> None:
    srv = evkit.serve(port=0, allowed_origins=("null",))
    try:
        event = json.dumps({"type": "repo.commit.created", "payload": {}}).encode()
        kind = {"Content-Type": "application/json"}
        allowed, body = ask(srv, "POST", "/events", event, Origin="null", **kind)
        assert allowed.status == 202, body
        assert allowed.getheader("Access-Control-Allow-Origin") == "null"
        refused, body = ask(srv, "POST", "/events", event, Origin="http://evil.example", **kind)
        assert refused.status == 403
        assert refused.getheader("Access-Control-Allow-Origin") is None
        assert "EVKIT_ALLOWED_ORIGINS" in orjson.loads(body)["error"]
        plain, _ = ask(srv, "POST", "/events", event, **kind)  # no Origin: not a browser
        assert plain.status == 202
        assert plain.getheader("Access-Control-Allow-Origin") is None
    finally:
        srv.stop()


def test_a_refused_post_from_an_allowed_page_is_readable_by_it() -> None:
    srv = evkit.serve(port=0, token="static-token-0123456789abcdef0123456789")
    try:
        body = b'{"type": "a.b", "payload": {}}'
        response, answer = ask(srv, "POST", "/events", body, Origin="http://localhost:5173")
        assert response.status == 401
        assert response.getheader("Access-Control-Allow-Origin") == "http://localhost:5173"
        assert orjson.loads(answer)["code"] == "unauthorized"
    finally:
        srv.stop()


def peer_port(client: http.client.HTTPConnection) -> int:
    assert client.sock is not None
    port: int = client.sock.getsockname()[1]
    return port


def test_keep_alive_serves_many_requests_on_one_connection(server: evkit.Server) -> None:
    client = connection(server)
    try:
        ports = set()
        for method, path, body in [
            ("GET", "/healthz", None),
            ("HEAD", "/", None),
            ("POST", "/events", b'{"type": "repo.commit.created", "payload": {}}'),
            ("GET", "/nothing", None),
            ("OPTIONS", "/events", None),
            ("GET", "/healthz", None),
        ]:
            client.request(method, path, body=body)
            response = client.getresponse()
            response.read()
            assert response.getheader("Connection") == "keep-alive"
            ports.add(peer_port(client))
        assert len(ports) == 1  # http.client reconnects silently if the server closed it
    finally:
        client.close()


def raw_exchange(server: evkit.Server, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_pipelined_requests_are_answered_in_order_and_close_is_honoured(
    server: evkit.Server,
) -> None:
    data = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        b"GET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # after close: not answered
    )
    answer = raw_exchange(server, data)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"200", b"404"]
    assert answer.count(b"Connection: close") == 1


def test_http_1_0_closes_unless_asked_to_keep_alive(server: evkit.Server) -> None:
    closed = raw_exchange(server, b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    assert b"Connection: close" in closed
    kept = raw_exchange(
        server,
        b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
        b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
    )
    assert kept.count(b"HTTP/1.1 200 OK") == 2


def test_a_post_expecting_100_continue_gets_it_before_sending_its_body(
    server: evkit.Server,
) -> None:
    body = b'{"type": "repo.commit.created", "payload": {}}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(100).startswith(b"HTTP/1.1 202 Accepted\r\n")


def test_a_websocket_handshake_may_follow_plain_requests_on_one_connection(
    server: evkit.Server,
) -> None:
    async def scenario() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.close()
        # websockets' own client, on a socket that served a plain request first.
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"}"):
            answer += sock.recv(4096)
        async with connect(f"ws://127.0.0.1:{server.port}/ws/events", sock=sock) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert welcome["type"] == "websocket.connected"
            evkit.emit("repo.commit.created", {"n": 1})
            [event] = await recv_events(ws, 1)
            assert event["payload"]["n"] == 1

    asyncio.run(scenario())


def test_stopping_the_server_closes_idle_keep_alive_connections() -> None:
    srv = evkit.serve(port=0)
    client = connection(srv)
    try:
        client.request("GET", "/healthz")
        client.getresponse().read()
        sock = client.sock
        assert sock is not None
        srv.stop()
        sock.settimeout(15)
        # Closed by the server: at its stop, or within its idle timeout at the latest.
        assert sock.recv(1) == b""
    finally:
        client.close()
        srv.stop()


def test_requests_beyond_the_body_limit_are_refused_and_closed() -> None:
    srv = evkit.serve(port=0, max_post_size=100)
    try:
        response, body = ask(srv, "POST", "/events", b"x" * 200)
        assert response.status == 413
        assert response.getheader("Connection") == "close"
        assert "max_post_size=100" in orjson.loads(body)["error"]
    finally:
        srv.stop()


def test_the_host_check_applies_to_every_method(server: evkit.Server) -> None:
    for method in ("GET", "HEAD", "OPTIONS", "POST"):
        response, _ = ask(server, method, "/healthz", Host="attacker.example")
        assert response.status == 403, method


def metrics_of(server: evkit.Server) -> dict[str, Any]:
    stats: dict[str, Any] = server.stats()
    return stats


def test_a_busy_keep_alive_connection_does_not_hold_up_websocket_clients(
    server: evkit.Server,
) -> None:
    client = connection(server)
    try:
        for _ in range(50):
            client.request("GET", "/healthz")
            client.getresponse().read()

        async def subscribe() -> None:
            async with connect(server.url) as ws:
                assert json.loads(await ws.recv())["type"] == "websocket.connected"

        asyncio.run(subscribe())
        wait_until(lambda: metrics_of(server)["clients"] == 0, "the subscriber left", 10)
    finally:
        client.close()
