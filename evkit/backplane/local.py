"""One instance, one stream: queued events get the history's next ids and are delivered.

Each wake-up drains a chunk of the queue in one loop turn: ids from the history (a
durable one may allow fewer while it commits how far ids may go; the drain then comes
back shortly), each event encoded once, recorded, and handed to the sink. A turn takes
fewer events the more clients there are, so pings, handshakes and client messages are
never held for long.

With a durable history (SQLite) an event reaches clients only once it is committed:
every event a client was sent survives a crash of the process. Chunks wait in order
for the writer's commit (it commits as soon as it has something, so a busy stream gets
group commits). The writer wakes the loop after a commit only when no drain is already
scheduled; under load one always is, and it delivers what was committed first. Past
:data:`_UNCOMMITTED` events waiting, the drain stops taking more from the queue until
the disk catches up (the queue is bounded, and counts drops).

Must not await inside a drain: recording and delivery of one chunk happen in one turn
(or, durable, in the turn the commit is seen), which is what lets a replay and the
live stream meet with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from evkit._loop import LoopHandle
from evkit.backplane.base import Backplane, Pending, Queue, Sink
from evkit.protocol import encode_event
from evkit.store.base import History, Record

__all__ = ["LocalBackplane"]

_DRAIN_CHUNK = 2_000  # most events per loop turn
# Most deliveries per loop turn: with many clients a turn takes fewer events (see
# bench/README.md for how the figure was chosen).
_DRAIN_DELIVERIES = 100_000
_CLAIM_RETRY = 0.001  # seconds before asking a durable history again for ids
_UNCOMMITTED = 50_000  # events recorded but not yet committed, at most


class LocalBackplane(Backplane):
    """Ids from ``history``; ``clients`` tells how many clients a turn delivers to."""

    name = "local"

    def __init__(self, history: History, clients: Callable[[], int] = lambda: 0) -> None:
        self.history = history
        self._clients = clients
        self._queue: Queue | None = None
        self._sink: Sink | None = None
        # Durable: chunks recorded and waiting for their commit, in id order.
        self._uncommitted: deque[tuple[list[Pending], list[Record]]] = deque()
        self._uncommitted_events = 0
        self._committed_id = 0
        self._delivered_id = 0
        self._durable = False
        self._written_mark = 0  # the newest commit the writer reported (any thread)
        self._loop: LoopHandle | None = None
        self._progress = asyncio.Event()

    async def start(self, queue: Queue, sink: Sink) -> None:
        self._queue, self._sink = queue, sink
        self._committed_id = self._delivered_id = self.history.last_id
        self._loop = LoopHandle(asyncio.get_running_loop())
        self._durable = self.history.on_written(self._on_written)

    def _on_written(self, written_id: int) -> None:
        """The writer's news of a commit (its thread). A drain already scheduled takes it
        up (under load one always is), so the loop is woken only when none is: waking it
        is a syscall that hands the GIL away, once per commit, and asks it back from a
        busy emitting thread (up to the 5 ms switch interval)."""
        self._written_mark = written_id
        queue = self._queue
        if queue is not None and queue.waking:
            return  # that drain reads _written_mark after this was set (see _drain)
        assert self._loop is not None
        self._loop.call_soon(self._written, written_id)

    def wake(self) -> None:
        self._drain()

    def _drain(self) -> int:
        """Give queued events their ids, record them, and deliver them (one loop turn).

        Returns how many were handed out.
        """
        queue, sink = self._queue, self._sink
        if queue is None or sink is None:
            return 0
        if self._written_mark > self._committed_id:  # commits the writer did not wake us for
            self._deliver_committed(self._written_mark)
        if self._uncommitted_events >= _UNCOMMITTED:
            return 0  # the disk is behind: the commit that catches up wakes the drain again
        pending = queue.pending
        history = self.history
        last_id = history.last_id
        chunk = min(_DRAIN_CHUNK, max(1, _DRAIN_DELIVERIES // max(1, self._clients())))
        wanted = min(len(pending), chunk)
        allowed = history.claim(wanted) if wanted else 0
        items = [pending.popleft() for _ in range(allowed)]
        records = []
        for event, correlation_id, payload_json, _ in items:
            type_ = event.type
            last_id += 1
            event_id = str(last_id)
            event.id = event_id
            records.append(
                Record(
                    last_id,
                    event.timestamp,
                    type_,
                    correlation_id,
                    encode_event(type_, event.timestamp, event_id, payload_json),
                )
            )
        if items:
            history.extend(records)
            if self._durable:
                self._uncommitted.append((items, records))
                self._uncommitted_events += len(items)
            else:
                sink.published(items)
                sink.deliver(records)
        if pending:
            queue.again(_CLAIM_RETRY if allowed < wanted else 0.0)
        return allowed

    def _written(self, written_id: int) -> None:
        """The history committed up to ``written_id``: deliver what waited for it, and
        drain on if the queue was held back for it (the loop)."""
        self._deliver_committed(written_id)
        queue = self._queue
        if queue is not None and queue.pending and self._uncommitted_events < _UNCOMMITTED:
            queue.again()

    def _deliver_committed(self, written_id: int) -> None:
        """Deliver the chunks committed up to ``written_id`` (the loop)."""
        sink = self._sink
        self._committed_id = max(self._committed_id, written_id)
        uncommitted = self._uncommitted
        while uncommitted and uncommitted[0][1][-1].id <= self._committed_id:
            items, records = uncommitted.popleft()
            self._uncommitted_events -= len(items)
            self._delivered_id = records[-1].id
            if sink is not None:
                sink.published(items)
                sink.deliver(records)
        self._progress.set()

    @property
    def delivered_id(self) -> int:
        return self._delivered_id if self._durable else self.history.last_id

    async def settle(self, timeout: float | None = None) -> bool:
        queue = self._queue
        if queue is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        history = self.history
        target = history.last_id + len(queue.pending)
        while (history.last_id < target and queue.pending) or self._waiting_for(target):
            if deadline is not None and loop.time() > deadline:
                return False
            if self._drain():
                await asyncio.sleep(0)
                continue
            self._progress.clear()
            with contextlib.suppress(TimeoutError):  # a commit, or another try for ids
                await asyncio.wait_for(self._progress.wait(), _CLAIM_RETRY)
        return True

    def _waiting_for(self, target: int) -> bool:
        """Whether events up to ``target`` are recorded but not yet delivered (uncommitted)."""
        uncommitted = self._uncommitted
        return bool(uncommitted) and uncommitted[0][1][0].id <= target

    async def sync(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.history.sync)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.history.close)

    def waiting(self) -> int:
        queued = 0 if self._queue is None else len(self._queue.pending)
        return queued + self._uncommitted_events
