"""Routing cost: 100 clients on mixed patterns and correlation filters, against 100 on ``*``.

Usage::

    .venv/bin/python bench/routing.py --runs 3
    .venv/bin/python bench/routing.py --runs 3 --profile

Both systems are ``evkit.serve(port=0)`` fed the same deterministic stream from this
process's main thread: ``--events`` events whose types are drawn from the seed's 19 and
whose correlation IDs from 50 (``req-0`` .. ``req-49``), each with its ``seq``.

all-*
    ``--clients`` clients on ``*``, no filter: the reference, measured in the same run.
mixed
    The same number of clients on a fixed mix (client ``i`` takes ``MIX[i % 10]``):
    ``*``, ``claude.*``, ``repo.*.created``, ``*.completed``, ``github.api.*``,
    ``graphql.?uery.*``, two exact names, two overlapping patterns (each event must
    still arrive once), and two kinds with ``correlationId=req-N``.

The metric is what the server sustains: events published per second, from the first
``emit`` to the moment the last client had everything it should get; deliveries per
second alongside. A mixed client gets fewer events, so the server writes less per
event; what the mix costs is the routing (pattern match, per-correlation lists), which
shows in events/s and in server CPU per event. ``route()`` ns/event is that routing on
its own: :class:`evkit.patterns.SubscriptionIndex` over the same subscriptions and
stream, without sockets.

The producer follows a credit rule (at most ``--window`` events beyond the slowest
client's place in the stream), so no client is cut as a slow consumer; the run checks
``slow_consumer_disconnects == 0``. Correctness: every client's count must equal what
its patterns and filter select (computed with :func:`evkit.patterns.matches`) and its
last event must be the last one it selects; the clients keep reading for a moment
after the end, so an extra delivery is caught too.

Clients: ``bench/_timing_clients.py`` (raw sockets, two worker processes). Every run
finishes or aborts within ``--timeout`` seconds (60 by default).
"""

from __future__ import annotations

import argparse
import cProfile
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from _timing_clients import CreditPacer, EventBoard, EventClients
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
CLIENT_WORKERS = 2
CLEANUP = 6.0  # seconds of --timeout kept for stopping clients and the server
LINGER = 0.2  # seconds the clients keep reading after the end, to catch extra deliveries
CORRELATION_IDS = 50

SEED_TYPES = (
    "claude.session.started",
    "claude.session.completed",
    "claude.session.failed",
    "claude.command.executed",
    "claude.agentRun.progress",
    "repo.status.queried",
    "repo.commit.created",
    "repo.push.completed",
    "repo.scan.completed",
    "github.api.started",
    "github.api.completed",
    "github.workflow.triggered",
    "graphql.query.started",
    "graphql.query.completed",
    "graphql.mutation.started",
    "graphql.mutation.completed",
    "graphql.subscription.started",
    "graphql.subscription.completed",
    "performance.slowOperation.detected",
)

# (patterns, filtered on a correlation ID)
MIX: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("*",), False),
    (("claude.*",), False),
    (("repo.*.created",), False),
    (("*.completed",), False),
    (("github.api.*",), False),
    (("graphql.?uery.*",), False),
    (("repo.commit.created", "github.workflow.triggered"), False),
    (("*.completed", "github.*"), False),
    (("*",), True),
    (("graphql.*", "claude.session.*"), True),
)


@dataclass(frozen=True)
class Subscriber:
    patterns: tuple[str, ...]
    correlation_id: str | None = None

    @property
    def path(self) -> str:
        query = {"eventTypes": ",".join(self.patterns)}
        if self.correlation_id is not None:
            query["correlationId"] = self.correlation_id
        return f"{PATH}?{urlencode(query, safe='*?,')}"


def subscribers(system: str, clients: int) -> list[Subscriber]:
    if system == "all-*":
        return [Subscriber(("*",)) for _ in range(clients)]
    chosen = []
    for i in range(clients):
        patterns, filtered = MIX[i % len(MIX)]
        correlation_id = f"req-{(i * 7) % CORRELATION_IDS}" if filtered else None
        chosen.append(Subscriber(patterns, correlation_id))
    return chosen


def event_stream(events: int, seed: int) -> list[tuple[str, str]]:
    """``(type, correlation ID)`` for each event, the same for a given seed."""
    rng = random.Random(seed)
    return [
        (SEED_TYPES[rng.randrange(len(SEED_TYPES))], f"req-{rng.randrange(CORRELATION_IDS)}")
        for _ in range(events)
    ]


def selections(
    chosen: Sequence[Subscriber], stream: Sequence[tuple[str, str]]
) -> list[Sequence[int]]:
    """For each subscriber, the positions in ``stream`` of the events it must receive."""
    from evkit.patterns import matches

    types = sorted({type_ for type_, _ in stream})
    table = {
        (pattern, type_): matches(pattern, type_)
        for subscriber in chosen
        for pattern in subscriber.patterns
        for type_ in types
    }
    result: list[Sequence[int]] = []
    for subscriber in chosen:
        if subscriber.patterns == ("*",) and subscriber.correlation_id is None:
            result.append(range(len(stream)))
            continue
        result.append(
            [
                position
                for position, (type_, correlation_id) in enumerate(stream)
                if any(table[pattern, type_] for pattern in subscriber.patterns)
                and subscriber.correlation_id in (None, correlation_id)
            ]
        )
    return result


def route_cost(
    chosen: Sequence[Subscriber], stream: Sequence[tuple[str, str]], repeats: int = 5
) -> tuple[float, int]:
    """Nanoseconds per event for ``SubscriptionIndex.route`` alone, and its deliveries."""
    from evkit.patterns import SubscriptionIndex

    index: SubscriptionIndex[int] = SubscriptionIndex()
    for key, subscriber in enumerate(chosen):
        index.add_subscriber(key, subscriber.patterns, subscriber.correlation_id)
    route = index.route
    deliveries = sum(len(route(type_, cid)) for type_, cid in stream)  # warms the cache too
    timings = []
    for _ in range(repeats):
        began = time.perf_counter_ns()
        for type_, cid in stream:
            route(type_, cid)
        timings.append((time.perf_counter_ns() - began) / len(stream))
    return statistics.median(timings), deliveries


@dataclass
class RunResult:
    system: str
    clients: int
    events: int
    expected: int = 0  # deliveries the subscriptions select
    deliveries: int = 0  # counted at the clients
    seconds: float = 0.0  # first emit to the last client having everything
    wall: float = 0.0  # first emit to "all done" as seen by this process
    server_cpu: float = 0.0
    loop_cpu: float = 0.0
    client_cpu: list[float] = field(default_factory=list)
    cores: CoreUsage = field(default_factory=CoreUsage)
    others: OtherLoad = field(default_factory=OtherLoad)
    credit_waits: int = 0
    credit_waited: float = 0.0
    mismatched: list[str] = field(default_factory=list)  # clients whose count is wrong
    stats: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    error: str | None = None

    @property
    def events_rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def deliveries_rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_event(self) -> float:
        """Server process CPU microseconds per event published."""
        return self.server_cpu / self.events * 1e6

    @property
    def correct(self) -> bool:
        return (
            not self.error
            and not self.mismatched
            and self.deliveries == self.expected
            and self.stats.get("slow_consumer_disconnects") == 0
            and self.stats.get("dropped") == 0
        )


def run_once(
    system: str,
    chosen: Sequence[Subscriber],
    stream: Sequence[tuple[str, str]],
    selected: Sequence[Sequence[int]],
    window: int,
    timeout: float,
    client_cpus: set[int] | None,
    poll_interval: float,
    profile: bool = False,
) -> RunResult:
    """One run of ``system``, within ``timeout`` seconds; failures go to ``result.error``."""
    import evkit
    from evkit._loop import loop_thread

    events = len(stream)
    result = RunResult(system, len(chosen), events, expected=sum(map(len, selected)))
    began = time.monotonic()
    deadline = began + timeout - CLEANUP
    board = EventBoard.create([len(s) for s in selected], CLIENT_WORKERS)
    clients: EventClients | None = None
    profilers: list[cProfile.Profile] = []
    srv = evkit.serve(port=0, connections_per_second_per_ip=10_000.0)
    try:
        loop = loop_thread()
        loop_clock = ThreadClock(loop.thread.ident or 0)
        clients = EventClients.start(
            board,
            HOST,
            srv.port,
            [subscriber.path for subscriber in chosen],
            preamble=1,  # websocket.connected
            phase_from=-1,
            timed_from=-1,
            deadline=deadline + 1,
            poll_interval=poll_interval,
            cpus=client_cpus,
        )
        wait_until(board.all_ready, deadline, "clients to connect", board)
        wait_until(lambda: srv.stats()["clients"] == len(chosen), deadline, "registration", board)
        events_view = board.events_view()

        def position() -> int:
            # Each client has accounted for every event before the next one it needs.
            lowest = events
            for received, wanted in zip(events_view, selected, strict=True):
                if received < len(wanted) and wanted[received] < lowest:
                    lowest = wanted[received]
            return lowest

        if profile:
            profilers = [cProfile.Profile(), cProfile.Profile()]
            loop.call_soon(profilers[1].enable)  # cProfile profiles one thread
            time.sleep(0.05)
            profilers[0].enable()
        result.cores.start()
        result.others.start()
        pacer = CreditPacer(position, window, events, deadline)
        emit = evkit.emit
        allowed = min(events, window)
        cpu0, loop0 = time.process_time(), loop_clock()
        started = time.monotonic()
        for seq, (type_, correlation_id) in enumerate(stream):
            if seq >= allowed:
                allowed = pacer.allowance()
                if seq >= allowed:
                    allowed = pacer.wait(seq)
            emit(type_, {"seq": seq}, correlation_id=correlation_id)
        evkit.flush(timeout=max(0.1, deadline - time.monotonic()))
        wait_until(board.all_done, deadline, "the last client to receive everything", board)
        observed = time.monotonic()
        result.server_cpu = time.process_time() - cpu0
        result.loop_cpu = loop_clock() - loop0
        result.cores.stop()
        result.others.stop()
        if profilers:
            profilers[0].disable()
            loop.call_soon(profilers[1].disable)
        result.wall = observed - started
        result.seconds = max(board.done_at) - started
        result.credit_waits, result.credit_waited = pacer.waits, pacer.waited
        result.client_cpu = board.worker_cpu("ready", "done")
        time.sleep(LINGER)
        evkit.flush(timeout=1.0)
        result.stats = srv.stats()
        clients.stop(timeout=3.0)
        clients = None
        result.deliveries = board.total_events()
        for slot, wanted in enumerate(selected):
            got, last = board.events[slot], board.last_seq[slot]
            if got != len(wanted) or last != (wanted[-1] if len(wanted) else -1):
                result.mismatched.append(
                    f"client {slot} {chosen[slot].path}: {got} events (expected {len(wanted)}),"
                    f" last seq {last}"
                )
    except (RunAborted, TimeoutError) as exc:
        result.error = str(exc) or type(exc).__name__
        result.deliveries = board.total_events()
        result.stats = srv.stats()
    finally:
        if clients is not None:
            clients.stop(timeout=1.0)
        try:
            srv.stop(timeout=1.5)
        except Exception as exc:  # a loop still busy with a huge backlog
            result.error = result.error or f"stopping evkit failed: {exc!r}"
        result.elapsed = time.monotonic() - began
    if profilers:
        print_profile("main thread: evkit.emit() and its callees", profilers[0])
        print_profile(
            "evkit loop thread: LocalBackplane._drain, Fanout.deliver and websockets", profilers[1]
        )
    return result


def describe(result: RunResult, client_cores: int) -> str:
    if result.error:
        return (
            f"  {result.system:6} ABORTED after {result.elapsed:.1f} s: {result.error}"
            f" ({result.deliveries:,} of {result.expected:,} deliveries counted)"
        )
    stats = result.stats
    line = (
        f"  {result.system:6} {result.events_rate:>8,.0f} events/s {result.deliveries_rate:>9,.0f}"
        f" deliveries/s in {result.seconds:5.2f} s; server CPU {result.cpu_per_event:5.1f} us/event;"
        f" producer waited for credit {result.credit_waits}x {result.credit_waited:.2f} s;"
        f" slow_consumer_disconnects {stats.get('slow_consumer_disconnects')},"
        f" dropped {stats.get('dropped')}; counts exact: {'yes' if result.correct else 'NO'}"
    )
    for problem in result.mismatched[:5]:
        line += f"\n           {problem}"
    line += cpu_report(
        " " * 9,
        result.wall,
        result.server_cpu,
        result.loop_cpu,
        result.client_cpu,
        result.cores,
        result.others,
        client_cores,
    )
    return line


def summarize(results: list[RunResult], route: tuple[float, int]) -> dict[str, Any]:
    good = [r for r in results if not r.error]
    row: dict[str, Any] = {"runs": len(good), "route_ns": route[0], "route_deliveries": route[1]}
    if good:
        row["events"] = statistics.median(r.events_rate for r in good)
        row["deliveries"] = statistics.median(r.deliveries_rate for r in good)
        row["per_event"] = good[0].expected / good[0].events
        row["cpu_per_event"] = statistics.median(r.cpu_per_event for r in good)
        row["server_cpu"] = statistics.median(r.server_cpu / r.wall for r in good)
        row["client_cpu"] = statistics.median(sum(r.client_cpu) / r.wall for r in good)
        row["others"] = max(r.others.seconds / r.wall for r in good)
    row["slow"] = sum(r.stats.get("slow_consumer_disconnects", 0) for r in results)
    row["correct"] = bool(good) and all(r.correct for r in results)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per system; medians reported")
    parser.add_argument("--seed", type=int, default=7, help="seed of the event stream")
    parser.add_argument(
        "--window",
        type=int,
        default=4_096,
        help="most events in flight beyond the slowest client (bounds every write buffer)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a run may take")
    parser.add_argument("--client-poll-ms", type=float, default=None)
    parser.add_argument(
        "--pin",
        choices=("split", "none"),
        default="split",
        help="split: this process on the first CPU, the client processes on the others",
    )
    parser.add_argument("--profile", action="store_true", help="then one profiled mixed run")
    args = parser.parse_args(argv)
    if min(args.clients, args.events, args.runs, args.window) < 1:
        parser.error("--clients, --events, --runs and --window must be positive")
    if args.timeout <= CLEANUP + 1:
        parser.error(f"--timeout must be more than {CLEANUP + 1:.0f} seconds")

    placement = pin(args.pin)  # before any thread starts
    client_cpus, client_cores = placement.client_cpus, placement.client_cores

    import evkit

    stream = event_stream(args.events, args.seed)
    systems = ("all-*", "mixed")
    chosen = {system: subscribers(system, args.clients) for system in systems}
    selected = {system: selections(chosen[system], stream) for system in systems}
    routes = {system: route_cost(chosen[system], stream) for system in systems}
    for system in systems:
        if routes[system][1] != sum(map(len, selected[system])):
            print(
                f"{system}: SubscriptionIndex.route selects {routes[system][1]:,} deliveries,"
                f" evkit.patterns.matches {sum(map(len, selected[system])):,}"
            )
            return 1
    print(
        f"routing: {versions(evkit.__version__)}; {CLIENT_WORKERS} client processes;"
        f" {placement.description}; {args.clients} clients,"
        f" {args.events:,} events of {len(SEED_TYPES)} types and {CORRELATION_IDS} correlation IDs"
        f" (seed {args.seed}), window {args.window}"
    )
    mixed_desc = ", ".join(
        ",".join(patterns) + (" +correlationId" if filtered else "") for patterns, filtered in MIX
    )
    print(f"mixed clients cycle through: {mixed_desc}")
    poll = client_poll(args.client_poll_ms, args.clients)
    results: dict[str, list[RunResult]] = {system: [] for system in systems}
    failed = False
    for run in range(args.runs):
        print(f"\nrun {run + 1} of {args.runs}")
        for system in systems:
            result = run_once(
                system,
                chosen[system],
                stream,
                selected[system],
                args.window,
                args.timeout,
                client_cpus,
                poll,
            )
            print(describe(result, client_cores), flush=True)
            failed = failed or not result.correct
            results[system].append(result)
    rows = {system: summarize(results[system], routes[system]) for system in systems}

    print(f"\nmedian of {args.runs} runs, {args.clients} clients, {args.events:,} events per run")
    print(
        "| clients | events/s | deliveries/s | deliveries per event | server CPU per event |"
        " route() per event | CPU / wall server / clients | slow-consumer disconnects |"
        " counts exact |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for system in systems:
        row = rows[system]
        label = "100 on `*`" if system == "all-*" else "100 mixed"
        if not row["runs"]:
            print(f"| {label} | aborted | | | | {row['route_ns']:,.0f} ns | | {row['slow']} | no |")
            continue
        print(
            f"| {label} | {row['events']:,.0f} | {row['deliveries']:,.0f} |"
            f" {row['per_event']:.1f} | {row['cpu_per_event']:.1f} us | {row['route_ns']:,.0f} ns |"
            f" {row['server_cpu']:.0%} / {row['client_cpu']:.0%} | {row['slow']} |"
            f" {'yes' if row['correct'] else 'NO'} |"
        )
    if rows["mixed"]["runs"] and rows["all-*"]["runs"]:
        ratio = rows["mixed"]["events"] / rows["all-*"]["events"]
        per_delivery = (rows["mixed"]["cpu_per_event"] / rows["mixed"]["per_event"]) / (
            rows["all-*"]["cpu_per_event"] / rows["all-*"]["per_event"]
        )
        print(
            f"\nmixed / all-* events/s = {ratio:.2f} (target >= 0.9: "
            f"{'met' if ratio >= 0.9 else 'NOT met'}); server CPU per delivery mixed / all-* ="
            f" {per_delivery:.2f}; route() alone mixed / all-* ="
            f" {rows['mixed']['route_ns'] / rows['all-*']['route_ns']:.1f}x"
            f" ({rows['mixed']['route_ns']:,.0f} vs {rows['all-*']['route_ns']:,.0f} ns per event)"
        )
    warn_if_noisy(max((row.get("others", 0.0) for row in rows.values()), default=0.0))
    if args.profile:
        print("\nprofiled mixed run (not counted above)")
        result = run_once(
            "mixed",
            chosen["mixed"],
            stream,
            selected["mixed"],
            args.window,
            args.timeout,
            client_cpus,
            poll,
            profile=True,
        )
        print(describe(result, client_cores), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
