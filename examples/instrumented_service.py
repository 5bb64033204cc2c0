"""A small service instrumented with evkit, serving its events over WebSocket.

Each request runs under its own correlation ID (``evkit.request_bus``) and is traced
with ``@evkit.emits``: ``gateway.request`` (async) encloses ``repo.commit`` (sync) and
``github.api`` (async, reported as slow past ``SLOW_MS``). Every third request is slow.
The events carry the fields the seed's clients read: ``github.api.completed`` gets
``endpoint``, ``method``, ``statusCode`` and ``rateLimitRemaining`` from ``@emits``'s
``fields`` and ``result_fields``; ``claude.session.started`` and ``repo.commit.created``
are emitted on the request's bus::

    python examples/instrumented_service.py --port 3000 --seconds 30
    python examples/websocket_client.py --count 10          # in another terminal

Importing this module starts nothing; :func:`handle` runs one request.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import sys

import evkit

SLOW_MS = 25.0
WORKING_DIRECTORY = "/srv/app"
_rate_limit = itertools.count(4999, -1)


@evkit.emits("repo.commit")
def create_commit(bus: evkit.RequestBus, path: str, message: str) -> str:
    commit_hash = hashlib.sha256(f"{path}:{message}".encode()).hexdigest()[:12]
    bus.emit("repo.commit.created", {"path": path, "commitHash": commit_hash, "message": message})
    return commit_hash


@evkit.emits(
    "github.api",
    threshold_ms=SLOW_MS,
    fields=lambda endpoint, method, slow: {"endpoint": endpoint, "method": method},
    result_fields=lambda response: response,
)
async def call_github(endpoint: str, method: str, slow: bool) -> dict[str, int]:
    await asyncio.sleep(0.06 if slow else 0.002)  # stands in for the HTTP round trip
    return {"statusCode": 201, "rateLimitRemaining": next(_rate_limit)}


@evkit.emits("gateway.request")
async def handle_request(bus: evkit.RequestBus, number: int) -> str:
    bus.emit(
        "claude.session.started",
        {"sessionId": f"session-{number}", "workingDirectory": WORKING_DIRECTORY},
    )
    commit_hash = create_commit(bus, WORKING_DIRECTORY, f"change {number}")
    await call_github("/repos/acme/app/pulls", "POST", slow=number % 3 == 0)
    return commit_hash


async def handle(number: int) -> str:
    """Handle request ``number`` under the correlation ID ``req-<number>``."""
    with evkit.request_bus(f"req-{number}") as bus:
        return await handle_request(bus, number)


async def run(seconds: float, interval: float) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    number = 0
    while loop.time() < deadline:
        number += 1
        commit_hash = await handle(number)
        slow = " (slow github.api)" if number % 3 == 0 else ""
        print(f"req-{number}: committed {commit_hash}{slow}", flush=True)
        await asyncio.sleep(interval)
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a demo service that emits evkit events.")
    parser.add_argument("--port", type=int, default=3000, help="broadcaster port (0: any free)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to run")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between requests")
    args = parser.parse_args(argv)
    try:
        server = evkit.serve(port=args.port)
    except (evkit.EvkitError, ValueError) as exc:
        print(f"cannot start the broadcaster: {exc}", file=sys.stderr)
        return 1
    with server:
        print(f"streaming events on {server.url}", flush=True)
        try:
            handled = asyncio.run(run(args.seconds, args.interval))
        except KeyboardInterrupt:
            return 0
        server.flush()
        print(f"handled {handled} requests, published {server.stats()['published']} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
