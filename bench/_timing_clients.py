"""Clients that count events and time their delivery, for routing, latency and batching.

Like the clients of ``common.py`` these are plain sockets that perform the WebSocket
handshake by hand and only walk frame headers, so a client costs far less than the
server pays to send to it. They add what ``routing.py``, ``latency.py`` and
``batching.py`` need and ``common.py``'s clients do not do:

* every client has its own URL (its own patterns and correlation filter) and its own
  expected number of events;
* they count events, not frames: a frame counts as the number of ``"id":`` it holds
  (an event frame holds one, a ``websocket.batch`` frame one per event, and nothing else
  evkit sends holds any), with one C-level ``bytes.count`` per frame;
* a client notes when it had its ``phase_from``-th event (the end of a throughput
  phase) and its last expected one;
* from its ``timed_from``-th event on, a client records each event's latency: the
  ``time.time_ns()`` at which the ``recv`` that brought the event returned, minus the
  ``"sentNs"`` the producer wrote into its payload (one machine, one clock). Taking the
  time at each ``recv`` counts a client's own delay too, never less than the truth;
* a worker keeps reading after its clients are done, until the parent says stop, so a
  client that receives *more* than it should is caught as well.

Workers report through shared memory while they run and send their latency samples
through a pipe when they stop. Also here, shared by the three scripts: the producers'
credit rule (:class:`CreditPacer`), fixed-rate sender (:func:`emit_at_rate`) and
percentiles. The handshake and what all scripts share are in ``common.py``.

This module must not import evkit: the reference servers are measured with the same clients.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import multiprocessing
import os
import re
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import RawArray, RawValue
from typing import Any

from common import RunAborted, handshake, send_control, stop_client_workers

__all__ = [
    "CreditPacer",
    "EventBoard",
    "EventClients",
    "Pace",
    "emit_at_rate",
    "percentile",
]

EVENT_MARK = b'"id":'  # one per event, whether alone in its frame or in a batch
SENT_FIELD = re.compile(rb'"sentNs":(\d+)')
SEQ_FIELD = re.compile(rb'"seq":(\d+)')
PAUSE = 0.001  # seconds a producer sleeps while it waits for credit

_SCRATCH_BYTES = 8 * 1024 * 1024  # one recv takes at most this much
_READY, _DONE, _FAILED = 1, 2, 3


@dataclass
class EventBoard:
    """Shared memory between a benchmark process and its client workers.

    Per client: ``expected`` (set by the parent before the start), ``events`` received
    (after the preamble), ``frames`` (data frames after the preamble), ``phase_at`` and
    ``done_at`` (``time.monotonic()`` when it had ``phase_from`` and ``expected`` events,
    0 until then), ``last_seq`` (the payload ``seq`` of the last event it got, written at
    stop; -1 for none) and ``ready``. Per worker: ``process_time()`` when all its clients
    were ready, past ``phase_from`` and done, and its state. ``stop`` is set by the parent.
    """

    clients: int
    workers: int
    expected: Any
    events: Any
    frames: Any
    phase_at: Any
    done_at: Any
    last_seq: Any
    ready: Any
    cpu_ready: Any
    cpu_phase: Any
    cpu_done: Any
    worker_state: Any
    stop: Any

    @classmethod
    def create(cls, expected: Sequence[int], workers: int) -> EventBoard:
        clients = len(expected)
        return cls(
            clients=clients,
            workers=workers,
            expected=RawArray(ctypes.c_int64, list(expected)),
            events=RawArray(ctypes.c_int64, clients),
            frames=RawArray(ctypes.c_int64, clients),
            phase_at=RawArray(ctypes.c_double, clients),
            done_at=RawArray(ctypes.c_double, clients),
            last_seq=RawArray(ctypes.c_int64, [-1] * clients),
            ready=RawArray(ctypes.c_int8, clients),
            cpu_ready=RawArray(ctypes.c_double, workers),
            cpu_phase=RawArray(ctypes.c_double, workers),
            cpu_done=RawArray(ctypes.c_double, workers),
            worker_state=RawArray(ctypes.c_int8, workers),
            stop=RawValue(ctypes.c_int8, 0),
        )

    def events_view(self) -> memoryview:
        """A view of ``events`` that ``min()`` and ``sum()`` read without copying."""
        return memoryview(self.events).cast("B").cast("q")

    def min_events(self) -> int:
        return min(self.events_view())

    def total_events(self) -> int:
        return sum(self.events_view())

    def all_ready(self) -> bool:
        return all(self.ready)

    def all_past(self, count: int) -> bool:
        return self.min_events() >= count

    def all_done(self) -> bool:
        return all(self.done_at)

    def any_worker_failed(self) -> bool:
        return any(state == _FAILED for state in self.worker_state)

    def worker_cpu(self, since: str, until: str) -> list[float]:
        """CPU seconds of each worker between two of ``ready``, ``phase``, ``done``."""
        start, end = getattr(self, f"cpu_{since}"), getattr(self, f"cpu_{until}")
        return [max(0.0, b - a) if a and b else 0.0 for a, b in zip(start, end, strict=True)]


@dataclass
class _Tally:
    """How many of one worker's clients are not yet ready, past ``phase_from``, done."""

    unready: int
    before_phase: int
    undone: int


class _EventClient:
    """One WebSocket connection that counts events and times them; see the module docstring."""

    def __init__(
        self,
        slot: int,
        board: EventBoard,
        tally: _Tally,
        preamble: int,
        phase_from: int,
        timed_from: int,
        samples: array.array[int],
    ) -> None:
        self.slot = slot
        self.board = board
        self.tally = tally
        self.preamble_left = preamble
        self.phase_from = phase_from
        self.timed_from = timed_from
        self.expected = board.expected[slot]
        self.samples = samples
        self.sock: socket.socket | None = None
        self.leftover = b""
        self.events = 0
        self.frames = 0
        self.last_frame = b""
        self.ready = preamble == 0
        self.past_phase = phase_from <= 0
        self.done = self.expected == 0
        self.error: str | None = None

    def connect(self, host: str, port: int, path: str, deadline: float) -> None:
        """Open the connection (see :func:`common.handshake`) before ``deadline``."""
        self.sock, self.leftover, _ = handshake(host, port, path, deadline, f"client {self.slot}")
        if self.leftover:
            self._consume(self.leftover, len(self.leftover), time.time_ns())

    def read(self, scratch: bytearray, view: memoryview) -> None:
        """Read what is available into ``scratch``; count and time the events in it."""
        assert self.sock is not None
        kept = len(self.leftover)
        scratch[:kept] = self.leftover
        try:
            received = self.sock.recv_into(view[kept:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.error = f"connection lost after {self.events} events: {exc}"
            return
        received_ns = time.time_ns()
        if not received:
            self.error = f"server closed the connection after {self.events} events"
            return
        self._consume(scratch, kept + received, received_ns)

    def _consume(self, data: bytearray | bytes, size: int, received_ns: int) -> None:
        position = 0
        events = before = self.events
        frames = 0
        last_start = last_end = -1
        timed_from = self.timed_from
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
                if self.preamble_left:
                    self.preamble_left -= 1
                else:
                    count = data.count(EVENT_MARK, start, end)
                    if timed_from >= 0 and events + count > timed_from:
                        sent = SENT_FIELD.findall(data, start, end)
                        if events < timed_from:
                            sent = sent[timed_from - events :]
                        append = self.samples.append
                        for stamp in sent:
                            append(received_ns - int(stamp))
                    events += count
                    frames += 1
                    last_start, last_end = start, end
            elif opcode == 9:
                self._send_control(0xA, bytes(data[start:end]))  # pong with the ping's data
            elif opcode == 8:
                self.error = f"server closed the connection: {bytes(data[start:end])!r}"
            position = end
        self.leftover = bytes(data[position:size])
        if not self.ready and not self.preamble_left:
            self.ready = True
            self.board.ready[self.slot] = 1
            self.tally.unready -= 1
        if frames:
            self.frames += frames
            self.last_frame = bytes(data[last_start:last_end])
            self.board.frames[self.slot] = self.frames
        if events != before:
            self.events = events
            board = self.board
            board.events[self.slot] = events
            if not self.past_phase and events >= self.phase_from:
                self.past_phase = True
                board.phase_at[self.slot] = time.monotonic()
                self.tally.before_phase -= 1
            if not self.done and events >= self.expected:
                self.done = True
                board.done_at[self.slot] = time.monotonic()
                self.tally.undone -= 1

    def last_seq(self) -> int:
        found = SEQ_FIELD.findall(self.last_frame)
        return int(found[-1]) if found else -1

    def _send_control(self, opcode: int, payload: bytes) -> None:
        if self.sock is not None:
            send_control(self.sock, opcode, payload)

    def close(self) -> None:
        if self.sock is not None:
            send_control(self.sock, 0x8, (1000).to_bytes(2, "big"))
            self.sock.close()
            self.sock = None


def _run_worker(
    worker: int,
    slots: Sequence[int],
    paths: Sequence[str],
    board: EventBoard,
    host: str,
    port: int,
    preamble: int,
    phase_from: int,
    timed_from: int,
    deadline: float,
    poll_interval: float,
    results: Connection,
) -> None:
    samples: array.array[int] = array.array("q")
    tally = _Tally(0, 0, 0)
    clients = [
        _EventClient(slot, board, tally, preamble, phase_from, timed_from, samples)
        for slot in slots
    ]
    tally.unready = sum(not client.ready for client in clients)
    tally.before_phase = sum(not client.past_phase for client in clients)
    tally.undone = sum(not client.done for client in clients)
    scratch = bytearray(_SCRATCH_BYTES)
    view = memoryview(scratch)
    selector = selectors.DefaultSelector()
    try:
        for client, path in zip(clients, paths, strict=True):
            if client.ready:
                board.ready[client.slot] = 1
            client.connect(host, port, path, deadline)
            assert client.sock is not None
            selector.register(client.sock, selectors.EVENT_READ, client)
        ready_seen = phase_seen = done_seen = False
        phased = phase_from >= 0
        while not board.stop.value:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{tally.undone} of {len(clients)} clients still waiting at the deadline"
                )
            for key, _ in selector.select(0.02):
                client = key.data
                client.read(scratch, view)
                if client.error:
                    raise ConnectionError(f"client {client.slot}: {client.error}")
            if not ready_seen and not tally.unready:
                ready_seen = True
                board.cpu_ready[worker] = time.process_time()
                board.worker_state[worker] = _READY
            if ready_seen and not phase_seen and not tally.before_phase:
                phase_seen = True
                board.cpu_phase[worker] = time.process_time()
            if ready_seen and not done_seen and not tally.undone:
                done_seen = True
                board.cpu_done[worker] = time.process_time()
                board.worker_state[worker] = _DONE
            if poll_interval and not (phased and phase_seen):
                # Sleeping between sweeps lets frames pile up in the socket buffers, so
                # each recv takes many and the clients stay cheap. After the phase
                # (where events are timed), a sleep would be latency, so there is none.
                time.sleep(poll_interval)
        for client in clients:
            board.last_seq[client.slot] = client.last_seq()
        results.send_bytes(samples.tobytes())
    finally:
        selector.close()
        for client in clients:
            client.close()
        results.close()


def _worker_main(
    worker: int,
    slots: Sequence[int],
    paths: Sequence[str],
    board: EventBoard,
    host: str,
    port: int,
    preamble: int,
    phase_from: int,
    timed_from: int,
    deadline: float,
    poll_interval: float,
    cpus: set[int] | None,
    results: Connection,
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        _run_worker(
            worker,
            slots,
            paths,
            board,
            host,
            port,
            preamble,
            phase_from,
            timed_from,
            deadline,
            poll_interval,
            results,
        )
    except BaseException as exc:
        board.worker_state[worker] = _FAILED
        print(f"client worker {worker}: {type(exc).__name__}: {exc}", flush=True)
        raise SystemExit(1) from None


@dataclass
class EventClients:
    """Client worker processes started by :meth:`start`; :meth:`stop` them exactly once."""

    board: EventBoard
    processes: list[BaseProcess] = field(default_factory=list)
    pipes: list[Connection] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        board: EventBoard,
        host: str,
        port: int,
        paths: Sequence[str],
        *,
        preamble: int,
        phase_from: int,
        timed_from: int,
        deadline: float,
        poll_interval: float,
        cpus: set[int] | None = None,
    ) -> EventClients:
        """Start ``board.workers`` processes sharing the clients round-robin.

        Client ``i`` connects to ``paths[i]``. ``preamble`` is the number of data frames
        a server sends on connect before any event (not counted). ``phase_from`` is the
        event count whose arrival ``phase_at`` records (-1: none); ``timed_from`` the
        event index from which latencies are recorded (-1: none). Workers give up at
        ``deadline`` (``time.monotonic()``), sleep ``poll_interval`` seconds between
        sweeps until all their clients are past ``phase_from`` (always, without one),
        and run on ``cpus`` when given.
        """
        if len(paths) != board.clients:
            raise ValueError(f"{len(paths)} paths for {board.clients} clients")
        context = multiprocessing.get_context("spawn")  # no fork: the parent has threads
        clients = cls(board)
        for worker in range(board.workers):
            slots = list(range(worker, board.clients, board.workers))
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main,
                args=(
                    worker,
                    slots,
                    [paths[slot] for slot in slots],
                    board,
                    host,
                    port,
                    preamble,
                    phase_from,
                    timed_from,
                    deadline,
                    poll_interval,
                    cpus,
                    sender,
                ),
                name=f"bench-event-clients-{worker}",
                daemon=True,
            )
            process.start()
            sender.close()
            clients.processes.append(process)
            clients.pipes.append(receiver)
        return clients

    def stop(self, timeout: float = 5.0) -> array.array[int]:
        """Tell the workers to stop, gather their latency samples (ns), and join them."""
        self.board.stop.value = 1
        samples: array.array[int] = array.array("q")
        end = time.monotonic() + timeout
        for pipe in self.pipes:
            with contextlib.suppress(EOFError, OSError):
                if pipe.poll(max(0.0, end - time.monotonic())):
                    samples.frombytes(pipe.recv_bytes())
            pipe.close()
        stop_client_workers(self.processes, max(0.0, end - time.monotonic()))
        self.processes, self.pipes = [], []
        return samples


class CreditPacer:
    """The credit rule a producer follows, and how long it made it wait.

    ``position()`` says up to which event of the stream every client has accounted for
    (received it, or was never meant to). The producer may send event ``sent`` while
    ``sent < position() + window``, so no write buffer holds more than ``window`` events
    and what is measured is sustained delivery, not a pile-up in buffers. Out of credit,
    it waits until a quarter window may go, sleeping ``PAUSE`` between looks: a producer
    that woke often would take the GIL from the loop it feeds.
    """

    def __init__(
        self, position: Callable[[], int], window: int, events: int, deadline: float
    ) -> None:
        self.position = position
        self.window = window
        self.events = events
        self.deadline = deadline
        self.waits = 0
        self.waited = 0.0

    def allowance(self) -> int:
        return min(self.events, self.position() + self.window)

    def wait(self, sent: int) -> int:
        """Block until enough credit; return the new allowance."""
        began = time.monotonic()
        self.waits += 1
        allowed = self.allowance()
        while allowed < sent + min(max(1, self.window // 4), self.events - sent):
            if time.monotonic() > self.deadline:
                raise RunAborted(f"producer out of time after {sent} events")
            time.sleep(PAUSE)
            allowed = self.allowance()
        self.waited += time.monotonic() - began
        return allowed


@dataclass
class Pace:
    """What a fixed-rate producer achieved against its schedule."""

    started: float = 0.0  # time.monotonic() of the first send
    finished: float = 0.0  # ... and of the last
    behind: float = 0.0  # the furthest it fell behind schedule, in seconds

    def rate(self, events: int) -> float:
        span = self.finished - self.started
        return (events - 1) / span if span > 0 else 0.0


def emit_at_rate(
    emit: Callable[..., Any],
    event_type: str,
    rate: float,
    events: int,
    deadline: float,
    first_seq: int = 0,
) -> Pace:
    """Call ``emit(event_type, {"seq": ..., "sentNs": time.time_ns()})`` at ``rate`` per second.

    Runs on the calling thread, sleeping until each event is due (never catching up in
    a burst faster than it can emit); the payload is stamped just before the call.

    Raises:
        RunAborted: still sending at ``deadline``.
    """
    time_ns, monotonic, sleep = time.time_ns, time.monotonic, time.sleep
    interval = 1.0 / rate
    pace = Pace(started=monotonic())
    for index in range(events):
        delay = pace.started + index * interval - monotonic()
        if delay > 0:
            sleep(delay)
        else:
            pace.behind = max(pace.behind, -delay)
            if index % 1000 == 0 and monotonic() > deadline:
                raise RunAborted(f"producer out of time after {index} events")
        emit(event_type, {"seq": first_seq + index, "sentNs": time_ns()})
    pace.finished = monotonic()
    return pace


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]
