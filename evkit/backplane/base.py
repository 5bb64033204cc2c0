"""The backplane interface: how queued events get their ids, reach history and delivery.

The broadcaster queues what is emitted on it (its ingress, any thread) and delivers
records to its clients (its fan-out, on the loop). Between the two, a backplane:

- :class:`~evkit.backplane.local.LocalBackplane` gives each queued event the next id of
  its :class:`~evkit.store.History` (memory or SQLite), records it and delivers it, in
  one loop turn: one instance, one stream.
- :class:`~evkit.backplane.redis.RedisBackplane` appends queued events to a Redis
  stream and delivers what it reads back from it: several instances, one stream, one
  order everywhere.

The broadcaster uses a backplane through this interface only, and never needs to know
which one it has. A backplane is used from the broadcaster's loop only, except
:attr:`Backplane.history`'s thread-safe parts (``sync``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from evkit.store.base import History, Record

if TYPE_CHECKING:
    from evkit.bus import Event

__all__ = ["Backplane", "Pending", "Queue", "Sink"]

#: What the broadcaster's queue holds: the event, its correlation ID, its payload JSON
#: and the moment it was queued (perf_counter).
Pending = tuple["Event", str | None, bytes, float]


class Queue(Protocol):
    """The broadcaster's queue of emitted events, as a backplane consumes it."""

    pending: deque[Pending]

    def again(self, delay: float = 0.0) -> None:
        """Have the backplane woken once more, after ``delay`` seconds (on the loop)."""

    @property
    def waking(self) -> bool:
        """Whether a wake of the backplane is scheduled (read from any thread)."""


class Sink(Protocol):
    """Where a backplane hands what it has recorded (the broadcaster, on its loop)."""

    def deliver(self, records: list[Record]) -> None:
        """Route ``records`` (recorded, in stream order) to the clients that match them."""

    def published(self, items: list[Pending]) -> None:
        """Count queued events that were given their ids (once each)."""

    def stream_broken(self, reason: str) -> None:
        """The stream lost events or was replaced: clients must resume (close 1012)."""

    def listening(self) -> bool:
        """Whether any client is subscribed (else a delivery reaches nobody)."""


class Backplane(ABC):
    """Ids, recording and delivery of queued events; see the module docstring."""

    #: Where replays read from; its ``epoch`` and ``last_id`` are the stream's.
    history: History

    @property
    def delivered_id(self) -> int:
        """The newest id clients were handed: replays and cursors stop there.

        The history's ``last_id`` unless recorded events wait for something (a durable
        history's commit) before they are delivered.
        """
        return self.history.last_id

    def open(self) -> None:
        """Prepare what can be prepared without the loop (files).

        Raises:
            OSError, StoreUnavailable: the history cannot be opened (the message says where).
        """
        self.history.open()

    @abstractmethod
    async def start(self, queue: Queue, sink: Sink) -> None:
        """Begin consuming ``queue`` into ``sink``.

        Raises:
            StoreUnavailable: a remote stream cannot be reached.
        """

    @abstractmethod
    def wake(self) -> None:
        """The queue has events (called on the loop, once per batch of them)."""

    @abstractmethod
    async def settle(self, timeout: float | None = None) -> bool:
        """Hand out what is queued now: ids given, recorded, delivered.

        Events queued after the call are not waited for. Returns False when
        ``timeout`` seconds passed first (a store that cannot keep up or is unreachable).
        """

    async def sync(self) -> None:
        """Wait until what was recorded survives a crash, where the history can promise it."""
        return None

    @abstractmethod
    async def close(self) -> None:
        """Stop consuming and release the stream (after the clients were closed)."""

    @abstractmethod
    def waiting(self) -> int:
        """Events queued or in flight, not yet recorded."""

    def health(self) -> dict[str, Any]:
        """``name``, ``state`` (ok or error), counts, and any last error."""
        return self.history.health()
