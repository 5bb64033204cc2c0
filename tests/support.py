"""A small asyncio WebSocket test client: real sockets, every wait bounded by a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect

TIMEOUT = 10.0


async def open_client(
    url: str, headers: dict[str, str] | None = None, **query: str
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect (query parameters from ``query``) and return the connection and its welcome."""
    full = f"{url}?{urlencode(query)}" if query else url
    ws = await connect(full, additional_headers=headers, max_size=None)
    welcome = await recv_json(ws)
    assert welcome["type"] == "websocket.connected", welcome
    return ws, welcome


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next message, decoded; TimeoutError if none arrives in time."""
    message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def send_json(ws: ClientConnection, message: Any) -> None:
    await ws.send(orjson.dumps(message).decode())


async def request(ws: ClientConnection, message: Any) -> dict[str, Any]:
    """Send a client message and return the server's next reply."""
    await send_json(ws, message)
    return await recv_json(ws)


async def recv_events(
    ws: ClientConnection, count: int, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Exactly the next ``count`` events (system messages are skipped)."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            message = await recv_json(ws, timeout)
            if "id" in message:
                events.append(message)
    return events


async def recv_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Messages up to and including the first one ``predicate`` accepts."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await recv_json(ws, timeout)
            seen.append(message)
            if predicate(message):
                return seen


async def assert_silent(ws: ClientConnection) -> None:
    """Check nothing more is queued for ``ws``: a ping's pong must be the very next message.

    Call :func:`evkit.flush` first, so every emitted event was already written.
    """
    pong = await request(ws, {"type": "ping", "payload": "marker"})
    assert pong == {"type": "pong", "timestamp": pong["timestamp"], "payload": {"echo": "marker"}}
