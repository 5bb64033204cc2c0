"""Publish-to-receive latency at a fixed rate: evkit, batched evkit, and bare websockets.

Usage::

    .venv/bin/python bench/latency.py --runs 3
    .venv/bin/python bench/latency.py --rate 2000 --seconds 5 --runs 3 --profile

Each run sends ``--rate`` events per second for ``--seconds`` (after ``--warmup``
seconds that are not counted) to ``--clients`` raw-socket clients in two worker
processes (``bench/_timing_clients.py``), all on 127.0.0.1. Every event carries the
``time.time_ns()`` of its emit as ``payload.sentNs``; a client takes ``time.time_ns()``
when the ``recv`` that brought it returns (same machine, same clock) and only finds
``"sentNs":`` in the bytes. Latency = receive time - emit time, for every event at every
client. Interleaved run by run, in the same invocation:

reference
    A bare :func:`websockets.asyncio.server.serve` server on its own loop thread in this
    process (the layout of ``evkit.serve()``), whose loop sleeps until each event is due
    and then ``broadcast()``s it: one frame serialised once, carrying the send time.
    asyncio sleeps in whole milliseconds, so it sends about every millisecond, two at
    a time at 2,000/s. The floor: websockets' own cost and the clients'.
evkit
    ``evkit.serve(port=0)``; this process's main thread sleeps until each event is due,
    then calls ``evkit.emit("bench.latency.event", {"seq": i, "sentNs": time.time_ns()})``.
evkit batch=100,5
    The same, with clients connected with ``?batch=100,5``: up to 100 events per
    ``websocket.batch`` frame, held at most 5 ms. What batching adds is its latency minus
    evkit's unbatched latency at the same percentile, against the 5 ms flush window.

Reported: p50 / p90 / p99 / p99.9 / max in milliseconds (medians over ``--runs``), the
rate actually achieved, losses, slow-consumer disconnects, CPU time as a share of wall
time for this (the server) process and the client processes, and which was CPU-bound.
Every run finishes or aborts within ``--timeout`` seconds (60 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _timing_clients import EventBoard, EventClients, Pace, emit_at_rate, percentile
from common import (
    BareBroadcastServer,
    CoreUsage,
    LoopLag,
    OtherLoad,
    RunAborted,
    ThreadClock,
    cpu_report,
    pin,
    print_profile,
    versions,
    wait_until,
    warn_if_noisy,
)
from websockets.asyncio.server import broadcast

HOST = "127.0.0.1"
PATH = "/ws/events"
EVENT_TYPE = "bench.latency.event"
CLIENT_WORKERS = 2
CLEANUP = 6.0  # seconds of --timeout kept for stopping clients and servers
QUANTILES = (0.5, 0.9, 0.99, 0.999)
SYSTEMS = ("reference", "evkit", "evkit batch=100,5")
BATCH = (100, 5.0)  # events per frame, milliseconds


class ReferenceServer(BareBroadcastServer):
    """A bare websockets server on its own loop thread; only ever broadcasts."""

    FRAME = b'{"type":"%b","timestamp":%d,"id":"%d","payload":{"seq":%d,"sentNs":%d}}'

    async def produce(self, rate: float, events: int, deadline: float) -> Pace:
        """Broadcast ``events`` frames at ``rate`` per second, each stamped as it goes."""
        connections = list(self.connections)
        event_type = EVENT_TYPE.encode()
        timestamp = time.time_ns() // 1_000_000
        frame, time_ns, monotonic = self.FRAME, time.time_ns, time.monotonic
        interval = 1.0 / rate
        pace = Pace(started=monotonic())
        for seq in range(events):
            delay = pace.started + seq * interval - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                pace.behind = max(pace.behind, -delay)
                if seq % 1000 == 0 and monotonic() > deadline:
                    raise RunAborted(f"producer out of time after {seq} events")
                await asyncio.sleep(0)  # behind: still let the loop flush and answer pings
            broadcast(
                connections, frame % (event_type, timestamp, seq + 1, seq, time_ns()), text=True
            )
        pace.finished = monotonic()
        return pace


@dataclass
class RunResult:
    system: str
    clients: int
    events: int  # sent, warm-up included
    timed: int  # events per client whose latency counts
    latencies: dict[float, float] = field(default_factory=dict)  # quantile -> ms
    worst: float = 0.0  # ms
    samples: int = 0
    pace: Pace = field(default_factory=Pace)
    wall: float = 0.0
    server_cpu: float = 0.0
    loop_cpu: float = 0.0
    client_cpu: list[float] = field(default_factory=list)
    loop_lag: float = 0.0
    cores: CoreUsage = field(default_factory=CoreUsage)
    others: OtherLoad = field(default_factory=OtherLoad)
    received: int = 0
    events_per_frame: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    error: str | None = None

    @property
    def lost(self) -> int:
        return self.clients * self.events - self.received

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.lost == 0
            and self.samples == self.clients * self.timed
            and self.stats.get("slow_consumer_disconnects", 0) == 0
            and self.stats.get("dropped", 0) == 0
        )


def run_once(
    system: str,
    clients: int,
    rate: float,
    seconds: float,
    warmup: float,
    timeout: float,
    client_cpus: set[int] | None,
    profile: bool = False,
) -> RunResult:
    """One run of ``system`` within ``timeout`` seconds; failures go to ``result.error``."""
    import evkit
    from evkit._loop import loop_thread

    skipped = round(rate * warmup)
    timed = round(rate * seconds)
    result = RunResult(system, clients, skipped + timed, timed)
    began = time.monotonic()
    deadline = began + timeout - CLEANUP
    board = EventBoard.create([result.events] * clients, CLIENT_WORKERS)
    reference: ReferenceServer | None = None
    srv: evkit.Server | None = None
    workers: EventClients | None = None
    profilers: list[cProfile.Profile] = []
    try:
        if system == "reference":
            reference = ReferenceServer()
            port, preamble, path = reference.port, 0, PATH
            loop, thread = reference.loop, reference.thread

            def registered() -> int:
                return len(reference.connections) if reference else 0
        else:
            srv = evkit.serve(port=0, connections_per_second_per_ip=10_000.0)
            port, preamble = srv.port, 1  # websocket.connected
            path = PATH if system == "evkit" else f"{PATH}?batch={BATCH[0]},{BATCH[1]:g}"
            loop, thread = loop_thread().loop, loop_thread().thread
            server = srv

            def registered() -> int:
                return int(server.stats()["clients"])

        loop_clock = ThreadClock(thread.ident or 0)
        lag = LoopLag(loop)
        workers = EventClients.start(
            board,
            HOST,
            port,
            [path] * clients,
            preamble=preamble,
            phase_from=0,
            timed_from=skipped,
            deadline=deadline + 1,
            poll_interval=0.0,  # a client never sleeps: it waits in select()
            cpus=client_cpus,
        )
        wait_until(board.all_ready, deadline, "clients to connect", board)
        wait_until(lambda: registered() == clients, deadline, "registration", board)
        if profile and srv is not None:
            profilers = [cProfile.Profile(), cProfile.Profile()]
            loop.call_soon_threadsafe(profilers[1].enable)  # cProfile profiles one thread
            time.sleep(0.05)
            profilers[0].enable()
        lag.start()
        result.cores.start()
        result.others.start()
        cpu0, loop0 = time.process_time(), loop_clock()
        if reference is not None:
            future = asyncio.run_coroutine_threadsafe(
                reference.produce(rate, result.events, deadline), reference.loop
            )
            try:
                result.pace = future.result(max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                future.cancel()
                raise
        else:
            result.pace = emit_at_rate(evkit.emit, EVENT_TYPE, rate, result.events, deadline)
            evkit.flush(timeout=max(0.1, deadline - time.monotonic()))
        wait_until(board.all_done, deadline, "the last client to receive everything", board)
        observed = time.monotonic()
        result.server_cpu = time.process_time() - cpu0
        result.loop_cpu = loop_clock() - loop0
        result.cores.stop()
        result.others.stop()
        lag.stop()
        if profilers:
            profilers[0].disable()
            loop.call_soon_threadsafe(profilers[1].disable)
        result.loop_lag = lag.worst
        result.wall = observed - result.pace.started
        result.client_cpu = board.worker_cpu("ready", "done")
        if srv is not None:
            result.stats = srv.stats()
        samples = sorted(workers.stop(timeout=5.0))
        workers = None
        result.samples = len(samples)
        result.latencies = {q: percentile(samples, q) / 1e6 for q in QUANTILES}
        result.worst = samples[-1] / 1e6 if samples else 0.0
        result.received = board.total_events()
        result.events_per_frame = result.received / max(1, sum(board.frames))
    except (RunAborted, TimeoutError) as exc:
        result.error = str(exc) or type(exc).__name__
        result.received = board.total_events()
        if srv is not None:
            result.stats = srv.stats()
    finally:
        if workers is not None:
            workers.stop(timeout=1.0)
        if srv is not None:
            try:
                srv.stop(timeout=1.5)
            except Exception as exc:  # a loop still busy with a backlog
                result.error = result.error or f"stopping evkit failed: {exc!r}"
        if reference is not None:
            reference.stop()
        result.elapsed = time.monotonic() - began
    if profilers:
        print_profile("main thread: emit_at_rate, evkit.emit() and callees", profilers[0])
        print_profile(
            "evkit loop thread: LocalBackplane._drain, Fanout.deliver and websockets", profilers[1]
        )
    return result


def describe(result: RunResult, client_cores: int) -> str:
    if result.error:
        return (
            f"  {result.system:18} ABORTED after {result.elapsed:.1f} s: {result.error}"
            f" ({result.received:,} of {result.clients * result.events:,} deliveries counted;"
            f" stats {result.stats})"
        )
    wall = result.wall
    quantiles = " ".join(f"p{q * 100:g} {result.latencies[q]:6.2f}" for q in QUANTILES)
    line = (
        f"  {result.system:18} {quantiles}  max {result.worst:6.2f} ms;"
        f" {result.pace.rate(result.events):,.0f} events/s sent (fell behind by at most"
        f" {result.pace.behind * 1000:.1f} ms); {result.events_per_frame:.1f} events/frame;"
        f" lost {result.lost}"
    )
    if result.stats:
        line += (
            f", slow_consumer_disconnects {result.stats.get('slow_consumer_disconnects')},"
            f" dropped {result.stats.get('dropped')}"
        )
    line += f"; worst loop lag {result.loop_lag * 1000:.1f} ms" + cpu_report(
        f"  {'':18} ",
        wall,
        result.server_cpu,
        result.loop_cpu,
        result.client_cpu,
        result.cores,
        result.others,
        client_cores,
    )
    return line


def summarize(results: Sequence[RunResult]) -> dict[Any, Any]:
    good = [r for r in results if not r.error]
    row: dict[Any, Any] = {"runs": len(good), "ok": bool(good) and all(r.ok for r in results)}
    if good:
        for q in QUANTILES:
            row[q] = statistics.median(r.latencies[q] for r in good)
        row["max"] = statistics.median(r.worst for r in good)
        row["rate"] = statistics.median(r.pace.rate(r.events) for r in good)
        row["behind"] = statistics.median(r.pace.behind for r in good)
        row["server_cpu"] = statistics.median(r.server_cpu / r.wall for r in good)
        row["client_cpu"] = statistics.median(sum(r.client_cpu) / r.wall for r in good)
        row["others"] = max(r.others.seconds / r.wall for r in good)
        row["per_frame"] = statistics.median(r.events_per_frame for r in good)
    row["lost"] = sum(r.lost for r in results)
    row["slow"] = sum(r.stats.get("slow_consumer_disconnects", 0) for r in results)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=2_000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds sent, not timed")
    parser.add_argument("--runs", type=int, default=3, help="runs per system; medians reported")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a run may take")
    parser.add_argument(
        "--pin",
        choices=("split", "none"),
        default="split",
        help="split: this process on the first CPU, the client processes on the others",
    )
    parser.add_argument("--profile", action="store_true", help="then one profiled evkit run")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.runs < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--clients, --runs, --rate and --seconds must be positive")
    if args.timeout <= CLEANUP + 1:
        parser.error(f"--timeout must be more than {CLEANUP + 1:.0f} seconds")

    placement = pin(args.pin)  # before any thread starts
    client_cpus, client_cores = placement.client_cpus, placement.client_cores

    import evkit

    print(
        f"latency: {versions(evkit.__version__)}; {CLIENT_WORKERS} client processes;"
        f" {placement.description}; {args.clients} clients,"
        f" {args.rate:,.0f} events/s for {args.seconds:g} s after {args.warmup:g} s of warm-up"
        f" ({args.clients * args.rate:,.0f} deliveries/s)"
    )
    results: dict[str, list[RunResult]] = {system: [] for system in SYSTEMS}
    failed = False
    for run in range(args.runs):
        print(f"\nrun {run + 1} of {args.runs} (latency in ms)")
        for system in SYSTEMS:
            result = run_once(
                system,
                args.clients,
                args.rate,
                args.seconds,
                args.warmup,
                args.timeout,
                client_cpus,
            )
            print(describe(result, client_cores), flush=True)
            failed = failed or not result.ok
            results[system].append(result)
    rows = {system: summarize(results[system]) for system in SYSTEMS}

    print(
        f"\nmedian of {args.runs} runs: {args.clients} clients, {args.rate:,.0f} events/s,"
        f" {args.seconds:g} s timed; publish-to-receive latency in ms"
    )
    print(
        "| server | p50 | p90 | p99 | p99.9 | max | events/s sent | behind schedule (max) |"
        " events per frame | CPU / wall server / clients | lost | slow-consumer disconnects |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for system in SYSTEMS:
        row = rows[system]
        label = "bare websockets (reference)" if system == "reference" else system
        if not row["runs"]:
            print(f"| {label} | aborted | | | | | | | | | {row['lost']} | {row['slow']} |")
            continue
        print(
            f"| {label} | "
            + " | ".join(f"{row[q]:.2f}" for q in QUANTILES)
            + f" | {row['max']:.2f} | {row['rate']:,.0f} | {row['behind'] * 1000:,.0f} ms |"
            f" {row['per_frame']:.1f} | {row['server_cpu']:.0%} / {row['client_cpu']:.0%} |"
            f" {row['lost']} | {row['slow']} |"
        )
    print(
        "(the reference stamps each frame when it sends it: when it falls behind schedule,"
        " its latency does not show it; evkit's stamp is taken at emit, so a backlog shows)"
    )
    reference, plain, batched = (rows[system] for system in SYSTEMS)
    if reference["runs"] and plain["runs"]:
        print(
            f"\nevkit / reference: p50 {plain[0.5] / reference[0.5]:.2f}x,"
            f" p99 {plain[0.99] / reference[0.99]:.2f}x;"
            f" evkit p99 {plain[0.99]:.2f} ms (target < 5 ms:"
            f" {'met' if plain[0.99] < 5 else 'NOT met'})"
        )
    if plain["runs"] and batched["runs"]:
        window = BATCH[1]
        over_plain = {q: batched[q] - plain[q] for q in (0.5, 0.99)}
        line = (
            f"batch={BATCH[0]},{window:g} (flush window {window:g} ms) adds"
            f" {over_plain[0.5]:+.2f} ms at p50 and {over_plain[0.99]:+.2f} ms at p99 over"
            " unbatched evkit"
        )
        added = over_plain[0.99]
        if reference["runs"]:
            over_reference = {q: batched[q] - reference[q] for q in (0.5, 0.99)}
            line += (
                f", {over_reference[0.5]:+.2f} / {over_reference[0.99]:+.2f} ms over the bare"
                " websockets reference"
            )
            if added < 0:  # unbatched evkit did not keep up: the reference is the baseline
                added = over_reference[0.99]
                line += " (unbatched evkit fell behind, so the reference is the baseline)"
        print(
            f"{line}; target p99 added <= window: {'met' if added <= window else 'NOT met'}"
            f" ({added:+.2f} ms)"
        )
    warn_if_noisy(max((row.get("others", 0.0) for row in rows.values()), default=0.0))
    if args.profile:
        for system in SYSTEMS[1:]:
            print(f"\nprofiled {system} run (not counted above)")
            result = run_once(
                system,
                args.clients,
                args.rate,
                args.seconds,
                args.warmup,
                args.timeout,
                client_cpus,
                profile=True,
            )
            print(describe(result, client_cores), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
