"""Events waiting to be published, and the ledger of what became of them.

An :class:`Outbox` is filled on any thread (a bus handler on the emitting thread) and
drained by one :class:`~evkit.client.publisher.Publisher` on its loop. It is bounded:
past ``size`` waiting events the *oldest* is dropped and counted, because a full
outbox means the broadcaster has been unreachable for a while, and the newest events
describe what the service is doing now (the same policy as a collector's buffer).

It also keeps, under the same lock, the counts other threads read: events appended,
dropped, in flight, confirmed, forwarded, rejected and unsendable. ``flush()`` waits
until the confirmed position reaches what was appended before it.

Appending is cheap: a lock, a deque append and, once per batch, the ``wake``
callback (which must not block: it schedules the sender on its loop).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from evkit.bus import Event

__all__ = ["Outbox"]


class Outbox:
    """A bounded, thread-safe queue of events to publish, with its delivery counts.

    Args:
        size: most events waiting; past it the oldest are dropped.
        batch_size: when this many are waiting, ``wake(True)`` asks to send at once.
        wake: called with ``full`` when the sender should look (the first event since
            it last took, or a full batch); from the appending thread.
        overflowed: called with the drop count at the first drop and every 10,000th.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        wake: Callable[[bool], None],
        overflowed: Callable[[int], None] | None = None,
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self._wake = wake
        self._overflowed = overflowed
        self._lock = threading.Lock()
        self._events: deque[Event] = deque(maxlen=size)
        self._appended = 0
        self._dropped = 0
        self._wakeup_scheduled = False
        self._in_flight = 0
        self._confirmed_through = 0
        self._forwarded = 0
        self._rejected = 0
        self._unsendable = 0

    # -- any thread -------------------------------------------------------------------------

    def put(self, event: Event) -> None:
        """Append ``event`` (a bus handler); the oldest goes when the outbox is full."""
        with self._lock:
            events = self._events
            dropped = len(events) == self.size
            if dropped:
                self._dropped += 1  # the deque's maxlen pushes the oldest out
            events.append(event)
            self._appended += 1
            wake = not self._wakeup_scheduled
            self._wakeup_scheduled = True
            full = len(events) == self.batch_size
            drops = self._dropped
        if wake or full:
            self._wake(full)
        if dropped and drops % 10_000 == 1 and self._overflowed is not None:
            self._overflowed(drops)

    @property
    def appended(self) -> int:
        """Events appended so far: the position a flush waits for."""
        with self._lock:
            return self._appended

    def confirmed(self, position: int) -> bool:
        """Whether every event appended up to ``position`` was confirmed (or dropped)."""
        with self._lock:
            return self._confirmed_through >= position

    def counts(self) -> dict[str, int]:
        """``forwarded``, ``dropped``, ``rejected``, ``unsendable`` and ``buffered``
        (waiting or in flight), taken together."""
        with self._lock:
            return {
                "forwarded": self._forwarded,
                "dropped": self._dropped,
                "rejected": self._rejected,
                "unsendable": self._unsendable,
                "buffered": len(self._events) + self._in_flight,
            }

    # -- the publisher ----------------------------------------------------------------------

    def take(self, limit: int) -> tuple[list[Event], int]:
        """Pop up to ``limit`` events for one burst; returns them and the position after
        them (what a confirmation of this burst confirms through).

        The wake-up flag is cleared first, so an event appended after this wakes the
        sender again.
        """
        with self._lock:
            self._wakeup_scheduled = False
            events = self._events
            count = min(len(events), limit)
            taken = [events.popleft() for _ in range(count)]
            self._in_flight = count
            return taken, self._appended - len(events)

    def settle(self, position: int, forwarded: int, rejected: int) -> None:
        """The burst taken through ``position`` was confirmed: count what became of it."""
        with self._lock:
            self._in_flight = 0
            self._confirmed_through = position
            self._forwarded += forwarded
            self._rejected += rejected

    def requeue(self, events: list[Event]) -> None:
        """Put an unconfirmed burst's events back at the head, oldest dropped past ``size``."""
        with self._lock:
            self._in_flight = 0
            room = self.size - len(self._events)
            if len(events) > room:
                self._dropped += len(events) - room
                events = events[len(events) - room :]
            self._events.extendleft(reversed(events))

    def count_unsendable(self) -> None:
        """One event could not be encoded, or was too large to send alone."""
        with self._lock:
            self._unsendable += 1

    def __repr__(self) -> str:
        counts: dict[str, Any] = self.counts()
        return f"<Outbox size={self.size} {counts}>"
