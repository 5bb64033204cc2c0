"""Helpers for tests of code that uses evkit, and for evkit's own tests.

Nothing here is a mock: :func:`serving` starts a real broadcaster on a free port of
127.0.0.1, :class:`TestClient` speaks the real wire protocol over a real socket, and
:func:`capture_events` records what a real bus emits. Every wait is bounded::

    from evkit.testing import TestClient, capture_events, serving, wait_until

    def test_my_service_reports_its_commits():
        with capture_events("repo.*") as events:
            my_service.commit("/src")
        assert [e.type for e in events] == ["repo.commit.created"]

    async def test_the_wire():
        with serving() as server:
            async with await TestClient.connect(server.url, eventTypes="repo.*") as client:
                evkit.emit("repo.commit.created", {"path": "/src"})
                [event] = await client.events(1)

The module-level coroutines (:func:`open_client`, :func:`recv_json`, :func:`request`...)
are the same operations on a plain websockets connection.

Importing this module imports websockets, never pytest: the waits raise
:class:`~evkit.exceptions.WaitTimeout`, which a test runner reports as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Self

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect

from evkit.bus import Event, EventBus, global_bus
from evkit.exceptions import WaitTimeout
from evkit.protocol import CONNECTED, PONG, ping_message, with_query

__all__ = [
    "TIMEOUT",
    "TestClient",
    "assert_silent",
    "capture_events",
    "free_port",
    "open_client",
    "recv_events",
    "recv_json",
    "recv_until",
    "request",
    "send_json",
    "serving",
    "wait_until",
    "wait_until_async",
]

#: Seconds a helper waits before it gives up, unless told otherwise.
TIMEOUT = 10.0

Message = dict[str, Any]


# -- waiting, ports, servers ---------------------------------------------------------------


def wait_until(
    condition: Callable[[], bool], what: str = "the condition", timeout: float = TIMEOUT
) -> None:
    """Poll ``condition`` every 10 ms until it holds.

    Raises:
        WaitTimeout: it did not hold within ``timeout`` seconds (the message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(0.01)


async def wait_until_async(
    condition: Callable[[], bool], what: str = "the condition", timeout: float = TIMEOUT
) -> None:
    """:func:`wait_until` for a coroutine: the loop keeps running between checks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting until {what}")
        await asyncio.sleep(0.01)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for a server that must bind a known port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(**settings: Any) -> Iterator[Any]:
    """A broadcaster on a free port of 127.0.0.1 (``evkit.serve(port=0, ...)``), stopped after.

    ``settings`` are the fields of :class:`~evkit.ServerSettings`. Yields the
    :class:`~evkit.Server`.
    """
    from evkit.server import serve

    server = serve(port=settings.pop("port", 0), **settings)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def capture_events(pattern: str = "*", bus: EventBus | None = None) -> Iterator[list[Event]]:
    """Record the events emitted on ``bus`` (the global one) whose type matches ``pattern``.

    The list fills while the block runs, in emit order (across threads, in the order
    the bus dispatched them); the handler is removed when the block ends.
    """
    target = bus if bus is not None else global_bus
    events: list[Event] = []
    handler = events.append
    target.on(pattern, handler)
    try:
        yield events
    finally:
        target.off(handler)


# -- the wire, on a plain websockets connection ---------------------------------------------


async def open_client(
    url: str, headers: dict[str, str] | None = None, **query: str
) -> tuple[ClientConnection, Message]:
    """Connect (query parameters from ``query``) and return the connection and its welcome.

    Raises:
        websockets.exceptions.InvalidStatus: the server refused the handshake.
        AssertionError: the first message was not ``websocket.connected``.
    """
    from urllib.parse import urlencode

    ws = await websocket_connect(
        with_query(url, urlencode(query)), additional_headers=headers, max_size=None
    )
    welcome = await recv_json(ws)
    assert welcome["type"] == CONNECTED, welcome
    return ws, welcome


async def recv_json(ws: ClientConnection, timeout: float = TIMEOUT) -> Message:
    """The next message, decoded; TimeoutError if none arrives in time."""
    message: Message = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def send_json(ws: ClientConnection, message: Any) -> None:
    """Send ``message`` encoded as JSON in a text frame."""
    await ws.send(orjson.dumps(message).decode())


async def request(ws: ClientConnection, message: Any, timeout: float = TIMEOUT) -> Message:
    """Send a client message and return the server's next message."""
    await send_json(ws, message)
    return await recv_json(ws, timeout)


async def recv_events(ws: ClientConnection, count: int, timeout: float = TIMEOUT) -> list[Message]:
    """Exactly the next ``count`` events (system messages are skipped)."""
    events: list[Message] = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            message = await recv_json(ws, timeout)
            if "id" in message:
                events.append(message)
    return events


async def recv_until(
    ws: ClientConnection, predicate: Callable[[Message], bool], timeout: float = TIMEOUT
) -> list[Message]:
    """Messages up to and including the first one ``predicate`` accepts."""
    seen: list[Message] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await recv_json(ws, timeout)
            seen.append(message)
            if predicate(message):
                return seen


async def assert_silent(ws: ClientConnection, timeout: float = TIMEOUT) -> None:
    """Check nothing more is queued for ``ws``: a ping's pong must be the very next message.

    Call ``evkit.flush()`` first, so every emitted event was already written.
    """
    await ws.send(ping_message("marker").decode())
    pong = await recv_json(ws, timeout)
    assert pong == {"type": PONG, "timestamp": pong["timestamp"], "payload": {"echo": "marker"}}, (
        f"expected the pong, got {pong}"
    )


class TestClient:
    """A WebSocket test client of ``/ws/events``: the operations above as methods.

    Make one with ``await TestClient.connect(url, headers, **query)``; use it as an
    async context manager, or call :meth:`close`.
    """

    __test__ = False  # not a test class, whatever its name

    def __init__(self, ws: ClientConnection, welcome: Message) -> None:
        self.ws = ws
        self.welcome = welcome

    @classmethod
    async def connect(cls, url: str, headers: dict[str, str] | None = None, **query: str) -> Self:
        """Connect and read the welcome (see :func:`open_client`)."""
        return cls(*await open_client(url, headers, **query))

    def recv(self, timeout: float = TIMEOUT) -> Awaitable[Message]:
        return recv_json(self.ws, timeout)

    def send(self, message: Any) -> Awaitable[None]:
        return send_json(self.ws, message)

    def request(self, message: Any, timeout: float = TIMEOUT) -> Awaitable[Message]:
        return request(self.ws, message, timeout)

    def events(self, count: int, timeout: float = TIMEOUT) -> Awaitable[list[Message]]:
        return recv_events(self.ws, count, timeout)

    def until(
        self, predicate: Callable[[Message], bool], timeout: float = TIMEOUT
    ) -> Awaitable[list[Message]]:
        return recv_until(self.ws, predicate, timeout)

    def assert_silent(self, timeout: float = TIMEOUT) -> Awaitable[None]:
        return assert_silent(self.ws, timeout)

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
