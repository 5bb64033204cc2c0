"""Fan-out throughput: deliveries per second from evkit to N local clients, against bare websockets.

Usage::

    .venv/bin/python bench/fanout.py --clients 100 --events 20000 --runs 3
    .venv/bin/python bench/fanout.py --clients 1 10 100 --events 20000 --runs 3 --profile

For each N it measures, in the same invocation and interleaved run by run:

reference
    A bare :func:`websockets.asyncio.server.serve` server on its own loop thread in this
    process (the same layout as ``evkit.serve()``), whose loop calls
    ``broadcast(connections, frame, text=True)`` with one fixed orjson frame, ``--events``
    times. This is the ceiling: websockets' own cost per delivery and nothing else.
evkit
    ``evkit.serve(port=0)`` on evkit's loop thread; this process's main thread calls
    ``evkit.emit("bench.fanout.event", {"seq": i, ...})`` as fast as it goes, then
    ``evkit.flush()``.

Clients are byte-counting raw-socket clients (``bench/common.py``) spread over two worker
processes, all on 127.0.0.1, subscribed to ``*`` (evkit's default). Both producers are
paced by the same credit rule: at most ``--window`` events beyond the slowest client's
count, so no write buffer grows past ``window x frame`` bytes (well under evkit's 1 MiB
slow-consumer limit) and what is measured is sustained delivery, not a pile-up in
buffers. The metric is deliveries counted at the clients divided by the time from the
first send/emit to the moment the last client had every event.

Every run finishes or aborts within ``--timeout`` seconds (60 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from common import (
    BareBroadcastServer,
    ClientBoard,
    CoreUsage,
    LoopLag,
    OtherLoad,
    RunAborted,
    ThreadClock,
    client_poll,
    pin,
    print_profile,
    start_client_workers,
    stop_client_workers,
    versions,
    wait_until,
    warn_if_noisy,
)
from websockets.asyncio.server import broadcast

HOST = "127.0.0.1"
PATH = "/ws/events"
EVENT_TYPE = "bench.fanout.event"
CLIENT_WORKERS = 2
CHUNK = 2_000  # reference events per loop turn: the same as evkit's _DRAIN_CHUNK
PAUSE = 0.001  # seconds a producer sleeps while it waits for credit
CLEANUP = 10.0  # seconds of --timeout kept for stopping clients and servers


class Pacer:
    """The credit rule both producers follow, and how long it made them wait.

    A producer may send event ``sent`` while ``sent < slowest client's count + window``.
    Out of credit, it waits until a quarter window (or the rest) may go, sleeping
    ``PAUSE`` between looks: few wake-ups, because a producer thread that woke often
    would take the GIL and the core from the loop it feeds, a cost of the benchmark and
    not of what it measures.
    """

    def __init__(self, board: ClientBoard, window: int, events: int, deadline: float) -> None:
        self.board = board
        self.window = window
        self.events = events
        self.deadline = deadline
        self.waits = 0
        self.waited = 0.0  # seconds spent out of credit

    def allowance(self) -> int:
        return min(self.events, self.board.min_frames() + self.window)

    def enough(self, sent: int, allowed: int) -> bool:
        return allowed >= sent + min(max(1, self.window // 4), self.events - sent)

    def check_deadline(self, sent: int) -> None:
        if time.monotonic() > self.deadline:
            raise RunAborted(f"producer out of time after {sent} events")

    def wait(self, sent: int) -> int:
        """Block until enough credit; return the new allowance."""
        began = time.monotonic()
        self.waits += 1
        allowed = self.allowance()
        while not self.enough(sent, allowed):
            self.check_deadline(sent)
            time.sleep(PAUSE)
            allowed = self.allowance()
        self.waited += time.monotonic() - began
        return allowed

    async def wait_async(self, sent: int) -> int:
        """:meth:`wait` for a producer running on the loop it feeds."""
        began = time.monotonic()
        self.waits += 1
        allowed = self.allowance()
        while not self.enough(sent, allowed):
            self.check_deadline(sent)
            await asyncio.sleep(PAUSE)
            allowed = self.allowance()
        self.waited += time.monotonic() - began
        return allowed


class LostWrites(logging.Filter):
    """Count, rather than print, asyncio's warning for each write to a dead connection.

    After an aborted run the clients are gone while a server may still be broadcasting:
    asyncio would log one line per write, hundreds of thousands of them.
    """

    MESSAGE = "socket.send() raised exception."

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MESSAGE:
            self.count += 1
            return False
        return True


lost_writes = LostWrites()


@dataclass
class RunResult:
    system: str
    clients: int
    events: int
    deliveries: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0  # this process, both threads
    loop_cpu: float = 0.0  # the server's loop thread
    main_cpu: float = 0.0  # the main (producer) thread
    client_cpu: float = 0.0  # both worker processes
    wall: float = 0.0  # first send to "all done" as seen by this process
    elapsed: float = 0.0  # the whole run: start servers, connect, measure, clean up
    cores: CoreUsage = field(default_factory=CoreUsage)
    others: OtherLoad = field(default_factory=OtherLoad)
    credit_waits: int = 0  # times the producer ran out of credit
    credit_waited: float = 0.0  # seconds it spent waiting for it
    loop_lag: float = 0.0  # the longest the server's loop kept a callback waiting
    refused: int = 0  # handshakes refused for load (429/503) and retried
    last_ok: bool = True
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.clients * self.events - self.deliveries


def event_payload(seq: int) -> dict[str, Any]:
    return {"seq": seq, "source": "bench", "value": 0.5}


def reference_frame(events: int) -> bytes:
    """A frame as long as the one evkit sends for the last event of a run."""
    return orjson.dumps(
        {
            "type": EVENT_TYPE,
            "timestamp": time.time_ns() // 1_000_000,
            "id": str(events),
            "payload": event_payload(events - 1),
        }
    )


# -- the reference server -------------------------------------------------------------


class ReferenceServer(BareBroadcastServer):
    """A bare websockets server on its own loop thread; only ever broadcasts."""

    async def produce(self, frame: bytes, pacer: Pacer) -> float:
        """Broadcast ``frame`` ``pacer.events`` times under its credit rule; return the start."""
        connections = list(self.connections)
        events = pacer.events
        started = time.monotonic()
        sent = 0
        allowed = min(events, pacer.window)
        while sent < events:
            if sent >= allowed:
                allowed = pacer.allowance()
                if sent >= allowed:
                    allowed = await pacer.wait_async(sent)
            count = min(allowed - sent, CHUNK)
            for first in range(0, count, 100):  # a cancelled (aborted) run stops soon
                for _ in range(min(100, count - first)):
                    broadcast(connections, frame, text=True)
                if time.monotonic() > pacer.deadline:
                    raise RunAborted(f"producer out of time after {sent + first} events")
            sent += count
            await asyncio.sleep(0)
        return started


# -- one run ---------------------------------------------------------------------------


def run_once(
    system: str,
    clients: int,
    events: int,
    window: int,
    timeout: float,
    client_cpus: set[int] | None,
    client_poll: float,
    profile: bool = False,
) -> RunResult:
    """One run of ``system`` ("reference" or "evkit"), within ``timeout`` seconds.

    Failures (a deadline passed, a client worker died) are reported in the result's
    ``error``, not raised.
    """
    import evkit
    from evkit._loop import loop_thread

    result = RunResult(system, clients, events)
    began = time.monotonic()
    deadline = began + timeout - CLEANUP
    board = ClientBoard.create(clients, CLIENT_WORKERS)
    reference: ReferenceServer | None = None
    srv: evkit.Server | None = None
    workers = []
    profilers: list[cProfile.Profile] = []
    try:
        if system == "reference":
            reference = ReferenceServer()
            port, preamble, last_seq = reference.port, 0, None
            loop_clock = ThreadClock(reference.thread.ident or 0)
            lag = LoopLag(reference.loop)
            server_clients = reference.client_count
        else:
            srv = evkit.serve(port=0)
            port, preamble, last_seq = srv.port, 1, events - 1  # preamble: websocket.connected
            loop_clock = ThreadClock(loop_thread().thread.ident or 0)
            lag = LoopLag(loop_thread().loop)
            server = srv

            def server_clients() -> int:
                return int(server.stats()["clients"])

        workers = start_client_workers(
            board,
            HOST,
            port,
            PATH,
            preamble=preamble,
            events=events,
            expected_last_seq=last_seq,
            deadline=deadline + 1,
            poll_interval=client_poll,
            cpus=client_cpus,
        )
        wait_until(board.all_ready, deadline, "clients to connect", board)
        wait_until(lambda: server_clients() == clients, deadline, "server registration", board)

        if profile and srv is not None:
            profilers = [cProfile.Profile(), cProfile.Profile()]
            loop_thread().call_soon(profilers[1].enable)  # cProfile profiles one thread
            time.sleep(0.05)
            profilers[0].enable()

        lag.start()
        result.cores.start()
        result.others.start()
        pacer = Pacer(board, window, events, deadline)
        cpu0, main0, loop0 = time.process_time(), time.thread_time(), loop_clock()
        if reference is not None:
            frame = reference_frame(events)
            future = asyncio.run_coroutine_threadsafe(
                reference.produce(frame, pacer), reference.loop
            )
            try:
                started = future.result(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                future.cancel()
                raise
        else:
            started = emit_paced(pacer)
            evkit.flush(timeout=max(0.1, deadline - time.monotonic()))
        wait_until(board.all_done, deadline, "the last client to receive everything", board)
        observed = time.monotonic()
        result.cores.stop()
        result.others.stop()
        lag.stop()
        result.loop_lag = lag.worst
        if profilers:
            profilers[0].disable()
            loop_thread().call_soon(profilers[1].disable)
            time.sleep(0.05)
        result.server_cpu = time.process_time() - cpu0
        result.main_cpu = time.thread_time() - main0
        result.loop_cpu = loop_clock() - loop0
        result.wall = observed - started
        result.credit_waits, result.credit_waited = pacer.waits, pacer.waited
        result.seconds = max(board.done_at) - started
        result.deliveries = board.total_frames()
        result.last_ok = all(ok == 1 for ok in board.last_ok)
        if srv is not None:
            result.stats = srv.stats()
        stop_client_workers(workers, timeout=2.0)
        workers = []
        result.client_cpu = sum(board.worker_cpu)
        result.refused = sum(board.refused)
    except (RunAborted, TimeoutError) as exc:
        result.error = str(exc) or type(exc).__name__
        result.deliveries = board.total_frames()
        if srv is not None:
            result.stats = srv.stats()
    finally:
        stop_client_workers(workers, timeout=1.0)
        if srv is not None:
            try:
                srv.stop(timeout=1.0)
            except Exception as exc:  # a loop still busy with a huge backlog
                result.error = result.error or f"stopping evkit failed: {exc!r}"
        if reference is not None:
            reference.stop()
        result.elapsed = time.monotonic() - began
    if profilers:
        print_profile("main thread: evkit.emit() and its callees", profilers[0])
        print_profile(
            "evkit loop thread: LocalBackplane._drain, Fanout.deliver and websockets", profilers[1]
        )
    return result


def emit_paced(pacer: Pacer) -> float:
    """Emit ``pacer.events`` events from this thread under its credit rule; return the start."""
    import evkit

    emit = evkit.emit
    allowed = min(pacer.events, pacer.window)
    started = time.monotonic()
    for seq in range(pacer.events):
        if seq >= allowed:
            allowed = pacer.allowance()
            if seq >= allowed:
                allowed = pacer.wait(seq)
        emit(EVENT_TYPE, event_payload(seq))
    return started


# -- reporting -------------------------------------------------------------------------


def describe(result: RunResult) -> str:
    if result.error:
        return (
            f"  {result.system:9} ABORTED after {result.elapsed:.1f} s: {result.error}"
            f" ({result.deliveries:,} of {result.clients * result.events:,} frames counted;"
            f" {lost_writes.count:,} writes to closed connections so far)"
        )
    wall = result.wall
    line = (
        f"  {result.system:9} {result.rate:>10,.0f} deliveries/s in {result.seconds:5.2f} s,"
        f" lost {result.lost}, producer waited for credit {result.credit_waits}x"
        f" {result.credit_waited:.2f} s, worst loop lag {result.loop_lag * 1000:,.0f} ms,"
        f" run took {result.elapsed:.1f} s"
    )
    if result.refused:
        line += f" ({result.refused} handshakes refused with 429/503 and retried)"
    if result.system == "evkit":
        stats = result.stats
        line += (
            f", slow_consumer_disconnects {stats.get('slow_consumer_disconnects')},"
            f" dropped {stats.get('dropped')}, last seq ok {result.last_ok}"
        )
    line += (
        f"\n  {'':9} CPU as a share of one core: server process {result.server_cpu / wall:.0%}"
        f" (loop thread {result.loop_cpu / wall:.0%}, main thread {result.main_cpu / wall:.0%}),"
        f" client processes {result.client_cpu / wall:.0%}; "
        + ", ".join(
            f"{cpu} busy {busy:.0%} (softirq {result.cores.softirq[cpu]:.0%})"
            for cpu, busy in sorted(result.cores.busy.items())
        )
        + f"; other processes {result.others.seconds / wall:.0%}"
    )
    return line


def summarize(clients: int, results: list[RunResult]) -> dict[str, Any]:
    row: dict[str, Any] = {"clients": clients}
    for system in ("reference", "evkit"):
        good = [r for r in results if r.system == system and not r.error]
        row[system] = statistics.median(r.rate for r in good) if good else None
        row[f"{system}_runs"] = len(good)
        if good:
            row[f"{system}_server_cpu"] = statistics.median(r.server_cpu / r.wall for r in good)
            row[f"{system}_loop_cpu"] = statistics.median(r.loop_cpu / r.wall for r in good)
            row[f"{system}_client_cpu"] = statistics.median(r.client_cpu / r.wall for r in good)
            row[f"{system}_lag"] = statistics.median(r.loop_lag for r in good)
    finished = [r for r in results if not r.error]
    row["others"] = max((r.others.seconds / r.wall for r in finished), default=0.0)
    evkit_runs = [r for r in results if r.system == "evkit" and not r.error]
    row["slow"] = sum(r.stats.get("slow_consumer_disconnects", 0) for r in evkit_runs)
    row["dropped"] = sum(r.stats.get("dropped", 0) for r in evkit_runs)
    row["lost"] = sum(r.lost for r in evkit_runs)
    row["last_ok"] = all(r.last_ok for r in evkit_runs)
    if row["reference"] and row["evkit"]:
        row["ratio"] = row["evkit"] / row["reference"]
    return row


def print_table(rows: list[dict[str, Any]], events: int, runs: int) -> None:
    def rate(value: float | None) -> str:
        return f"{value:,.0f}" if value else "aborted"

    print(f"\nmedian of {runs} runs, {events:,} events per run, deliveries/s at the clients")
    print(
        "| clients | reference | evkit | evkit/reference | server CPU ref / evkit | "
        "client CPU ref / evkit | worst loop lag ref / evkit | slow-consumer disconnects | "
        "dropped | lost | other load (max) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "n/a"
        server_cpu = (
            f"{row.get('reference_server_cpu', 0):.0%} / {row.get('evkit_server_cpu', 0):.0%}"
        )
        client_cpu = (
            f"{row.get('reference_client_cpu', 0):.0%} / {row.get('evkit_client_cpu', 0):.0%}"
        )
        lag = (
            f"{row.get('reference_lag', 0) * 1000:,.0f} / {row.get('evkit_lag', 0) * 1000:,.0f} ms"
        )
        print(
            f"| {row['clients']} | {rate(row['reference'])} | {rate(row['evkit'])} | {ratio} | "
            f"{server_cpu} | {client_cpu} | {lag} | {row['slow']} | {row['dropped']} | "
            f"{row['lost']} | {row['others']:.0%} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100], help="N (several allowed)")
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per system; the median is reported"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=4_096,
        help="most events in flight beyond the slowest client (bounds every write buffer)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a run may take")
    parser.add_argument(
        "--client-poll-ms",
        type=float,
        default=None,
        help="how long a client process sleeps between sweeps over its sockets "
        "(default: N x 0.05 ms, from 1 to 50 ms, so each recv takes several frames)",
    )
    parser.add_argument(
        "--pin",
        choices=("split", "none"),
        default="split",
        help="split: this process on the first CPU, the client processes on the others "
        "(default, when there are 2 or more); none: let the scheduler place them",
    )
    parser.add_argument(
        "--profile", action="store_true", help="then one extra evkit run under cProfile"
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.runs < 1 or args.window < 1 or min(args.clients) < 1:
        parser.error("--clients, --events, --runs and --window must be positive")

    placement = pin(args.pin)  # before any thread starts: the loop threads inherit it
    client_cpus = placement.client_cpus

    if args.timeout <= CLEANUP + 1:
        parser.error(f"--timeout must be more than {CLEANUP + 1:.0f} seconds")

    import evkit

    logging.getLogger("asyncio").addFilter(lost_writes)
    print(
        f"fanout: {versions(evkit.__version__)}; {CLIENT_WORKERS} client processes;"
        f" {placement.description}; "
        f"window {args.window} events "
        f"({args.window * len(reference_frame(args.events)):,} bytes per client at most)"
    )
    rows = []
    failed = False
    for clients in args.clients:
        print(f"\nN = {clients} clients, {args.events:,} events, {args.runs} runs each")
        results = []
        for _ in range(args.runs):
            for system in ("reference", "evkit"):
                result = run_once(
                    system,
                    clients,
                    args.events,
                    args.window,
                    args.timeout,
                    client_cpus,
                    client_poll(args.client_poll_ms, clients),
                )
                print(describe(result), flush=True)
                failed = failed or result.error is not None
                results.append(result)
        row = summarize(clients, results)
        rows.append(row)
        if "ratio" in row:
            print(
                f"  median: reference {row['reference']:,.0f}/s, evkit {row['evkit']:,.0f}/s, "
                f"evkit/reference = {row['ratio']:.2f}"
            )
        if args.profile:
            print(f"\nprofiled evkit run, N = {clients} (not counted above)")
            result = run_once(
                "evkit",
                clients,
                args.events,
                args.window,
                args.timeout,
                client_cpus,
                client_poll(args.client_poll_ms, clients),
                profile=True,
            )
            print(describe(result), flush=True)
    print_table(rows, args.events, args.runs)
    warn_if_noisy(max((row["others"] for row in rows), default=0.0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
