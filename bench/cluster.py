"""A cluster at a steady rate: 3 instances on one Redis stream, 300 batched clients, held for a minute.

Usage::

    .venv/bin/python bench/cluster.py                            # 1,000 events/s for 60 s
    .venv/bin/python bench/cluster.py --seconds 5 --rate 500     # a smoke test
    .venv/bin/python bench/cluster.py --rate 2000 --per-second   # and every sample

The script starts one ``redis-server`` of its own (a temporary directory, a free port on
127.0.0.1, no persistence) and ``--instances`` broadcaster processes sharing one stream
(``evkit.serve(port=0, store="redis://...", stream=...)``). Each instance is a child
process running a small script that serves, prints its port, and on its stdin command
``rate N SECONDS START`` emits N events a second from ``START`` (``time.monotonic()``,
the same clock in every process) for SECONDS, in 10 ms ticks, with the payload
``{"seq": i, "source": NAME}``. ``--rate`` is the cluster's rate in all, emitted in
equal shares on the instances, so every event goes emit -> XADD -> XREAD on every
instance -> its clients.

``--clients`` WebSocket clients (100 per instance by default), batched
(``?eventTypes=bench.*&batch=1000,20``, every other one ``*``), run in ``--workers``
processes (client ``i`` on instance ``i % instances``, in worker ``i % workers``), each
an asyncio loop of plain ``websockets`` connections that parse every frame with orjson
and check every event: per source, ``seq`` must be exactly one more than the last one
seen (a smaller one is a repeat, a larger one a loss), and ids must increase strictly.

Every second the script samples each process's RSS (``VmRSS``) and CPU time (user +
system, all threads) from /proc: instances, redis-server and client workers, and how
many events each instance's clients had, and the whole machine's busy and stolen CPU
time (/proc/stat): what the benchmark's processes did not use of it is the noise, and
a run with more than a tenth of a core of it is flagged. When the emitters are done, every instance is
flushed and the script waits until every client had every event.

Metrics, over the steady part (the emitting period minus its first ``--warmup``
seconds): events emitted per second on each instance, events delivered per second to
its clients (and per client), CPU as a share of one core of each instance, of
redis-server and of the client workers, RSS of each instance at the start, middle and
end, and its slope (least squares, MB per minute; over the second half too, as the
history ring fills early). Whether the rate was held: events
emitted against rate x seconds, how far an emitter fell behind its schedule, and how
many deliveries were still due when emitting ended. Losses and repeats must be 0.

The default rate leaves a 2-CPU machine some room: the clients' cost is mostly per frame
(~40 batches a second each, whatever the rate) and at 2,000 events/s they take ~1.2
cores, the machine is full and the clients fall behind by up to a second at times.

Everything finishes or aborts within ``--seconds`` + ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import orjson
from common import RunAborted, versions
from redis_fanout import HOST, PATH, Broadcaster, RedisServer, process_cpu

EVENT_TYPE = "bench.cluster.event"
TICK_SECONDS = 0.01  # the emitters' pacing tick
CLEANUP = 10.0  # seconds of --timeout kept for stopping everything
NOISE = 0.10  # other processes' share of a core above which the run is flagged

INSTANCE = r"""
import sys
import time

import orjson

import evkit

store, stream, name = sys.argv[1], sys.argv[2], sys.argv[3]
srv = evkit.serve(port=0, store=store, stream=stream)
print("listening", srv.port, flush=True)
emit, monotonic, sleep = evkit.emit, time.monotonic, time.sleep
for line in sys.stdin:
    words = line.split()
    if words[0] == "rate":
        rate, seconds, start, tick = (float(word) for word in words[1:5])
        total = round(rate * seconds)
        ticks = max(1, round(seconds / tick))
        end = start + seconds
        sent = in_window = 0
        behind = 0.0
        delay = start - monotonic()
        if delay > 0:
            sleep(delay)
        for k in range(1, ticks + 1):
            due_at = start + k * tick
            delay = due_at - monotonic()
            if delay > 0:
                sleep(delay)
            else:
                behind = max(behind, -delay)
            due = total * k // ticks
            for seq in range(sent, due):
                emit("bench.cluster.event", {"seq": seq, "source": name})
            sent = due
            if monotonic() <= end + tick:
                in_window = sent
        finished = monotonic()
        report = {"emitted": sent, "in_window": in_window, "behind": behind, "finished": finished}
        print("emitted", orjson.dumps(report).decode(), flush=True)
    elif words[0] == "flush":
        evkit.flush(timeout=float(words[1]) if len(words) > 1 else 30)
        print("flushed", orjson.dumps(srv.stats()).decode(), flush=True)
    elif words[0] == "stop":
        break
srv.stop(timeout=5)
"""


class Instance(Broadcaster):
    """A broadcaster process running this script's INSTANCE (``rate``, ``flush``, ``stop``)."""

    def __init__(self, store: str, stream: str, name: str) -> None:
        super().__init__(store, stream, name, None, script=INSTANCE)
        self.name = name


def process_rss(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (VmRSS), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- the clients -----------------------------------------------------------------------------

_CONNECTING, _READY, _FAILED = 0, 1, 2


@dataclass
class ClientCheck:
    """What one client saw: events, and the order checks on them."""

    events: int = 0
    frames: int = 0
    batches: int = 0
    others: int = 0  # messages that were neither an event nor a batch
    repeats: int = 0  # an event whose seq was not past the last one of its source
    skipped: int = 0  # events missing between two of a source (a loss)
    disorder: int = 0  # an id not greater than the one before
    last: dict[str, int] = field(default_factory=dict)  # source -> last seq
    error: str = ""


async def _client(
    slot: int,
    url: str,
    check: ClientCheck,
    counts: Any,
    ready: Any,
    deadline: float,
) -> None:
    import websockets

    loads = orjson.loads
    last = check.last
    prev = (-1, -1)
    async with websockets.connect(
        url,
        compression=None,
        max_size=None,
        ping_interval=None,
        open_timeout=max(1.0, deadline - time.monotonic()),
    ) as ws:
        welcome = loads(await ws.recv(decode=False))
        if welcome.get("type") != "websocket.connected":
            raise ConnectionError(f"first message {welcome.get('type')!r}, not websocket.connected")
        ready[slot] = 1
        while True:
            message = loads(await ws.recv(decode=False))
            check.frames += 1
            kind = message.get("type")
            if kind == "websocket.batch":
                events = message["payload"]["events"]
                check.batches += 1
            elif kind == EVENT_TYPE:
                events = (message,)
            else:
                check.others += 1
                continue
            for event in events:
                payload = event["payload"]
                source = payload["source"]
                seq = payload["seq"]
                expected = last.get(source, -1) + 1
                if seq == expected:
                    last[source] = seq
                elif seq < expected:
                    check.repeats += 1
                else:
                    check.skipped += seq - expected
                    last[source] = seq
                ms, _, n = event["id"].partition("-")
                key = (int(ms), int(n or 0))
                if key <= prev:
                    check.disorder += 1
                prev = key
            check.events += len(events)
            counts[slot] = check.events


async def _worker_loop(
    slots: list[int], urls: list[str], counts: Any, ready: Any, stop: Any, deadline: float
) -> list[ClientCheck]:
    checks = [ClientCheck() for _ in slots]

    async def guarded(slot: int, url: str, check: ClientCheck) -> None:
        try:
            await _client(slot, url, check, counts, ready, deadline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            check.error = f"{type(exc).__name__}: {exc}"
            ready[slot] = _FAILED

    tasks = [
        asyncio.create_task(guarded(slot, url, check))
        for slot, url, check in zip(slots, urls, checks, strict=True)
    ]
    # The stop flag is in shared memory: look at it between short waits on the clients.
    while not stop.value and time.monotonic() < deadline:
        done, _ = await asyncio.wait(tasks, timeout=0.05)
        if len(done) == len(tasks):
            break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return checks


def _worker_main(
    slots: list[int],
    urls: list[str],
    counts: Any,
    ready: Any,
    stop: Any,
    deadline: float,
    results: Connection,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        checks = asyncio.run(_worker_loop(slots, urls, counts, ready, stop, deadline))
        results.send_bytes(
            orjson.dumps([{"slot": s, **c.__dict__} for s, c in zip(slots, checks, strict=True)])
        )
    finally:
        results.close()


@dataclass
class Clients:
    """Client worker processes; per-client event counts and readiness in shared memory."""

    urls: list[str]
    instance_of: list[int]
    workers: int
    deadline: float
    context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))
    processes: list[BaseProcess] = field(default_factory=list)
    pipes: list[Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.urls)
        self.counts = self.context.RawArray("q", n)
        self.ready = self.context.RawArray("b", n)
        self.stop_flag = self.context.RawValue("b", 0)

    def start(self) -> None:
        for worker in range(self.workers):
            slots = list(range(worker, len(self.urls), self.workers))
            receiver, sender = self.context.Pipe(duplex=False)
            process = self.context.Process(
                target=_worker_main,
                args=(
                    slots,
                    [self.urls[slot] for slot in slots],
                    self.counts,
                    self.ready,
                    self.stop_flag,
                    self.deadline,
                    sender,
                ),
                name=f"bench-cluster-clients-{worker}",
                daemon=True,
            )
            process.start()
            sender.close()
            self.processes.append(process)
            self.pipes.append(receiver)

    def failed(self) -> str | None:
        if any(flag == _FAILED for flag in self.ready):
            return "a client failed (its error is in the final report)"
        for process in self.processes:
            if process.exitcode is not None:
                return f"client worker {process.name} exited with {process.exitcode}"
        return None

    def all_ready(self) -> bool:
        return all(flag == _READY for flag in self.ready)

    def instance_counts(self, instances: int) -> list[int]:
        totals = [0] * instances
        for slot, count in enumerate(self.counts):
            totals[self.instance_of[slot]] += count
        return totals

    def cpu(self) -> float:
        return sum(process_cpu(p.pid) for p in self.processes if p.pid is not None)

    def rss(self) -> float:
        return sum(process_rss(p.pid) for p in self.processes if p.pid is not None)

    def stop(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Stop the workers and gather every client's check (what arrived in time)."""
        self.stop_flag.value = 1
        checks: list[dict[str, Any]] = []
        end = time.monotonic() + timeout
        for pipe in self.pipes:
            with contextlib.suppress(EOFError, OSError):
                if pipe.poll(max(0.0, end - time.monotonic())):
                    checks.extend(orjson.loads(pipe.recv_bytes()))
            pipe.close()
        for process in self.processes:
            process.join(max(0.1, end - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        self.processes, self.pipes = [], []
        return checks


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds since the emitters' start
    rss: list[float]  # MB per instance
    cpu: list[float]  # CPU seconds per instance
    redis_rss: float
    redis_cpu: float
    clients_cpu: float
    delivered: list[int]  # events counted by each instance's clients
    mine: float  # CPU seconds of this script's own process
    machine: tuple[float, float, float]  # process, interrupt and stolen CPU seconds (/proc/stat)

    def ours(self) -> float:
        """CPU seconds of every process of the benchmark."""
        return sum(self.cpu) + self.redis_cpu + self.clients_cpu + self.mine

    def busy(self) -> float:
        """CPU seconds the whole machine was busy (processes and interrupts)."""
        return self.machine[0] + self.machine[1]


def machine_cpu() -> tuple[float, float, float]:
    """CPU seconds of all CPUs from /proc/stat: in processes (user, nice, system), in
    interrupts (irq, softirq: much of it the loopback traffic), and stolen by the host."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]] + [0] * 8
    tick = os.sysconf("SC_CLK_TCK")
    return sum(fields[0:3]) / tick, sum(fields[5:7]) / tick, fields[7] / tick


def sample(instances: list[Instance], redis: RedisServer, clients: Clients, start: float) -> Sample:
    pids = [instance.process.pid for instance in instances]
    return Sample(
        at=time.monotonic() - start,
        rss=[process_rss(pid) for pid in pids],
        cpu=[process_cpu(pid) for pid in pids],
        redis_rss=process_rss(redis.process.pid),
        redis_cpu=process_cpu(redis.process.pid),
        clients_cpu=clients.cpu(),
        delivered=clients.instance_counts(len(instances)),
        mine=process_cpu(os.getpid()),
        machine=machine_cpu(),
    )


def wait_for(condition: Any, deadline: float, what: str, clients: Clients) -> None:
    while not condition():
        failure = clients.failed()
        if failure:
            raise RunAborted(f"{failure}, while waiting for {what}")
        if time.monotonic() > deadline:
            raise RunAborted(f"timed out waiting for {what}")
        time.sleep(0.01)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if max(xs) == min(xs):
        return 0.0
    return statistics.linear_regression(xs, ys).slope * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="events/s in all")
    parser.add_argument("--seconds", type=float, default=60, help="how long the rate is held")
    parser.add_argument("--instances", type=int, default=3, help="broadcaster processes")
    parser.add_argument("--clients", type=int, default=300, help="clients in all")
    parser.add_argument("--workers", type=int, default=3, help="client worker processes")
    parser.add_argument("--warmup", type=float, default=5, help="seconds not in the steady part")
    parser.add_argument(
        "--per-second", action="store_true", help="also print every sample (RSS, CPU, lag)"
    )
    parser.add_argument(
        "--timeout", type=float, default=90, help="seconds allowed beyond --seconds"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.instances < 1 or args.clients < 1:
        parser.error("--rate, --seconds, --instances and --clients must be positive")
    if args.workers < 1 or args.timeout <= CLEANUP + 5:
        parser.error(f"--workers >= 1 and --timeout > {CLEANUP + 5:.0f}")
    warmup = min(args.warmup, args.seconds * 0.2)

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)

    import evkit

    began = time.monotonic()
    deadline = began + args.seconds + args.timeout - CLEANUP
    redis = RedisServer(None, None)
    stream = f"bench:cluster:{os.getpid()}"
    names = [f"i{k}" for k in range(args.instances)]
    per_instance_rate = args.rate / args.instances
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[0]
    print(
        f"cluster: {versions(evkit.__version__)}, redis-server {redis.version} (no persistence);"
        f" {args.instances} instances, {args.clients} batched clients in {args.workers} worker"
        f" processes, {args.rate:,.0f} events/s in all ({per_instance_rate:,.1f}/s per instance)"
        f" for {args.seconds:g} s; load average {load}",
        flush=True,
    )
    instances: list[Instance] = []
    clients: Clients | None = None
    samples: list[Sample] = []
    failed = False
    try:
        instances = [Instance(redis.url, stream, name) for name in names]
        for instance in instances:
            instance.wait_listening(deadline)
        urls, instance_of = [], []
        for i in range(args.clients):
            k = i % args.instances
            patterns = "bench.*" if (i // args.instances) % 2 == 0 else "*"
            urls.append(
                f"ws://{HOST}:{instances[k].port}{PATH}?eventTypes={patterns}&batch=1000,20"
            )
            instance_of.append(k)
        clients = Clients(urls, instance_of, args.workers, deadline + CLEANUP / 2)
        clients.start()
        wait_for(clients.all_ready, deadline, "the clients to connect", clients)
        connected = time.monotonic() - began
        print(f"  {args.clients} clients connected {connected:.1f} s after the start", flush=True)

        start = time.monotonic() + 0.5
        for instance in instances:
            instance.send(f"rate {per_instance_rate!r} {args.seconds!r} {start!r} {TICK_SECONDS}")
        time.sleep(max(0.0, start - time.monotonic()))
        samples.append(sample(instances, redis, clients, start))
        reports: dict[str, dict[str, Any]] = {}
        last_due = int(args.seconds + 0.5)  # the last sample in the emitting period
        k = 1
        while len(reports) < len(instances) or k <= last_due:
            for name, instance in zip(names, instances, strict=True):
                if name not in reports and not instance.lines.empty():
                    reports[name] = orjson.loads(instance.expect("emitted", deadline)[0])
            if k <= last_due and time.monotonic() >= start + k:
                samples.append(sample(instances, redis, clients, start))
                k += 1
                failure = clients.failed()
                if failure:
                    raise RunAborted(failure)
            if time.monotonic() > deadline:
                raise RunAborted("the emitters did not finish in time")
            time.sleep(0.01)
        emitted_end = max(report["finished"] for report in reports.values()) - start
        end_sample = sample(instances, redis, clients, start)
        total = sum(report["emitted"] for report in reports.values())
        backlog = args.clients * total - sum(end_sample.delivered)

        stats = []
        for instance in instances:
            instance.send(f"flush {max(1.0, deadline - time.monotonic()):.1f}")
        for instance in instances:
            stats.append(orjson.loads(instance.expect("flushed", deadline)[0]))
        wait_for(
            lambda: all(count >= total for count in clients.counts),
            deadline,
            "every client to have every event",
            clients,
        )
        drained = time.monotonic() - start - emitted_end
        time.sleep(0.3)  # a repeat arriving late would be counted
        checks = clients.stop()
    except RunAborted as exc:
        print(f"  ABORTED after {time.monotonic() - began:.1f} s: {exc}")
        if clients is not None:
            for check in clients.stop():
                if check["error"]:
                    print(f"  client {check['slot']}: {check['error']}")
                    break
        return 1
    finally:
        if clients is not None:
            clients.stop(2)
        for instance in instances:
            instance.stop()
        redis.stop()

    # -- the report --------------------------------------------------------------------------
    steady = [s for s in samples if warmup - 0.5 <= s.at <= args.seconds + 0.5]
    first, last = steady[0], steady[-1]
    middle = steady[len(steady) // 2]
    span = last.at - first.at
    n = len(instances)
    per_instance = [args.clients // n + (1 if k < args.clients % n else 0) for k in range(n)]
    expected = round(per_instance_rate * args.seconds)
    print(
        f"  emitting: {emitted_end:.2f} s (asked {args.seconds:g} s); steady part"
        f" {first.at:.1f}-{last.at:.1f} s ({len(steady)} samples)"
    )
    print(
        "| instance | emitted | in window | emitted/s | delivered/s (its clients) | per client/s"
        " | CPU | RSS start / mid / end MB | slope MB/min (2nd half) | behind ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for k, name in enumerate(names):
        report = reports[name]
        delivered = (last.delivered[k] - first.delivered[k]) / span if span > 0 else 0.0
        cpu = (last.cpu[k] - first.cpu[k]) / span if span > 0 else 0.0
        slope = slope_per_minute([(s.at, s.rss[k]) for s in steady])
        late = slope_per_minute([(s.at, s.rss[k]) for s in steady[len(steady) // 2 :]])
        print(
            f"| {name} ({per_instance[k]} clients) | {report['emitted']:,} / {expected:,}"
            f" | {report['in_window']:,} | {report['emitted'] / args.seconds:,.1f}"
            f" | {delivered:,.0f} | {delivered / per_instance[k]:,.1f} | {cpu:.0%}"
            f" | {first.rss[k]:.1f} / {middle.rss[k]:.1f} / {last.rss[k]:.1f} | {slope:+.2f} ({late:+.2f})"
            f" | {report['behind'] * 1000:.1f} |"
        )
    redis_cpu = (last.redis_cpu - first.redis_cpu) / span if span > 0 else 0.0
    clients_cpu = (last.clients_cpu - first.clients_cpu) / span if span > 0 else 0.0
    all_delivered = (sum(last.delivered) - sum(first.delivered)) / span if span > 0 else 0.0
    elsewhere = (last.busy() - first.busy() - last.ours() + first.ours()) / span
    stolen = (last.machine[2] - first.machine[2]) / span
    redis_slope = slope_per_minute([(s.at, s.redis_rss) for s in steady])
    print(
        f"  redis-server: CPU {redis_cpu:.0%}, RSS {first.redis_rss:.1f} / {middle.redis_rss:.1f}"
        f" / {last.redis_rss:.1f} MB ({redis_slope:+.2f} MB/min); client workers: CPU"
        f" {clients_cpu:.0%} in all ({args.workers} processes); CPU outside"
        f" the benchmark's processes {elsewhere:.0%} of a core (other processes, interrupts),"
        f" stolen {stolen:.0%}"
    )
    print(
        f"  in all: {total:,} events emitted ({total / args.seconds:,.0f}/s, asked"
        f" {args.rate:,.0f}/s), {all_delivered:,.0f} deliveries/s in the steady part;"
        f" {backlog:,} deliveries still due when emitting ended, all delivered"
        f" {drained:.2f} s later"
    )
    worst = max(
        (max(s.cpu[k] - p.cpu[k] for k in range(n)) for p, s in itertools.pairwise(steady)),
        default=0.0,
    )
    if args.per_second:
        print(
            "  per second: t, instances' CPU % and RSS MB, redis CPU %, clients CPU %, lag ms,"
            " CPU % outside the benchmark's processes (others, interrupts), stolen"
        )
        for p, s in itertools.pairwise(samples):
            dt = s.at - p.at
            cpus = " ".join(f"{(s.cpu[k] - p.cpu[k]) / dt:4.0%}" for k in range(n))
            rss = " ".join(f"{s.rss[k]:5.1f}" for k in range(n))
            behind = (args.rate * s.at - sum(s.delivered) / args.clients) / args.rate
            print(
                f"    {s.at:5.1f} s  cpu {cpus}  rss {rss}"
                f"  redis {(s.redis_cpu - p.redis_cpu) / dt:4.0%}"
                f"  clients {(s.clients_cpu - p.clients_cpu) / dt:4.0%}  lag {behind * 1000:5.0f}"
                f"  else {(s.busy() - p.busy() - s.ours() + p.ours()) / dt:4.0%}"
                f"  steal {(s.machine[2] - p.machine[2]) / dt:4.0%}"
            )
    # How far the clients were behind the emitters' schedule at each sample, in seconds.
    lag = max(
        (args.rate * s.at - sum(s.delivered) / args.clients) / args.rate
        for s in samples
        if s.at <= args.seconds
    )
    print(
        f"  busiest instance-second: {worst:.0%} of a core; clients at most {lag * 1000:,.0f} ms"
        " behind the schedule at a sample"
    )

    emitted_by = {name: reports[name]["emitted"] for name in names}
    lost = repeats = disorder = wrong_count = errors = others_seen = 0
    for check in checks:
        lost += check["skipped"]
        for name, count in emitted_by.items():
            lost += count - 1 - check["last"].get(name, -1)  # missing at the end of a source
        repeats += check["repeats"]
        disorder += check["disorder"]
        wrong_count += check["events"] != total
        errors += bool(check["error"])
        others_seen += check["others"]
    missing = args.clients - len(checks)
    dropped = sum(s.get("dropped", 0) for s in stats)
    slow = sum(s.get("slow_consumer_disconnects", 0) for s in stats)
    frames = sum(check["frames"] for check in checks)
    print(
        f"  clients: lost {lost}, repeats {repeats}, ids out of order {disorder}, counts !="
        f" {total:,}: {wrong_count}, errors {errors}, unreported {missing}; other messages"
        f" {others_seen}; {frames / max(1, len(checks)) / max(1e-9, emitted_end + drained):.1f}"
        f" frames/s per client; server: dropped {dropped}, slow-consumer disconnects {slow}"
    )
    failed = bool(lost or repeats or disorder or wrong_count or errors or missing)
    held = all(reports[name]["in_window"] >= 0.99 * expected for name in names)
    print(f"  rate held: {'yes' if held else 'NO'}; check: {'FAILED' if failed else 'ok'}")
    if elsewhere > NOISE or stolen > NOISE:
        print(
            "  warning: the machine was not quiet (other processes or the hypervisor took CPU"
            " during the steady part): run again"
        )
    return 1 if failed or not held else 0


if __name__ == "__main__":
    sys.exit(main())
