"""Watch an evkit broadcaster's event stream: the seed's example client, in Python.

Connects to ``ws://HOST:PORT/ws/events`` (with the ``x-correlation-id`` header when a
correlation ID is given), subscribes, pings, and prints one line per message::

    python examples/websocket_client.py --correlation-id req-7 --count 10

    websocket.connected clientId=ws-1732612345678-k3j9x0a1b correlationId=req-7 subscriptions=["*"]
    websocket.subscribed subscriptions=["claude.*","repo.commit.created",...] correlationId=req-7
    pong echo={"timestamp":1732612345679}
    repo.commit.created #1042 [req-7] path=/src commitHash=ab12 message="fix the build"

A connection starts subscribed to ``*``; the subscribe here sets ``replace: true`` so
``--patterns`` is exactly what arrives (the seed's client only added its patterns, so
it went on receiving everything).

Exit status: 0 after ``--count`` events (or when ``--timeout`` ends a run without
``--count``, or on Ctrl-C), 1 when ``--timeout`` passes before ``--count`` events or the
server closes the connection or rejects the subscription, 2 when it cannot connect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

DEFAULT_URL = "ws://127.0.0.1:3000/ws/events"
DEFAULT_PATTERNS = "claude.*,repo.commit.created,performance.*,github.api.*,graphql.*"
CONNECT_TIMEOUT = 10.0

# The payload fields the seed's client read for each event type it knew about.
FIELDS: dict[str, tuple[str, ...]] = {
    "performance.slowOperation.detected": ("service", "operation", "duration", "threshold"),
    "github.api.completed": ("endpoint", "method", "statusCode", "duration", "rateLimitRemaining"),
    "claude.session.started": ("sessionId", "workingDirectory"),
    "repo.commit.created": ("path", "commitHash", "message"),
}
GRAPHQL_FIELDS = ("operationName", "duration")
_GRAPHQL = re.compile(r"graphql\.[^.]+\.(?:started|completed)")
_MILLISECONDS = {"duration", "threshold"}


class ConnectFailed(Exception):
    """The broadcaster could not be reached or refused the WebSocket handshake."""


def _value(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value if value and not any(c.isspace() for c in value) else json.dumps(value)
    if key in _MILLISECONDS and isinstance(value, int | float):
        return f"{value:g}ms"
    return json.dumps(value, separators=(",", ":"))


def _pairs(payload: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    if keys is None:
        keys = tuple(k for k in payload if k != "correlationId")
    return " ".join(f"{k}={_value(k, payload[k])}" for k in keys if k in payload)


def describe(message: dict[str, Any]) -> str:
    """One line for one message received from the broadcaster."""
    type_ = str(message.get("type"))
    payload = message.get("payload")
    if not isinstance(payload, dict):
        payload = {}
    if type_ == "pong":
        return f"pong echo={_value('echo', payload.get('echo'))}"
    if type_ == "websocket.connected":
        return f"{type_} {_pairs(payload, ('clientId', 'correlationId', 'subscriptions'))}"
    if type_ in ("websocket.subscribed", "websocket.unsubscribed"):
        return f"{type_} {_pairs(payload, ('subscriptions', 'correlationId'))}"
    if type_ == "websocket.error":
        return f"{type_} code={payload.get('code')}: {payload.get('error')}"
    if type_.startswith("websocket."):
        return f"{type_} {_pairs(payload)}"
    keys = GRAPHQL_FIELDS if _GRAPHQL.fullmatch(type_) else FIELDS.get(type_)
    head = f"{type_} #{message.get('id')}"
    correlation_id = payload.get("correlationId")
    if correlation_id is not None:
        head += f" [{correlation_id}]"
    return f"{head} {_pairs(payload, keys)}".rstrip()


def _is_event(message: dict[str, Any]) -> bool:
    type_ = message.get("type")
    return isinstance(type_, str) and type_ != "pong" and not type_.startswith("websocket.")


def _subscriptions(value: str) -> list[str]:
    return [pattern.strip() for pattern in value.split(",") if pattern.strip()]


async def _open(url: str, correlation_id: str | None, timeout: float) -> ClientConnection:
    headers = {"x-correlation-id": correlation_id} if correlation_id else None
    try:
        return await connect(url, additional_headers=headers, open_timeout=timeout)
    except InvalidURI as exc:
        raise ConnectFailed(
            f"{url!r} is not a WebSocket URL (expected ws://HOST:PORT/ws/events): {exc}"
        ) from None
    except InvalidHandshake as exc:
        raise ConnectFailed(f"{url} refused the WebSocket handshake: {exc}") from None
    except TimeoutError:
        raise ConnectFailed(f"{url} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise ConnectFailed(
            f"{url}: {exc.strerror or exc}; is the broadcaster running? "
            "(start one with: python examples/instrumented_service.py)"
        ) from None


async def watch(
    url: str,
    patterns: list[str],
    correlation_id: str | None = None,
    count: int | None = None,
    timeout: float | None = None,
) -> int:
    """Subscribe and print messages until ``count`` events arrived; return the exit status.

    Raises:
        ConnectFailed: the server could not be reached or refused the handshake.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    connect_timeout = CONNECT_TIMEOUT if timeout is None else min(timeout, CONNECT_TIMEOUT)
    received = 0
    subscribed = False
    async with await _open(url, correlation_id, connect_timeout) as websocket:
        subscribe = {"eventTypes": patterns, "correlationId": correlation_id, "replace": True}
        await websocket.send(json.dumps({"type": "subscribe", "payload": subscribe}))
        await websocket.send(
            json.dumps({"type": "ping", "payload": {"timestamp": int(time.time() * 1000)}})
        )
        while count is None or received < count:
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                async with asyncio.timeout(remaining):
                    frame = await websocket.recv()
            except TimeoutError:
                if count is None:
                    return 0
                print(
                    f"timed out after {timeout:g} s: received {received} of {count} events",
                    file=sys.stderr,
                )
                return 1
            except ConnectionClosed as exc:
                print(f"the server closed the connection: {exc}", file=sys.stderr)
                return 1
            message = json.loads(frame)
            print(describe(message), flush=True)
            if message.get("type") == "websocket.subscribed":
                subscribed = True
            elif message.get("type") == "websocket.error" and not subscribed:
                # Nothing of a rejected subscribe is applied: the connection would go on
                # receiving everything.
                print(f"the server rejected the subscription: {describe(message)}", file=sys.stderr)
                return 1
            received += _is_event(message)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the events an evkit broadcaster streams.")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"event stream URL (default {DEFAULT_URL})"
    )
    parser.add_argument("--correlation-id", help="receive only the events of this request")
    parser.add_argument(
        "--patterns",
        type=_subscriptions,
        default=_subscriptions(DEFAULT_PATTERNS),
        help=f"comma-separated event type globs (default {DEFAULT_PATTERNS})",
    )
    parser.add_argument("--count", type=int, help="exit after this many events")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds")
    args = parser.parse_args(argv)
    if not args.patterns:
        parser.error("--patterns needs at least one pattern")
    if args.correlation_id == "":
        parser.error("--correlation-id must not be empty")
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        return asyncio.run(
            watch(args.url, args.patterns, args.correlation_id, args.count, args.timeout)
        )
    except ConnectFailed as exc:
        print(f"cannot connect to the evkit broadcaster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
