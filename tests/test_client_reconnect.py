"""The reconnect core (evkit.client.reconnect): backoff with plain values, the connection
loop against a real broadcaster on 127.0.0.1.

Each loop test runs the core in its own ``asyncio.run`` in the test thread; the server
runs on evkit's loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

import evkit
from evkit.client.reconnect import ConnectionStatus, Reconnecting, backoff_delay

TIMEOUT = 10.0
TOKEN = "t" * 32
logger = logging.getLogger("tests.reconnect")


# -- backoff ---------------------------------------------------------------------------------


def upper_bound(low: float, high: float) -> float:
    assert low == 0  # full jitter: anything from no wait at all
    return high


def test_backoff_doubles_from_first_up_to_largest() -> None:
    bounds = [backoff_delay(attempt, 0.05, 5.0, upper_bound) for attempt in range(1, 10)]
    assert bounds == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert backoff_delay(10_000, 0.05, 5.0, upper_bound) == 5.0  # no overflow


def test_backoff_is_drawn_at_random_within_the_bound() -> None:
    delays = {backoff_delay(3, 0.05, 5.0) for _ in range(200)}
    assert all(0 <= delay <= 0.4 for delay in delays)
    assert len(delays) > 100


# -- the loop ----------------------------------------------------------------------------------


class Owner:
    """What an owner of the core sees: welcomes, and sessions that end when told."""

    def __init__(self) -> None:
        self.welcomes: list[dict[str, Any]] = []

    def welcomed(self, welcome: dict[str, Any]) -> None:
        self.welcomes.append(welcome)

    async def session(self, ws: ClientConnection) -> None:
        async for _ in ws:
            pass


async def run_until(
    core: Reconnecting, condition: Any, owner: Owner | None = None
) -> asyncio.Task[None]:
    owner = owner or Owner()
    task = asyncio.create_task(core.run(owner.welcomed, owner.session))
    await wait_until(task, condition)
    return task


async def wait_until(task: asyncio.Task[None], condition: Any) -> None:
    """Poll ``condition`` while the core's ``task`` runs (it starts nothing of its own)."""
    async with asyncio.timeout(TIMEOUT):
        while not condition() and not task.done():
            await asyncio.wait({task}, timeout=0.01)  # polled: no event says "retried"


async def stopped(core: Reconnecting, task: asyncio.Task[None]) -> None:
    await core.stop()
    await asyncio.wait_for(task, TIMEOUT)
    assert core.status.state == "stopped"


def test_a_welcomed_connection_is_published_as_a_status_snapshot(server: evkit.Server) -> None:
    async def scenario() -> None:
        owner = Owner()
        core = Reconnecting(lambda: server.url, name="test", logger=logger)
        before = core.status
        task = await run_until(core, lambda: core.connected, owner)
        status = core.status
        assert isinstance(status, ConnectionStatus)
        assert status is not before  # replaced, never changed in place
        assert (status.state, status.connections, status.retries) == ("connected", 1, 0)
        assert owner.welcomes[0]["type"] == "websocket.connected"

        core.drop()
        await wait_until(task, lambda: core.status.connections == 2)
        assert core.status.retries == 1
        assert core.status.last_error is not None
        await stopped(core, task)

    asyncio.run(scenario())


def test_a_refusal_retrying_cannot_fix_is_logged_once_and_retried(
    server: evkit.Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tests.reconnect")
    url = server.url.replace("/ws/events", "/nowhere")

    async def scenario() -> None:
        core = Reconnecting(lambda: url, name="test", logger=logger, backoff=(0.01, 0.02))
        task = await run_until(core, lambda: core.status.retries >= 3)
        assert not task.done()
        assert "HTTP 404" in (core.status.last_error or "")
        await stopped(core, task)

    asyncio.run(scenario())
    assert sum("HTTP 404" in r.getMessage() for r in caplog.records) == 1


def test_a_fatal_refusal_ends_run_with_the_protocol_error_it_stands_for(
    server: evkit.Server,
) -> None:
    async def scenario() -> None:
        url = f"{server.url}?eventTypes=bad%20pattern"
        core = Reconnecting(lambda: url, name="test", logger=logger, fatal_refusals=(400,))
        with pytest.raises(evkit.ProtocolError) as info:
            await asyncio.wait_for(core.run(Owner().welcomed, Owner().session), TIMEOUT)
        assert info.value.code == "invalid_pattern"
        assert "HTTP 400" in str(info.value)
        assert core.status.state == "stopped"

    asyncio.run(scenario())


def test_a_server_wanting_a_token_says_so() -> None:
    srv = evkit.serve(port=0, token=TOKEN)
    try:

        async def scenario() -> None:
            # Retried: the reason is recorded (a probe makes the server refuse at once).
            core = Reconnecting(lambda: srv.url, name="test", logger=logger, probe=True)
            task = await run_until(core, lambda: core.status.retries >= 1)
            assert "the server requires a token: pass token=..." in str(core.status.last_error)
            assert "--token" in str(core.status.last_error)
            await stopped(core, task)

            # Final when 401 is: the same as a refused handshake.
            core = Reconnecting(
                lambda: srv.url,
                name="test",
                logger=logger,
                probe=True,
                fatal_refusals=(401,),
            )
            with pytest.raises(evkit.ProtocolError, match="requires a token") as info:
                await asyncio.wait_for(core.run(Owner().welcomed, Owner().session), TIMEOUT)
            assert info.value.code == "unauthorized"

            # With the token, welcomed.
            core = Reconnecting(lambda: srv.url, name="test", logger=logger, token=TOKEN)
            task = await run_until(core, lambda: core.connected)
            await stopped(core, task)

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_wait_started_gives_up_after_its_timeout_with_the_reason() -> None:
    async def scenario() -> None:
        core = Reconnecting(lambda: "ws://127.0.0.1:9/ws/events", name="test", logger=logger)
        task = asyncio.create_task(core.run(Owner().welcomed, Owner().session))
        assert not await core.wait_started(task, 0.3)
        assert "ConnectionRefusedError" in str(core.status.last_error)
        await stopped(core, task)

    asyncio.run(scenario())


def test_stop_ends_a_backoff_wait_at_once() -> None:
    async def scenario() -> None:
        core = Reconnecting(
            lambda: "ws://127.0.0.1:9/ws/events", name="test", logger=logger, backoff=(30, 30)
        )
        task = await run_until(core, lambda: core.status.state == "backoff")
        began = time.monotonic()
        await stopped(core, task)
        assert time.monotonic() - began < 2

    asyncio.run(scenario())
