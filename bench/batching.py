"""Batched delivery: deliveries per second and added latency for N events per frame.

Usage::

    .venv/bin/python bench/batching.py --runs 3
    .venv/bin/python bench/batching.py --sizes 1 10 100 1000 --runs 3 --profile

For each N in ``--sizes`` (1, 10, 100, 1000), interleaved run by run in one
invocation, ``evkit.serve(port=0)`` gets ``--clients`` raw-socket clients
(``bench/_timing_clients.py``, two worker processes, 127.0.0.1) subscribed to ``*``
with ``?batch=N,5``: up to N events per ``websocket.batch`` frame, held at most 5 ms.
N = 1 is the unbatched reference (evkit sends every event alone, as without ``batch``).
Each run has two phases on the same connections:

throughput
    This process's main thread emits ``--events`` events (``--batched-events`` when
    N > 1, so that each measurement lasts more than a second) as fast as a credit rule
    lets it (at most ``--window`` events beyond the slowest client, so no client is cut
    as a slow consumer). Deliveries/s = events counted at the clients (the ``"id":`` inside
    each frame) / time from the first emit to the last client having them all.
latency
    Then ``--rate`` events per second for ``--seconds`` (after ``--warmup`` seconds not
    counted), each stamped with ``time.time_ns()`` at emit; clients stop sleeping
    between reads and time every event (receive minus emit, one clock). Added latency
    = this N's percentile minus N = 1's at the same percentile. The default rate is one
    unbatched evkit sustains here (``latency.py`` measures 2,000/s).

Loss: every client must count exactly every event of both phases (the clients read on
for a moment after the end), with no slow-consumer disconnect and nothing dropped.
Reported: medians over ``--runs``, the ratio batched/unbatched deliveries/s (the target
is >= 5x at N = 100), CPU time as a share of wall time for this (the server) process
and the client processes in the throughput phase, and which was CPU-bound. Every run
finishes or aborts within ``--timeout`` seconds (60 by default).
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _timing_clients import CreditPacer, EventBoard, EventClients, Pace, emit_at_rate, percentile
from common import (
    CoreUsage,
    OtherLoad,
    RunAborted,
    ThreadClock,
    client_poll,
    cpu_report,
    pin,
    print_profile,
    versions,
    wait_until,
    warn_if_noisy,
)

HOST = "127.0.0.1"
PATH = "/ws/events"
EVENT_TYPE = "bench.batching.event"
CLIENT_WORKERS = 2
MAX_DELAY_MS = 5.0
CLEANUP = 6.0  # seconds of --timeout kept for stopping clients and the server
LINGER = 0.2  # seconds the clients keep reading after the end, to catch extra deliveries


@dataclass
class RunResult:
    size: int  # events per frame at most
    clients: int
    events: int  # throughput phase
    latency_events: int  # latency phase, warm-up included
    timed: int  # events per client whose latency counts
    seconds: float = 0.0  # throughput phase: first emit to the last client having all
    wall: float = 0.0
    server_cpu: float = 0.0
    loop_cpu: float = 0.0
    client_cpu: list[float] = field(default_factory=list)
    cores: CoreUsage = field(default_factory=CoreUsage)
    others: OtherLoad = field(default_factory=OtherLoad)
    credit_waits: int = 0
    credit_waited: float = 0.0
    events_per_frame: float = 0.0  # throughput phase
    pace: Pace = field(default_factory=Pace)
    p50: float = 0.0  # ms
    p99: float = 0.0
    samples: int = 0
    received: int = 0
    exact: bool = False  # every client counted exactly every event
    stats: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.clients * self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return self.clients * (self.events + self.latency_events) - self.received

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.exact
            and self.samples == self.clients * self.timed
            and self.stats.get("slow_consumer_disconnects") == 0
            and self.stats.get("dropped") == 0
        )


def run_once(
    size: int,
    clients: int,
    events: int,
    window: int,
    rate: float,
    seconds: float,
    warmup: float,
    timeout: float,
    client_cpus: set[int] | None,
    poll_interval: float,
    profile: bool = False,
) -> RunResult:
    """One run at ``size`` events per frame; failures go to ``result.error``."""
    import evkit
    from evkit._loop import loop_thread

    skipped, timed = round(rate * warmup), round(rate * seconds)
    result = RunResult(size, clients, events, skipped + timed, timed)
    total = events + result.latency_events
    began = time.monotonic()
    deadline = began + timeout - CLEANUP
    board = EventBoard.create([total] * clients, CLIENT_WORKERS)
    workers: EventClients | None = None
    profilers: list[cProfile.Profile] = []
    srv = evkit.serve(port=0, connections_per_second_per_ip=10_000.0)
    try:
        loop = loop_thread()
        loop_clock = ThreadClock(loop.thread.ident or 0)
        workers = EventClients.start(
            board,
            HOST,
            srv.port,
            [f"{PATH}?batch={size},{MAX_DELAY_MS:g}"] * clients,
            preamble=1,  # websocket.connected
            phase_from=events,
            timed_from=events + skipped,
            deadline=deadline + 1,
            poll_interval=poll_interval,
            cpus=client_cpus,
        )
        wait_until(board.all_ready, deadline, "clients to connect", board)
        wait_until(lambda: srv.stats()["clients"] == clients, deadline, "registration", board)
        if profile:
            profilers = [cProfile.Profile(), cProfile.Profile()]
            loop.call_soon(profilers[1].enable)  # cProfile profiles one thread
            time.sleep(0.05)
            profilers[0].enable()

        # Throughput: as fast as the credit rule allows.
        result.cores.start()
        result.others.start()
        pacer = CreditPacer(board.min_events, window, events, deadline)
        emit, time_ns = evkit.emit, time.time_ns
        allowed = min(events, window)
        cpu0, loop0 = time.process_time(), loop_clock()
        started = time.monotonic()
        for seq in range(events):
            if seq >= allowed:
                allowed = pacer.allowance()
                if seq >= allowed:
                    allowed = pacer.wait(seq)
            emit(EVENT_TYPE, {"seq": seq, "sentNs": time_ns()})
        evkit.flush(timeout=max(0.1, deadline - time.monotonic()))
        wait_until(lambda: board.all_past(events), deadline, "the throughput phase", board)
        observed = time.monotonic()
        result.server_cpu = time.process_time() - cpu0
        result.loop_cpu = loop_clock() - loop0
        result.cores.stop()
        result.others.stop()
        result.wall = observed - started
        result.seconds = max(board.phase_at) - started
        result.credit_waits, result.credit_waited = pacer.waits, pacer.waited
        result.client_cpu = board.worker_cpu("ready", "phase")
        result.events_per_frame = board.total_events() / max(1, sum(board.frames))

        # Latency: a fixed rate, every event timed after the warm-up.
        result.pace = emit_at_rate(
            emit, EVENT_TYPE, rate, result.latency_events, deadline, first_seq=events
        )
        evkit.flush(timeout=max(0.1, deadline - time.monotonic()))
        wait_until(board.all_done, deadline, "the last client to receive everything", board)
        if profilers:
            profilers[0].disable()
            loop.call_soon(profilers[1].disable)
        time.sleep(LINGER)
        evkit.flush(timeout=1.0)
        result.stats = srv.stats()
        samples = sorted(workers.stop(timeout=5.0))
        workers = None
        result.samples = len(samples)
        result.p50 = percentile(samples, 0.5) / 1e6
        result.p99 = percentile(samples, 0.99) / 1e6
        result.received = board.total_events()
        result.exact = all(count == total for count in board.events) and all(
            last == total - 1 for last in board.last_seq
        )
    except (RunAborted, TimeoutError) as exc:
        result.error = str(exc) or type(exc).__name__
        result.received = board.total_events()
        result.stats = srv.stats()
    finally:
        if workers is not None:
            workers.stop(timeout=1.0)
        try:
            srv.stop(timeout=1.5)
        except Exception as exc:  # a loop still busy with a backlog
            result.error = result.error or f"stopping evkit failed: {exc!r}"
        result.elapsed = time.monotonic() - began
    if profilers:
        print_profile(f"main thread, N = {size}: evkit.emit() and its callees", profilers[0])
        print_profile(f"evkit loop thread, N = {size}: _drain, batches, websockets", profilers[1])
    return result


def describe(result: RunResult, client_cores: int) -> str:
    label = f"N = {result.size}"
    if result.error:
        return (
            f"  {label:8} ABORTED after {result.elapsed:.1f} s: {result.error}"
            f" ({result.received:,} of {result.clients * (result.events + result.latency_events):,}"
            f" events counted; stats {result.stats})"
        )
    stats = result.stats
    return (
        f"  {label:8} {result.rate:>10,.0f} deliveries/s in {result.seconds:5.2f} s"
        f" ({result.events_per_frame:.1f} events/frame, producer waited for credit"
        f" {result.credit_waits}x {result.credit_waited:.2f} s); latency at"
        f" {result.pace.rate(result.latency_events):,.0f} events/s: p50 {result.p50:.2f} ms,"
        f" p99 {result.p99:.2f} ms; lost {result.lost}, exact {'yes' if result.exact else 'NO'},"
        f" slow_consumer_disconnects {stats.get('slow_consumer_disconnects')},"
        f" dropped {stats.get('dropped')}; throughput phase:"
        + cpu_report(
            f"  {'':8} ",
            result.wall,
            result.server_cpu,
            result.loop_cpu,
            result.client_cpu,
            result.cores,
            result.others,
            client_cores,
        )
    )


def summarize(results: Sequence[RunResult]) -> dict[str, Any]:
    good = [r for r in results if not r.error]
    row: dict[str, Any] = {"runs": len(good), "ok": bool(good) and all(r.ok for r in results)}
    if good:
        row["rate"] = statistics.median(r.rate for r in good)
        row["p50"] = statistics.median(r.p50 for r in good)
        row["p99"] = statistics.median(r.p99 for r in good)
        row["per_frame"] = statistics.median(r.events_per_frame for r in good)
        row["server_cpu"] = statistics.median(r.server_cpu / r.wall for r in good)
        row["client_cpu"] = statistics.median(sum(r.client_cpu) / r.wall for r in good)
        row["others"] = max(r.others.seconds / r.wall for r in good)
    row["lost"] = sum(r.lost for r in results)
    row["slow"] = sum(r.stats.get("slow_consumer_disconnects", 0) for r in results)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument(
        "--events", type=int, default=20_000, help="throughput-phase events at N = 1"
    )
    parser.add_argument(
        "--batched-events", type=int, default=100_000, help="throughput-phase events at N > 1"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=4_096,
        help="most events in flight beyond the slowest client (bounds every write buffer)",
    )
    parser.add_argument("--rate", type=float, default=1_000.0, help="latency-phase events/s")
    parser.add_argument("--seconds", type=float, default=2.0, help="latency-phase timed seconds")
    parser.add_argument("--warmup", type=float, default=0.25, help="latency-phase warm-up")
    parser.add_argument("--runs", type=int, default=3, help="runs per N; medians reported")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a run may take")
    parser.add_argument("--client-poll-ms", type=float, default=None)
    parser.add_argument(
        "--pin",
        choices=("split", "none"),
        default="split",
        help="split: this process on the first CPU, the client processes on the others",
    )
    parser.add_argument(
        "--profile", action="store_true", help="then one profiled run at N = 1 and N = 100"
    )
    args = parser.parse_args(argv)
    if min(args.clients, args.events, args.batched_events, args.runs, args.window) < 1:
        parser.error("--clients, --events, --batched-events, --runs, --window must be positive")
    if min(args.sizes) < 1:
        parser.error("--sizes must be positive")
    if args.timeout <= CLEANUP + 1:
        parser.error(f"--timeout must be more than {CLEANUP + 1:.0f} seconds")

    placement = pin(args.pin)  # before any thread starts
    client_cpus, client_cores = placement.client_cpus, placement.client_cores

    import evkit

    print(
        f"batching: {versions(evkit.__version__)}; {CLIENT_WORKERS} client processes;"
        f" {placement.description}; {args.clients} clients on '*' with"
        f" batch=N,{MAX_DELAY_MS:g}; throughput: {args.events:,} events at N = 1,"
        f" {args.batched_events:,} at N > 1, window {args.window};"
        f" latency: {args.rate:,.0f} events/s for {args.seconds:g} s"
    )
    poll = client_poll(args.client_poll_ms, args.clients)
    results: dict[int, list[RunResult]] = {size: [] for size in args.sizes}
    failed = False

    def run(size: int, profile: bool = False) -> RunResult:
        return run_once(
            size,
            args.clients,
            args.events if size == 1 else args.batched_events,
            args.window,
            args.rate,
            args.seconds,
            args.warmup,
            args.timeout,
            client_cpus,
            poll,
            profile,
        )

    for number in range(args.runs):
        print(f"\nrun {number + 1} of {args.runs}")
        for size in args.sizes:
            result = run(size)
            print(describe(result, client_cores), flush=True)
            failed = failed or not result.ok
            results[size].append(result)
    rows = {size: summarize(results[size]) for size in args.sizes}
    base = rows.get(1, {})

    print(
        f"\nmedian of {args.runs} runs: {args.clients} clients on '*', batch=N,{MAX_DELAY_MS:g};"
        f" deliveries/s counted at the clients; latency at {args.rate:,.0f} events/s, in ms"
    )
    print(
        "| N (events per frame at most) | deliveries/s | vs N = 1 | events per frame |"
        " latency p50 | latency p99 | added p50 | added p99 | CPU / wall server / clients |"
        " lost | slow-consumer disconnects |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        row = rows[size]
        if not row["runs"]:
            print(f"| {size} | aborted | | | | | | | | {row['lost']} | {row['slow']} |")
            continue
        ratio = f"{row['rate'] / base['rate']:.2f}x" if base.get("runs") else "n/a"
        added = (
            f"{row['p50'] - base['p50']:+.2f} | {row['p99'] - base['p99']:+.2f}"
            if base.get("runs")
            else "n/a | n/a"
        )
        print(
            f"| {size} | {row['rate']:,.0f} | {ratio} | {row['per_frame']:.1f} |"
            f" {row['p50']:.2f} | {row['p99']:.2f} | {added} |"
            f" {row['server_cpu']:.0%} / {row['client_cpu']:.0%} | {row['lost']} | {row['slow']} |"
        )
    if base.get("runs") and rows.get(100, {}).get("runs"):
        ratio = rows[100]["rate"] / base["rate"]
        print(
            f"\nbatched (N = 100) / unbatched deliveries/s = {ratio:.2f}x (target >= 5x:"
            f" {'met' if ratio >= 5 else 'NOT met'}); loss"
            f" {sum(row['lost'] for row in rows.values())}"
        )
    warn_if_noisy(max((row.get("others", 0.0) for row in rows.values()), default=0.0))
    if args.profile:
        for size in (1, 100):
            print(f"\nprofiled run, N = {size} (not counted above)")
            print(describe(run(size, profile=True), client_cores), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
