"""``GET /metrics`` read with prometheus_client's own parser, checked against what the test did."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import evkit
from evkit._loop import loop_thread
from evkit.metrics import LATENCY_BUCKETS
from evkit.server import MAX_CATEGORIES, OTHER_CATEGORY
from evkit.testing import open_client, recv_events, recv_json, recv_until, send_json, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_credentials(server: evkit.Server) -> dict[str, str]:
    """What a scraper of this server sends: with auth on, a token with the metrics scope."""
    settings = server.settings
    if settings.token:
        return {"Authorization": f"Bearer {settings.token}"}
    if settings.jwt_secret:
        import jwt

        token = jwt.encode(
            {"scope": "metrics", "exp": int(time.time()) + 3600}, settings.jwt_secret, "HS256"
        )
        return {"Authorization": f"Bearer {token}"}
    return {}


def scrape(server: evkit.Server) -> Samples:
    """Every sample of ``/metrics``, keyed by sample name and labels."""
    request = urllib.request.Request(
        f"{server.http_url}/metrics", headers=metrics_credentials(server)
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"{key} exposed twice"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a labelled counter not incremented yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Every value of a labelled counter, by that label."""
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


def check_histogram(samples: Samples, count: int) -> None:
    """The emit-to-send histogram is well formed and counted ``count`` events."""
    name = "evkit_emit_to_send_seconds"
    assert value(samples, f"{name}_count") == count
    buckets = [value(samples, f"{name}_bucket", le=repr(bound)) for bound in LATENCY_BUCKETS]
    buckets.append(value(samples, f"{name}_bucket", le="+Inf"))
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == count
    assert value(samples, f"{name}_sum") >= 0
    assert (value(samples, f"{name}_sum") > 0) == (count > 0)


def test_metrics_count_connections_events_errors_and_replays() -> None:
    srv = evkit.serve(port=0, allow_publish=False)
    empty = scrape(srv)
    assert value(empty, "evkit_connections") == 0
    assert value(empty, "evkit_connections_total") == 0
    assert value(empty, "evkit_store_up") == 1
    assert value(empty, "evkit_store_outages_total") == 0
    assert value(empty, "evkit_events_waiting") == 0
    check_histogram(empty, 0)

    async def scenario() -> None:
        everything, _ = await open_client(srv.url)
        repos, _ = await open_client(srv.url, eventTypes="repo.*")
        claudes, _ = await open_client(srv.url, eventTypes="claude.*")
        for n in range(3):
            evkit.emit("repo.commit.created", {"n": n})
        for n in range(2):
            evkit.emit("claude.session.started", {"n": n})
        evkit.emit("github.api.completed", {"n": 0})
        assert len(await recv_events(everything, 6)) == 6
        assert len(await recv_events(repos, 3)) == 3
        assert len(await recv_events(claudes, 2)) == 2

        await everything.send("not json")
        for message in (
            {"type": "nope", "payload": {}},
            {"type": "subscribe", "payload": {"eventTypes": ["bad pattern!"]}},
            {"type": "publish", "payload": {"type": "repo.commit.created"}},
            {"type": "publish", "payload": {"type": "repo.commit.created"}},
        ):
            await send_json(everything, message)
        codes = [(await recv_json(everything))["payload"]["code"] for _ in range(5)]
        assert codes == [
            "invalid_json",
            "unknown_type",
            "invalid_pattern",
            "forbidden",
            "forbidden",
        ]

        replayer, _ = await open_client(srv.url, eventTypes="repo.*", since="0")
        replayed = await recv_until(replayer, lambda m: m["type"] == "websocket.replayed")
        assert replayed[-1]["payload"]["count"] == 3
        await send_json(
            claudes, {"type": "subscribe", "payload": {"eventTypes": ["github.*"], "since": "0"}}
        )
        replayed = await recv_until(claudes, lambda m: m["type"] == "websocket.replayed")
        assert replayed[-1]["payload"]["count"] == 1

        during = scrape(srv)
        assert value(during, "evkit_connections") == 4
        assert value(during, "evkit_connections_total") == 4
        for ws in (everything, repos, claudes, replayer):
            await ws.close()

    try:
        asyncio.run(scenario())
        wait_until(
            lambda: value(scrape(srv), "evkit_disconnects_total", reason="normal") == 4,
            "four normal disconnects",
        )
        after = scrape(srv)
        assert value(after, "evkit_connections") == 0
        assert value(after, "evkit_connections_total") == 4
        assert labelled(after, "evkit_events_published_total", "category") == {
            "repo": 3,
            "claude": 2,
            "github": 1,
        }
        # Live deliveries only (a replay is counted as a replay): the "*" client got all
        # six, the others their own category.
        assert labelled(after, "evkit_events_delivered_total", "category") == {
            "repo": 6,
            "claude": 4,
            "github": 1,
        }
        assert labelled(after, "evkit_events_dropped_total", "category") == {}
        assert labelled(after, "evkit_client_message_errors_total", "code") == {
            "invalid_json": 1,
            "unknown_type": 1,
            "invalid_pattern": 1,
            "forbidden": 2,
        }
        assert value(after, "evkit_replays_total") == 2
        assert labelled(after, "evkit_disconnects_total", "reason") == {"normal": 4}
        assert labelled(after, "evkit_connections_rejected_total", "reason") == {}
        assert value(after, "evkit_slow_consumer_disconnects_total") == 0
        check_histogram(after, 6)
        assert value(after, "evkit_store_up") == 1
    finally:
        srv.stop()


def test_dropped_events_are_counted_by_category_and_not_in_the_histogram() -> None:
    srv = evkit.serve(port=0, queue_size=5)
    try:
        hold = threading.Event()
        loop_thread().call_soon(hold.wait, 10)  # keeps the loop busy: the queue fills
        try:
            for n in range(7):
                evkit.emit("repo.commit.created", {"n": n})
            for n in range(4):
                evkit.emit("claude.session.started", {"n": n})
        finally:
            hold.set()
        evkit.flush()
        samples = scrape(srv)
        assert labelled(samples, "evkit_events_published_total", "category") == {"repo": 5}
        assert labelled(samples, "evkit_events_dropped_total", "category") == {
            "repo": 2,
            "claude": 4,
        }
        check_histogram(samples, 5)
        assert srv.stats()["dropped"] == 6
    finally:
        srv.stop()


async def _slow_client(url: str, port: int) -> Any:
    """A client with a tiny receive buffer, so the server's backlog for it grows fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    ws = await connect(f"{url}?eventTypes=bulk.*", sock=sock, max_size=None)
    assert (await recv_json(ws))["type"] == "websocket.connected"
    return ws


async def _drain_until_closed(ws: Any) -> None:
    with pytest.raises(ConnectionClosed):
        while True:
            await recv_json(ws, 5)


def test_disconnects_are_counted_by_the_reason_the_server_closed_with() -> None:
    srv = evkit.serve(
        port=0,
        client_buffer_limit=64 * 1024,
        messages_per_second=10,
        message_burst=10,
        rate_limit_strikes=2,
    )
    try:

        async def scenario() -> None:
            polite, _ = await open_client(srv.url, eventTypes="nothing")
            await polite.close()  # 1000

            flooder, _ = await open_client(srv.url, eventTypes="nothing")
            for _ in range(40):
                await flooder.send('{"type": "ping", "payload": null}')
            await _drain_until_closed(flooder)
            assert flooder.close_code == 1008

            restarted, welcome = await open_client(srv.url, eventTypes="nothing")
            assert srv.disconnect(welcome["payload"]["clientId"]) == 1  # 1012
            await _drain_until_closed(restarted)
            assert restarted.close_code == 1012

            slow = await _slow_client(srv.url, srv.port)
            slow.transport.pause_reading()
            filler = "x" * 4000
            deadline = time.monotonic() + 8
            while srv.stats()["slow_consumer_disconnects"] == 0:
                assert time.monotonic() < deadline, "the slow client was never disconnected"
                for n in range(200):
                    evkit.emit("bulk.data.chunk", {"n": n, "filler": filler})
                evkit.flush()
            slow.transport.resume_reading()
            await _drain_until_closed(slow)

        asyncio.run(scenario())
        wait_until(
            lambda: sum(labelled(scrape(srv), "evkit_disconnects_total", "reason").values()) == 4,
            "four disconnects",
        )
        samples = scrape(srv)
        assert labelled(samples, "evkit_disconnects_total", "reason") == {
            "normal": 1,
            "policy": 1,
            "service_restart": 1,
            "slow_consumer": 1,
        }
        assert value(samples, "evkit_slow_consumer_disconnects_total") == 1
        assert labelled(samples, "evkit_client_message_errors_total", "code") == {"rate_limited": 2}
        assert value(samples, "evkit_connections") == 0
        assert value(samples, "evkit_connections_total") == 4
        published = sum(labelled(samples, "evkit_events_published_total", "category").values())
        assert published == srv.stats()["published"] > 0
        check_histogram(samples, int(published))
    finally:
        srv.stop()


def test_store_up_with_a_sqlite_store(tmp_path: Any) -> None:
    srv = evkit.serve(port=0, store=f"sqlite:///{tmp_path}/events.db")
    try:
        evkit.emit("repo.commit.created", {})
        evkit.flush()
        samples = scrape(srv)
        assert value(samples, "evkit_store_up") == 1
        assert labelled(samples, "evkit_events_published_total", "category") == {"repo": 1}
        check_histogram(samples, 1)
    finally:
        srv.stop()


def test_metrics_is_plain_get_and_other_methods_are_refused(server: evkit.Server) -> None:
    request_ = urllib.request.Request(f"{server.http_url}/metrics", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request_, timeout=5)
    assert info.value.code == 405
    assert info.value.headers["Allow"] == "GET, HEAD, OPTIONS"


def test_payloads_that_cannot_leave_the_process_are_counted_as_dropped() -> None:
    srv = evkit.serve(port=0)
    try:
        too_deep: dict[str, Any] = {}
        inner = too_deep
        for _ in range(5_000):  # deeper than the redactor's recursion can go
            inner["next"] = {}
            inner = inner["next"]
        cycle: dict[str, Any] = {}
        cycle["self"] = cycle
        evkit.emit("deep.payload.sent", too_deep)
        evkit.emit("cyclic.payload.sent", cycle)
        evkit.emit("fine.payload.sent", {"ok": 1})
        evkit.flush()
        samples = scrape(srv)
        assert labelled(samples, "evkit_events_dropped_total", "category") == {
            "deep": 1,
            "cyclic": 1,
        }
        assert labelled(samples, "evkit_events_published_total", "category") == {"fine": 1}
        assert srv.stats()["unencodable"] == 2
        check_histogram(samples, 1)
    finally:
        srv.stop()


def test_the_category_label_set_is_capped_with_an_other_bucket(server: evkit.Server) -> None:
    # Publishers choose event types: 3,000 categories must not grow /metrics by 3,000
    # label values per family.
    for n in range(3_000):
        evkit.emit(f"category{n}.thing.happened", {"n": n})
    evkit.flush()
    samples = scrape(server)
    published = labelled(samples, "evkit_events_published_total", "category")
    assert len(published) == MAX_CATEGORIES + 1
    assert published[OTHER_CATEGORY] == 3_000 - MAX_CATEGORIES
    assert sum(published.values()) == 3_000
    assert server.stats()["published"] == 3_000


def test_with_auth_on_metrics_and_the_full_health_need_the_metrics_scope() -> None:
    import jwt

    secret = "metrics-secret-for-hs256-0123456789abcdef"
    srv = evkit.serve(port=0, jwt_secret=secret)

    def get(path: str, token: str | None = None) -> tuple[int, dict[str, Any] | str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(f"{srv.http_url}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            with exc:
                status, body = exc.code, exc.read()
        try:
            return status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return status, body.decode()

    def token(scope: str) -> str:
        return jwt.encode({"scope": scope, "exp": int(time.time()) + 60}, secret, "HS256")

    try:
        assert get("/healthz") == (200, {"status": "ok"})  # liveness stays open
        status, body = get("/metrics")
        assert status == 401
        assert isinstance(body, dict)
        assert body["code"] == "unauthorized"
        status, body = get("/metrics", token("subscribe publish"))
        assert status == 403
        assert isinstance(body, dict)
        assert body["code"] == "forbidden"
        assert get("/metrics", "not-a-token")[0] == 401
        status, text = get("/metrics", token("metrics"))
        assert status == 200
        assert "evkit_events_published_total" in str(text)
        status, health = get("/healthz", token("admin"))
        assert status == 200
        assert isinstance(health, dict)
        assert "epoch" in health["store"]
    finally:
        srv.stop()
    open_srv = evkit.serve(port=0, jwt_secret=secret, public_metrics=True)
    try:
        with urllib.request.urlopen(f"{open_srv.http_url}/metrics", timeout=5) as response:
            assert response.status == 200
    finally:
        open_srv.stop()
