"""Security of the broadcaster over real sockets: every refusal, scopes, patterns, redaction.

Every rejection path is checked twice: the client gets no event at all, and the refusal
shows in ``/metrics`` under ``evkit_connections_rejected_total{reason=...}``.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import logging
import socket
import sqlite3
import time
import urllib.error
import urllib.request
import warnings
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import evkit
from evkit.redaction import REDACTED
from evkit.store.sqlite_format import read_records
from evkit.testing import (
    assert_silent,
    open_client,
    recv_events,
    recv_json,
    recv_until,
    request,
    send_json,
    wait_until,
)
from tests.test_metrics import labelled, scrape, value

SECRET = "test-secret-for-hs256-0123456789abcdef"  # >= 32 bytes: PyJWT warns on shorter keys
OTHER_SECRET = "another-secret-for-hs256-0123456789abcdef"
TOKEN = "static-token-0123456789abcdef0123456789"


def hs256(secret: str = SECRET, **claims: Any) -> str:
    """A JWT valid for an hour unless ``claims`` say otherwise (``exp=None`` drops exp)."""
    claims.setdefault("exp", int(time.time()) + 3600)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, "HS256")


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def rejected(server: evkit.Server) -> dict[str, float]:
    return labelled(scrape(server), "evkit_connections_rejected_total", "reason")


async def refused(
    url: str, headers: dict[str, str] | None = None, **query: str
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body a handshake is refused with."""
    with pytest.raises(InvalidStatus) as info:
        await open_client(url, headers, **query)
    response = info.value.response
    return response.status_code, orjson.loads(response.body)


async def everything_until_closed(ws: ClientConnection, timeout: float = 5.0) -> list[Any]:
    """Every message ``ws`` receives until the server closes it."""
    received = []
    with pytest.raises(ConnectionClosed):
        while True:
            received.append(await recv_json(ws, timeout))
    return received


def emit_one_of_each() -> None:
    for type_ in (
        "repo.commit.created",
        "claude.session.started",
        "github.api.completed",
        "performance.slowOperation.detected",
    ):
        evkit.emit(type_, {"n": 1})
    evkit.flush()


@pytest.fixture
def jwt_server() -> Any:
    srv = evkit.serve(port=0, jwt_secret=SECRET)
    try:
        yield srv
    finally:
        srv.stop()


# -- credentials ------------------------------------------------------------------------------


def test_no_credentials_and_no_auth_message_is_closed_with_1008_after_auth_timeout() -> None:
    srv = evkit.serve(port=0, token=TOKEN, auth_timeout=0.5)
    try:

        async def scenario() -> None:
            watcher, _ = await open_client(srv.url, bearer(TOKEN))
            silent = await connect(srv.url)  # the handshake itself succeeds
            started = time.monotonic()
            emit_one_of_each()
            assert len(await recv_events(watcher, 4)) == 4  # the events were broadcast
            received = await everything_until_closed(silent)
            assert received == []  # no websocket.connected, no event
            assert time.monotonic() - started >= 0.4
            assert silent.close_code == 1008
            assert silent.close_reason == "no auth message within 0.5 s"
            await watcher.close()

        asyncio.run(scenario())
        assert rejected(srv) == {"unauthorized": 1}
        assert value(scrape(srv), "evkit_connections_total") == 1
    finally:
        srv.stop()


@pytest.mark.parametrize("where", ["header", "query"])
def test_malformed_token_is_refused_with_401(jwt_server: evkit.Server, where: str) -> None:
    async def scenario() -> None:
        if where == "header":
            status, body = await refused(jwt_server.url, bearer("garbage"))
        else:
            status, body = await refused(jwt_server.url, token="garbage")
        assert status == 401
        assert body["code"] == "unauthorized"
        assert body["error"].startswith("malformed token")

    asyncio.run(scenario())
    assert rejected(jwt_server) == {"unauthorized": 1}


def test_wrong_static_token_is_refused_with_401() -> None:
    srv = evkit.serve(port=0, token=TOKEN)
    try:
        status, body = asyncio.run(refused(srv.url, bearer(TOKEN + "x")))
        assert (status, body) == (401, {"error": "invalid token", "code": "unauthorized"})
        assert rejected(srv) == {"unauthorized": 1}
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"exp": -60}, "token expired"),
        ({"nbf": 3600, "exp": 7200}, "token not yet valid (nbf)"),
        ({"secret": OTHER_SECRET}, "token signature is invalid"),
        ({"exp": None}, "token lacks a required claim: exp"),
    ],
    ids=["expired", "nbf-in-the-future", "wrongly-signed", "missing-exp"],
)
def test_invalid_jwt_is_refused_with_401(
    jwt_server: evkit.Server, claims: dict[str, Any], error: str
) -> None:
    now = int(time.time())
    secret = claims.pop("secret", SECRET)
    times = {k: (None if v is None else now + v) for k, v in claims.items()}
    credential = hs256(secret, **times)

    async def scenario() -> None:
        for headers, query in ((bearer(credential), {}), (None, {"token": credential})):
            status, body = await refused(jwt_server.url, headers, **query)
            assert (status, body) == (401, {"error": error, "code": "unauthorized"})

    asyncio.run(scenario())
    assert rejected(jwt_server) == {"unauthorized": 2}


def test_valid_jwt_connects_by_header_query_or_first_message(jwt_server: evkit.Server) -> None:
    async def scenario() -> None:
        by_header, _ = await open_client(jwt_server.url, bearer(hs256()))
        by_query, _ = await open_client(jwt_server.url, token=hs256())
        by_message = await connect(jwt_server.url)
        welcome = await request(by_message, {"type": "auth", "payload": {"token": hs256()}})
        assert welcome["type"] == "websocket.connected"
        evkit.emit("repo.commit.created", {"n": 1})
        for ws in (by_header, by_query, by_message):
            [event] = await recv_events(ws, 1)
            assert event["payload"] == {"n": 1}
            await ws.close()

    asyncio.run(scenario())
    assert rejected(jwt_server) == {}


@pytest.mark.parametrize(
    ("first_message", "error"),
    [
        ({"type": "auth", "payload": {"token": "garbage"}}, "malformed token"),
        ({"type": "auth", "payload": {"token": hs256(OTHER_SECRET)}}, "token signature"),
        ({"type": "subscribe", "payload": {"eventTypes": ["*"]}}, "authentication required"),
        ({"type": "auth", "payload": {}}, "auth needs payload.token"),
        ({"type": "é" * 100, "payload": {}}, "unknown message type"),
    ],
    ids=["garbage", "wrongly-signed", "not-auth", "no-token", "long-non-ascii-type"],
)
def test_bad_first_message_auth_is_closed_with_1008(
    jwt_server: evkit.Server, first_message: Any, error: str
) -> None:
    async def scenario() -> None:
        ws = await connect(jwt_server.url)
        await send_json(ws, first_message)
        emit_one_of_each()
        assert await everything_until_closed(ws) == []
        assert ws.close_code == 1008
        assert ws.close_reason is not None
        assert ws.close_reason.startswith(error)
        assert len(ws.close_reason.encode()) <= 123  # fits a close frame

    asyncio.run(scenario())
    assert rejected(jwt_server) == {"unauthorized": 1}


# -- origins ---------------------------------------------------------------------------------


def test_allowed_origins_refuse_others_with_403() -> None:
    srv = evkit.serve(port=0, allowed_origins=("https://ok.example", "https://*.ok.example"))
    try:

        async def scenario() -> None:
            for origin in (
                "https://evil.example",
                "http://ok.example",
                "https://ok.example.evil.example",
                "null",
            ):
                status, body = await refused(srv.url, {"Origin": origin})
                assert status == 403
                assert body["code"] == "forbidden"
                assert body["error"].startswith(f"origin {origin!r}")
                assert "add it to allowed_origins" in body["error"]
            for origin in ("https://ok.example", "https://app.ok.example"):
                ws, _ = await open_client(srv.url, {"Origin": origin})
                await ws.close()
            ws, _ = await open_client(srv.url)  # no Origin: not a browser
            await ws.close()

        asyncio.run(scenario())
        assert rejected(srv) == {"origin": 4}
    finally:
        srv.stop()


def test_default_origin_rule_is_same_origin_and_local_pages(server: evkit.Server) -> None:
    # Bound to loopback: pages of this machine (any port) come in, nothing else does.
    async def scenario() -> None:
        same, _ = await open_client(server.url, {"Origin": f"http://127.0.0.1:{server.port}"})
        local, _ = await open_client(server.url, {"Origin": "http://localhost:8000"})
        for origin in ("null", "https://evil.example", "http://localhost.evil.example"):
            status, _ = await refused(server.url, {"Origin": origin})
            assert status == 403
        emit_one_of_each()
        assert len(await recv_events(same, 4)) == 4
        assert len(await recv_events(local, 4)) == 4
        await same.close()
        await local.close()

    asyncio.run(scenario())
    assert rejected(server) == {"origin": 3}


def test_a_server_bound_beyond_loopback_is_same_origin_only() -> None:
    srv = evkit.serve("0.0.0.0", 0, token=TOKEN)
    url = f"ws://127.0.0.1:{srv.port}/ws/events"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:

        async def scenario() -> None:
            same, _ = await open_client(url, {**auth, "Origin": f"http://127.0.0.1:{srv.port}"})
            await same.close()
            for origin in ("http://localhost:8000", "http://127.0.0.1:1"):
                status, _ = await refused(url, {**auth, "Origin": origin})
                assert status == 403

        asyncio.run(scenario())
        assert rejected(srv) == {"origin": 2}
    finally:
        srv.stop()


def test_missing_origin_is_refused_when_not_allowed() -> None:
    srv = evkit.serve(port=0, allow_missing_origin=False)
    try:
        status, body = asyncio.run(refused(srv.url))
        assert (status, body["code"]) == (403, "forbidden")

        async def browser() -> None:
            ws, _ = await open_client(srv.url, {"Origin": f"http://127.0.0.1:{srv.port}"})
            await ws.close()

        asyncio.run(browser())
        assert rejected(srv) == {"origin": 1}
    finally:
        srv.stop()


# -- connection limits ------------------------------------------------------------------------


def test_max_connections_refuses_the_next_with_503_until_one_leaves() -> None:
    srv = evkit.serve(port=0, max_connections=2)
    try:

        async def scenario() -> None:
            first, _ = await open_client(srv.url)
            second, _ = await open_client(srv.url)
            status, body = await refused(srv.url)
            assert status == 503
            assert body == {"error": "the server holds its maximum of 2 clients"}
            emit_one_of_each()
            assert len(await recv_events(first, 4)) == 4
            await first.close()
            # The slot frees once the server has seen the close, which it counts.
            await asyncio.to_thread(
                wait_until,
                lambda: labelled(scrape(srv), "evkit_disconnects_total", "reason") == {"normal": 1},
                "the first client's disconnect",
            )
            third, _ = await open_client(srv.url)
            await third.close()
            await second.close()

        asyncio.run(scenario())
        assert rejected(srv) == {"max_connections": 1}
    finally:
        srv.stop()


def test_connections_waiting_to_authenticate_have_a_budget_of_their_own() -> None:
    # Twenty handshakes that never authenticate used to hold every max_connections slot.
    srv = evkit.serve(
        port=0, token=TOKEN, max_connections=20, max_authenticating=20, auth_timeout=5
    )
    try:

        async def scenario() -> None:
            pending = [await connect(srv.url) for _ in range(20)]
            status, body = await refused(srv.url)  # one more without credentials
            assert status == 503
            assert "waiting to authenticate" in body["error"]
            valid = [(await open_client(srv.url, bearer(TOKEN)))[0] for _ in range(20)]
            status, _ = await refused(srv.url, bearer(TOKEN))  # max_connections holds
            assert status == 503
            for ws in pending + valid:
                await ws.close()

        asyncio.run(scenario())
        reasons = rejected(srv)
        assert reasons["max_authenticating"] >= 1
        assert reasons["max_connections"] >= 1
    finally:
        srv.stop()


def test_a_client_that_authenticates_into_a_full_server_is_closed_with_1013() -> None:
    srv = evkit.serve(port=0, token=TOKEN, max_connections=1, auth_timeout=5)
    try:

        async def scenario() -> None:
            late = await connect(srv.url)  # admitted to authenticate
            first, _ = await open_client(srv.url, bearer(TOKEN))  # takes the one slot
            await send_json(late, {"type": "auth", "payload": {"token": TOKEN}})
            assert await everything_until_closed(late) == []
            assert late.close_code == 1013
            await first.close()

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_max_connections_per_ip_refuses_the_next_with_429() -> None:
    srv = evkit.serve(port=0, max_connections_per_ip=2)
    try:

        async def scenario() -> None:
            clients = [(await open_client(srv.url))[0] for _ in range(2)]
            status, body = await refused(srv.url)
            assert status == 429
            assert body == {
                "error": "too many connections from 127.0.0.1 (too_many_connections_per_ip)",
                "code": "rate_limited",
            }
            for ws in clients:
                await ws.close()

        asyncio.run(scenario())
        assert rejected(srv) == {"too_many_connections_per_ip": 1}
    finally:
        srv.stop()


def test_connection_rate_per_ip_refuses_past_the_burst_with_429() -> None:
    srv = evkit.serve(port=0, connections_per_second_per_ip=2)
    try:

        async def scenario() -> None:
            admitted: list[ClientConnection] = []
            started = time.monotonic()
            refusal = None
            while refusal is None:
                try:
                    admitted.append((await open_client(srv.url))[0])
                except InvalidStatus as exc:
                    refusal = exc.response
                assert len(admitted) < 10, "the connection rate was never enforced"
            assert refusal.status_code == 429
            assert orjson.loads(refusal.body)["error"].endswith("(connection_rate)")
            # A burst of 2, plus what the bucket refilled at 2 per second meanwhile.
            assert 2 <= len(admitted) <= 2 + 2 * (time.monotonic() - started) + 1
            for ws in admitted:
                await ws.close()

        asyncio.run(scenario())
        assert rejected(srv) == {"connection_rate": 1}
    finally:
        srv.stop()


def test_message_flood_is_rate_limited_then_closed_and_others_are_unaffected() -> None:
    srv = evkit.serve(port=0, messages_per_second=10, message_burst=10, rate_limit_strikes=5)
    try:

        async def scenario() -> None:
            flooder, _ = await open_client(srv.url)
            neighbour, _ = await open_client(srv.url)
            for n in range(100):
                try:
                    await send_json(flooder, {"type": "ping", "payload": n})
                except ConnectionClosed:
                    break
            received = await everything_until_closed(flooder)
            assert flooder.close_code == 1008
            assert flooder.close_reason == "rate limited"
            pongs = [m for m in received if m["type"] == "pong"]
            errors = [m for m in received if m["type"] == "websocket.error"]
            assert len(pongs) >= 10  # the burst was served
            assert [e["payload"]["code"] for e in errors] == ["rate_limited"] * 5
            assert len(pongs) + len(errors) == len(received)  # and nothing else

            # The neighbour's own budget is untouched: its burst is served in full.
            for n in range(10):
                assert (await request(neighbour, {"type": "ping", "payload": n}))["type"] == "pong"
            emit_one_of_each()
            assert len(await recv_events(neighbour, 4)) == 4
            await neighbour.close()

        asyncio.run(scenario())
        wait_until(
            lambda: (
                labelled(scrape(srv), "evkit_disconnects_total", "reason")
                == {"policy": 1, "normal": 1}
            ),
            "the flooder's and the neighbour's disconnects",
        )
        assert labelled(scrape(srv), "evkit_client_message_errors_total", "code") == {
            "rate_limited": 5
        }
    finally:
        srv.stop()


# -- allowed patterns -------------------------------------------------------------------------


def test_jwt_patterns_limit_what_a_client_may_subscribe_to(jwt_server: evkit.Server) -> None:
    credential = hs256(sub="repo-reader", patterns=["repo.*"])

    async def scenario() -> None:
        ws, welcome = await open_client(jwt_server.url, bearer(credential))
        assert welcome["payload"]["subscriptions"] == ["repo.*"]

        status, body = await refused(jwt_server.url, bearer(credential), eventTypes="claude.*")
        assert status == 403
        assert body["code"] == "forbidden"
        assert body["error"].startswith("not allowed to subscribe to ['claude.*']")

        for patterns in (["claude.*"], ["*"], ["repo*"], ["repo.push.*", "claude.*"]):
            reply = await request(ws, {"type": "subscribe", "payload": {"eventTypes": patterns}})
            assert reply["type"] == "websocket.error"
            assert reply["payload"]["code"] == "forbidden"
            assert reply["payload"]["detail"] == {
                "patterns": [p for p in patterns if p != "repo.push.*"]
            }
        reply = await request(
            ws, {"type": "subscribe", "payload": {"eventTypes": ["claude.*"], "replace": True}}
        )
        assert reply["payload"]["code"] == "forbidden"

        reply = await request(
            ws, {"type": "subscribe", "payload": {"eventTypes": ["repo.commit.*"]}}
        )
        assert reply["type"] == "websocket.subscribed"
        assert reply["payload"]["subscriptions"] == ["repo.*", "repo.commit.*"]  # nothing else

        emit_one_of_each()
        [event] = await recv_events(ws, 1)
        assert event["type"] == "repo.commit.created"
        await assert_silent(ws)

        narrower, welcome = await open_client(
            jwt_server.url, bearer(credential), eventTypes="repo.commit.*"
        )
        assert welcome["payload"]["subscriptions"] == ["repo.commit.*"]
        await narrower.close()
        await ws.close()

    asyncio.run(scenario())
    assert rejected(jwt_server) == {"forbidden": 1}


def test_first_message_auth_applies_the_jwt_patterns(jwt_server: evkit.Server) -> None:
    async def scenario() -> None:
        ws = await connect(jwt_server.url)
        welcome = await request(
            ws, {"type": "auth", "payload": {"token": hs256(patterns=["github.*"])}}
        )
        assert welcome["payload"]["subscriptions"] == ["github.*"]
        reply = await request(ws, {"type": "subscribe", "payload": {"eventTypes": ["claude.*"]}})
        assert reply["payload"]["code"] == "forbidden"
        emit_one_of_each()
        [event] = await recv_events(ws, 1)
        assert event["type"] == "github.api.completed"
        await assert_silent(ws)
        await ws.close()

    asyncio.run(scenario())


def test_replay_respects_the_jwt_patterns(jwt_server: evkit.Server) -> None:
    emit_one_of_each()

    async def scenario() -> None:
        ws, _ = await open_client(jwt_server.url, bearer(hs256(patterns=["repo.*"])), since="0")
        messages = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
        assert [m["type"] for m in messages] == ["repo.commit.created", "websocket.replayed"]
        await ws.close()

    asyncio.run(scenario())


# -- publish scopes ---------------------------------------------------------------------------


async def _publish_and_listen(
    url: str, publisher_headers: dict[str, str] | None, listener_headers: dict[str, str] | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Publish one event; return the publisher's error (or None) and what a listener got."""
    publisher, _ = await open_client(url, publisher_headers, eventTypes="nothing.here")
    listener, _ = await open_client(url, listener_headers, eventTypes="repo.*")
    await send_json(
        publisher, {"type": "publish", "payload": {"type": "repo.push.completed", "payload": {}}}
    )
    # A ping after the publish: its pong proves the publish was handled (no error before it).
    reply = await request(publisher, {"type": "ping", "payload": "after"})
    error = None
    if reply["type"] == "websocket.error":
        error = reply["payload"]
        assert (await recv_json(publisher))["type"] == "pong"
    evkit.flush()
    events: list[dict[str, Any]] = []
    if error is None:
        events = await recv_events(listener, 1)
    await assert_silent(listener)
    await publisher.close()
    await listener.close()
    return error, events


def test_publish_needs_the_publish_scope(jwt_server: evkit.Server) -> None:
    subscriber = bearer(hs256())
    error, events = asyncio.run(_publish_and_listen(jwt_server.url, subscriber, subscriber))
    assert error is not None
    assert error["code"] == "forbidden"
    assert error["error"] == "this token does not grant the publish scope"
    assert events == []

    publisher = bearer(hs256(scope="subscribe publish"))
    error, events = asyncio.run(_publish_and_listen(jwt_server.url, publisher, subscriber))
    assert error is None
    assert [e["type"] for e in events] == ["repo.push.completed"]


def test_admin_scope_may_publish(jwt_server: evkit.Server) -> None:
    admin = bearer(hs256(scope="admin"))
    error, events = asyncio.run(_publish_and_listen(jwt_server.url, admin, admin))
    assert error is None
    assert len(events) == 1


def test_a_token_without_subscribe_scope_is_refused_at_the_handshake(
    jwt_server: evkit.Server,
) -> None:
    status, body = asyncio.run(refused(jwt_server.url, bearer(hs256(scope="publish"))))
    assert (status, body["code"]) == (403, "forbidden")
    assert "subscribe scope" in body["error"]


def test_static_token_holds_every_scope() -> None:
    srv = evkit.serve(port=0, token=TOKEN)
    try:
        error, events = asyncio.run(_publish_and_listen(srv.url, bearer(TOKEN), bearer(TOKEN)))
        assert error is None
        assert len(events) == 1
    finally:
        srv.stop()


@pytest.mark.parametrize("auth", [False, True])
def test_allow_publish_false_forbids_everyone(auth: bool) -> None:
    srv = evkit.serve(port=0, allow_publish=False, **({"token": TOKEN} if auth else {}))
    headers = bearer(TOKEN) if auth else None
    try:
        error, events = asyncio.run(_publish_and_listen(srv.url, headers, headers))
        assert error is not None
        assert (error["code"], error["error"]) == (
            "forbidden",
            "publishing is disabled on this server",
        )
        assert events == []
    finally:
        srv.stop()


# -- redaction --------------------------------------------------------------------------------

SENSITIVE = {
    "user": {"Password": "p", "profile": {"api_key": "k"}},
    "items": [{"token": "t"}],
    "ok": 1,
}
REDACTED_PAYLOAD = {
    "user": {"Password": REDACTED, "profile": {"api_key": REDACTED}},
    "items": [{"token": REDACTED}],
    "ok": 1,
}


def test_nested_keys_are_redacted_live_and_in_the_store(tmp_path: Any) -> None:
    database = tmp_path / "e.db"
    srv = evkit.serve(port=0, store=f"sqlite:///{database}")
    captured = evkit.capture(["secret.*"])
    try:
        payload = copy.deepcopy(SENSITIVE)

        async def scenario() -> None:
            ws, _ = await open_client(srv.url, eventTypes="secret.*")
            emitted = evkit.emit("secret.user.updated", payload)
            [event] = await recv_events(ws, 1)
            assert event["payload"] == REDACTED_PAYLOAD
            assert event["id"] == emitted.id
            await ws.close()

        asyncio.run(scenario())
        assert payload == SENSITIVE  # the caller's dict is not mutated
        # In-process consumers see the event as emitted: redaction applies where an
        # event leaves the process or reaches the store.
        assert captured.recent()[-1]["payload"] == SENSITIVE
        evkit.flush()
        with sqlite3.connect(database) as db:
            rows = [(r.type, r.frame) for r in read_records(db)]
        assert [(t, orjson.loads(frame)["payload"]) for t, frame in rows] == [
            ("secret.user.updated", REDACTED_PAYLOAD)
        ]
        assert b'"p"' not in rows[0][1]
        assert b'"k"' not in rows[0][1]
    finally:
        captured.stop()
        srv.stop()


def test_replayed_history_is_redacted(server: evkit.Server) -> None:
    evkit.emit("secret.user.updated", copy.deepcopy(SENSITIVE))
    evkit.flush()

    async def scenario() -> None:
        ws, _ = await open_client(server.url, since="0")
        [event] = await recv_events(ws, 1)
        assert event["payload"] == REDACTED_PAYLOAD
        await ws.close()

    asyncio.run(scenario())


def test_custom_redact_keys_add_to_the_defaults(tmp_path: Any) -> None:
    database = tmp_path / "e.db"
    srv = evkit.serve(port=0, redact_keys=("ssn",), store=f"sqlite:///{database}")
    try:

        async def scenario() -> None:
            ws, _ = await open_client(srv.url)
            evkit.emit(
                "person.record.updated",
                {"ssn": "1", "nested": [{"SSN": "2"}], "password": "p", "apiKey": "k", "n": 1},
            )
            [event] = await recv_events(ws, 1)
            assert event["payload"] == {
                "ssn": REDACTED,
                "nested": [{"SSN": REDACTED}],
                "password": REDACTED,
                "apiKey": REDACTED,
                "n": 1,
            }
            await ws.close()

        asyncio.run(scenario())
        evkit.flush()
        with sqlite3.connect(database) as db:
            [frame] = [r.frame for r in read_records(db)]
        assert b'"ssn":"[redacted]"' in frame
        assert b'"SSN":"[redacted]"' in frame
        assert b'"password":"[redacted]"' in frame
    finally:
        srv.stop()


def test_redact_defaults_false_keeps_only_the_custom_keys() -> None:
    srv = evkit.serve(port=0, redact_keys=("ssn",), redact_defaults=False)
    try:

        async def scenario() -> None:
            ws, _ = await open_client(srv.url)
            evkit.emit("person.record.updated", {"ssn": "1", "token": "t"})
            [event] = await recv_events(ws, 1)
            assert event["payload"] == {"ssn": REDACTED, "token": "t"}
            await ws.close()

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_published_events_are_redacted(server: evkit.Server) -> None:
    async def scenario() -> None:
        publisher, _ = await open_client(server.url, eventTypes="nothing.here")
        listener, _ = await open_client(server.url, eventTypes="secret.*")
        await send_json(
            publisher,
            {"type": "publish", "payload": {"type": "secret.ws.sent", "payload": SENSITIVE}},
        )
        [event] = await recv_events(listener, 1)
        assert event["payload"] == REDACTED_PAYLOAD
        status, answer = post(server, {"type": "secret.http.sent", "payload": SENSITIVE})
        assert status == 202
        [event] = await recv_events(listener, 1)
        assert event["payload"] == REDACTED_PAYLOAD
        assert event["id"] == answer["ids"][0]
        await publisher.close()
        await listener.close()

    asyncio.run(scenario())


# -- POST /events -----------------------------------------------------------------------------


def post(
    server: evkit.Server,
    body: Any,
    headers: dict[str, str] | None = None,
    path: str = "/events",
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` (JSON-encoded unless bytes); the status and the decoded answer."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    request_ = urllib.request.Request(
        f"{server.http_url}{path}",
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request_, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read())


def raw_http(server: evkit.Server, data: bytes) -> bytes:
    """Send raw bytes to the server's port; everything it answers before closing."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.fixture
def auth_server() -> Any:
    """Auth on: a static token (every scope) and HS256 JWTs; small bodies."""
    srv = evkit.serve(port=0, token=TOKEN, jwt_secret=SECRET, max_post_size=1024)
    try:
        yield srv
    finally:
        srv.stop()


def test_post_events_publishes_and_answers_the_ids(auth_server: evkit.Server) -> None:
    async def scenario() -> None:
        listener, _ = await open_client(auth_server.url, bearer(TOKEN), eventTypes="repo.*")
        status, answer = post(
            auth_server,
            [
                {"type": "repo.commit.created", "payload": {"path": "/x", "correlationId": "r1"}},
                {"type": "repo.push.completed"},
            ],
            bearer(TOKEN),
        )
        assert status == 202
        ids = answer["ids"]
        assert len(ids) == 2
        assert all(isinstance(i, str) for i in ids)
        assert int(ids[0]) < int(ids[1])
        events = await recv_events(listener, 2)
        assert [(e["id"], e["type"], e["payload"]) for e in events] == [
            (ids[0], "repo.commit.created", {"path": "/x", "correlationId": "r1"}),
            (ids[1], "repo.push.completed", {}),
        ]

        publisher = bearer(hs256(scope="subscribe publish"))
        status, answer = post(auth_server, {"type": "repo.scan.completed"}, publisher)
        assert status == 202
        [event] = await recv_events(listener, 1)
        assert event["id"] == answer["ids"][0]

        status, answer = post(
            auth_server, {"type": "repo.scan.completed"}, path=f"/events?token={TOKEN}"
        )
        assert status == 202
        [event] = await recv_events(listener, 1)
        assert event["id"] == answer["ids"][0]
        await listener.close()

    asyncio.run(scenario())


def test_post_events_refusals(auth_server: evkit.Server) -> None:
    event = {"type": "repo.commit.created", "payload": {}}

    async def scenario() -> None:
        listener, _ = await open_client(auth_server.url, bearer(TOKEN))
        published_before = auth_server.stats()["published"]

        status, answer = post(auth_server, event)
        assert status == 401
        assert answer["code"] == "unauthorized"
        assert post(auth_server, event, bearer("garbage"))[0] == 401
        assert post(auth_server, event, bearer(hs256(exp=int(time.time()) - 5)))[0] == 401

        status, answer = post(auth_server, event, bearer(hs256()))
        assert (status, answer) == (
            403,
            {"error": "this token does not grant the publish scope", "code": "forbidden"},
        )

        status, answer = post(
            auth_server,
            [
                event,
                {"type": "bad type!", "payload": {}},
                {"type": "repo.commit.created", "payload": [1]},
                {"type": "repo.x.y", "payload": {"correlationId": 5}},
                7,
            ],
            bearer(TOKEN),
        )
        assert status == 400
        assert answer["code"] == "invalid_event"
        assert answer["error"] == "4 of 5 events are invalid; none was published"
        assert [e["index"] for e in answer["errors"]] == [1, 2, 3, 4]
        messages = [e["error"] for e in answer["errors"]]
        assert messages[0].startswith("event[1]: ")
        assert "bad type!" in messages[0]
        assert messages[1] == "event[2]: payload must be an object, got list [1]"
        assert messages[2].startswith("event[3]: payload.correlationId must be a string")
        assert messages[3].startswith("event[4]: an event must be an object")

        status, answer = post(auth_server, {"type": "no spaces allowed"}, bearer(TOKEN))
        assert status == 400
        assert answer["errors"][0]["index"] == 0

        status, answer = post(auth_server, b"{not json", bearer(TOKEN))
        assert (status, answer["code"]) == (400, "invalid_json")
        status, answer = post(auth_server, [], bearer(TOKEN))
        assert (status, answer["code"]) == (400, "invalid_event")

        status, answer = post(auth_server, b"x" * 1025, bearer(TOKEN))
        assert status == 413
        assert answer == {"error": "body of 1025 bytes exceeds max_post_size=1024"}

        status, answer = post(auth_server, event, bearer(TOKEN), path="/other")
        assert status == 404
        status, answer = post(auth_server, event, bearer(TOKEN), path="/events/extra")
        assert status == 404

        connection = http.client.HTTPConnection("127.0.0.1", auth_server.port, timeout=5)
        connection.putrequest("POST", "/events")
        connection.putheader("Authorization", f"Bearer {TOKEN}")
        connection.endheaders()  # neither a length nor chunks: the body cannot be read
        response = connection.getresponse()
        assert response.status == 411
        assert orjson.loads(response.read()) == {
            "error": "POST /events needs a Content-Length header (or chunked encoding)"
        }
        connection.close()
        # A chunked body (what OTLP exporters send) is read whole and published.
        connection = http.client.HTTPConnection("127.0.0.1", auth_server.port, timeout=5)
        connection.request(
            "POST",
            "/events",
            body=iter([b'{"type": "chunked', b'.post.sent"}']),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        assert response.status == 202
        [chunked_id] = orjson.loads(response.read())["ids"]
        connection.close()
        [posted] = await recv_events(listener, 1)
        assert (posted["type"], posted["id"]) == ("chunked.post.sent", chunked_id)

        answer_bytes = raw_http(
            auth_server,
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
        )
        assert answer_bytes.startswith(b"HTTP/1.1 400 ")
        answer_bytes = raw_http(auth_server, b"POST /events HTTP/1.1\r\nX: " + b"a" * 20_000)
        assert answer_bytes.startswith(b"HTTP/1.1 431 ")

        # Nothing else was published by any of them, and the WebSocket client was served
        # throughout.
        evkit.flush()
        assert auth_server.stats()["published"] == published_before + 1
        await assert_silent(listener)
        emit_one_of_each()
        assert len(await recv_events(listener, 4)) == 4
        await listener.close()

    asyncio.run(scenario())
    assert rejected(auth_server) == {"unauthorized": 3, "forbidden": 1}


def test_post_events_without_auth_and_with_publishing_off() -> None:
    srv = evkit.serve(port=0, allow_publish=False)
    try:
        status, answer = post(srv, {"type": "repo.commit.created"})
        assert (status, answer["code"]) == (403, "forbidden")
        assert answer["error"] == "publishing is disabled on this server"
    finally:
        srv.stop()


def test_post_events_from_another_origin_is_refused(server: evkit.Server) -> None:
    # A page on another site can POST to a local broadcaster without a CORS preflight
    # (a "simple" request); the handshake's origin rule applies to POST as well.
    event = {"type": "repo.commit.created"}
    status, answer = post(server, event, {"Origin": "https://evil.example"})
    assert (status, answer["code"]) == (403, "forbidden")
    assert post(server, event, {"Origin": f"http://127.0.0.1:{server.port}"})[0] == 202
    assert post(server, event)[0] == 202  # no Origin: not a browser
    assert server.stats()["published"] == 2
    assert rejected(server) == {"origin": 1}


def test_websocket_clients_are_served_while_posts_arrive(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url, eventTypes="load.*")
        loop = asyncio.get_running_loop()
        posts = [
            loop.run_in_executor(None, post, server, [{"type": f"load.batch.n{n}"}] * 10)
            for n in range(10)
        ]
        await send_json(ws, {"type": "ping", "payload": "during"})
        received, pongs = [], 0
        while len(received) < 100 or not pongs:  # events may come before the pong
            message = await recv_json(ws)
            if "id" in message:
                received.append(int(message["id"]))
            else:
                assert message["type"] == "pong"
                pongs += 1
        answers = await asyncio.gather(*posts)
        assert [status for status, _ in answers] == [202] * 10
        ids = [int(i) for _, answer in answers for i in answer["ids"]]
        assert received == sorted(ids)  # every posted event, once, in stream order
        await assert_silent(ws)
        await ws.close()

    asyncio.run(scenario())


# -- binding beyond loopback ------------------------------------------------------------------


def test_binding_beyond_loopback_without_auth_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVKIT_TOKEN", raising=False)  # serve() would take it as the token
    with pytest.warns(evkit.EvkitWarning, match="without authentication"):
        srv = evkit.serve(host="0.0.0.0", port=0)
    srv.stop()


@pytest.mark.parametrize(
    ("host", "options"),
    [("0.0.0.0", {"token": TOKEN}), ("0.0.0.0", {"jwt_secret": SECRET}), ("127.0.0.1", {})],
)
def test_no_warning_with_auth_or_on_loopback(host: str, options: dict[str, Any]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        srv = evkit.serve(host=host, port=0, **options)
    srv.stop()
    assert [w for w in caught if issubclass(w.category, evkit.EvkitWarning)] == []


def test_collector_authenticates_with_a_token_and_a_bad_one_is_a_clear_error() -> None:
    srv = evkit.serve(port=0, token=TOKEN)
    try:
        with evkit.collect(srv, ["repo.*"], token=TOKEN) as collector:
            evkit.emit("repo.commit.created", {"n": 1})
            evkit.flush()
            collector.wait(count=1, timeout=10)
            assert collector.df["type"].tolist() == ["repo.commit.created"]
        with pytest.raises(evkit.ProtocolError) as info:
            evkit.collect(srv, token="not-the-token", connect_timeout=5)
        assert info.value.code == "unauthorized"
    finally:
        srv.stop()


def test_a_publish_only_token_may_connect_to_receive_nothing_and_publish() -> None:
    srv = evkit.serve(port=0, jwt_secret=SECRET)
    publisher_token = hs256(scope="publish")
    try:

        async def scenario() -> None:
            with pytest.raises(InvalidStatus) as info:
                await open_client(srv.url, headers=bearer(publisher_token))
            assert info.value.response.status_code == 403
            listener, _ = await open_client(srv.url, headers=bearer(hs256(scope="subscribe")))
            publisher, welcome = await open_client(
                srv.url, headers=bearer(publisher_token), eventTypes=""
            )
            assert welcome["payload"]["subscriptions"] == []
            await send_json(
                publisher, {"type": "publish", "payload": {"type": "repo.push.completed"}}
            )
            [event] = await recv_events(listener, 1)
            assert event["type"] == "repo.push.completed"
            await publisher.close()
            await listener.close()

        asyncio.run(scenario())
    finally:
        srv.stop()


# -- hardening: what an attacker tried ---------------------------------------------------------


def adversarial_patterns(prefix: str = "", count: int = 128) -> list[str]:
    """Globs that make a backtracking matcher take exponential time on long types."""
    return [f"{prefix}{'*?' * (20 + n % 40)}*Z{n}" for n in range(count)]


def test_adversarial_globs_cannot_stall_the_loop(server: evkit.Server) -> None:
    # With "*" compiled to a backtracking ".*", one of these patterns against one
    # 256-character type kept the loop busy for seconds; 128 of them, for ever.
    long_type = ".".join(["a" * 50] * 5) + ".b"
    assert len(long_type) == 256

    async def scenario() -> None:
        attacker, _ = await open_client(server.url, eventTypes="")
        reply = await request(
            attacker,
            {"type": "subscribe", "payload": {"eventTypes": adversarial_patterns(), "since": "0"}},
        )
        assert reply["type"] == "websocket.subscribed"
        watcher, _ = await open_client(server.url, eventTypes="a*")
        evkit.emit(long_type, {"n": 1})
        evkit.emit("performance.slowOperation.detected", {"n": 2})
        [event] = await recv_events(watcher, 1)
        assert event["type"] == long_type
        # The loop still answers at once, and a subscription change (which rebuilds the
        # routes) followed by more events does not stall it either.
        await request(attacker, {"type": "unsubscribe", "payload": {"eventTypes": ["x"]}})
        evkit.emit(long_type, {"n": 3})
        [event] = await recv_events(watcher, 1)
        assert event["payload"]["n"] == 3
        assert (await request(watcher, {"type": "ping", "payload": 1}))["type"] == "pong"
        await attacker.close()
        await watcher.close()

    asyncio.run(scenario())


def test_adversarial_globs_inside_a_jwt_restriction_cannot_stall_it(
    jwt_server: evkit.Server,
) -> None:
    token = hs256(scope="subscribe", patterns=["repo.*"])
    patterns = adversarial_patterns("repo.", count=64)

    async def scenario() -> None:
        attacker, _ = await open_client(jwt_server.url, bearer(token))
        reply = await request(attacker, {"type": "subscribe", "payload": {"eventTypes": patterns}})
        assert reply["type"] == "websocket.subscribed"  # they lie inside repo.*
        evkit.emit("repo." + "a" * 250, {"n": 1})
        evkit.emit("repo.commit.created", {"n": 2})
        [event] = await recv_events(attacker, 1)  # repo.* matches both; the first arrives
        assert event["payload"]["n"] == 1
        await attacker.close()

    asyncio.run(scenario())


def rebinding_request(
    server: evkit.Server, method: str, path: str, host: str, body: bytes = b""
) -> int:
    """The status a request with a rebound ``Host`` (and a matching Origin) is answered with."""
    origin = f"http://{host}"
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    if path.startswith("/ws/"):
        head += (
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        )
    answer = raw_http_until_headers(server, head.encode() + b"\r\n" + body)
    return int(answer.split(b" ", 2)[1])


def raw_http_until_headers(server: evkit.Server, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/ws/events"), ("POST", "/events"), ("GET", "/healthz"), ("GET", "/metrics")],
)
def test_dns_rebinding_is_refused_on_loopback(server: evkit.Server, method: str, path: str) -> None:
    # A page of attacker.example, its name rebound to 127.0.0.1, sends its own name as
    # Host and a matching Origin: same-origin by the headers alone, refused by the name.
    body = orjson.dumps({"type": "rebound.event.injected"}) if method == "POST" else b""
    host = f"attacker.example:{server.port}"
    assert rebinding_request(server, method, path, host, body) == 403
    for loopback in (
        f"127.0.0.1:{server.port}",
        f"localhost:{server.port}",
        f"[::1]:{server.port}",
    ):
        expected = {"/ws/events": 101, "/events": 202}.get(path, 200)
        assert rebinding_request(server, method, path, loopback, body) == expected, loopback
    assert rejected(server).get("host", 0) >= 1


def test_allowed_hosts_admits_a_proxy_name_on_loopback() -> None:
    srv = evkit.serve(port=0, allowed_hosts=("events.example.com",))
    try:
        assert rebinding_request(srv, "GET", "/healthz", "events.example.com") == 200
        assert rebinding_request(srv, "GET", "/healthz", "other.example.com") == 403
    finally:
        srv.stop()


def test_same_origin_compares_the_scheme_too() -> None:
    server = evkit.serve(port=0, loopback_origins=False)

    async def scenario() -> None:
        host = f"127.0.0.1:{server.port}"
        ws, _ = await open_client(server.url, {"Origin": f"http://{host}"})
        await ws.close()
        for origin in (f"https://{host}", f"ftp://{host}", f"http://{host}.evil"):
            status, body = await refused(server.url, {"Origin": origin})
            assert (status, body["code"]) == (403, "forbidden"), origin

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_publish_only_token_may_not_subscribe_nor_replay_later(jwt_server: evkit.Server) -> None:
    publisher = hs256(scope="publish")
    evkit.emit("repo.commit.created", {"n": 0})
    evkit.flush()

    async def scenario() -> None:
        ws, _ = await open_client(jwt_server.url, bearer(publisher), eventTypes="")
        for payload in (
            {"eventTypes": ["*"]},
            {"eventTypes": ["*"], "since": "0"},
            {"eventTypes": [], "correlationId": "req-1"},
        ):
            reply = await request(ws, {"type": "subscribe", "payload": payload})
            assert reply["type"] == "websocket.error", reply
            assert reply["payload"]["code"] == "forbidden"
        evkit.emit("repo.commit.created", {"n": 1})
        evkit.flush()
        await assert_silent(ws)  # no event, no history
        status, body = await refused(jwt_server.url, bearer(publisher), eventTypes="", since="0")
        assert (status, body["code"]) == (403, "forbidden")
        await ws.close()

    asyncio.run(scenario())


def test_a_large_post_is_acknowledged_in_linear_time_and_clients_are_served(
    server: evkit.Server,
) -> None:
    # 50,000 events in one body: the acknowledgement used to scan the queue per event.
    count = 50_000
    body = orjson.dumps([{"type": "bulk.p"}] * count)
    assert len(body) < 1024 * 1024

    async def scenario() -> None:
        listener, _ = await open_client(server.url, eventTypes="bulk.*")
        status, answer = await asyncio.get_running_loop().run_in_executor(
            None, lambda: post(server, body)
        )
        assert status == 202
        ids = [int(i) for i in answer["ids"]]
        assert ids == list(range(ids[0], ids[0] + count))
        events = await recv_events(listener, count, timeout=30)
        assert [int(e["id"]) for e in events] == ids
        await assert_silent(listener)
        await listener.close()

    asyncio.run(scenario())


def test_history_is_bounded_in_bytes_whatever_the_event_sizes() -> None:
    # Large events posted one after another: what history keeps stays under its bytes.
    srv = evkit.serve(port=0, history_bytes=4 * 1024 * 1024, max_post_size=1024 * 1024)
    try:
        big = "z" * (1024 * 1024 - 200)
        for n in range(12):
            status, _ = post(srv, {"type": "big.event.posted", "payload": {"n": n, "blob": big}})
            assert status == 202
        with urllib.request.urlopen(f"{srv.http_url}/healthz", timeout=5) as response:
            store = orjson.loads(response.read())["store"]
        assert store["bytes"] <= 4 * 1024 * 1024
        assert 3 <= store["events"] <= 4

        async def scenario() -> None:
            ws, _ = await open_client(srv.url, since="1")
            messages = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
            assert messages[0]["type"] == "websocket.gap"  # the oldest were dropped
            assert [m["payload"]["n"] for m in messages if "id" in m][-1] == 11
            await ws.close()

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_deeply_nested_pings_and_events_are_refused_and_the_connection_lives(
    server: evkit.Server,
) -> None:
    # 300 levels: the server decodes it (its decoder goes to 1,024) but no reply or event
    # could encode it (the encoder stops at 254): refused, instead of a crashed handler.
    deep = "[" * 300 + "1" + "]" * 300
    event = '{"type": "deep.event.sent", "payload": {"v": ' + deep + "}}"

    async def scenario() -> None:
        ws, _ = await open_client(server.url, eventTypes="deep.*")
        await ws.send('{"type": "ping", "payload": ' + deep + "}")
        reply = await recv_json(ws)
        assert (reply["type"], reply["payload"]["code"]) == ("websocket.error", "invalid_message")
        await ws.send('{"type": "publish", "payload": ' + event + "}")
        reply = await recv_json(ws)
        assert (reply["type"], reply["payload"]["code"]) == ("websocket.error", "invalid_event")
        status, answer = post(server, event.encode())
        assert (status, answer["code"]) == (400, "invalid_event")
        await assert_silent(ws)  # nothing was published, and the connection still serves
        await ws.close()

    asyncio.run(scenario())


def test_no_log_record_shows_a_credential_even_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    secret = "do-not-log-0123456789abcdef0123456789"
    srv = evkit.serve(port=0, token=secret)
    try:
        caplog.set_level(logging.DEBUG)

        async def scenario() -> None:
            by_header, _ = await open_client(srv.url, bearer(secret))
            by_query, _ = await open_client(srv.url, token=secret)
            first_message = await connect(srv.url)
            await send_json(first_message, {"type": "auth", "payload": {"token": secret}})
            assert (await recv_json(first_message))["type"] == "websocket.connected"
            status, _ = await refused(srv.url, bearer(secret + "-wrong"))
            assert status == 401
            for ws in (by_header, by_query, first_message):
                await ws.close()

        asyncio.run(scenario())
        status, _ = post(srv, {"type": "a.b"}, {"Authorization": f"Bearer {secret}"})
        assert status == 202
    finally:
        srv.stop()
    # What the server logged (the test's own raw client logs what it sends, as it likes).
    lines = [r.getMessage() for r in caplog.records if r.name != "websockets.client"]
    assert any("GET /ws/events" in line for line in lines)  # the requests were logged
    assert any("Authorization: [redacted]" in line for line in lines)
    leaked = [line for line in lines if secret in line]
    assert leaked == []


def test_evkit_clients_log_no_credential_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    secret = "do-not-log-either-0123456789abcdef012345"
    srv = evkit.serve(port=0, token=secret)
    try:
        caplog.set_level(logging.DEBUG)
        with evkit.collect(srv, ["repo.*"], token=secret) as collector:
            evkit.emit("repo.commit.created", {"n": 1})
            evkit.flush()
            collector.wait(count=1, timeout=10)
        forwarder = evkit.connect(srv.url, token=secret)
        try:
            forwarder.flush(timeout=10)
        finally:
            forwarder.stop()
    finally:
        srv.stop()
    lines = [record.getMessage() for record in caplog.records]
    assert any("Authorization: [redacted]" in line for line in lines)
    assert [line for line in lines if secret in line] == []
