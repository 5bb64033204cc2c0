"""Fan-out through the Redis Streams backplane: 2 instances x 50 clients against 1 x 100 in memory.

Usage::

    .venv/bin/python bench/redis_fanout.py --runs 3
    .venv/bin/python bench/redis_fanout.py --events 20000 --runs 3 --emit-on one both
    .venv/bin/python bench/redis_fanout.py --runs 3 --appendfsync always   # AOF on, fsync per write

The script starts one ``redis-server`` of its own (a temporary directory, a free port on
127.0.0.1; persistence off unless ``--appendfsync`` says otherwise) and, per run, fresh
broadcaster processes. Interleaved run by run, in the same invocation:

reference
    One broadcaster process (``evkit.serve(port=0)``, the in-memory store) and 100
    clients. Its main thread emits ``--events`` events.
redis, emitted on one
    Two broadcaster processes sharing one stream (``evkit.serve(port=0,
    store="redis://...", stream=...)``), 50 clients on each; all events are emitted on
    the first. Each event goes emit -> XADD -> XREAD on both instances -> their clients.
redis, emitted on both
    The same, with the events emitted in chunks alternating between the two instances.

Every broadcaster is a child process running the same small script: it serves, prints its
port, then emits what this process tells it to on its stdin (``emit START COUNT``), so
emitting costs the same in every configuration, and the instances of one run are really
separate processes with their own loops, as in a deployment.

Clients are the raw-socket event-counting clients of ``bench/_timing_clients.py`` in two
worker processes (one per instance in the Redis runs), subscribed to ``*``, one frame per
event. A credit rule bounds every write buffer: at most ``--window`` events beyond the
slowest client, so what is measured is sustained delivery and nobody is cut as a slow
consumer. Loss and repeats are checked by ids: every client must count exactly
``--events`` events (the workers keep reading until every broadcaster has flushed, so a
repeat would be counted), and its last event must carry ``seq == events - 1``, the last
one emitted (in "both" mode it is emitted only once every client had all the others, so
it is last in the stream too).

Metric: events per second delivered to every client = events / (time the last client had
its last event - time of the first emit command); deliveries per second = that x clients.
CPU: each process's user+system time over the measured interval, as a share of one core.

Every run finishes or aborts within ``--timeout`` seconds (90 by default).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import websockets
from _timing_clients import CreditPacer, EventBoard, EventClients
from common import OtherLoad, RunAborted, evkit_revision, wait_until

HOST = "127.0.0.1"
PATH = "/ws/events"
CLEANUP = 10.0  # seconds of --timeout kept for stopping clients and broadcasters
NOISE = 0.10  # other processes' share of a core above which a run is flagged
TICK = os.sysconf("SC_CLK_TCK")

INSTANCE = r"""
import os
import sys

cpus = sys.argv[4]
if cpus:  # before evkit starts its loop thread, which inherits it
    os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})

import orjson

import evkit

store, stream, name = sys.argv[1], sys.argv[2], sys.argv[3]
options = {"stream": stream} if store.startswith("redis://") else {}
srv = evkit.serve(port=0, store=store, **options)
print("listening", srv.port, flush=True)
emit = evkit.emit
for line in sys.stdin:
    words = line.split()
    if words[0] == "emit":
        start, count = int(words[1]), int(words[2])
        for seq in range(start, start + count):
            emit("bench.redis.event", {"seq": seq, "source": name, "value": 0.5})
    elif words[0] == "flush":
        evkit.flush(timeout=30)
        print("flushed", orjson.dumps(srv.stats()).decode(), flush=True)
    elif words[0] == "stop":
        break
srv.stop(timeout=5)
"""


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


@contextlib.contextmanager
def affinity(cpus: set[int] | None) -> Iterator[None]:
    """Run the block on ``cpus``: a process started in it inherits them."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """The benchmark's own redis-server: a temporary directory, a free port, killed at exit."""

    def __init__(self, appendfsync: str | None, cpus: set[int] | None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: apt-get install redis-server")
        self.directory = tempfile.TemporaryDirectory(prefix="evkit-bench-redis-")
        self.port = free_port()
        args = [binary, "--port", str(self.port), "--bind", HOST, "--save", ""]
        args += ["--dir", self.directory.name, "--logfile", f"{self.directory.name}/redis.log"]
        if appendfsync:
            args += ["--appendonly", "yes", "--appendfsync", appendfsync]
        else:
            args += ["--appendonly", "no"]
        with affinity(cpus):
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(host=HOST, port=self.port, socket_timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.01)
        self.version = self.client.info("server")["redis_version"]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def stream_bytes(self, key: str) -> int:
        """What Redis says the stream ``key`` takes in memory."""
        return int(self.client.memory_usage(key, samples=0) or 0)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)
        self.directory.cleanup()


class Broadcaster:
    """One broadcaster process running INSTANCE; commands on stdin, answers on stdout."""

    def __init__(
        self,
        store: str,
        stream: str,
        name: str,
        cpus: set[int] | None,
        *,
        script: str = INSTANCE,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        """Start ``script`` (this module's INSTANCE, or another bench's with the same
        ``store stream name cpus`` arguments) with ``env`` and ``cwd`` if given."""
        cpu_list = ",".join(str(cpu) for cpu in sorted(cpus)) if cpus else ""
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, store, stream, name, cpu_list],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
            cwd=cwd,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()
        self.port = 0

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line.rstrip("\n"))
            del self.errors[:-20]

    def expect(self, word: str, deadline: float) -> list[str]:
        """The next stdout line, which must start with ``word``; its other words."""
        try:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise RunAborted(f"no {word!r} from a broadcaster in time") from None
        if line is None:
            raise RunAborted(
                f"a broadcaster exited ({self.process.poll()}): " + " | ".join(self.errors[-5:])
            )
        head, _, rest = line.partition(" ")
        if head != word:
            raise RunAborted(f"a broadcaster said {line!r}, expected {word!r}")
        return rest.split(" ", 1) if rest else []

    def wait_listening(self, deadline: float) -> None:
        self.port = int(self.expect("listening", deadline)[0])

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def flush(self, deadline: float) -> dict[str, Any]:
        self.send("flush")
        stats: dict[str, Any] = orjson.loads(self.expect("flushed", deadline)[0])
        return stats

    def cpu(self) -> float:
        return process_cpu(self.process.pid)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("stop")
        try:
            self.process.wait(8)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass
class RunResult:
    system: str
    instances: int
    clients: int
    events: int
    delivered: int = 0
    seconds: float = 0.0
    elapsed: float = 0.0
    last_ok: bool = True
    broadcaster_cpu: list[float] = field(default_factory=list)  # seconds, per process
    redis_cpu: float = 0.0
    client_cpu: float = 0.0
    others: OtherLoad = field(default_factory=OtherLoad)
    stats: list[dict[str, Any]] = field(default_factory=list)
    stream_bytes: int = 0
    error: str | None = None

    @property
    def rate(self) -> float:
        """Events per second delivered to every client."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def deliveries(self) -> float:
        return self.rate * self.clients

    @property
    def lost(self) -> int:
        return self.clients * self.events - self.delivered


def run_once(
    system: str,
    redis: RedisServer | None,
    run: int,
    clients: int,
    events: int,
    window: int,
    timeout: float,
    server_cpus: set[int] | None,
    client_cpus: set[int] | None,
) -> RunResult:
    """One run of ``system`` ("reference", "redis-one" or "redis-both"), within ``timeout``.

    Failures (a deadline passed, a client worker or broadcaster died) are reported in
    the result's ``error``, not raised.
    """
    count = 1 if system == "reference" else 2
    result = RunResult(system, count, clients, events)
    began = time.monotonic()
    deadline = began + timeout - CLEANUP
    stream = f"bench:redis-fanout:{run}:{system}"
    store = "memory://" if redis is None else redis.url
    broadcasters: list[Broadcaster] = []
    groups: list[EventClients] = []
    boards: list[EventBoard] = []
    try:
        with affinity(server_cpus):
            broadcasters = [Broadcaster(store, stream, f"i{k}", server_cpus) for k in range(count)]
        for broadcaster in broadcasters:
            broadcaster.wait_listening(deadline)
        per_instance = clients // count
        workers = 2 // count  # two client processes in every configuration
        with affinity(client_cpus):
            for broadcaster in broadcasters:
                board = EventBoard.create([events] * per_instance, workers)
                boards.append(board)
                groups.append(
                    EventClients.start(
                        board,
                        HOST,
                        broadcaster.port,
                        [PATH] * per_instance,
                        preamble=1,  # websocket.connected
                        phase_from=-1,
                        timed_from=-1,
                        deadline=deadline + 1,
                        poll_interval=min(0.05, max(0.001, per_instance * 0.00005)),
                        cpus=client_cpus,
                    )
                )
        for board in boards:
            wait_until(board.all_ready, deadline, "clients to connect", board)

        def position() -> int:
            return min(board.min_events() for board in boards)

        targets = broadcasters if system == "redis-both" else broadcasters[:1]
        pacer = CreditPacer(position, window, events, deadline)
        chunk = max(1, window // 4)
        # In "both" mode the last event waits until every client had all the others, so it
        # is the last in the stream whichever instance was quicker with its chunks.
        limit = events - 1 if len(targets) > 1 else events
        result.others.start()
        cpu0 = [b.cpu() for b in broadcasters]
        redis0 = process_cpu(redis.process.pid) if redis else 0.0
        started = time.monotonic()
        sent, allowed, turn = 0, min(events, window), 0
        while sent < limit:
            if sent >= allowed:
                allowed = pacer.allowance()
                if sent >= allowed:
                    allowed = pacer.wait(sent)
            n = min(chunk, allowed - sent, limit - sent)
            targets[turn % len(targets)].send(f"emit {sent} {n}")
            turn += 1
            sent += n
        if limit < events:
            for board in boards:
                wait_until(lambda b=board: b.all_past(limit), deadline, "all but the last", board)
            targets[0].send(f"emit {limit} 1")
        for board in boards:
            wait_until(board.all_done, deadline, "the last client to receive everything", board)
        result.seconds = max(max(board.done_at) for board in boards) - started
        result.broadcaster_cpu = [b.cpu() - c for b, c in zip(broadcasters, cpu0, strict=True)]
        result.redis_cpu = (process_cpu(redis.process.pid) - redis0) if redis else 0.0
        result.others.stop()
        # Every broadcaster flushed: anything repeated would have been written by now.
        result.stats = [b.flush(deadline) for b in broadcasters]
        for group in groups:
            group.stop(timeout=3.0)
        groups = []
        result.delivered = sum(board.total_events() for board in boards)
        result.last_ok = all(seq == events - 1 for board in boards for seq in board.last_seq)
        result.client_cpu = sum(sum(board.worker_cpu("ready", "done")) for board in boards)
        if redis is not None:
            result.stream_bytes = redis.stream_bytes(stream)
    except (RunAborted, TimeoutError, OSError) as exc:
        result.error = str(exc) or type(exc).__name__
        result.delivered = sum(board.total_events() for board in boards)
    finally:
        for group in groups:
            group.stop(timeout=1.0)
        for broadcaster in broadcasters:
            broadcaster.stop()
        if redis is not None:
            with contextlib.suppress(Exception):
                redis.client.delete(stream)
        result.elapsed = time.monotonic() - began
    if result.error is None and (result.lost or not result.last_ok):
        result.error = (
            f"lost {result.lost} deliveries (negative: repeats), last seq ok {result.last_ok}"
        )
    return result


def label(system: str, clients: int) -> str:
    if system == "reference":
        return f"1 instance, memory, {clients} clients"
    where = "one" if system == "redis-one" else "both"
    return f"2 instances via Redis, 2 x {clients // 2} clients, emitted on {where}"


def describe(result: RunResult, wall_cpu: bool = True) -> str:
    name = f"{result.system:10}"
    if result.error:
        return f"  {name} ABORTED after {result.elapsed:.1f} s: {result.error}"
    seconds = result.seconds
    cpu = ", ".join(f"{share / seconds:.0%}" for share in result.broadcaster_cpu)
    dropped = sum(s.get("dropped", 0) for s in result.stats)
    slow = sum(s.get("slow_consumer_disconnects", 0) for s in result.stats)
    line = (
        f"  {name} {result.rate:>8,.0f} events/s ({result.deliveries:>9,.0f} deliveries/s)"
        f" in {seconds:5.2f} s, lost {result.lost}, last seq ok {result.last_ok},"
        f" dropped {dropped}, slow-consumer disconnects {slow}; CPU (share of a core):"
        f" broadcasters {cpu}"
    )
    if result.system != "reference":
        line += f", redis-server {result.redis_cpu / seconds:.0%}"
        if result.stream_bytes:
            line += f"; stream {result.stream_bytes / result.events:,.0f} bytes/event in Redis"
    line += (
        f", clients {result.client_cpu / seconds:.0%}, other processes "
        f"{result.others.seconds / seconds:.0%}; run took {result.elapsed:.1f} s"
    )
    return line


def summarize(results: Sequence[RunResult], systems: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for system in systems:
        good = [r for r in results if r.system == system and not r.error]
        row[system] = statistics.median(r.rate for r in good) if good else None
        row[f"{system}_runs"] = len(good)
        if good:
            row[f"{system}_cpu"] = statistics.median(
                sum(r.broadcaster_cpu) / r.seconds for r in good
            )
            row[f"{system}_redis_cpu"] = statistics.median(r.redis_cpu / r.seconds for r in good)
            row[f"{system}_bytes"] = statistics.median(r.stream_bytes / r.events for r in good)
    finished = [r for r in results if not r.error]
    row["others"] = max((r.others.seconds / r.seconds for r in finished), default=0.0)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--clients", type=int, default=100, help="clients in all (even)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system; medians reported")
    parser.add_argument(
        "--emit-on",
        nargs="+",
        choices=("one", "both"),
        default=["one", "both"],
        help="Redis runs: emit on the first instance, or alternate between both",
    )
    parser.add_argument(
        "--window", type=int, default=4_096, help="most events beyond the slowest client"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds a run may take")
    parser.add_argument(
        "--appendfsync",
        choices=("everysec", "always"),
        default=None,
        help="turn on Redis' append-only file with this fsync policy (default: no persistence)",
    )
    parser.add_argument(
        "--pin",
        choices=("split", "none"),
        default="split",
        help="split: broadcasters and redis-server on the first CPU, clients on the others "
        "(the same cores for every configuration); none: let the scheduler place them",
    )
    args = parser.parse_args(argv)
    if args.events < 2 or args.runs < 1 or args.window < 4 or args.clients < 2:
        parser.error("--events >= 2, --runs >= 1, --window >= 4, --clients >= 2")
    if args.clients % 2:
        parser.error("--clients must be even (half on each instance)")
    if args.timeout <= CLEANUP + 1:
        parser.error(f"--timeout must be more than {CLEANUP + 1:.0f} seconds")

    available = sorted(os.sched_getaffinity(0))
    server_cpus: set[int] | None = None
    client_cpus: set[int] | None = None
    placement = "unpinned"
    if args.pin == "split" and len(available) >= 2:
        server_cpus, client_cpus = {available[0]}, set(available[1:])
        placement = (
            f"broadcasters and redis-server on cpu{available[0]}, clients and this process on "
            + ",".join(f"cpu{cpu}" for cpu in sorted(client_cpus))
        )
        os.sched_setaffinity(0, client_cpus)

    import evkit

    redis = RedisServer(args.appendfsync, server_cpus)
    systems = ["reference"] + [f"redis-{mode}" for mode in args.emit_on]
    persistence = (
        f"appendonly yes, appendfsync {args.appendfsync}" if args.appendfsync else "no persistence"
    )
    print(
        f"redis_fanout: {platform.python_implementation()} {platform.python_version()}, "
        f"websockets {websockets.__version__}, evkit {evkit.__version__} ({evkit_revision()}), "
        f"redis-server {redis.version} ({persistence}), {os.cpu_count()} CPUs; {placement}; "
        f"{args.clients} clients, {args.events:,} events per run, window {args.window}"
    )
    for system in systems:
        print(f"  {system:10} = {label(system, args.clients)}")
    results: list[RunResult] = []
    failed = False
    try:
        for run in range(args.runs):
            for system in systems:
                result = run_once(
                    system,
                    None if system == "reference" else redis,
                    run,
                    args.clients,
                    args.events,
                    args.window,
                    args.timeout,
                    server_cpus,
                    client_cpus,
                )
                print(describe(result), flush=True)
                failed = failed or result.error is not None
                results.append(result)
    finally:
        redis.stop()
    row = summarize(results, systems)
    print(
        f"\nmedian of {args.runs} runs, events/s delivered to every one of {args.clients} clients"
    )
    print(
        "| configuration | events/s | deliveries/s | vs reference | broadcaster CPU | redis CPU | stream bytes/event |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    reference = row["reference"]
    for system in systems:
        rate = row[system]
        if rate is None:
            print(f"| {label(system, args.clients)} | aborted | | | | | |")
            continue
        ratio = f"{rate / reference:.2f}" if reference else "n/a"
        redis_cpu = f"{row[f'{system}_redis_cpu']:.0%}" if system != "reference" else ""
        stream_bytes = f"{row[f'{system}_bytes']:,.0f}" if system != "reference" else ""
        print(
            f"| {label(system, args.clients)} | {rate:,.0f} | {rate * args.clients:,.0f} | {ratio} | "
            f"{row[f'{system}_cpu']:.0%} | {redis_cpu} | {stream_bytes} |"
        )
    if reference:
        for system in systems[1:]:
            if row[system]:
                print(f"ratio {system} / reference = {row[system] / reference:.2f}")
    if row["others"] > NOISE:
        print(
            f"\nwarning: other processes used up to {row['others']:.0%} of a core during a run;"
            " the machine was not quiet and these numbers are not a fair comparison: run again"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
