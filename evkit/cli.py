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
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evkit.exceptions import ConnectError

if TYPE_CHECKING:
    from evkit.client import Subscriber
    from evkit.client.publisher import Publisher

__all__ = ["main"]

DEFAULT_URL = "ws://127.0.0.1:3000/ws/events"
_CONNECT_TIMEOUT = 10.0  # seconds for tail and replay to connect
_REPLAY_WINDOW = 5_000  # events replay may have sent and not yet seen confirmed
#: A command does not retry a refused handshake: it says why and exits.
_ALL_REFUSALS = tuple(range(400, 600))


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
    _subscription_arguments(tail)
    tail.add_argument("--count", type=int, help="exit after this many events")
    tail.add_argument("--json", action="store_true", help="print each message as a JSON line")
    _token_argument(tail)
    tail.set_defaults(run=_tail)

    publish = commands.add_parser("publish", help="publish one event to a running server")
    publish.add_argument("type", help="event type, e.g. repo.commit.created")
    publish.add_argument("--payload", default="{}", help="payload as a JSON object")
    publish.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    _token_argument(publish, "; it needs the publish and subscribe scopes")
    publish.set_defaults(run=_publish)

    record = commands.add_parser("record", help="record a live stream into a file")
    record.add_argument("url", help="ws://HOST:PORT/ws/events")
    record.add_argument("--out", required=True, help="events.db (SQLite) or events.jsonl")
    _subscription_arguments(record)
    record.add_argument("--count", type=int, help="stop after this many events")
    record.add_argument("--seconds", type=float, help="stop after this many seconds")
    _token_argument(record)
    record.set_defaults(run=_record)

    replay = commands.add_parser("replay", help="publish a recording again, with its spacing")
    replay.add_argument("file", help="a recording (.db or .jsonl) or sqlite:///path")
    replay.add_argument("--to", required=True, help="ws://HOST:PORT/ws/events to publish to")
    replay.add_argument("--speed", type=float, default=1.0, help="time scale (2: twice as fast)")
    replay.add_argument("--patterns", default="*", help="only these event types")
    _token_argument(replay)
    replay.set_defaults(run=_replay)
    return parser


def _token_argument(command: argparse.ArgumentParser, more: str = "") -> None:
    command.add_argument(
        "--token",
        default=os.environ.get("EVKIT_TOKEN") or None,
        help=f"bearer token of a server with auth (default: $EVKIT_TOKEN){more}",
    )


def _subscription_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--patterns", default="*", help="comma-separated patterns (default '*')")
    command.add_argument("--correlation-id", help="only events of this correlation ID")


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
                _progress(min(elapsed / args.seconds, 1.0), collector.stats()["received"])
                time.sleep(0.1)
            simulation.stop()
            evkit.flush()
            _progress(1.0, collector.stats()["received"])
            print()
            # Everything emitted has been written to the socket; wait until it was read.
            published = server.stats()["published"]
            if patterns == ["*"]:
                collector.wait(count=published, timeout=10)
            frame = collector.to_dataframe()
            stats = collector.stats()
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


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@contextlib.asynccontextmanager
async def _running(
    client: Subscriber | Publisher, url: str, timeout: float | None
) -> AsyncIterator[asyncio.Future[None]]:
    """Run ``client`` for the block, once it is connected (within ``timeout``, if given);
    the block gets the task running it.

    Raises:
        ConnectError: not connected within ``timeout``.
        ProtocolError: the server refused the connection (refusals are final here).
    """
    task = asyncio.ensure_future(client.run())
    try:
        if timeout is not None and not await client.connection.wait_started(task, timeout):
            error = client.connection.status.last_error or "no answer"
            raise ConnectError(f"{url} did not answer within {timeout:g} s ({error})")
        try:
            yield task
        finally:
            if task.done():
                task.result()  # what ended the client (a refusal) says most: it ends the command
    finally:
        await client.stop()
        await asyncio.wait((task,), timeout=5)
        task.cancel()


async def _until(
    done: asyncio.Event,
    running: asyncio.Future[None],
    seconds: float | None = None,
    tick: Callable[[], None] | None = None,
) -> None:
    """Wait until ``done`` is set, ``running`` ended or ``seconds`` passed; call ``tick``
    twice a second."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while not done.is_set() and not running.done():
        remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if remaining <= 0:
            return
        waiter = asyncio.ensure_future(done.wait())
        await asyncio.wait(
            (waiter, running), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if tick is not None:
            tick()


def _tail(args: argparse.Namespace) -> int:
    from evkit.client import Subscriber

    async def run() -> None:
        done = asyncio.Event()
        received = 0

        def show(message: dict[str, Any]) -> None:
            print(orjson.dumps(message).decode() if args.json else _one_line(message), flush=True)

        def on_event(event: dict[str, Any]) -> None:
            nonlocal received
            if done.is_set():
                return  # the rest arrived while stopping
            show(event)
            received += 1
            if args.count is not None and received >= args.count:
                done.set()

        subscriber = Subscriber(
            args.url,
            _patterns(args.patterns),
            args.correlation_id or None,
            on_event=on_event,
            on_message=show,
            batch=None,  # one frame per event: each is printed as it comes
            token=args.token,
        )
        async with _running(subscriber, args.url, _CONNECT_TIMEOUT) as running:
            await _until(done, running)

    asyncio.run(run())
    return 0


def _one_line(message: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime((message.get("timestamp") or 0) / 1000))
    payload = message.get("payload") or {}
    # System messages carry correlationId null (and events may lack it): a blank column.
    correlation = payload.get("correlationId") if isinstance(payload, dict) else None
    correlation = "" if correlation is None else str(correlation)
    body = orjson.dumps(payload).decode()
    if len(body) > 160:
        body = body[:157] + "..."
    event_id = str(message.get("id", "-"))
    return f"{stamp} {event_id:>6} {message.get('type', '?')!s:<36} {correlation:<12} {body}"


def _publisher(url: str, token: str | None, connect_timeout: float) -> Publisher:
    """A publisher for one command: no redaction, no retrying a refusal, no log lines."""
    from evkit.client.outbox import Outbox
    from evkit.client.publisher import Publisher

    outbox = Outbox(_REPLAY_WINDOW * 2, 500, lambda full: publisher.wake(full))
    publisher = Publisher(
        url,
        outbox,
        prepare=None,
        name="evkit",
        logger=_quiet_logger(),
        token=token,
        connect_timeout=connect_timeout,
        fatal_refusals=_ALL_REFUSALS,
        flush_interval=0.0,
        source_time=False,  # a replay is stamped as it happens, not with its recorded times
    )
    return publisher


def _quiet_logger() -> logging.Logger:
    # What went wrong is printed by the command itself, once.
    quiet = logging.getLogger("evkit.cli.publisher")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    return quiet


def _rejection(publisher: Publisher) -> str | None:
    """What the server said when it rejected published events, or None."""
    if publisher.outbox.counts()["rejected"]:
        return publisher.connection.status.last_error or "rejected"
    return None


def _publish(args: argparse.Namespace) -> int:
    from evkit.bus import Event
    from evkit.client import Subscriber
    from evkit.protocol import now_ms, validate_event_type

    validate_event_type(args.type)
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        print(f"evkit: --payload is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(payload, dict):
        print("evkit: --payload must be a JSON object", file=sys.stderr)
        return 2
    timeout = 5.0

    async def run() -> int:
        published: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == args.type and not published.done():
                published.set_result(event)

        publisher = _publisher(args.url, args.token, timeout)
        # Subscribed to its own type, to read the event back with the id it was given.
        subscriber = Subscriber(
            args.url, [args.type], on_event=on_event, batch=None, token=args.token
        )
        async with (
            _running(publisher, args.url, timeout),
            _running(subscriber, args.url, timeout),
        ):
            publisher.outbox.put(Event(args.type, now_ms(), payload))
            await asyncio.wait_for(publisher.confirmed(publisher.outbox.appended), timeout)
            rejected = _rejection(publisher)
            if rejected is not None:
                print(f"evkit: {rejected}", file=sys.stderr)
                return 1
            event = await asyncio.wait_for(published, timeout)
        print(f"published {args.type} as id {event['id']}")
        return 0

    try:
        return asyncio.run(run())
    except TimeoutError:
        print(f"evkit: {args.url} did not answer within {timeout:g} s", file=sys.stderr)
        return 1


def _record(args: argparse.Namespace) -> int:
    from evkit.client import Subscriber
    from evkit.recording import RecordingWriter

    writer = RecordingWriter(args.out)

    async def run() -> None:
        done = asyncio.Event()
        began = time.monotonic()

        def on_event(event: dict[str, Any]) -> None:
            if args.count is not None and writer.count >= args.count:
                return  # the rest arrived while stopping
            writer.write(event)
            if args.count is not None and writer.count >= args.count:
                done.set()

        subscriber = Subscriber(
            args.url,
            _patterns(args.patterns),
            args.correlation_id,
            on_event=on_event,
            token=args.token,
        )

        def progress() -> None:
            writer.flush()
            elapsed = max(time.monotonic() - began, 1e-9)
            stats = subscriber.stats()
            print(
                f"\rrecorded {writer.count:,} events ({writer.count / elapsed:,.0f}/s) "
                f"state {stats['state']}, {stats['reconnects']} reconnects, {stats['gaps']} gaps",
                end="",
                file=sys.stderr,
                flush=True,
            )

        try:
            # No first-connection timeout: a recorder may be started before its server.
            async with _running(subscriber, args.url, None) as running:
                await _until(done, running, args.seconds, progress)
        finally:
            print(file=sys.stderr)

    try:
        asyncio.run(run())
    finally:
        writer.close()
    print(f"recorded {writer.count:,} events into {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from evkit.bus import Event
    from evkit.recording import read_events

    if args.speed <= 0:
        print("evkit: --speed must be positive", file=sys.stderr)
        return 2
    events = read_events(args.file, _patterns(args.patterns))

    async def run() -> int:
        publisher = _publisher(args.to, args.token, _CONNECT_TIMEOUT)
        outbox = publisher.outbox
        loop = asyncio.get_running_loop()
        async with _running(publisher, args.to, _CONNECT_TIMEOUT):
            start = loop.time()
            first: int | None = None
            for event in events:
                timestamp = int(event.get("timestamp") or 0)
                first = timestamp if first is None else first
                delay = start + (timestamp - first) / 1000.0 / args.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif outbox.appended % 1000 == 0:
                    # Far behind the schedule: keep at most a window unconfirmed, so the
                    # outbox never drops the oldest.
                    await publisher.confirmed(outbox.appended - _REPLAY_WINDOW)
                outbox.put(Event(event["type"], timestamp, event.get("payload") or {}))
            # Confirmed: the server took every publish before the pong.
            await asyncio.wait_for(publisher.confirmed(outbox.appended), 30)
        rejected = _rejection(publisher)
        if rejected is not None:
            print(f"evkit: {rejected}", file=sys.stderr)
            return 1
        print(f"replayed {outbox.appended:,} events to {args.to} at {args.speed:g}x")
        return 0

    return asyncio.run(run())
