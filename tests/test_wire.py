"""What evkit relies on in websockets' internals (evkit/server/wire.py), pinned.

If a new websockets release changes any of this, these tests say where: the frame
format the write path builds, raw transport writes interleaving with websockets' own
frames, the protocol state that tells an open connection from a closing one, sending
through a connection's compressor, and a connection class that reads POST itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

from evkit.protocol import text_frame
from evkit.server.wire import HttpAnswer, HttpRequest, Peer, http_connection_class, listen


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_text_frame_is_what_websockets_serialises_for_a_server(length: int) -> None:
    payload = b"x" * length
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


class Served:
    """A bare websockets server whose handler hands its connection to the test."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.done = asyncio.Event()

    async def handler(self, connection: ServerConnection) -> None:
        await self.connections.put(connection)
        await self.done.wait()


@contextlib.asynccontextmanager
async def served(compression: bool = False) -> AsyncIterator[tuple[Served, str]]:
    state = Served()
    async with serve(
        state.handler, "127.0.0.1", 0, compression="deflate" if compression else None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        try:
            yield state, f"ws://127.0.0.1:{port}"
        finally:
            state.done.set()


def test_raw_frames_and_websockets_own_frames_interleave() -> None:
    async def scenario() -> None:
        async with served() as (state, url), connect(url, compression=None) as client:
            connection = await asyncio.wait_for(state.connections.get(), 5)
            peer = Peer(connection, "test")
            assert not peer.compressed
            assert peer.write(text_frame(b'{"n":1}') + text_frame(b'{"n":2}')) >= 0
            pong = await connection.ping()  # websockets writes its own frame between
            assert peer.write(text_frame(b'{"n":3}')) >= 0
            received = [orjson.loads(await client.recv()) for _ in range(3)]
            assert received == [{"n": 1}, {"n": 2}, {"n": 3}]
            await asyncio.wait_for(pong, 5)
            assert peer.buffered() == 0

    asyncio.run(scenario())


def test_nothing_is_written_once_closing_started_or_the_transport_is_gone() -> None:
    async def scenario() -> None:
        async with served() as (state, url), connect(url) as client:
            connection = await asyncio.wait_for(state.connections.get(), 5)
            peer = Peer(connection)
            closing = asyncio.ensure_future(connection.close(1001, "bye"))
            await asyncio.sleep(0)  # the close frame is sent: the state is CLOSING
            assert peer.closing
            assert peer.write(text_frame(b'{"late":true}')) == 0
            with pytest.raises(Exception, match="1001"):
                await asyncio.wait_for(client.recv(), 5)  # the close came, no frame before
            await closing
            assert peer.write(text_frame(b"{}")) == -1
            assert peer.buffered() == -1

    asyncio.run(scenario())


def test_a_compressed_connection_is_written_through_its_compressor() -> None:
    async def scenario() -> None:
        async with (
            served(compression=True) as (state, url),
            connect(url, compression="deflate") as client,
        ):
            connection = await asyncio.wait_for(state.connections.get(), 5)
            peer = Peer(connection)
            assert peer.compressed
            message = orjson.dumps({"n": "y" * 1000})
            assert peer.send_message(message) >= 0
            assert peer.send_message(message) >= 0
            assert [await client.recv() for _ in range(2)] == [message.decode()] * 2

    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def post_server(limit: int) -> AsyncIterator[tuple[int, list[Any]]]:
    posted: list[Any] = []
    tasks: set[asyncio.Future[None]] = set()

    async def handler(request: HttpRequest) -> HttpAnswer:
        posted.append((request.target, request.headers.get("content-type"), request.body))
        return HttpAnswer.json(202, {"ok": True})

    async def websocket_handler(connection: ServerConnection) -> None:
        await connection.send("hello")

    server = await listen(
        websocket_handler,
        lambda connection, request: None,
        http_connection_class(handler, lambda: limit, tasks),
        host="127.0.0.1",
        port=0,
        max_message_size=1024,
        compression=False,
        ping_interval=None,
    )
    try:
        yield server.sockets[0].getsockname()[1], posted
    finally:
        server.close()
        await server.wait_closed()


async def raw(port: int, chunks: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0)
    writer.write_eof()  # the server closes once it has answered what it read
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


def request_bytes(body: bytes, **headers: str) -> bytes:
    head = "POST /events?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode() + b"\r\n" + body


def test_a_post_is_read_by_evkit_even_one_byte_at_a_time() -> None:
    async def scenario() -> None:
        async with post_server(limit=100) as (port, posted):
            data = request_bytes(b'{"a":1}', **{"Content-Length": "7"})
            answer = await raw(port, [data[i : i + 1] for i in range(len(data))])
            assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
            assert answer.endswith(b'{"ok":true}')
            assert posted == [("/events?x=1", "application/json", b'{"a":1}')]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request_bytes(b"{}"), b"411"),
        (request_bytes(b"x" * 200, **{"Content-Length": "200"}), b"413"),
        (b"POST /events HTTP/1.1\r\nX-Long: " + b"a" * 20_000, b"431"),
    ],
)
def test_a_bad_post_is_answered_and_closed(data: bytes, status: bytes) -> None:
    async def scenario() -> None:
        async with post_server(limit=100) as (port, posted):
            answer = await raw(port, [data])
            assert answer.split(b" ", 2)[1] == status
            assert posted == []

    asyncio.run(scenario())


def test_a_handshake_goes_to_websockets_and_a_plain_get_to_evkit() -> None:
    async def scenario() -> None:
        async with post_server(limit=100) as (port, posted):
            async with connect(f"ws://127.0.0.1:{port}/ws/events") as client:
                assert await asyncio.wait_for(client.recv(), 5) == "hello"
            assert posted == []
            answer = await raw(port, [b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"])
            assert answer.startswith(b"HTTP/1.1 202")
            assert posted == [("/nothing", None, b"")]

    asyncio.run(scenario())


def test_a_port_in_use_is_an_oserror_from_listen() -> None:
    async def scenario() -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            with pytest.raises(OSError, match="address already in use"):
                await listen(
                    lambda connection: asyncio.sleep(0),
                    lambda connection, request: None,
                    ServerConnection,
                    host="127.0.0.1",
                    port=port,
                    max_message_size=1024,
                    compression=False,
                    ping_interval=None,
                )

    asyncio.run(scenario())


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    head = b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks)
    return head + body + b"0\r\n" + trailer + b"\r\n"


def test_a_chunked_post_is_read_whole_even_one_byte_at_a_time() -> None:
    # OTLP exporters (the Node SDK's among them) send their bodies chunked.
    async def scenario() -> None:
        async with post_server(limit=100) as (port, posted):
            data = chunked(b'{"a":', b"1}", trailer=b"X-Checksum: 1\r\n")
            answer = await raw(port, [data[i : i + 1] for i in range(len(data))])
            assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
            assert posted == [("/events", None, b'{"a":1}')]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (chunked(b"x" * 60, b"y" * 60), b"413"),
        (
            b"POST /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
            b"400",
        ),
        (
            b"POST /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"400",
        ),
    ],
)
def test_a_bad_chunked_post_is_answered(data: bytes, status: bytes) -> None:
    async def scenario() -> None:
        async with post_server(limit=100) as (port, posted):
            answer = await raw(port, [data])
            assert answer.split(b" ", 2)[1] == status
            assert posted == []

    asyncio.run(scenario())
