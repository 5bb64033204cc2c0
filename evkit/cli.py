"""The ``evkit`` command: ``serve``, ``demo``, ``tail``, ``publish``, ``record``, ``replay``.

Each subcommand is a thin layer over the public API; exit codes are 0 for success,
1 for a failure the message explains, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

__all__ = ["main"]

DEFAULT_URL = "ws://127.0.0.1:3000/ws/events"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from evkit.exceptions import EvkitError

        if isinstance(exc, EvkitError | OSError | ValueError):
            print(f"evkit: {exc}", file=sys.stderr)
            return 1
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evkit", description="Stream events over WebSocket, collect them, find bottlenecks."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run a broadcaster until interrupted")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=3000, help="TCP port (default 3000; 0: any)")
    serve.add_argument("--simulate", action="store_true", help="run the simulated services too")
    serve.add_argument("--rate", type=float, default=10.0, help="simulated requests per second")
    serve.add_argument("--seed", type=int, default=7, help="seed of the simulated services")
    serve.add_argument("--history", type=int, default=10_000, help="events kept for replay")
    serve.add_argument(
        "--store",
        default="memory://",
        help="memory:// (default), sqlite:///path/events.db or redis://host:6379/0 (shared)",
    )
    serve.add_argument(
        "--stream", default="evkit:events", help="Redis stream key (default evkit:events)"
    )
    serve.add_argument(
        "--maxlen", type=int, default=1_000_000, help="Redis stream length kept (approximate)"
    )
    serve.add_argument(
        "--token", help="require this bearer token (default: $EVKIT_TOKEN, else no auth)"
    )
    serve.add_argument("--jwt-secret", help="accept HS256 JWTs signed with this secret")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo", help="server + simulated services + a collector, then a bottleneck report"
    )
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to run (default 5)")
    demo.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    demo.add_argument("--rate", type=float, default=20.0, help="simulated requests per second")
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated services")
    demo.add_argument("--patterns", default="*", help="comma-separated patterns to subscribe to")
    demo.add_argument("--out", default="evkit-report", help="folder for the PNG charts")
    demo.set_defaults(run=_demo)

    tail = commands.add_parser("tail", help="print the events of a running server")
    tail.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    tail.add_argument("--patterns", default="*", help="comma-separated patterns (default '*')")
    tail.add_argument("--correlation-id", help="only events of this correlation ID")
    tail.add_argument("--count", type=int, help="exit after this many events")
    tail.add_argument("--json", action="store_true", help="print each message as a JSON line")
    tail.add_argument(
        "--token",
        default=os.environ.get("EVKIT_TOKEN") or None,
        help="bearer token of a server with auth (default: $EVKIT_TOKEN)",
    )
    tail.set_defaults(run=_tail)

    publish = commands.add_parser("publish", help="publish one event to a running server")
    publish.add_argument("type", help="event type, e.g. repo.commit.created")
    publish.add_argument("--payload", default="{}", help="payload as a JSON object")
    publish.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    publish.add_argument(
        "--token",
        default=os.environ.get("EVKIT_TOKEN") or None,
        help="bearer token of a server with auth (default: $EVKIT_TOKEN); it needs the "
        "publish and subscribe scopes",
    )
    publish.set_defaults(run=_publish)

    record = commands.add_parser("record", help="record a live stream into a file")
    record.add_argument("url", help="ws://HOST:PORT/ws/events")
    record.add_argument("--out", required=True, help="events.db (SQLite) or events.jsonl")
    record.add_argument("--patterns", default="*", help="comma-separated patterns (default '*')")
    record.add_argument("--correlation-id", help="only events of this correlation ID")
    record.add_argument("--count", type=int, help="stop after this many events")
    record.add_argument("--seconds", type=float, help="stop after this many seconds")
    record.add_argument(
        "--token",
        default=os.environ.get("EVKIT_TOKEN") or None,
        help="bearer token of a server with auth (default: $EVKIT_TOKEN)",
    )
    record.set_defaults(run=_record)

    replay = commands.add_parser("replay", help="publish a recording again, with its spacing")
    replay.add_argument("file", help="a recording (.db or .jsonl) or sqlite:///path")
    replay.add_argument("--to", required=True, help="ws://HOST:PORT/ws/events to publish to")
    replay.add_argument("--speed", type=float, default=1.0, help="time scale (2: twice as fast)")
    replay.add_argument("--patterns", default="*", help="only these event types")
    replay.add_argument(
        "--token",
        default=os.environ.get("EVKIT_TOKEN") or None,
        help="bearer token of a server with auth (default: $EVKIT_TOKEN)",
    )
    replay.set_defaults(run=_replay)
    return parser


def _auth(token: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {token}"} if token else None


def _serve(args: argparse.Namespace) -> int:
    import evkit
    from evkit.simulate import Simulation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before serving: a stop is never lost
    auth: dict[str, Any] = {}
    if args.token:
        auth["token"] = args.token
    if args.jwt_secret:
        auth["jwt_secret"] = args.jwt_secret
    server = evkit.serve(
        args.host,
        args.port,
        history_size=args.history,
        store=args.store,
        stream=args.stream,
        maxlen=args.maxlen,
        **auth,
    )
    print(
        f"evkit: serving {server.url} (health: {server.http_url}/healthz); Ctrl-C stops", flush=True
    )
    simulation = None
    if args.simulate:
        simulation = Simulation(seed=args.seed, rate=args.rate).start()
        print(f"evkit: simulated services running at {args.rate:g} requests/s", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if simulation is not None:
            simulation.stop()
        server.stop()
    return 0


def _demo(args: argparse.Namespace) -> int:
    import evkit
    from evkit import analysis
    from evkit.simulate import Simulation

    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    out = Path(args.out)
    server = evkit.serve(port=args.port)
    try:
        print(f"evkit demo: broadcaster at {server.url}")
        print(f"collecting {', '.join(patterns)} over WebSocket while the simulated services run")
        with evkit.collect(server, patterns) as collector:
            simulation = Simulation(seed=args.seed, rate=args.rate).start(seconds=args.seconds)
            began = time.monotonic()
            while simulation.running:
                elapsed = time.monotonic() - began
                _progress(min(elapsed / args.seconds, 1.0), collector.stats["received"])
                time.sleep(0.1)
            simulation.stop()
            evkit.flush()
            _progress(1.0, collector.stats["received"])
            print()
            # Everything emitted has been written to the socket; wait until it was read.
            published = server.stats()["published"]
            if patterns == ["*"]:
                collector.wait(count=published, timeout=10)
            frame = collector.to_dataframe()
            stats = collector.stats
    finally:
        server.stop()
    if frame.empty:
        print("no events were collected; check the patterns", file=sys.stderr)
        return 1
    print(
        f"\n{stats['received']:,} events from {frame['correlation_id'].nunique():,} requests "
        f"({stats['dropped']} dropped, {stats['reconnects']} reconnects)\n"
    )
    print(_report(frame, analysis))
    out.mkdir(parents=True, exist_ok=True)
    by_correlation = analysis.latency_by_correlation(frame)
    latency_png = out / "latency-by-correlation.png"
    analysis.plot_latency_by_correlation(frame).savefig(latency_png, dpi=110)
    slowest = str(by_correlation.index[0])
    waterfall_png = out / f"waterfall-{slowest}.png"
    analysis.plot_waterfall(frame, slowest).savefig(waterfall_png, dpi=110)
    print(f"\nlatency chart:           {latency_png}")
    print(f"slowest request waterfall: {waterfall_png}")
    return 0


def _report(frame: Any, analysis: Any) -> str:
    lines = ["Top operations by impact (total time spent):", ""]
    top = analysis.bottlenecks(frame, top=8)
    lines.append(
        f"  {'operation':<20} {'count':>6} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'total s':>8} {'share':>6} {'slow':>5}"
    )
    for operation, row in top.iterrows():
        lines.append(
            f"  {operation!s:<20} {int(row['count']):>6} {int(row['errors']):>6} {row['p50_ms']:>8.1f} "
            f"{row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['total_ms'] / 1000:>8.2f} "
            f"{row['share']:>6.0%} {int(row['slow_events']):>5}"
        )
    lines += ["", "Slowest requests (wall time, first to last event):", ""]
    lines.append(
        f"  {'correlation id':<16} {'wall ms':>8} {'ops':>4} {'errors':>6}  "
        "where the time went (costliest step on the critical path)"
    )
    slowest = analysis.latency_by_correlation(frame).head(5)
    for correlation_id, row in slowest.iterrows():
        operation, own_ms = _costliest_step(analysis.critical_path(frame, str(correlation_id)))
        lines.append(
            f"  {correlation_id!s:<16} {row['wall_ms']:>8.1f} {int(row['operations']):>4} "
            f"{int(row['errors']):>6}  {operation} ({own_ms:.1f} ms of its own)"
        )
    critical = analysis.critical_path(frame, str(slowest.index[0]))
    chain = " -> ".join(f"{r.operation} {r.duration_ms:.0f} ms" for r in critical.itertuples())
    lines += ["", f"Critical path of {slowest.index[0]}: {chain}"]
    return "\n".join(lines)


def _costliest_step(path: Any) -> tuple[str, float]:
    """The span on a critical path with the most time of its own (beyond its children on it)."""
    on_path = path[path["parent_span_id"].isin(set(path["span_id"]))]
    children_ms = on_path.groupby("parent_span_id")["duration_ms"].sum()
    own = path["duration_ms"] - path["span_id"].map(children_ms).fillna(0.0)
    best = own.idxmax()
    return str(path.loc[best, "operation"]), float(own.loc[best])


def _progress(fraction: float, events: int) -> None:
    if not sys.stdout.isatty():
        return
    bar = "#" * int(fraction * 30)
    print(f"\r[{bar:<30}] {fraction:4.0%}  {events} events", end="", flush=True)


def _tail(args: argparse.Namespace) -> int:
    async def run() -> int:
        from websockets.asyncio.client import connect

        params: dict[str, str] = {"eventTypes": args.patterns}
        if args.correlation_id:
            params["correlationId"] = args.correlation_id
        received = 0
        async with connect(
            f"{args.url}?{urlencode(params)}", max_size=None, additional_headers=_auth(args.token)
        ) as ws:
            async for raw in ws:
                message: dict[str, Any] = orjson.loads(raw)
                if args.json:
                    print(raw if isinstance(raw, str) else raw.decode(), flush=True)
                else:
                    print(_one_line(message), flush=True)
                if not message["type"].startswith("websocket."):
                    received += 1
                    if args.count is not None and received >= args.count:
                        break
        return 0

    return asyncio.run(run())


def _one_line(message: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(message.get("timestamp", 0) / 1000))
    payload = message.get("payload") or {}
    correlation = payload.get("correlationId", "") if isinstance(payload, dict) else ""
    body = orjson.dumps(payload).decode()
    if len(body) > 160:
        body = body[:157] + "..."
    return f"{stamp} {message.get('id', '-'):>6} {message['type']:<36} {correlation:<12} {body}"


def _publish(args: argparse.Namespace) -> int:
    from evkit.protocol import validate_event_type

    validate_event_type(args.type)
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        print(f"evkit: --payload is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(payload, dict):
        print("evkit: --payload must be a JSON object", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    timeout = 5.0

    async def run() -> int:
        from websockets.asyncio.client import connect

        # Subscribed to its own type, to read the event back with the id it was given.
        async with connect(
            f"{args.url}?{urlencode({'eventTypes': args.type})}",
            additional_headers=headers,
            open_timeout=timeout,
        ) as ws:
            if headers is None:
                # A server with auth waits for credentials; this makes it refuse at once.
                await ws.send(orjson.dumps({"type": "ping", "payload": "evkit publish"}).decode())
            async with asyncio.timeout(timeout):
                async for raw in ws:
                    if orjson.loads(raw)["type"] == "websocket.connected":
                        break
            await ws.send(
                orjson.dumps(
                    {"type": "publish", "payload": {"type": args.type, "payload": payload}}
                ).decode()
            )
            while True:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
                if message["type"] == "websocket.error":
                    print(f"evkit: rejected: {message['payload']['error']}", file=sys.stderr)
                    return 1
                if message["type"] == args.type:
                    print(f"published {args.type} as id {message['id']}")
                    return 0

    from websockets.exceptions import ConnectionClosed, InvalidStatus

    try:
        return asyncio.run(run())
    except InvalidStatus as exc:
        response = exc.response
        try:
            detail = orjson.loads(response.body or b"{}").get("error", "")
        except (orjson.JSONDecodeError, AttributeError):
            detail = ""
        hint = " (check --token or $EVKIT_TOKEN)" if response.status_code in (401, 403) else ""
        print(
            f"evkit: {args.url} refused the connection: HTTP {response.status_code} "
            f"{response.reason_phrase}{': ' + detail if detail else ''}{hint}",
            file=sys.stderr,
        )
        return 1
    except ConnectionClosed as exc:
        close = exc.rcvd
        reason = f"{close.code} {close.reason}" if close is not None else "without a close frame"
        hint = " (it requires a token: pass --token or set $EVKIT_TOKEN)" if not args.token else ""
        print(f"evkit: {args.url} closed the connection: {reason}{hint}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"evkit: {args.url} did not answer within {timeout:g} s", file=sys.stderr)
        return 1


def _record(args: argparse.Namespace) -> int:
    from evkit.client import Subscriber
    from evkit.recording import RecordingWriter

    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    writer = RecordingWriter(args.out)

    async def run() -> None:
        done = asyncio.Event()

        def on_event(event: dict[str, Any]) -> None:
            if args.count is not None and writer.count >= args.count:
                return  # the rest arrived while stopping
            writer.write(event)
            if args.count is not None and writer.count >= args.count:
                done.set()

        subscriber = Subscriber(
            args.url, patterns, args.correlation_id, on_event=on_event, token=args.token
        )
        task = asyncio.ensure_future(subscriber.run())
        began = time.monotonic()
        deadline = None if args.seconds is None else began + args.seconds
        try:
            while not done.is_set() and not task.done():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.5)
                writer.flush()
                elapsed = max(time.monotonic() - began, 1e-9)
                stats = subscriber.stats
                print(
                    f"\rrecorded {writer.count:,} events ({writer.count / elapsed:,.0f}/s) "
                    f"state {stats.state}, {stats.reconnects} reconnects, {stats.gaps} gaps",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            await subscriber.stop()
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]
            task.cancel()
            print(file=sys.stderr)

    try:
        asyncio.run(run())
    finally:
        writer.close()
    print(f"recorded {writer.count:,} events into {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from evkit.recording import read_events

    if args.speed <= 0:
        print("evkit: --speed must be positive", file=sys.stderr)
        return 2
    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    events = read_events(args.file, patterns)

    async def run() -> int:
        from websockets.asyncio.client import connect

        sent = 0
        # Subscribed to nothing: this connection only publishes.
        async with connect(
            f"{args.to}?eventTypes=", max_size=None, additional_headers=_auth(args.token)
        ) as ws:
            orjson.loads(await ws.recv())
            loop = asyncio.get_running_loop()
            start = loop.time()
            first: int | None = None
            batch: list[dict[str, Any]] = []
            due = start
            for event in events:
                timestamp = int(event.get("timestamp") or 0)
                first = timestamp if first is None else first
                at = start + (timestamp - first) / 1000.0 / args.speed
                if batch and at > due:
                    await _publish_batch(ws, batch, due, loop)
                    sent += len(batch)
                    batch = []
                due = at
                batch.append({"type": event["type"], "payload": event.get("payload") or {}})
            if batch:
                await _publish_batch(ws, batch, due, loop)
                sent += len(batch)
            # A ping answered means every publish before it was taken by the server.
            await ws.send(orjson.dumps({"type": "ping", "payload": "replay-done"}).decode())
            while True:
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                if reply["type"] == "websocket.error":
                    print(f"evkit: rejected: {reply['payload']['error']}", file=sys.stderr)
                    return 1
                if reply["type"] == "pong":
                    break
        print(f"replayed {sent:,} events to {args.to} at {args.speed:g}x")
        return 0

    return asyncio.run(run())


async def _publish_batch(
    ws: Any, batch: list[dict[str, Any]], due: float, loop: asyncio.AbstractEventLoop
) -> None:
    delay = due - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    await ws.send(orjson.dumps({"type": "publish", "payload": batch}).decode())
