"""One stream of events through each store: memory, SQLite, and Redis Streams between two instances.

Usage::

    .venv/bin/python bench/stores.py
    .venv/bin/python bench/stores.py --events 20000 --runs 3 --stores memory sqlite
    .venv/bin/python bench/stores.py --pythonpath /tmp/evkit-head   # another evkit

The script starts one ``redis-server`` of its own (a temporary directory, a free port on
127.0.0.1, persistence off) and, per run, fresh broadcaster processes. Interleaved run by
run, in the same invocation:

memory
    One broadcaster process, ``evkit.serve(port=0)`` (the in-memory store); the events
    are emitted in it and one client is connected to it.
sqlite
    One broadcaster process, ``evkit.serve(port=0, store="sqlite:///<tmp>/events.db")``
    with a fresh database file per run; emitted in it, one client connected to it.
redis
    Two broadcaster processes A and B sharing one stream (``evkit.serve(port=0,
    store="redis://...", stream=...)``, a new stream per run); the events are emitted on
    A and the client is connected to B, so each event goes emit -> XADD -> XREAD on B ->
    the client. A has no client: it keeps what it reads back unparsed (only a replay
    from A would frame it).
redis-listening
    The same, with one more client, on A, subscribed to ``other.*`` (nothing emitted
    here matches): A then frames everything it reads back, as an instance serving
    clients does.

Every broadcaster is a child process running the same small script (the one of
``bench/redis_fanout.py``): it serves, prints its port, then emits what this process
tells it to on its stdin (``emit START COUNT``), so emitting costs the same in every
configuration. ``--pythonpath DIR`` runs the children with ``PYTHONPATH=DIR`` (and their
working directory elsewhere), so they import evkit from DIR: how a previous commit, checked
out in a worktree, is measured against this one.

The client is one plain ``websockets`` (asyncio) client in this process, subscribed to
``bench.*`` with ``batch=1000,20``, parsing every message with orjson. It waits for
``websocket.connected`` before the emit command is sent. Loss and repeats are checked
event by event: the client must count exactly ``--events`` events, with strictly
increasing ids and every ``seq`` from 0 to events - 1 exactly once; after the last event
it keeps reading until every broadcaster has flushed (and a short quiet spell), so a
repeat would be counted. Nothing paces the emitter: all events are sent in one command.

Metric: events per second = events / (time the client had the last event - time the
emit command was sent), the median of ``--runs`` (9) runs per store after ``--warmup``
(1) not counted: on the 2-CPU machine of bench/README.md the first run of each was up
to 35 % slower than the rest, for every store alike, and single runs of one store
spread by +-20 % within an invocation. Beside it, the steady rate: the events between
the client having 10 % and 90 % of them, over the time between (the start, with the
first id mark a durable store commits, and the last commit or read, left out). CPU:
each process's user+system
time (from /proc/PID/stat) over that interval, as a share of one core. Nothing is pinned.

Every run finishes or aborts within ``--timeout`` seconds (120 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets
from common import OtherLoad, RunAborted, evkit_revision
from redis_fanout import Broadcaster, RedisServer, process_cpu

HOST = "127.0.0.1"
PATH = "/ws/events?eventTypes=bench.*&batch=1000,20"
STORES = ("memory", "sqlite", "redis", "redis-listening")
REDIS = ("redis", "redis-listening")
# The client redis-listening keeps on A: subscribed, to a type nothing here emits.
IDLE_PATH = "/ws/events?eventTypes=other.*"
CLEANUP = 10.0  # seconds of --timeout kept for flushing and stopping
QUIET = 0.3  # seconds without a message, after every flush, before the count is final
WINDOW = (0.1, 0.9)  # shares of the events between which the steady rate is taken
NOISE = 0.10  # other processes' share of a core above which a run is flagged

# redis_fanout's INSTANCE, with the event type under bench.* and the evkit it imported.
INSTANCE = r"""
import sys

import orjson

import evkit

store, stream, name = sys.argv[1], sys.argv[2], sys.argv[3]
options = {"stream": stream} if store.startswith("redis://") else {}
srv = evkit.serve(port=0, store=store, **options)
print("listening", srv.port, evkit.__file__, flush=True)
emit = evkit.emit
for line in sys.stdin:
    words = line.split()
    if words[0] == "emit":
        start, count = int(words[1]), int(words[2])
        for seq in range(start, start + count):
            emit("bench.stores.event", {"seq": seq, "source": name, "value": 0.5})
    elif words[0] == "flush":
        evkit.flush(timeout=30)
        print("flushed", orjson.dumps(srv.stats()).decode(), flush=True)
    elif words[0] == "stop":
        break
srv.stop(timeout=5)
"""


class Child(Broadcaster):
    """redis_fanout's Broadcaster running INSTANCE above, with PYTHONPATH=``pythonpath``."""

    def __init__(self, store: str, stream: str, name: str, pythonpath: str | None, cwd: str):
        environment = dict(os.environ)
        environment.pop("PYTHONPATH", None)
        if pythonpath:
            environment["PYTHONPATH"] = pythonpath
        # ``python -c`` puts its working directory first on sys.path: keep it out of a checkout.
        super().__init__(store, stream, name, None, script=INSTANCE, env=environment, cwd=cwd)
        self.module = ""

    def wait_listening(self, deadline: float) -> None:
        words = self.expect("listening", deadline)  # [port, evkit.__file__]
        self.port = int(words[0])
        self.module = words[1] if len(words) > 1 else "?"


def id_key(ident: Any) -> Any:
    """An event id as something that orders like the stream: ids are decimal strings
    ("1", "10"), compared as integers; a Redis-style "ms-seq" as a pair."""
    if isinstance(ident, str):
        head, _, tail = ident.partition("-")
        return (int(head), int(tail or 0))
    return (ident, 0)


@dataclass
class Count:
    """What the client saw: events, and whether ids and seqs were as they must be."""

    events: int
    received: int = 0
    last_id: Any = None
    id_errors: int = 0
    seq_errors: int = 0  # out of range or seen before
    last_at: float = 0.0
    # When the client had WINDOW[0] and WINDOW[1] of the events (the steady rate's window).
    window_at: list[float] = field(default_factory=list)
    marks: tuple[int, ...] = ()
    done: asyncio.Event = field(default_factory=asyncio.Event)
    seen: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.seen = bytearray(self.events)
        self.marks = tuple(max(1, int(self.events * share)) for share in WINDOW)

    def take(self, event: dict[str, Any]) -> None:
        ident = id_key(event.get("id"))
        if self.last_id is not None and not (ident > self.last_id):
            self.id_errors += 1
        self.last_id = ident
        seq = event["payload"]["seq"]
        if 0 <= seq < self.events and not self.seen[seq]:
            self.seen[seq] = 1
        else:
            self.seq_errors += 1
        self.received += 1
        if self.received in self.marks:
            self.window_at.append(time.monotonic())
        if self.received == self.events:
            self.last_at = time.monotonic()
            self.done.set()

    @property
    def ok(self) -> bool:
        return self.received == self.events and not self.id_errors and not self.seq_errors


@dataclass
class RunResult:
    store: str
    events: int
    seconds: float = 0.0
    elapsed: float = 0.0
    broadcaster_cpu: list[float] = field(default_factory=list)  # seconds, per process
    redis_cpu: float = 0.0
    client_cpu: float = 0.0  # this process: the client (and not much else)
    others: OtherLoad = field(default_factory=OtherLoad)
    received: int = 0
    id_errors: int = 0
    seq_errors: int = 0
    batches: int = 0
    singles: int = 0
    stats: list[dict[str, Any]] = field(default_factory=list)
    module: str = ""
    error: str | None = None

    steady_seconds: float = 0.0  # between the client having WINDOW[0] and WINDOW[1] of them

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        window = self.events * (WINDOW[1] - WINDOW[0])
        return window / self.steady_seconds if self.steady_seconds > 0 else 0.0

    def share(self, seconds: float) -> float:
        return seconds / self.seconds if self.seconds > 0 else 0.0


async def read(connection: Any, count: Count, result: RunResult) -> None:
    """Take every event the connection delivers into ``count``."""
    loads = orjson.loads
    async for message in connection:
        data = loads(message)
        kind = data.get("type")
        if kind == "websocket.batch":
            result.batches += 1
            for event in data["payload"]["events"]:
                count.take(event)
        elif kind and not kind.startswith("websocket."):
            result.singles += 1
            count.take(data)


async def run_once(
    store: str,
    redis: RedisServer | None,
    run: int,
    events: int,
    timeout: float,
    pythonpath: str | None,
) -> RunResult:
    """One run of ``store``, within ``timeout``; failures go to the result's ``error``."""
    result = RunResult(store, events)
    began = time.monotonic()
    deadline = began + timeout - CLEANUP
    workdir = tempfile.TemporaryDirectory(prefix="evkit-bench-stores-")
    stream = f"bench:stores:{os.getpid()}:{run}"
    if store == "memory":
        url, names = "memory://", ["a"]
    elif store == "sqlite":
        url, names = f"sqlite:///{workdir.name}/events.db", ["a"]
    else:
        assert redis is not None
        url, names = redis.url, ["a", "b"]
    children: list[Child] = []
    reader: asyncio.Task[None] | None = None
    count = Count(events)
    try:
        children = [Child(url, stream, name, pythonpath, workdir.name) for name in names]
        for child in children:
            await asyncio.to_thread(child.wait_listening, deadline)
        result.module = children[0].module
        emitter, listener = children[0], children[-1]
        async with (
            asyncio.timeout(max(0.1, deadline - time.monotonic())),
            contextlib.AsyncExitStack() as idle,
        ):
            if store == "redis-listening":  # A then frames all it reads, as for clients
                other = await idle.enter_async_context(
                    websockets.connect(f"ws://{HOST}:{emitter.port}{IDLE_PATH}", ping_interval=None)
                )
                if orjson.loads(await other.recv()).get("type") != "websocket.connected":
                    raise RunAborted("A's idle client was not welcomed")
            async with websockets.connect(
                f"ws://{HOST}:{listener.port}{PATH}",
                compression=None,
                max_size=None,
                max_queue=None,
                ping_interval=None,
            ) as connection:
                hello = orjson.loads(await connection.recv())
                if hello.get("type") != "websocket.connected":
                    raise RunAborted(f"first message was {hello.get('type')!r}")
                reader = asyncio.create_task(read(connection, count, result))
                result.others.start()
                cpu0 = [child.cpu() for child in children]
                redis0 = process_cpu(redis.process.pid) if store in REDIS and redis else 0.0
                me0 = process_cpu(os.getpid())
                started = time.monotonic()
                emitter.send(f"emit 0 {events}")
                done = asyncio.create_task(count.done.wait())
                finished, _ = await asyncio.wait({reader, done}, return_when="FIRST_COMPLETED")
                if done not in finished:
                    done.cancel()
                    raise RunAborted(f"the connection closed after {count.received} events")
                result.seconds = count.last_at - started
                if len(count.window_at) == 2:
                    result.steady_seconds = count.window_at[1] - count.window_at[0]
                result.broadcaster_cpu = [
                    c.cpu() - c0 for c, c0 in zip(children, cpu0, strict=True)
                ]
                if store in REDIS and redis:
                    result.redis_cpu = process_cpu(redis.process.pid) - redis0
                result.client_cpu = process_cpu(os.getpid()) - me0
                result.others.stop()
                # Every broadcaster flushed, then a quiet spell: a repeat would be here by now.
                for child in children:
                    result.stats.append(await asyncio.to_thread(child.flush, deadline))
                heard = -1
                while heard != count.received and not reader.done():
                    heard = count.received
                    await asyncio.sleep(QUIET)
    except (RunAborted, TimeoutError, OSError, websockets.WebSocketException) as exc:
        result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        for child in children:
            await asyncio.to_thread(child.stop)
        if redis is not None and store in REDIS:
            with contextlib.suppress(Exception):
                redis.client.delete(stream)
        workdir.cleanup()
        result.elapsed = time.monotonic() - began
    result.received, result.id_errors, result.seq_errors = (
        count.received,
        count.id_errors,
        count.seq_errors,
    )
    if result.error is None and not count.ok:
        result.error = (
            f"received {count.received} of {events} events, {count.id_errors} ids not "
            f"increasing, {count.seq_errors} seqs repeated or out of range"
        )
    return result


def describe(result: RunResult) -> str:
    name = f"{result.store:7}"
    if result.error:
        return f"  {name} ABORTED after {result.elapsed:.1f} s: {result.error}"
    cpu = ", ".join(f"{result.share(seconds):.0%}" for seconds in result.broadcaster_cpu)
    dropped = sum(s.get("dropped", 0) for s in result.stats)
    line = (
        f"  {name} {result.rate:>9,.0f} events/s in {result.seconds:5.2f} s (steady "
        f"{result.steady_rate:,.0f}); received "
        f"{result.received}, ids increasing, seqs once each ({result.batches} batches, "
        f"{result.singles} single frames), dropped {dropped}; CPU (share of a core): "
        f"broadcasters {cpu}"
    )
    if result.store in REDIS:
        line += f", redis-server {result.share(result.redis_cpu):.0%}"
    line += (
        f", client {result.share(result.client_cpu):.0%}, other processes "
        f"{result.share(result.others.seconds):.0%}; run took {result.elapsed:.1f} s"
    )
    return line


def summarize(results: Sequence[RunResult], stores: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for store in stores:
        good = [r for r in results if r.store == store and not r.error]
        row[store] = round(statistics.median(r.rate for r in good)) if good else None
        row[f"{store}_runs"] = len(good)
        row[f"{store}_steady"] = (
            round(statistics.median(r.steady_rate for r in good)) if good else None
        )
        if good:
            row[f"{store}_cpu"] = [
                round(statistics.median(r.share(r.broadcaster_cpu[k]) for r in good), 3)
                for k in range(len(good[0].broadcaster_cpu))
            ]
            row[f"{store}_client_cpu"] = round(
                statistics.median(r.share(r.client_cpu) for r in good), 3
            )
            if store in REDIS:
                row[f"{store}_server_cpu"] = round(
                    statistics.median(r.share(r.redis_cpu) for r in good), 3
                )
    memory, memory_steady = row.get("memory"), row.get("memory_steady")
    for store in stores:
        if store != "memory" and memory and row.get(store):
            row[f"{store}_vs_memory"] = round(row[store] / memory, 3)
        if store != "memory" and memory_steady and row.get(f"{store}_steady"):
            row[f"{store}_steady_vs_memory"] = round(row[f"{store}_steady"] / memory_steady, 3)
    finished = [r for r in results if not r.error]
    row["others"] = round(max((r.share(r.others.seconds) for r in finished), default=0.0), 3)
    return row


async def measure(args: argparse.Namespace, redis: RedisServer | None) -> list[RunResult]:
    results: list[RunResult] = []
    for run in range(args.warmup + args.runs):
        for store in args.stores:
            result = await run_once(store, redis, run, args.events, args.timeout, args.pythonpath)
            if run == 0 and not result.error:
                print(f"  ({store}: children imported {result.module})", flush=True)
            if run < args.warmup:  # a cold first run (page cache, CPU clocks): not counted
                print("  warm-up:" + describe(result)[1:], flush=True)
                continue
            print(describe(result), flush=True)
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per run")
    parser.add_argument("--runs", type=int, default=9, help="runs per store; medians reported")
    parser.add_argument(
        "--warmup", type=int, default=1, help="runs per store first, not counted (cold start)"
    )
    parser.add_argument(
        "--stores", nargs="+", choices=STORES, default=list(STORES), help="stores to measure"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take")
    parser.add_argument(
        "--pythonpath",
        default=None,
        metavar="DIR",
        help="run the broadcaster children with PYTHONPATH=DIR (evkit imported from DIR)",
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--events >= 1, --runs >= 1, --warmup >= 0")
    if args.timeout <= CLEANUP + 1:
        parser.error(f"--timeout must be more than {CLEANUP + 1:.0f} seconds")
    if args.pythonpath:
        args.pythonpath = os.path.abspath(args.pythonpath)
        if not os.path.isfile(os.path.join(args.pythonpath, "evkit", "__init__.py")):
            parser.error(f"no evkit package in {args.pythonpath}")

    redis = RedisServer(None, None) if set(REDIS) & set(args.stores) else None
    print(
        f"stores: {platform.python_implementation()} {platform.python_version()}, "
        f"websockets {websockets.__version__}, evkit {evkit_revision(args.pythonpath)}, "
        + (f"redis-server {redis.version} (no persistence), " if redis else "")
        + f"{os.cpu_count()} CPUs, unpinned; {args.events:,} events per run, one client "
        f"with batch=1000,20; load average {os.getloadavg()[0]:.2f}"
    )
    try:
        results = asyncio.run(measure(args, redis))
    finally:
        if redis is not None:
            redis.stop()
    row = summarize(results, args.stores)
    print(f"\nmedian of {args.runs} runs, events/s delivered to the client")
    print(
        "| store | events/s | vs memory | steady events/s | vs memory | broadcaster CPU "
        "| redis-server CPU | client CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for store in args.stores:
        rate = row[store]
        if rate is None:
            print(f"| {store} | aborted | | | | | | |")
            continue
        memory = row.get("memory")
        ratio = f"{rate / memory:.2f}" if memory else "n/a"
        steady, memory_steady = row[f"{store}_steady"], row.get("memory_steady")
        steady_ratio = f"{steady / memory_steady:.2f}" if memory_steady and steady else "n/a"
        cpu = " + ".join(f"{share:.0%}" for share in row[f"{store}_cpu"])
        redis_cpu = f"{row[f'{store}_server_cpu']:.0%}" if store in REDIS else ""
        print(
            f"| {store} | {rate:,} | {ratio} | {steady or 0:,} | {steady_ratio} | {cpu} | "
            f"{redis_cpu} | "
            f"{row[f'{store}_client_cpu']:.0%} |"
        )
    if row["others"] > NOISE:
        print(
            f"\nwarning: other processes used up to {row['others']:.0%} of a core during a run;"
            " the machine was not quiet: run again"
        )
    row["events"] = args.events
    row["runs"] = args.runs
    row["pythonpath"] = args.pythonpath
    print(orjson.dumps(row).decode())
    failed = any(r.error for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
