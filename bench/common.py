"""Benchmark plumbing shared by the scripts in ``bench/``: counting clients, CPU clocks,
and what every script does alike (pinning, the raw handshake, deadlines, CPU reports).

The clients here are deliberately dumb so that the server, not the client, is what a
benchmark measures: each one is a plain socket that performs the WebSocket handshake by
hand, then only walks frame headers to count frames. It never decodes JSON except for
the very last frame, which is kept to check the final sequence number. Pings are
answered so that a long run is not cut by the server's keep-alive. A worker process
sweeps its sockets with one ``select`` and sleeps a little between sweeps, so each
``recv`` takes many frames at once: per frame, a client costs a fraction of what the
server pays to send it.

Clients run in worker processes started by :func:`start_client_workers` and report
through shared memory (no pipes on the hot path): frames received per client (the
producer reads these as credits to pace itself), the ``time.monotonic()`` at which each
client had everything, whether its last frame carried the expected sequence number,
and each worker's CPU seconds between "all my clients connected" and "all done".
``time.monotonic()`` is ``CLOCK_MONOTONIC`` on Linux, so it is comparable across
processes.

This module must not import evkit: the same clients measure the reference server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import cProfile
import ctypes
import io
import multiprocessing
import os
import platform
import pstats
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import RawArray
from typing import Any, Protocol

import orjson
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, serve

__all__ = [
    "CPU_BOUND",
    "NOISE",
    "ClientBoard",
    "CoreUsage",
    "LoopLag",
    "OtherLoad",
    "Placement",
    "RunAborted",
    "ThreadClock",
    "client_poll",
    "cpu_report",
    "cpu_verdict",
    "handshake",
    "pin",
    "print_profile",
    "send_control",
    "start_client_workers",
    "stop_client_workers",
    "versions",
    "wait_until",
    "warn_if_noisy",
]

CPU_BOUND = 0.85  # share of one core above which a process counts as CPU-bound
NOISE = 0.10  # other processes' share of a core above which a run is flagged

_SCRATCH_BYTES = 4 * 1024 * 1024  # one recv takes at most this much

# Per-worker slots in ClientBoard.worker_cpu / worker_state.
_READY, _DONE, _FAILED = 1, 2, 3


@dataclass
class ClientBoard:
    """Shared memory between the benchmark process and its client workers.

    One slot per client in ``frames`` (frames after the preamble), ``done_at`` (monotonic
    time the client had ``events`` frames, 0 until then), ``last_ok`` (1 when its last
    frame carried ``expected_last_seq``, -1 when it did not) and ``ready`` (1 once the
    handshake and the preamble arrived). One slot per worker in ``worker_cpu`` (CPU
    seconds from all-ready to all-done), ``worker_state`` and ``refused`` (handshakes
    the server refused for load, then retried).
    """

    clients: int
    workers: int
    frames: Any
    done_at: Any
    last_ok: Any
    ready: Any
    worker_cpu: Any
    worker_state: Any
    refused: Any

    @classmethod
    def create(cls, clients: int, workers: int) -> ClientBoard:
        return cls(
            clients=clients,
            workers=workers,
            frames=RawArray(ctypes.c_int64, clients),
            done_at=RawArray(ctypes.c_double, clients),
            last_ok=RawArray(ctypes.c_int8, clients),
            ready=RawArray(ctypes.c_int8, clients),
            worker_cpu=RawArray(ctypes.c_double, workers),
            worker_state=RawArray(ctypes.c_int8, workers),
            refused=RawArray(ctypes.c_int64, workers),
        )

    def frames_view(self) -> memoryview:
        """A view of ``frames`` that ``min()`` and ``sum()`` read without copying."""
        return memoryview(self.frames).cast("B").cast("q")

    def min_frames(self) -> int:
        return min(self.frames_view())

    def total_frames(self) -> int:
        return sum(self.frames_view())

    def all_ready(self) -> bool:
        return all(self.ready)

    def all_done(self) -> bool:
        return all(self.done_at)

    def any_worker_failed(self) -> bool:
        return any(state == _FAILED for state in self.worker_state)


class _CountingClient:
    """One WebSocket connection that counts frames; see the module docstring."""

    def __init__(
        self,
        slot: int,
        board: ClientBoard,
        preamble: int,
        events: int,
        expected_last_seq: int | None,
    ) -> None:
        self.slot = slot
        self.board = board
        self.preamble = preamble
        self.events = events
        self.expected_last_seq = expected_last_seq
        self.sock: socket.socket | None = None
        self.leftover = b""
        self.frames = 0  # data frames, preamble included
        self.last_frame = b""
        self.done = False
        self.error: str | None = None

    def connect(self, host: str, port: int, path: str, deadline: float) -> int:
        """Open the connection (see :func:`handshake`); returns how many refusals there were."""
        self.sock, self.leftover, refusals = handshake(
            host, port, path, deadline, f"client {self.slot}"
        )
        return refusals

    @property
    def ready(self) -> bool:
        return self.frames >= self.preamble

    def read(self, scratch: bytearray, view: memoryview) -> None:
        """Read what is available into ``scratch`` and count the frames in it."""
        assert self.sock is not None
        kept = len(self.leftover)
        scratch[:kept] = self.leftover
        try:
            received = self.sock.recv_into(view[kept:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.error = f"connection lost after {self.frames} frames: {exc}"
            return
        if not received:
            self.error = f"server closed the connection after {self.frames} frames"
            return
        self._count(scratch, kept + received)

    def _count(self, data: bytearray | bytes, size: int) -> None:
        position = 0
        frames = 0
        last_start = last_end = -1
        # Frames from a server are never masked: a 2, 4 or 10 byte header, then the data.
        while size - position >= 2:
            length = data[position + 1] & 0x7F
            if length < 126:
                start = position + 2
            elif length == 126:
                if size - position < 4:
                    break
                length = (data[position + 2] << 8) | data[position + 3]
                start = position + 4
            else:
                if size - position < 10:
                    break
                length = int.from_bytes(data[position + 2 : position + 10], "big")
                start = position + 10
            end = start + length
            if end > size:
                break
            opcode = data[position] & 0x0F
            if opcode == 1 or opcode == 2:
                frames += 1
                last_start, last_end = start, end
            elif opcode == 9:
                self._send_control(0xA, bytes(data[start:end]))  # pong with the ping's data
            elif opcode == 8:
                self.error = f"server closed the connection: {bytes(data[start:end])!r}"
            position = end
        self.leftover = bytes(data[position:size])
        if frames:
            self.frames += frames
            self.last_frame = bytes(data[last_start:last_end])
            counted = self.frames - self.preamble
            if counted >= 0:
                self.board.frames[self.slot] = counted
                if counted >= self.events:
                    self._finish()

    def count_leftover(self) -> None:
        """Count frames that arrived with the handshake response."""
        if self.leftover:
            self._count(self.leftover, len(self.leftover))

    def _finish(self) -> None:
        board = self.board
        board.done_at[self.slot] = time.monotonic()
        ok = True
        if self.expected_last_seq is not None:
            try:
                ok = orjson.loads(self.last_frame)["payload"]["seq"] == self.expected_last_seq
            except (orjson.JSONDecodeError, KeyError, TypeError):
                ok = False
        board.last_ok[self.slot] = 1 if ok else -1
        self.done = True

    def _send_control(self, opcode: int, payload: bytes) -> None:
        if self.sock is not None:
            send_control(self.sock, opcode, payload)

    def close(self) -> None:
        if self.sock is not None:
            send_control(self.sock, 0x8, (1000).to_bytes(2, "big"))
            self.sock.close()
            self.sock = None


def handshake(
    host: str, port: int, path: str, deadline: float, who: str
) -> tuple[socket.socket, bytes, int]:
    """Open a WebSocket connection by hand (blocking) before ``deadline``.

    Returns the socket (non-blocking from then on), the bytes that came after the
    handshake response, and how many times the server refused for load (429, 503: its
    admission limits); each such refusal is retried after its ``Retry-After`` or a
    growing pause.

    Raises:
        ConnectionError: refused otherwise, or still refused at ``deadline`` (the
            message starts with ``who``).
    """
    refusals = 0
    pause = 0.05
    while True:
        sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                sock.close()
                raise ConnectionError(f"{who}: server closed during the handshake")
            response += chunk
        head, _, leftover = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        if status_line.startswith("HTTP/1.1 101"):
            sock.setblocking(False)
            return sock, leftover, refusals
        sock.close()
        headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
        retry_after = headers.get("retry-after", "")
        wait = float(retry_after) if retry_after.isdigit() else pause
        if status_line[9:12] not in ("429", "503") or time.monotonic() + wait > deadline:
            raise ConnectionError(f"{who}: handshake refused: {status_line}")
        refusals += 1
        time.sleep(wait)
        pause = min(1.0, pause * 2)


def send_control(sock: socket.socket, opcode: int, payload: bytes) -> None:
    """Send a control frame (pong, close) as a client; a lost connection is ignored."""
    # Client frames must be masked; an all-zero mask leaves the payload as it is.
    if len(payload) < 126:
        with contextlib.suppress(OSError):
            sock.send(bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload)


def _run_worker(
    worker: int,
    slots: Sequence[int],
    board: ClientBoard,
    host: str,
    port: int,
    path: str,
    preamble: int,
    events: int,
    expected_last_seq: int | None,
    deadline: float,
    poll_interval: float,
) -> None:
    clients = [_CountingClient(slot, board, preamble, events, expected_last_seq) for slot in slots]
    scratch = bytearray(_SCRATCH_BYTES)
    view = memoryview(scratch)
    selector = selectors.DefaultSelector()
    try:
        for client in clients:
            board.refused[worker] += client.connect(host, port, path, deadline)
            assert client.sock is not None
            selector.register(client.sock, selectors.EVENT_READ, client)
            client.count_leftover()
        waiting = {client for client in clients if not client.done}
        unready = clients
        cpu_ready = time.process_time()  # a worker with no clients is ready at once
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(waiting)} of {len(clients)} clients still waiting at the deadline"
                )
            if unready:
                unready = [client for client in unready if not client.ready]
                for client in clients:
                    board.ready[client.slot] = 1 if client.ready else 0
                if not unready:
                    cpu_ready = time.process_time()
                    board.worker_state[worker] = _READY
            for key, _ in selector.select(0.05):
                client = key.data
                client.read(scratch, view)
                if client.error:
                    raise ConnectionError(f"client {client.slot}: {client.error}")
                if client.done:
                    waiting.discard(client)
                    selector.unregister(key.fileobj)
            if unready:
                continue
            # Sleeping between sweeps lets frames pile up in the socket buffers, so each
            # recv takes many of them: the clients stay far cheaper than the server.
            time.sleep(poll_interval)
        board.worker_cpu[worker] = time.process_time() - cpu_ready
        board.worker_state[worker] = _DONE
    finally:
        selector.close()
        for client in clients:
            client.close()


def _worker_main(
    worker: int,
    slots: Sequence[int],
    board: ClientBoard,
    host: str,
    port: int,
    path: str,
    preamble: int,
    events: int,
    expected_last_seq: int | None,
    deadline: float,
    poll_interval: float,
    cpus: set[int] | None,
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        _run_worker(
            worker,
            slots,
            board,
            host,
            port,
            path,
            preamble,
            events,
            expected_last_seq,
            deadline,
            poll_interval,
        )
    except BaseException as exc:
        board.worker_state[worker] = _FAILED
        print(f"client worker {worker}: {type(exc).__name__}: {exc}", flush=True)
        raise SystemExit(1) from None


def start_client_workers(
    board: ClientBoard,
    host: str,
    port: int,
    path: str,
    *,
    preamble: int,
    events: int,
    expected_last_seq: int | None,
    deadline: float,
    poll_interval: float = 0.002,
    cpus: set[int] | None = None,
) -> list[BaseProcess]:
    """Start ``board.workers`` processes sharing ``board.clients`` connections round-robin.

    ``preamble`` is the number of data frames a server sends on connect before any event
    (not counted); ``expected_last_seq``, when given, is the ``payload.seq`` the last frame
    must carry. Workers give up at ``deadline`` (``time.monotonic()``), sleep
    ``poll_interval`` seconds between sweeps over their sockets, and run on ``cpus`` when
    given.
    """
    context = multiprocessing.get_context("spawn")  # no fork: the parent has threads
    processes = []
    for worker in range(board.workers):
        slots = list(range(worker, board.clients, board.workers))
        process = context.Process(
            target=_worker_main,
            args=(
                worker,
                slots,
                board,
                host,
                port,
                path,
                preamble,
                events,
                expected_last_seq,
                deadline,
                poll_interval,
                cpus,
            ),
            name=f"bench-clients-{worker}",
            daemon=True,
        )
        process.start()
        processes.append(process)
    return processes


def stop_client_workers(processes: Sequence[BaseProcess], timeout: float = 5.0) -> None:
    """Join the workers; terminate (then kill) any that do not exit within ``timeout``."""
    end = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, end - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
    for process in processes:
        with contextlib.suppress(ValueError):
            process.close()


class ThreadClock:
    """CPU seconds consumed by one thread, readable from any thread (Linux/POSIX)."""

    def __init__(self, thread_ident: int) -> None:
        self._clock = time.pthread_getcpuclockid(thread_ident)

    def __call__(self) -> float:
        return time.clock_gettime(self._clock)


class CoreUsage:
    """Per-CPU busy time from ``/proc/stat`` between :meth:`start` and :meth:`stop`.

    Unlike per-process CPU clocks, this also sees the kernel's softirq time, where most
    of loopback TCP's work is done and which is charged to no process.
    """

    _BUSY = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal
    _SOFTIRQ = 6

    def __init__(self) -> None:
        self._start: dict[str, list[int]] = {}
        self.busy: dict[str, float] = {}
        self.softirq: dict[str, float] = {}

    @staticmethod
    def _read() -> dict[str, list[int]]:
        try:
            with open("/proc/stat") as stat:
                return {
                    fields[0]: [int(value) for value in fields[1:]]
                    for fields in (line.split() for line in stat)
                    if fields and fields[0].startswith("cpu") and fields[0] != "cpu"
                }
        except OSError:
            return {}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        end = self._read()
        for cpu, before in self._start.items():
            after = end.get(cpu)
            if after is None:
                continue
            delta = [a - b for a, b in zip(after, before, strict=False)]
            total = sum(delta[:8]) or 1
            self.busy[cpu] = sum(delta[i] for i in self._BUSY) / total
            self.softirq[cpu] = delta[self._SOFTIRQ] / total


class LoopLag:
    """The longest an event loop kept a callback waiting, sampled from another thread.

    Every ``interval`` seconds a probe thread schedules a callback with
    ``call_soon_threadsafe``; the lag is how late it ran. A loop busy in one long callback
    (a big broadcast) shows it: nothing else on that loop (handshakes, pings, client
    messages, write-buffer flushes) runs for that long either.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.02) -> None:
        self.loop = loop
        self.interval = interval
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="loop-lag-probe", daemon=True)

    def _probe(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(RuntimeError):  # loop closed
                self.loop.call_soon_threadsafe(self._seen, time.monotonic())

    def _seen(self, sent: float) -> None:
        self.worst = max(self.worst, time.monotonic() - sent)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)


class OtherLoad:
    """CPU seconds used by processes other than this one and its children.

    The benchmark shares the machine; this says how much of it something else took
    during a run (processes that both started and ended inside the run are missed).
    """

    def __init__(self) -> None:
        self._start: dict[tuple[int, int], float] = {}
        self.seconds = 0.0
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _read(self) -> dict[tuple[int, int], float]:
        me = os.getpid()
        usage = {}
        try:
            entries = os.listdir("/proc")
        except OSError:
            return {}
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, parent = int(entry), int(fields[1])
            if me in (pid, parent):
                continue
            # (pid, start time) names a process even if its pid is reused.
            usage[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / self._tick
        return usage

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        end = self._read()
        self.seconds = sum(used - self._start.get(key, 0.0) for key, used in end.items())


# -- what every script does alike ---------------------------------------------------------


class BareBroadcastServer:
    """A bare websockets server on its own loop thread: the reference the scripts measure.

    It accepts clients and never reads from them; subclasses add ``produce``, which
    broadcasts on ``self.loop``. Configured as evkit's Broadcaster configures serve().
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="reference-loop", daemon=True
        )
        self.thread.start()
        self.connections: set[ServerConnection] = set()
        self.server: WebSocketServer = self.run(self._start(), 10)
        self.port: int = self.server.sockets[0].getsockname()[1]

    def run(self, coroutine: Any, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> WebSocketServer:
        async def handler(connection: ServerConnection) -> None:
            self.connections.add(connection)
            try:
                await connection.wait_closed()
            finally:
                self.connections.discard(connection)

        # The settings evkit's Broadcaster passes to serve(), where they apply.
        return await serve(
            handler,
            self.host,
            0,
            compression=None,
            max_queue=64,
            ping_interval=20.0,
            close_timeout=2,
        )

    def client_count(self) -> int:
        return len(self.connections)

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1.5)
            current = asyncio.current_task()
            tasks = [task for task in asyncio.all_tasks() if task is not current]
            for task in tasks:
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 1.0)

        with contextlib.suppress(Exception):
            self.run(shutdown(), 3)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(1)
        if not self.thread.is_alive():
            self.loop.close()


class RunAborted(Exception):
    """A run did not complete in time, or a client worker failed."""


class _Workers(Protocol):
    def any_worker_failed(self) -> bool: ...


def wait_until(condition: Callable[[], bool], deadline: float, what: str, board: _Workers) -> None:
    """Poll ``condition`` until it holds.

    Raises:
        RunAborted: a client worker failed, or ``deadline`` (``time.monotonic()``) passed.
    """
    while not condition():
        if board.any_worker_failed():
            raise RunAborted(f"a client worker failed while waiting for {what}")
        if time.monotonic() > deadline:
            raise RunAborted(f"timed out waiting for {what}")
        time.sleep(0.002)


def client_poll(milliseconds: float | None, clients: int) -> float:
    """Seconds a client worker sleeps between sweeps: ``--client-poll-ms``, or N x 0.05 ms
    from 1 to 50 ms, so that each ``recv`` takes several frames."""
    if milliseconds is None:
        milliseconds = min(50.0, max(1.0, clients * 0.05))
    return milliseconds / 1000


@dataclass(frozen=True)
class Placement:
    """Where the benchmark process and its client processes run."""

    client_cpus: set[int] | None  # None: wherever the scheduler puts them
    client_cores: int  # CPUs the client processes share
    description: str


def pin(mode: str) -> Placement:
    """``split``: this process on the first CPU, client processes on the others; ``none``.

    Call it before any thread starts: threads inherit the CPU set of the process.
    """
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if mode == "split" and len(available) >= 2:
        os.sched_setaffinity(0, {available[0]})
        clients = set(available[1:])
        description = f"server process on cpu{available[0]}, clients on " + ",".join(
            f"cpu{cpu}" for cpu in sorted(clients)
        )
        return Placement(clients, len(clients), description)
    return Placement(None, max(1, len(available)), "unpinned")


def evkit_revision(root: str | None = None) -> str:
    """The commit evkit was measured at (this checkout, or the one at ``root``), and
    whether its sources differ from it."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # status must not touch the index
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            env=environment,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "evkit"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            env=environment,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"commit {commit}{' with local changes' if changed else ''}"


def versions(evkit_version: str) -> str:
    """Python, websockets and evkit (with its commit) versions, and the CPU count."""
    import websockets

    return (
        f"{platform.python_implementation()} {platform.python_version()}, websockets "
        f"{websockets.__version__}, evkit {evkit_version} ({evkit_revision()}),"
        f" {os.cpu_count()} CPUs"
    )


def cpu_verdict(server: float, clients: Sequence[float], client_cores: int) -> str:
    """Which process was CPU-bound, from CPU time as a share of wall time.

    ``server`` is this process's share of one core (all its threads); ``clients`` are
    the worker processes' shares, which together can use at most ``client_cores``.
    """
    bound = []
    if server >= CPU_BOUND:
        bound.append(f"the server process ({server:.0%} of a core)")
    total = sum(clients)
    if any(share >= CPU_BOUND for share in clients) or total >= CPU_BOUND * client_cores:
        bound.append(f"the client processes ({total:.0%} on {client_cores} CPU)")
    if not bound:
        return (
            f"neither (server process {server:.0%}, client processes {total:.0%} of a core):"
            " the load was below what either can do"
        )
    return " and ".join(bound)


def cpu_report(
    indent: str,
    wall: float,
    server_cpu: float,
    loop_cpu: float,
    client_cpu: Sequence[float],
    cores: CoreUsage,
    others: OtherLoad,
    client_cores: int,
) -> str:
    """Two report lines: CPU time over ``wall`` of each side, and which was CPU-bound."""
    clients = [cpu / wall for cpu in client_cpu]
    busy = ", ".join(
        f"{cpu} busy {share:.0%} (softirq {cores.softirq[cpu]:.0%})"
        for cpu, share in sorted(cores.busy.items())
    )
    return (
        f"\n{indent}CPU / wall: server process {server_cpu / wall:.0%} (loop thread"
        f" {loop_cpu / wall:.0%}), client processes "
        + " + ".join(f"{share:.0%}" for share in clients)
        + f"; {busy}; other processes {others.seconds / wall:.0%}"
        + f"\n{indent}CPU-bound: {cpu_verdict(server_cpu / wall, clients, client_cores)}"
    )


def warn_if_noisy(others: float) -> None:
    """Say so when other processes took more than :data:`NOISE` of a core in a run."""
    if others > NOISE:
        print(
            f"\nwarning: other processes used up to {others:.0%} of a core during a run; the"
            " machine was not quiet and these numbers are not a fair comparison: run again"
        )


def print_profile(title: str, profiler: cProfile.Profile, limit: int = 22) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    print(f"\n=== cProfile, {title} (sorted by own time) ===")
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    total = next((line for line in lines if "function calls" in line), "")
    print(total.strip())
    print("\n".join(line for line in lines[start:] if line.strip()))
