"""The broadcaster over real sockets on 127.0.0.1: every row of DESIGN 1, both directions."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

import evkit
from evkit.testing import (
    assert_silent,
    open_client,
    recv_events,
    recv_json,
    recv_until,
    request,
    send_json,
)

CLIENT_ID = re.compile(r"ws-\d+-[0-9a-z]{9}")


def subscribed(event_types: list[str], subscriptions: list[str], correlation_id: Any = None) -> Any:
    return {
        "eventTypes": event_types,
        "subscriptions": subscriptions,
        "correlationId": correlation_id,
    }


# -- server -> client rows -----------------------------------------------------------------


def test_welcome_message(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, welcome = await open_client(server.url)
        payload = welcome["payload"]
        assert set(welcome) == {"type", "timestamp", "payload"}
        assert isinstance(welcome["timestamp"], int)
        assert CLIENT_ID.fullmatch(payload["clientId"])
        assert payload["correlationId"] is None
        assert payload["subscriptions"] == ["*"]
        assert payload["epoch"] == server.stats()["epoch"]
        await ws.close()

    asyncio.run(scenario())


def test_subscribe_adds_replaces_and_sets_correlation(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url, eventTypes="repo.*")
        reply = await request(ws, {"type": "subscribe", "payload": {"eventTypes": ["claude.*"]}})
        assert reply["type"] == "websocket.subscribed"
        assert reply["payload"] == subscribed(["claude.*"], ["repo.*", "claude.*"])

        reply = await request(
            ws,
            {
                "type": "subscribe",
                "payload": {"eventTypes": ["github.api.*"], "replace": True, "correlationId": "r1"},
            },
        )
        assert reply["payload"] == subscribed(["github.api.*"], ["github.api.*"], "r1")

        reply = await request(
            ws, {"type": "subscribe", "payload": {"eventTypes": [], "correlationId": None}}
        )
        assert reply["payload"] == subscribed([], ["github.api.*"], None)
        await ws.close()

    asyncio.run(scenario())


def test_unsubscribe_reports_what_was_removed(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url, eventTypes="repo.*,claude.*")
        reply = await request(
            ws, {"type": "unsubscribe", "payload": {"eventTypes": ["repo.*", "never.held"]}}
        )
        assert reply["type"] == "websocket.unsubscribed"
        assert reply["payload"] == {"eventTypes": ["repo.*"], "subscriptions": ["claude.*"]}
        evkit.emit("repo.commit.created", {"path": "/a"})
        evkit.emit("claude.session.started", {"sessionId": "s"})
        [event] = await recv_events(ws, 1)
        assert event["type"] == "claude.session.started"
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("payload", [{"timestamp": 1234567890}, 42, "text", None, [1, 2]])
def test_ping_is_answered_with_pong_echo(server: evkit.Server, payload: Any) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url)
        reply = await request(ws, {"type": "ping", "payload": payload})
        assert reply == {
            "type": "pong",
            "timestamp": reply["timestamp"],
            "payload": {"echo": payload},
        }
        await ws.close()

    asyncio.run(scenario())


def test_event_frame_shape_and_stream_order(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url)
        for i in range(20):
            evkit.emit(
                "repo.commit.created",
                {"path": f"/p{i}", "commitHash": "ab12"},
                correlation_id="req-7",
            )
        events = await recv_events(ws, 20)
        assert list(events[0]) == ["type", "timestamp", "id", "payload"]
        assert events[0]["payload"] == {
            "path": "/p0",
            "commitHash": "ab12",
            "correlationId": "req-7",
        }
        ids = [int(e["id"]) for e in events]
        assert ids == sorted(ids)
        assert len(set(ids)) == 20
        assert [e["payload"]["path"] for e in events] == [f"/p{i}" for i in range(20)]
        await ws.close()

    asyncio.run(scenario())


# -- malformed client messages ---------------------------------------------------------------

MALFORMED = [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ('{"payload": {}}', "invalid_message"),
    ('{"type": 7}', "invalid_message"),
    ('{"type": "dance", "payload": {}}', "unknown_type"),
    ('{"type": "subscribe", "payload": "claude.*"}', "invalid_message"),
    ('{"type": "subscribe", "payload": {}}', "invalid_message"),
    ('{"type": "subscribe", "payload": {"eventTypes": "claude.*"}}', "invalid_message"),
    (
        '{"type": "subscribe", "payload": {"eventTypes": ["ok.*", "bad pattern"]}}',
        "invalid_pattern",
    ),
    ('{"type": "subscribe", "payload": {"eventTypes": [""]}}', "invalid_pattern"),
    ('{"type": "subscribe", "payload": {"eventTypes": [3]}}', "invalid_pattern"),
    (
        '{"type": "subscribe", "payload": {"eventTypes": ["a"], "replace": "yes"}}',
        "invalid_message",
    ),
    (
        '{"type": "subscribe", "payload": {"eventTypes": ["a"], "correlationId": 5}}',
        "invalid_message",
    ),
    ('{"type": "unsubscribe", "payload": {"eventTypes": [null]}}', "invalid_pattern"),
    ('{"type": "publish", "payload": {"type": "no spaces allowed"}}', "invalid_event"),
    ('{"type": "publish", "payload": {"type": "a.b", "payload": [1]}}', "invalid_event"),
]


@pytest.mark.parametrize(("raw", "code"), MALFORMED)
def test_malformed_message_gets_its_error_code_and_changes_nothing(
    server: evkit.Server, raw: str, code: str
) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url, eventTypes="repo.*")
        bystander, _ = await open_client(server.url, eventTypes="repo.*")
        await ws.send(raw)
        reply = await recv_json(ws)
        assert reply["type"] == "websocket.error"
        assert reply["payload"]["code"] == code
        assert isinstance(reply["payload"]["error"], str)
        assert reply["payload"]["error"]
        # The connection still works and its subscriptions did not change.
        pong = await request(ws, {"type": "unsubscribe", "payload": {"eventTypes": []}})
        assert pong["payload"]["subscriptions"] == ["repo.*"]
        evkit.emit("repo.commit.created", {"n": 1})
        for client in (ws, bystander):
            [event] = await recv_events(client, 1)
            assert event["payload"] == {"n": 1}
        evkit.flush()
        await assert_silent(bystander)
        await ws.close()
        await bystander.close()

    asyncio.run(scenario())


def test_too_many_subscriptions_is_rejected_whole() -> None:
    srv = evkit.serve(port=0, max_subscriptions=3)
    try:

        async def scenario() -> None:
            ws, _ = await open_client(srv.url, eventTypes="a.*")
            reply = await request(
                ws, {"type": "subscribe", "payload": {"eventTypes": ["b.*", "c.*", "d.*"]}}
            )
            assert reply["payload"]["code"] == "too_many_subscriptions"
            assert reply["payload"]["detail"] == {"limit": 3, "requested": 4}
            reply = await request(
                ws, {"type": "subscribe", "payload": {"eventTypes": ["b.*", "c.*"]}}
            )
            assert reply["payload"]["subscriptions"] == ["a.*", "b.*", "c.*"]
            await ws.close()

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_bad_connect_query_is_refused_with_http_400(server: evkit.Server) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as info:
            await open_client(server.url, eventTypes="good.*,bad pattern")
        assert info.value.response.status_code == 400
        body = orjson.loads(info.value.response.body)
        assert body["code"] == "invalid_pattern"
        assert "bad pattern" in body["error"]

    asyncio.run(scenario())


def test_oversized_frame_closes_that_connection_with_1009() -> None:
    srv = evkit.serve(port=0, max_message_size=1024)
    try:

        async def scenario() -> None:
            ws, _ = await open_client(srv.url)
            other, _ = await open_client(srv.url)
            await send_json(ws, {"type": "ping", "payload": "x" * 5000})
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == 1009
            evkit.emit("repo.commit.created", {})
            [event] = await recv_events(other, 1)
            assert event["type"] == "repo.commit.created"
            await other.close()

        asyncio.run(scenario())
    finally:
        srv.stop()


# -- connect options and correlation filter ------------------------------------------------


def test_connect_query_sets_patterns_and_correlation(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, welcome = await open_client(
            server.url, eventTypes="repo.*,performance.*", correlationId="req-7"
        )
        assert welcome["payload"]["subscriptions"] == ["repo.*", "performance.*"]
        assert welcome["payload"]["correlationId"] == "req-7"
        evkit.emit("repo.commit.created", {"n": 1}, correlation_id="req-8")
        evkit.emit("claude.session.started", {"n": 2}, correlation_id="req-7")
        evkit.emit("repo.commit.created", {"n": 3}, correlation_id="req-7")
        evkit.emit("repo.commit.created", {"n": 4})
        evkit.emit("performance.slowOperation.detected", {"n": 5}, correlation_id="req-7")
        events = await recv_events(ws, 2)
        assert [e["payload"]["n"] for e in events] == [3, 5]
        evkit.flush()
        await assert_silent(ws)
        await ws.close()

    asyncio.run(scenario())


def test_correlation_header_and_subscribe_filter_then_clear(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, welcome = await open_client(server.url, headers={"x-correlation-id": "req-1"})
        assert welcome["payload"]["correlationId"] == "req-1"
        evkit.emit("a.b.c", {"n": 1}, correlation_id="req-2")
        evkit.emit("a.b.c", {"n": 2}, correlation_id="req-1")
        [event] = await recv_events(ws, 1)
        assert event["payload"]["n"] == 2

        await request(
            ws, {"type": "subscribe", "payload": {"eventTypes": [], "correlationId": "req-2"}}
        )
        evkit.emit("a.b.c", {"n": 3}, correlation_id="req-1")
        evkit.emit("a.b.c", {"n": 4}, correlation_id="req-2")
        [event] = await recv_events(ws, 1)
        assert event["payload"]["n"] == 4

        await request(
            ws, {"type": "subscribe", "payload": {"eventTypes": [], "correlationId": None}}
        )
        evkit.emit("a.b.c", {"n": 5}, correlation_id="req-1")
        evkit.emit("a.b.c", {"n": 6})
        events = await recv_events(ws, 2)
        assert [e["payload"]["n"] for e in events] == [5, 6]
        await ws.close()

    asyncio.run(scenario())


def test_fifty_clients_each_receive_exactly_their_events_in_order(server: evkit.Server) -> None:
    types = [
        "claude.session.started",
        "claude.command.executed",
        "repo.commit.created",
        "repo.push.completed",
        "github.api.completed",
        "github.workflow.triggered",
        "graphql.query.completed",
        "performance.slowOperation.detected",
    ]
    pattern_sets = [
        "*",
        "claude.*",
        "repo.*.created",
        "*.completed",
        "github.api.*",
        "graphql.?uery.*",
    ]

    def wanted(patterns: str, correlation: str | None, event: tuple[str, str]) -> bool:
        type_, corr = event
        if correlation is not None and corr != correlation:
            return False
        return any(evkit.patterns.matches(p, type_) for p in patterns.split(","))

    clients = [
        (pattern_sets[i % len(pattern_sets)], f"req-{i % 3}" if i % 4 == 0 else None)
        for i in range(50)
    ]
    emitted = [(types[i % len(types)], f"req-{i % 5}") for i in range(400)]

    async def scenario() -> None:
        connections = []
        for patterns, correlation in clients:
            query = {"eventTypes": patterns}
            if correlation:
                query["correlationId"] = correlation
            ws, _ = await open_client(server.url, **query)
            connections.append(ws)
        for n, (type_, corr) in enumerate(emitted):
            evkit.emit(type_, {"n": n}, correlation_id=corr)
        evkit.flush()
        for ws, (patterns, correlation) in zip(connections, clients, strict=True):
            expected = [n for n, e in enumerate(emitted) if wanted(patterns, correlation, e)]
            events = await recv_events(ws, len(expected))
            assert [e["payload"]["n"] for e in events] == expected
            await assert_silent(ws)
        for ws in connections:
            await ws.close()

    import evkit.patterns

    asyncio.run(scenario())


def test_emit_from_eight_threads_delivers_every_event_exactly_once(server: evkit.Server) -> None:
    per_thread = 2_000

    async def scenario() -> None:
        ws, _ = await open_client(server.url)
        barrier = threading.Barrier(8)

        def emitter(t: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                evkit.emit("load.test.event", {"t": t, "i": i})

        threads = [threading.Thread(target=emitter, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        evkit.flush()
        events = await recv_events(ws, 8 * per_thread, timeout=60)
        seen = [(e["payload"]["t"], e["payload"]["i"]) for e in events]
        assert len(set(seen)) == 8 * per_thread
        for t in range(8):  # each thread's events keep their order
            assert [i for tt, i in seen if tt == t] == list(range(per_thread))
        ids = [int(e["id"]) for e in events]
        assert ids == sorted(ids)
        await assert_silent(ws)
        await ws.close()

    asyncio.run(scenario())
    assert server.stats()["dropped"] == 0


def test_full_queue_drops_and_counts() -> None:
    srv = evkit.serve(port=0, queue_size=10)
    try:
        # The loop drains as fast as it can; hold it busy so the queue fills.
        hold = threading.Event()
        from evkit._loop import loop_thread

        loop_thread().call_soon(hold.wait, 10)
        for i in range(50):
            evkit.emit("flood.test.event", {"i": i})
        hold.set()
        evkit.flush()
        stats = srv.stats()
        assert stats["dropped"] == 40
        assert stats["published"] == 10
    finally:
        srv.stop()


# -- publish, replay -------------------------------------------------------------------------


def test_client_publish_reaches_other_clients(server: evkit.Server) -> None:
    async def scenario() -> None:
        publisher, _ = await open_client(server.url, eventTypes="nothing.matches")
        listener, _ = await open_client(server.url, eventTypes="repo.*")
        await send_json(
            publisher,
            {
                "type": "publish",
                "payload": [
                    {
                        "type": "repo.commit.created",
                        "payload": {"path": "/x", "correlationId": "r"},
                    },
                    {"type": "repo.push.completed"},
                ],
            },
        )
        events = await recv_events(listener, 2)
        assert [(e["type"], e["payload"]) for e in events] == [
            ("repo.commit.created", {"path": "/x", "correlationId": "r"}),
            ("repo.push.completed", {}),
        ]
        await publisher.close()
        await listener.close()

    asyncio.run(scenario())


def test_replay_since_at_connect_and_on_subscribe(server: evkit.Server) -> None:
    for n in range(10):
        evkit.emit("repo.commit.created" if n % 2 else "claude.session.started", {"n": n})
    evkit.flush()

    async def scenario() -> None:
        ws, _ = await open_client(server.url, eventTypes="repo.*", since="4")
        messages = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
        assert [m["payload"]["n"] for m in messages[:-1]] == [5, 7, 9]
        assert messages[-1]["payload"]["since"] == "4"
        assert messages[-1]["payload"]["count"] == 3
        assert messages[-1]["payload"]["complete"] is True
        # Adding claude.* with since replays only what the new pattern adds.
        await send_json(
            ws, {"type": "subscribe", "payload": {"eventTypes": ["claude.*"], "since": "0"}}
        )
        messages = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
        assert messages[0]["type"] == "websocket.subscribed"
        assert [m["payload"]["n"] for m in messages[1:-1]] == [0, 2, 4, 6, 8]
        evkit.emit("repo.push.completed", {"n": 10})
        [live] = await recv_events(ws, 1)
        assert live["payload"]["n"] == 10
        await ws.close()

    asyncio.run(scenario())


def test_replay_beyond_history_is_reported_incomplete() -> None:
    srv = evkit.serve(port=0, history_size=5)
    try:
        for n in range(12):
            evkit.emit("x.y.z", {"n": n})
        evkit.flush()

        async def scenario() -> None:
            ws, _ = await open_client(srv.url, since="2")
            messages = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
            # The gap is announced before the first replayed event, then the events.
            assert messages[0]["type"] == "websocket.gap"
            assert messages[0]["payload"]["reason"] == "trimmed"
            assert [m["payload"]["n"] for m in messages[1:-1]] == [7, 8, 9, 10, 11]
            assert messages[-1]["payload"]["complete"] is False
            ws2, _ = await open_client(srv.url, since="999")  # an id this stream never gave
            gap, replayed = await recv_until(ws2, lambda m: m["type"] == "websocket.replayed")
            assert (gap["type"], gap["payload"]["reason"]) == ("websocket.gap", "unknown_position")
            assert replayed["payload"] == {
                "since": "999",
                "count": 0,
                "complete": False,
                "epoch": srv.stats()["epoch"],
                "lastId": "12",
            }
            await ws.close()
            await ws2.close()

        asyncio.run(scenario())
    finally:
        srv.stop()


# -- slow consumers, shutdown ---------------------------------------------------------------


def test_slow_consumer_is_disconnected_with_1013_and_others_get_everything() -> None:
    srv = evkit.serve(port=0, client_buffer_limit=256 * 1024)
    total = 20_000
    try:

        async def scenario() -> None:
            slow, _ = await open_client(srv.url)
            fast, _ = await open_client(srv.url)
            slow.transport.pause_reading()  # stops reading: the server's buffer for it grows
            received = 0
            filler = "x" * 1000

            def emitter() -> None:
                # The fast client keeps up by construction: never more than 100 events
                # (about 100 KB) ahead of what it has read.
                for n in range(total):
                    evkit.emit("bulk.data.chunk", {"n": n, "filler": filler})
                    if n % 100 == 99:
                        with caught_up:
                            caught_up.wait_for(lambda n=n: received > n - 100, timeout=30)

            caught_up = threading.Condition()

            async def read_and_notify() -> None:
                nonlocal received
                while received < total:
                    message = await recv_json(fast, 30)
                    if "id" in message:
                        with caught_up:
                            received += 1
                            caught_up.notify_all()

            reader = asyncio.ensure_future(read_and_notify())
            await asyncio.get_running_loop().run_in_executor(None, emitter)
            await asyncio.wait_for(reader, 60)
            assert received == total
            slow.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv_json(slow, 30)
            assert slow.close_code == 1013
            assert slow.close_reason == "slow consumer"
            await fast.close()

        asyncio.run(scenario())
        assert srv.stats()["slow_consumer_disconnects"] == 1
    finally:
        srv.stop()


def test_stop_delivers_what_was_emitted_and_closes_with_1001() -> None:
    srv = evkit.serve(port=0)

    async def scenario() -> None:
        ws, _ = await open_client(srv.url)
        for n in range(500):
            evkit.emit("shutdown.test.event", {"n": n})
        await asyncio.get_running_loop().run_in_executor(None, srv.stop)
        received = []
        with pytest.raises(ConnectionClosed):
            while True:
                received.append(await recv_json(ws))
        assert [m["payload"]["n"] for m in received] == list(range(500))
        assert ws.close_code == 1001

    asyncio.run(scenario())
    assert not srv.running


# -- HTTP on the same port ----------------------------------------------------------------


def test_healthz_and_unknown_paths(server: evkit.Server) -> None:
    evkit.emit("repo.commit.created", {})
    evkit.flush()
    with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=5) as response:
        assert response.headers["Content-Type"] == "application/json"
        health = orjson.loads(response.read())
    assert health["status"] == "ok"
    assert health["clients"] == 0
    assert health["events"] == 1
    assert health["store"]["name"] == "memory"
    assert health["store"]["state"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.http_url}/nothing-here", timeout=5)
    assert info.value.code == 404


# -- serve(): re-runs, ports, loops ----------------------------------------------------------


def test_serve_rerun_same_settings_returns_running_server_and_changed_settings_restart() -> None:
    first = evkit.serve(port=0)
    try:
        assert evkit.serve(port=0) is first
        second = evkit.serve(port=0, history_size=50)
        assert second is not first
        assert not first.running
        assert second.running
        assert evkit.serve(port=0, history_size=50) is second
    finally:
        for srv in evkit.running_servers():
            srv.stop()


def test_serve_restart_on_the_same_explicit_port() -> None:
    first = evkit.serve(port=0)
    port = first.port
    first.stop()
    second = evkit.serve(port=port)
    try:
        assert second.port == port

        async def scenario() -> None:
            ws, _ = await open_client(second.url)
            await ws.close()

        asyncio.run(scenario())
    finally:
        second.stop()


def test_port_held_by_another_process_is_a_clear_error() -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket,sys;s=socket.socket();s.bind(('127.0.0.1',0));s.listen();"
            "print(s.getsockname()[1],flush=True);sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        with pytest.raises(
            evkit.PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"
        ):
            evkit.serve(port=port)
        assert evkit.running_servers() == []
    finally:
        holder.kill()
        holder.wait(10)


def test_serve_emit_and_emits_inside_a_running_event_loop() -> None:
    """As in a Jupyter kernel: the caller's thread runs a loop; nothing patches it."""

    @evkit.emits("graphql.query")
    async def resolve() -> str:
        await asyncio.sleep(0)
        return "ok"

    async def cell() -> None:
        srv = evkit.serve(port=0)
        try:
            ws, _ = await open_client(srv.url, correlationId="nb-1")
            with evkit.correlation("nb-1"):
                assert await resolve() == "ok"
                evkit.emit("repo.status.queried", {"path": "/"})
            evkit.flush()
            events = await recv_events(ws, 3)
            assert [e["type"] for e in events] == [
                "graphql.query.started",
                "graphql.query.completed",
                "repo.status.queried",
            ]
            await ws.close()
        finally:
            srv.stop()

    asyncio.run(cell())


def test_blocking_call_on_the_loop_thread_is_refused() -> None:
    from evkit._loop import loop_thread

    thread = loop_thread()

    async def on_loop() -> str:
        try:
            evkit.serve(port=0)
        except evkit.LoopError as exc:
            return str(exc)
        return "no error"

    message = thread.run(on_loop(), timeout=10)
    assert "evkit's own loop thread" in message


def test_bind_failure_other_than_port_in_use_is_explained() -> None:
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: bind fails at once.
    with pytest.raises(evkit.ServerError, match=r"cannot listen on 192\.0\.2\.1"):
        evkit.serve(host="192.0.2.1", port=0)


def test_port_zero_gives_a_real_free_port() -> None:
    srv = evkit.serve(port=0)
    try:
        assert srv.port > 0
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5):
            pass
        assert srv.url == f"ws://127.0.0.1:{srv.port}/ws/events"
    finally:
        srv.stop()


def test_broadcaster_alone_does_not_import_pandas() -> None:
    code = (
        "import sys, evkit\n"
        "srv = evkit.serve(port=0)\n"
        "evkit.emit('repo.commit.created', {})\n"
        "evkit.flush()\n"
        "srv.stop()\n"
        "print(sorted(m for m in ('pandas', 'matplotlib', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# -- batched delivery ----------------------------------------------------------------------


def test_batched_delivery_groups_events_in_stream_order(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url)
        reply = await request(
            ws,
            {
                "type": "subscribe",
                "payload": {"eventTypes": [], "batch": {"maxEvents": 10, "maxDelayMs": 50}},
            },
        )
        assert reply["type"] == "websocket.subscribed"
        for n in range(25):
            evkit.emit("batch.test.event", {"n": n})
        evkit.flush()  # flush hands queued batches out too
        batches = [await recv_json(ws) for _ in range(3)]
        assert [m["type"] for m in batches] == ["websocket.batch"] * 3
        sizes = [len(m["payload"]["events"]) for m in batches]
        assert sizes == [10, 10, 5]
        events = [e for m in batches for e in m["payload"]["events"]]
        assert [e["payload"]["n"] for e in events] == list(range(25))
        assert list(events[0]) == ["type", "timestamp", "id", "payload"]
        await ws.close()

    asyncio.run(scenario())


def test_batch_is_held_at_most_max_delay_then_sent(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url, batch="1000,30")
        evkit.emit("batch.test.event", {"n": 1})
        evkit.emit("batch.test.event", {"n": 2})
        # No flush: only the 30 ms timer can send this partial batch.
        message = await recv_json(ws, timeout=5)
        assert message["type"] == "websocket.batch"
        assert [e["payload"]["n"] for e in message["payload"]["events"]] == [1, 2]
        await ws.close()

    asyncio.run(scenario())


def test_replies_never_overtake_queued_batched_events(server: evkit.Server) -> None:
    async def scenario() -> None:
        ws, _ = await open_client(server.url, batch="1000,5000")
        evkit.emit("batch.test.event", {"n": 1})
        from evkit._loop import loop_thread

        # Let the loop take the event into the batch (without the flush that sends it).
        async def drained() -> None:
            server.broadcaster.backplane.wake()

        loop_thread().run(drained(), 5)
        await send_json(ws, {"type": "ping", "payload": "after"})
        first = await recv_json(ws)
        assert first["type"] == "websocket.batch"
        assert (await recv_json(ws))["type"] == "pong"
        await ws.close()

    asyncio.run(scenario())


def test_max_events_one_turns_batching_off_and_replay_uses_batches(server: evkit.Server) -> None:
    for n in range(7):
        evkit.emit("batch.test.event", {"n": n})
    evkit.flush()

    async def scenario() -> None:
        ws, _ = await open_client(server.url, batch="3,1000", since="0")
        messages = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
        kinds = [m["type"] for m in messages]
        assert kinds == ["websocket.batch"] * 3 + ["websocket.replayed"]
        replayed = [e["payload"]["n"] for m in messages[:-1] for e in m["payload"]["events"]]
        assert replayed == list(range(7))
        await request(
            ws,
            {
                "type": "subscribe",
                "payload": {"eventTypes": [], "batch": {"maxEvents": 1, "maxDelayMs": 0}},
            },
        )
        evkit.emit("batch.test.event", {"n": 7})
        [event] = await recv_events(ws, 1)
        assert event["payload"]["n"] == 7
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("value", ["abc", "0,10", "10", "5,-1", "10001,5"])
def test_bad_batch_at_connect_is_refused_with_http_400(server: evkit.Server, value: str) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as info:
            await open_client(server.url, batch=value)
        assert info.value.response.status_code == 400
        assert orjson.loads(info.value.response.body)["code"] == "invalid_message"

    asyncio.run(scenario())


def server_write_buffers(srv: evkit.Server) -> list[int]:
    """Bytes waiting in each client connection's outgoing buffer, read on the server's loop."""
    from evkit._loop import loop_thread

    async def read() -> list[int]:
        return [s.peer.buffered() for s in srv.broadcaster._sessions]

    return loop_thread().run(read(), 10)


def test_subscribe_with_since_is_paced_like_a_resume() -> None:
    # Five clients that never read, each asking for 20 MB of history on an open
    # connection: the server holds about a slice per client, not the history five times.
    limit = 1024 * 1024
    srv = evkit.serve(
        port=0, history_size=20_000, client_buffer_limit=limit, history_bytes=64 * 1024 * 1024
    )
    try:
        padding = "x" * 1000
        for n in range(20_000):
            evkit.emit("history.paced.event", {"n": n, "padding": padding})
        evkit.flush()

        async def scenario() -> None:
            clients = [(await open_client(srv.url, eventTypes=""))[0] for _ in range(5)]
            for ws in clients:
                reply = await request(
                    ws,
                    {"type": "subscribe", "payload": {"eventTypes": ["history.*"], "since": "0"}},
                )
                assert reply["type"] == "websocket.subscribed"
            buffers = await asyncio.get_running_loop().run_in_executor(
                None, server_write_buffers, srv
            )
            assert len(buffers) == 5
            assert max(buffers) <= limit, buffers  # was about 20 MB each
            # A reader then gets all of it, once each, and the end of the replay.
            reader = clients[0]
            messages = await recv_until(
                reader, lambda m: m["type"] == "websocket.replayed", timeout=30
            )
            assert [m["payload"]["n"] for m in messages if "id" in m] == list(range(20_000))
            assert messages[-1]["payload"]["complete"] is True
            evkit.emit("history.paced.live", {"n": -1})
            [live] = await recv_events(reader, 1)
            assert live["payload"]["n"] == -1
            await reader.close()
            for ws in clients[1:]:
                ws.transport.abort()  # they read nothing: a closing handshake would wait

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_live_events_meet_a_paced_subscribe_replay_with_no_gap_and_no_duplicate() -> None:
    # 5 MB of history goes out in 256 KB slices while another thread keeps emitting.
    srv = evkit.serve(port=0, history_size=50_000, history_bytes=64 * 1024 * 1024)
    stop = threading.Event()
    padding = "y" * 1000
    try:
        for n in range(5_000):
            evkit.emit("seam.test.event", {"n": n, "padding": padding})
        evkit.flush()

        numbers: list[int] = []

        def keep_emitting() -> None:
            # At most 500 events (500 KB) ahead of what the client has read: a steady
            # stream, never a burst past its buffer limit, however slow the machine.
            for n in range(5_000, 10_000):
                while n - len(numbers) > 500:
                    if stop.wait(0.001):
                        return
                evkit.emit("seam.test.event", {"n": n, "padding": padding})

        async def scenario() -> None:
            ws, _ = await open_client(srv.url, eventTypes="")
            emitter = threading.Thread(target=keep_emitting)
            emitter.start()
            try:
                await send_json(
                    ws, {"type": "subscribe", "payload": {"eventTypes": ["seam.*"], "since": "0"}}
                )
                async with asyncio.timeout(30):
                    while len(numbers) < 10_000:
                        message = await recv_json(ws)
                        if "id" in message:
                            numbers.append(message["payload"]["n"])
            finally:
                stop.set()
                emitter.join()
            assert numbers == list(range(10_000))
            await ws.close()

        asyncio.run(scenario())
    finally:
        stop.set()
        srv.stop()
