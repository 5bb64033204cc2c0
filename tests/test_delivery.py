"""Delivery guarantees under stress (DESIGN 1.4): each event once, in order, or a reported gap.

Real sockets on 127.0.0.1 only. Every wait is on a condition with a deadline: a
collector's ``wait``/``wait_for``, a line from a child process read with a timeout, or
:func:`wait_until` polling a predicate; sleeping is never how two parties synchronise.
Stream order makes "nothing else arrived" checkable: once the last event emitted has
arrived, every earlier one that matched has arrived too (a replay always precedes the
live events of its connection).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import evkit
from evkit.testing import free_port, open_client, recv_json, recv_until, send_json, wait_until

TIMEOUT = 30.0
MIB = 1 << 20


def poll(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition`` came to hold within ``timeout`` seconds (checked every 2 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def kernel_socket_buffers() -> int | None:
    """The most a TCP connection's send and receive buffers may hold (Linux), or None."""
    try:
        wmem = Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()
        rmem = Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()
    except OSError:
        return None
    return int(wmem[2]) + int(rmem[2])


class ChildProcess:
    """A Python child whose stdout lines are read on a thread and waited for with a deadline."""

    def __init__(self, script: str, *args: str, stderr_path: Path) -> None:
        self._stderr = stderr_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()
        self.stderr_path = stderr_path

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = TIMEOUT) -> str:
        """The child's next stdout line; fails (with its stderr) on timeout or exit."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line from the child within {timeout:g} s; stderr:\n{self.stderr()}")
        if line is None:
            pytest.fail(f"the child exited ({self.process.poll()}); stderr:\n{self.stderr()}")
        return line

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


# -- forced disconnects during a stream ----------------------------------------------------------


@pytest.mark.parametrize("batch", [(1000, 20.0), None], ids=["batched", "unbatched"])
def test_a_hundred_forced_disconnects_lose_and_repeat_nothing(
    batch: tuple[int, float] | None,
) -> None:
    threads, per_thread, disruptions = 4, 5_000, 100
    total = threads * per_thread
    # Emitters stay at most about `lag` events ahead of what the collector holds, so the
    # stream is live (not one long replay) when each disconnect happens.
    lag = 1_000
    srv = evkit.serve(port=0, history_size=50_000)
    col = evkit.collect(srv, ["delivery.*"], batch=batch)
    emitted = itertools.count(1)
    try:

        def emitter(thread: int) -> None:
            for i in range(per_thread):
                evkit.emit("delivery.stream.event", {"t": thread, "i": i})
                sent = next(emitted)
                if i % 100 == 99:
                    col.wait(count=max(0, sent - lag), timeout=TIMEOUT)

        def disruptor() -> None:
            """Alternate server-side closes and client-side drops, each one cutting for real."""
            step = total * 9 // 10 // disruptions  # spread over the first 90% of the stream
            for k in range(disruptions):
                col.wait(count=(k + 1) * step, timeout=TIMEOUT)
                for _attempt in range(5):
                    # Only a welcomed connection can be cut; a cut that found none (the
                    # collector was between connections) is repeated.
                    wait_until(
                        lambda: (
                            col.stats["connection"] == "connected" and srv.stats()["clients"] == 1
                        ),
                        f"the collector connected before disruption {k}",
                    )
                    before = col.stats["reconnects"]
                    if k % 2 == 0:
                        took = srv.disconnect() >= 1
                    else:
                        col.drop_connection()
                        took = True
                    if took and poll(lambda: col.stats["reconnects"] > before, 5):  # noqa: B023
                        break
                else:
                    pytest.fail(f"disruption {k} never cut a connection")

        started = time.monotonic()
        with ThreadPoolExecutor(threads + 1) as pool:
            emitters = [pool.submit(emitter, t) for t in range(threads)]
            disrupting = pool.submit(disruptor)
            for future in [*emitters, disrupting]:
                future.result(timeout=60)
        evkit.flush()
        col.wait(count=total, timeout=60)
        # The last event of the stream: once it is in, anything repeated would be too.
        evkit.emit("delivery.stream.done", {})
        evkit.flush()
        col.wait_for(lambda e: e["type"] == "delivery.stream.done", timeout=TIMEOUT)
        elapsed = time.monotonic() - started

        df = col.to_dataframe()
        assert len(df) == total + 1
        events = df[df["type"] == "delivery.stream.event"]
        pairs = list(zip(events["t"], events["i"], strict=True))
        assert len(pairs) == total
        assert set(pairs) == {(t, i) for t in range(threads) for i in range(per_thread)}
        assert strictly_increasing([int(i) for i in df["id"]]), "ids not strictly increasing"
        for t, group in events.groupby("t"):
            assert list(group["i"]) == list(range(per_thread)), f"thread {t} out of order"
        stats = col.stats
        assert stats["received"] == total + 1
        assert stats["reconnects"] >= disruptions
        assert stats["gaps"] == 0, stats
        print(
            f"{total} events, {stats['reconnects']} reconnects, {stats['replayed']} replayed "
            f"in {elapsed:.1f} s"
        )
    finally:
        col.stop()
        srv.stop()


# -- the server process killed and restarted on its SQLite store --------------------------------

SQLITE_SERVER = """
import sys

import evkit

db, port = sys.argv[1], int(sys.argv[2])
srv = evkit.serve(port=port, store=f"sqlite:///{db}")
print("listening", srv.port, srv.stats()["epoch"], srv.stats()["last_id"], flush=True)
for line in sys.stdin:
    command, count, start = line.split()
    assert command == "emit", command
    for seq in range(int(start), int(start) + int(count)):
        evkit.emit("durable.test.event", {"seq": seq})
    evkit.flush(timeout=30)  # with a durable store: committed to disk when it returns
    print("ok", flush=True)
srv.stop()
"""


@pytest.fixture
def sqlite_servers(tmp_path: Path) -> Iterator[Callable[[int], tuple[ChildProcess, list[str]]]]:
    """Start SQLITE_SERVER children on one database; every one is killed afterwards."""
    children: list[ChildProcess] = []
    db = tmp_path / "events.db"

    def start(port: int) -> tuple[ChildProcess, list[str]]:
        child = ChildProcess(SQLITE_SERVER, str(db), str(port), stderr_path=tmp_path / "stderr")
        children.append(child)
        words = child.next_line().split()
        assert words[0] == "listening", words
        return child, words[1:]

    try:
        yield start
    finally:
        for child in children:
            child.kill()


def test_sigkill_and_restart_on_the_sqlite_store_loses_and_repeats_nothing(
    sqlite_servers: Callable[[int], tuple[ChildProcess, list[str]]],
) -> None:
    port = free_port()
    first, (first_port, first_epoch, first_last) = sqlite_servers(port)
    assert (first_port, first_last) == (str(port), "0")
    col = evkit.collect(f"ws://127.0.0.1:{port}/ws/events", ["durable.*"])
    try:
        first.send("emit 500 0")
        assert first.next_line() == "ok"
        col.wait(count=500, timeout=TIMEOUT)
        first.send("emit 500 500")
        assert first.next_line() == "ok"  # flushed: the 1,000 events are on disk
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(TIMEOUT)

        second, (second_port, second_epoch, second_last) = sqlite_servers(port)
        # The same stream continues: same epoch, ids go on from the last one written.
        assert (second_port, second_epoch, second_last) == (str(port), first_epoch, "1000")
        # A collector resuming from an id older than the restart: served from the disk.
        late = evkit.collect(
            f"ws://127.0.0.1:{port}/ws/events", ["durable.*"], since="250", epoch=first_epoch
        )
        try:
            late.wait(count=750, timeout=TIMEOUT)
            second.send("emit 500 1000")
            assert second.next_line() == "ok"
            late.wait(count=1250, timeout=TIMEOUT)
            assert list(late.to_dataframe()["seq"]) == list(range(250, 1500))
            assert (late.stats["replayed"], late.stats["gaps"]) == (750, 0)
        finally:
            late.stop()
        col.wait(count=1500, timeout=TIMEOUT)

        df = col.to_dataframe()
        assert list(df["seq"]) == list(range(1500))
        assert [int(i) for i in df["id"]] == list(range(1, 1501))
        stats = col.stats
        assert stats["reconnects"] >= 1
        assert stats["gaps"] == 0, stats
        assert stats["last_id"] == "1500"
        print(
            f"resumed across SIGKILL: {stats['reconnects']} reconnects, {stats['replayed']} replayed"
        )
    finally:
        col.stop()


# -- history overflow: what history no longer holds is reported, never silently skipped -----------


def test_resume_from_before_the_history_replays_what_is_left_and_says_incomplete() -> None:
    srv = evkit.serve(port=0, history_size=100)
    try:
        for n in range(500):
            evkit.emit("overflow.test.event", {"n": n})
        evkit.flush()

        async def scenario() -> None:
            ws, _ = await open_client(srv.url, since="1")
            messages = await recv_until(ws, lambda m: m["type"] == "websocket.replayed")
            replayed = messages[-1]["payload"]
            assert replayed["complete"] is False
            assert replayed["count"] == 100
            gap, *events = messages[:-1]  # the gap is announced before the first event
            assert gap["type"] == "websocket.gap"
            assert gap["payload"] == {
                "since": "1",
                "complete": False,
                "after": "1",
                "reason": "trimmed",
                "epoch": replayed["epoch"],
            }
            assert [m["payload"]["n"] for m in events] == list(range(400, 500))
            assert [int(m["id"]) for m in events] == list(range(401, 501))
            await ws.close()

        asyncio.run(scenario())
    finally:
        srv.stop()


def test_collector_resuming_from_before_the_history_counts_one_gap() -> None:
    srv = evkit.serve(port=0, history_size=100)
    col: evkit.Collector | None = None
    try:
        for n in range(500):
            evkit.emit("overflow.test.event", {"n": n})
        evkit.flush()
        col = evkit.collect(srv, ["overflow.*"], since="1")
        col.wait(count=100, timeout=TIMEOUT)
        wait_until(lambda: col.stats["gaps"] >= 1, "the collector counted the gap")
        evkit.emit("overflow.test.event", {"n": 500})
        evkit.flush()
        col.wait(count=101, timeout=TIMEOUT)
        assert list(col.to_dataframe()["n"]) == list(range(400, 501))
        stats = col.stats
        assert stats["gaps"] == 1
        assert stats["replayed"] == 100
    finally:
        if col is not None:
            col.stop()
        srv.stop()


def test_collector_resuming_into_a_restarted_small_history_reports_a_gap() -> None:
    srv = evkit.serve(port=0, history_size=100)
    port = srv.port
    srv2: evkit.Server | None = None
    col = evkit.collect(srv, ["overflow.*"])
    try:
        for n in range(10):
            evkit.emit("overflow.before.event", {"n": n})
        evkit.flush()
        col.wait(count=10, timeout=TIMEOUT)
        srv.stop()
        srv2 = evkit.serve(port=port, history_size=100)
        # Whether the collector is back before, during or after these, the new stream
        # (another epoch) cannot vouch for what it missed: a gap is reported.
        for n in range(500):
            evkit.emit("overflow.after.event", {"n": n})
        evkit.flush()
        col.wait_for(lambda e: e["payload"]["n"] == 499 and "after" in e["type"], timeout=TIMEOUT)
        wait_until(lambda: col.stats["gaps"] >= 1, "the collector counted the gap")

        df = col.to_dataframe()
        before = df[df["type"] == "overflow.before.event"]
        after = df[df["type"] == "overflow.after.event"]
        assert list(before["n"]) == list(range(10))
        # What arrived from the new stream is one unbroken run ending at the last event:
        # at most 100 replayed (the history), then live ones.
        first = int(after["n"].iloc[0])
        assert first <= 400
        assert list(after["n"]) == list(range(first, 500))
    finally:
        col.stop()
        srv.stop()
        if srv2 is not None:
            srv2.stop()


# -- catching up from far back ---------------------------------------------------------------------


def test_a_fast_client_resuming_from_far_back_is_not_cut_as_a_slow_consumer() -> None:
    """A replay far larger than client_buffer_limit, with live events meanwhile, cuts nobody.

    Regression: the whole replay went into the connection's buffer at once, and the next
    routing pass cut the resuming client with 1013 although it read as fast as it could.
    """
    history = 50_000
    pad = "x" * 180  # about 250 bytes a frame: the replay is about 12 MB, the limit 1 MiB
    srv = evkit.serve(port=0, history_size=history, client_buffer_limit=MIB)
    try:
        for n in range(history):
            evkit.emit("catchup.test.event", {"n": n, "pad": pad})
        evkit.flush()

        async def scenario() -> None:
            ws, _ = await open_client(srv.url, since="0", eventTypes="catchup.*")
            # One live event while the replay is on its way. (flush() blocks this loop for
            # the moment it takes: no reader could have read 12 MB meanwhile either.)
            evkit.emit("catchup.test.event", {"n": history, "pad": pad})
            evkit.flush()
            received: list[int] = []
            async with asyncio.timeout(TIMEOUT):
                while len(received) < history + 1:
                    message = await recv_json(ws)  # ConnectionClosed if it was cut
                    if "id" in message:
                        received.append(message["payload"]["n"])
            assert received == list(range(history + 1))
            # Still connected: a ping is answered (ConnectionClosed, 1013, if it was cut).
            # The live event emitted during the catch-up came inside the replay, so the
            # websocket.replayed report comes last, before the pong.
            await send_json(ws, {"type": "ping", "payload": "still there"})
            tail = await recv_until(ws, lambda m: m["type"] == "pong")
            assert [m["type"] for m in tail] == ["websocket.replayed", "pong"]
            assert tail[0]["payload"]["complete"] is True
            assert tail[1]["payload"] == {"echo": "still there"}
            await ws.close()

        asyncio.run(scenario())
        assert srv.stats()["slow_consumer_disconnects"] == 0
    finally:
        srv.stop()


# -- one slow consumer among fast ones under 100,000 events ---------------------------------------

FAST_CLIENTS = r"""
import asyncio
import sys

import orjson
from websockets.asyncio.client import connect

url, clients, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = [0] * clients
reported = 0
ready = 0


def report():
    global reported
    low = min(counts)
    if low >= reported + 200 or low == total:
        reported = low
        print("progress", low, flush=True)


async def client(k):
    global ready
    async with connect(url + "?eventTypes=load.*", max_size=None) as ws:
        welcome = orjson.loads(await ws.recv())
        assert welcome["type"] == "websocket.connected", welcome
        ready += 1
        if ready == clients:
            print("ready", flush=True)
        ordered, first, previous = True, None, None
        while True:
            message = orjson.loads(await ws.recv())
            if "id" not in message:
                continue
            current = int(message["id"])
            if previous is not None and current != previous + 1:
                ordered = False
            previous = current
            if message["type"] == "load.test.end":
                break
            if first is None:
                first = current
            if message["payload"]["n"] != counts[k]:
                ordered = False
            counts[k] += 1
            if counts[k] % 200 == 0 or counts[k] == total:
                report()
        print("result", k, counts[k], first, previous, int(ordered), flush=True)


async def main():
    await asyncio.gather(*(client(k) for k in range(clients)))


asyncio.run(main())
"""


@pytest.mark.slow
def test_one_slow_consumer_is_cut_while_ten_fast_ones_get_100000_events(tmp_path: Path) -> None:
    total, fast_clients, chunk, lag = 100_000, 10, 1_000, 1_000
    limit = MIB
    drain_batch_events = 2_000  # evkit.server._DRAIN_CHUNK: events routed per loop turn
    pad = "x" * 180  # with "n" and the envelope, a frame of about 250 bytes
    srv = evkit.serve(port=0, client_buffer_limit=limit)
    child: ChildProcess | None = None
    this_process = psutil.Process()
    try:
        child = ChildProcess(
            FAST_CLIENTS, srv.url, str(fast_clients), str(total), stderr_path=tmp_path / "stderr"
        )
        assert child.next_line() == "ready"
        progress = 0
        progress_lock = threading.Condition()
        results: list[list[str]] = []
        reader_errors: list[BaseException] = []

        def read_child() -> None:
            nonlocal progress
            assert child is not None
            try:
                while len(results) < fast_clients:
                    read_one(child.next_line(60).split())
            except BaseException as exc:
                reader_errors.append(exc)
                with progress_lock:
                    progress_lock.notify_all()

        def fast_clients_reached(count: int) -> bool:
            return progress >= count

        def read_one(words: list[str]) -> None:
            nonlocal progress
            with progress_lock:
                if words[0] == "progress":
                    progress = int(words[1])
                else:
                    assert words[0] == "result", words
                    results.append(words[1:])
                progress_lock.notify_all()

        async def scenario() -> dict[str, Any]:
            # The slow client stops reading: the server's buffer for it grows until it
            # passes the limit. No keep-alive pings from it: it is not reading pongs.
            slow = await connect(srv.url + "?eventTypes=load.*", max_size=None, ping_interval=None)
            welcome = await recv_json(slow)
            assert welcome["type"] == "websocket.connected"
            slow.transport.pause_reading()
            gc.collect()
            rss_before = this_process.memory_info().rss
            peak = rss_before

            def emit_paced() -> None:
                nonlocal peak
                for start in range(0, total, chunk):
                    for n in range(start, start + chunk):
                        evkit.emit("load.test.event", {"n": n, "pad": pad})
                    emitted = start + chunk
                    # Pace on the fast clients' reported progress, so they keep up by
                    # construction (about 2,200 events, 550 KB, behind at most).
                    with progress_lock:
                        if not progress_lock.wait_for(
                            functools.partial(fast_clients_reached, emitted - lag), TIMEOUT
                        ):
                            raise AssertionError(
                                f"fast clients at {progress} of {emitted}: {reader_errors}"
                            )
                    peak = max(peak, this_process.memory_info().rss)
                evkit.emit("load.test.end", {})
                evkit.flush(timeout=TIMEOUT)

            reader = threading.Thread(target=read_child, daemon=True)
            reader.start()
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, emit_paced)
            emitting = time.monotonic() - started
            reader.join(60)
            assert not reader.is_alive(), f"fast clients reported {len(results)} results"
            assert not reader_errors, reader_errors

            slow.transport.resume_reading()
            slow_events = slow_bytes = 0
            with pytest.raises(ConnectionClosed):
                while True:
                    raw = await asyncio.wait_for(slow.recv(), TIMEOUT)
                    slow_events += 1
                    slow_bytes += len(raw)
            gc.collect()
            return {
                "code": slow.close_code,
                "reason": slow.close_reason,
                "slow_events": slow_events,
                "slow_bytes": slow_bytes,
                "rss_before": rss_before,
                "rss_peak": peak,
                "rss_after": this_process.memory_info().rss,
                "emitting": emitting,
            }

        outcome = asyncio.run(scenario())
        assert outcome["code"] == 1013
        assert outcome["reason"] == "slow consumer"
        stats = srv.stats()
        assert stats["slow_consumer_disconnects"] == 1
        assert stats["dropped"] == 0
        assert stats["published"] == total + 1

        assert len(results) == fast_clients
        for k, count, first, last, ordered in results:
            assert (count, first, last, ordered) == (str(total), "1", str(total + 1), "1"), k

        # What the slow client could still read after being cut: what the server had
        # buffered for it (the limit plus at most one drain batch) and what the kernel
        # socket buffers on both sides held.
        frame_bytes = outcome["slow_bytes"] / max(1, outcome["slow_events"])
        kernel = kernel_socket_buffers()
        if kernel is not None:
            assert outcome["slow_bytes"] <= limit + drain_batch_events * frame_bytes + kernel
        assert outcome["slow_events"] < total

        # Memory stays bounded. The server (in this process) holds: the history, 10,000
        # frames of ~250 bytes plus their records (~4 MiB); the slow client's buffer up to
        # the limit plus one drain batch (~1.5 MiB) until it is cut; the fast clients'
        # buffers, at most ~2,200 events each (~5.5 MiB for ten); the emit queue, at most
        # one chunk. About 11 MiB; 150 MiB leaves room for the allocator and still fails
        # at once if anything kept every event (100,000 x 11 clients x 250 B = 275 MB).
        growth_peak = outcome["rss_peak"] - outcome["rss_before"]
        growth_after = outcome["rss_after"] - outcome["rss_before"]
        print(
            f"emitted {total} in {outcome['emitting']:.1f} s; slow client cut after "
            f"{outcome['slow_events']} events ({outcome['slow_bytes'] / MIB:.1f} MiB); "
            f"RSS growth peak {growth_peak / MIB:.1f} MiB, after {growth_after / MIB:.1f} MiB"
        )
        assert growth_peak < 150 * MIB
        assert growth_after < 150 * MIB
    finally:
        if child is not None:
            child.kill()
        srv.stop()


# -- shutdown --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [None, "1000,5000"], ids=["one-per-frame", "batched"])
def test_stop_right_after_5000_events_delivers_them_all_then_closes_with_1001(
    batch: str | None,
) -> None:
    total = 5_000
    srv = evkit.serve(port=0)

    async def scenario() -> None:
        # Batched: events wait up to 5 s for their batch; stop must not wait or lose them.
        query: dict[str, Any] = {"eventTypes": "shutdown.*"} | ({"batch": batch} if batch else {})
        ws, _ = await open_client(srv.url, **query)
        for n in range(total):
            evkit.emit("shutdown.test.event", {"n": n})
        # Stop at once, reading meanwhile (as any live client would).
        started = time.monotonic()
        stopping = asyncio.get_running_loop().run_in_executor(None, srv.stop)
        received: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed):
            while True:
                message = await recv_json(ws, TIMEOUT)
                if message["type"] == "websocket.batch":
                    received.extend(message["payload"]["events"])
                else:
                    received.append(message)
        await asyncio.wait_for(stopping, TIMEOUT)
        assert [m["payload"]["n"] for m in received] == list(range(total))
        assert ws.close_code == 1001
        assert time.monotonic() - started < 5

    asyncio.run(scenario())
    assert not srv.running
    assert srv.stats()["published"] == total
