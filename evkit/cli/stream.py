"""``evkit tail``, ``publish``, ``record`` and ``replay``: clients of a running server.

Each finds its server with :mod:`evkit.cli.target`'s options, waits at most
``--connect-timeout`` for the first connection (a server that cannot be reached, or
refuses, ends the command with exit code 1 and one line saying why), and then keeps
its connection the way evkit's clients do (reconnecting, resuming). Progress lines go
to stderr, and only on a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evkit.cli.target import add_target_arguments, deprecated_url, running, target, until
from evkit.exceptions import ConfigError

if TYPE_CHECKING:
    from evkit.cli.target import Target
    from evkit.client.publisher import Publisher

__all__ = ["add_parsers", "one_line"]

_REPLAY_WINDOW = 5_000  # events replay may have sent and not yet seen confirmed
#: A command does not retry a refused handshake: it says why and exits.
_ALL_REFUSALS = tuple(range(400, 600))


def add_parsers(commands: Any) -> None:
    """Add ``tail``, ``publish``, ``record`` and ``replay`` to the subcommands."""
    tail = commands.add_parser("tail", help="print the events of a running server")
    tail.add_argument("old_url", nargs="?", metavar="URL", help="deprecated: use --url")
    _subscription_arguments(tail)
    tail.add_argument("--count", type=int, help="exit after this many events")
    tail.add_argument("--json", action="store_true", help="print each message as a JSON line")
    add_target_arguments(tail)
    tail.set_defaults(run=_tail)

    publish = commands.add_parser("publish", help="publish one event to a running server")
    publish.add_argument("type", help="event type, e.g. repo.commit.created")
    publish.add_argument("--payload", default="{}", help="payload as a JSON object")
    add_target_arguments(publish)
    publish.set_defaults(run=_publish)

    record = commands.add_parser("record", help="record a live stream into a file")
    record.add_argument("old_url", nargs="?", metavar="URL", help="deprecated: use --url")
    record.add_argument("--out", required=True, help="events.db (SQLite) or events.jsonl")
    _subscription_arguments(record)
    record.add_argument("--count", type=int, help="stop after this many events")
    record.add_argument("--seconds", type=float, help="stop after this many seconds")
    add_target_arguments(record)
    record.set_defaults(run=_record)

    replay = commands.add_parser("replay", help="publish a recording again, with its spacing")
    replay.add_argument("file", help="a recording (.db or .jsonl) or sqlite:///path")
    replay.add_argument("--speed", type=float, default=1.0, help="time scale (2: twice as fast)")
    replay.add_argument("--patterns", default="*", help="only these event types")
    replay.add_argument("--to", dest="old_url", help=argparse.SUPPRESS)  # before --url
    add_target_arguments(replay)
    replay.set_defaults(run=_replay)


def _subscription_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--patterns", default="*", help="comma-separated patterns (default '*')")
    command.add_argument("--correlation-id", help="only events of this correlation ID")


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _client_target(args: argparse.Namespace, how: str) -> Target:
    deprecated_url(args, getattr(args, "old_url", None), how)
    # Warnings of the clients (a reconnection, a gap) go to stderr, one line each.
    logging.basicConfig(level=logging.WARNING, format="evkit: %(message)s")
    return target(args)


def _count(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be a positive number of events, got {value}")


# -- tail ------------------------------------------------------------------------------------


def _tail(args: argparse.Namespace) -> int:
    from evkit.client import Subscriber

    server = _client_target(args, "the URL as an argument of tail")
    _count(args.count, "--count")

    async def run() -> None:
        done = asyncio.Event()
        received = 0

        def show(message: dict[str, Any]) -> None:
            print(orjson.dumps(message).decode() if args.json else one_line(message), flush=True)

        def on_event(event: dict[str, Any]) -> None:
            nonlocal received
            if done.is_set():
                return  # the rest arrived while stopping
            show(event)
            received += 1
            if args.count is not None and received >= args.count:
                done.set()

        subscriber = Subscriber(
            server.url,
            _patterns(args.patterns),
            args.correlation_id or None,
            on_event=on_event,
            on_message=show,
            batch=None,  # one frame per event: each is printed as it comes
            token=server.token,
            ssl=server.ssl,
        )
        async with running(subscriber, server.url, server.connect_timeout) as task:
            await until(done, task)

    asyncio.run(run())
    return 0


def one_line(message: dict[str, Any]) -> str:
    """A server message as one line of ``evkit tail``: time, id, type, correlation, payload."""
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


# -- publish and replay ----------------------------------------------------------------------


def _publisher(server: Target) -> Publisher:
    """A publisher for one command: no redaction, no retrying a refusal, no log lines."""
    from evkit.client.outbox import Outbox
    from evkit.client.publisher import Publisher

    outbox = Outbox(_REPLAY_WINDOW * 2, 500, lambda full: publisher.wake(full))
    publisher = Publisher(
        server.url,
        outbox,
        prepare=None,
        name="evkit",
        logger=_quiet_logger(),
        token=server.token,
        connect_timeout=server.connect_timeout,
        fatal_refusals=_ALL_REFUSALS,
        flush_interval=0.0,
        source_time=False,  # a replay is stamped as it happens, not with its recorded times
        ssl=server.ssl,
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

    server = _client_target(args, "")
    try:
        validate_event_type(args.type)
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--payload is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(payload, dict):
        raise ConfigError('--payload must be a JSON object, such as \'{"path": "/src"}\'')
    timeout = server.connect_timeout

    async def run() -> int:
        published: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == args.type and not published.done():
                published.set_result(event)

        publisher = _publisher(server)
        # Subscribed to its own type, to read the event back with the id it was given.
        subscriber = Subscriber(
            server.url,
            [args.type],
            on_event=on_event,
            batch=None,
            token=server.token,
            ssl=server.ssl,
        )
        async with (
            running(publisher, server.url, timeout),
            running(subscriber, server.url, timeout),
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
        print(f"evkit: {server.url} did not answer within {timeout:g} s", file=sys.stderr)
        return 1


def _replay(args: argparse.Namespace) -> int:
    from evkit.bus import Event
    from evkit.recording import read_events

    server = _client_target(args, "--to")
    if not args.speed > 0:
        raise ConfigError(f"--speed must be positive, got {args.speed:g}")
    events = read_events(args.file, _patterns(args.patterns))

    async def run() -> int:
        publisher = _publisher(server)
        outbox = publisher.outbox
        loop = asyncio.get_running_loop()
        async with running(publisher, server.url, server.connect_timeout):
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
        print(f"replayed {outbox.appended:,} events to {server.url} at {args.speed:g}x")
        return 0

    return asyncio.run(run())


# -- record ----------------------------------------------------------------------------------


def _record(args: argparse.Namespace) -> int:
    from evkit.client import Subscriber
    from evkit.recording import RecordingWriter

    server = _client_target(args, "the URL as an argument of record")
    _count(args.count, "--count")
    if args.seconds is not None and not args.seconds > 0:
        raise ConfigError(f"--seconds must be positive, got {args.seconds:g}")
    existed = Path(args.out).exists()
    writer = RecordingWriter(args.out)
    on_terminal = sys.stderr.isatty()

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
            server.url,
            _patterns(args.patterns),
            args.correlation_id,
            on_event=on_event,
            token=server.token,
            ssl=server.ssl,
        )

        def progress() -> None:
            writer.flush()
            if not on_terminal:
                return
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
            # The first connection has a deadline; after it, the recorder rides out a
            # server restart (reconnecting, resuming) until it is done.
            async with running(subscriber, server.url, server.connect_timeout) as task:
                await until(done, task, args.seconds, progress)
        finally:
            if on_terminal:
                print(file=sys.stderr)

    try:
        asyncio.run(run())
    except BaseException:
        writer.close()
        if not existed and writer.count == 0:
            writer.path.unlink(missing_ok=True)  # no empty file left by a failed start
        raise
    writer.close()
    print(f"recorded {writer.count:,} events into {args.out}")
    return 0
