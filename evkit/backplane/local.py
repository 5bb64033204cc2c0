"""One instance, one stream: queued events get the history's next ids and are delivered.

Each wake-up drains a chunk of the queue in one loop turn: ids from the history (a
durable one may allow fewer while it commits how far ids may go; the drain then comes
back shortly), each event encoded once, recorded, and handed to the sink. A turn takes
fewer events the more clients there are, so pings, handshakes and client messages are
never held for long.

Must not await inside a drain: recording and delivery of one chunk happen in one turn,
which is what lets a replay and the live stream meet with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from evkit.backplane.base import Backplane, Queue, Sink
from evkit.protocol import encode_event
from evkit.store.base import History, Record

__all__ = ["LocalBackplane"]

_DRAIN_CHUNK = 2_000  # most events per loop turn
# Most deliveries per loop turn: with many clients a turn takes fewer events (see
# bench/README.md for how the figure was chosen).
_DRAIN_DELIVERIES = 100_000
_CLAIM_RETRY = 0.001  # seconds before asking a durable history again for ids


class LocalBackplane(Backplane):
    """Ids from ``history``; ``clients`` tells how many clients a turn delivers to."""

    name = "local"

    def __init__(self, history: History, clients: Callable[[], int] = lambda: 0) -> None:
        self.history = history
        self._clients = clients
        self._queue: Queue | None = None
        self._sink: Sink | None = None

    async def start(self, queue: Queue, sink: Sink) -> None:
        self._queue, self._sink = queue, sink

    def wake(self) -> None:
        self._drain()

    def _drain(self) -> int:
        """Give queued events their ids, record them, and deliver them (one loop turn).

        Returns how many were handed out.
        """
        queue, sink = self._queue, self._sink
        if queue is None or sink is None:
            return 0
        pending = queue.pending
        history = self.history
        append = history.append
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
            record = Record(
                last_id,
                event.timestamp,
                type_,
                correlation_id,
                encode_event(type_, event.timestamp, event_id, payload_json),
            )
            append(record)
            records.append(record)
        if items:
            sink.published(items)
            sink.deliver(records)
        if pending:
            queue.again(_CLAIM_RETRY if allowed < wanted else 0.0)
        return allowed

    async def settle(self, timeout: float | None = None) -> bool:
        queue = self._queue
        if queue is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        history = self.history
        target = history.last_id + len(queue.pending)
        while history.last_id < target and queue.pending:
            if deadline is not None and loop.time() > deadline:
                return False
            await asyncio.sleep(0 if self._drain() else _CLAIM_RETRY)
        return True

    async def sync(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.history.sync)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.history.close)

    def waiting(self) -> int:
        return 0 if self._queue is None else len(self._queue.pending)
