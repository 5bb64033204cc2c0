"""The way in: events queued from any thread, handed to the backplane on the loop.

:meth:`Ingress.publish` runs on the emitting thread (the bus calls it): the payload is
redacted and serialised there, and the event is appended to a bounded deque. One
wake-up per batch hands the queue to the loop: the flag is cleared by the wake-up
before the backplane pops, so an event appended meanwhile is either popped by it or
schedules another. When the queue is full (or the server is stopping) the event is
dropped and counted, never silently.

Must not block the emitting thread, and must not touch connections or the history:
that is the backplane's and the fan-out's job, on the loop.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from evkit._loop import LoopHandle
from evkit.backplane import Pending
from evkit.bus import Event
from evkit.exceptions import InvalidEventError
from evkit.protocol import encode
from evkit.redaction import Redactor
from evkit.server.counters import Counters

__all__ = ["Ingress"]

logger = logging.getLogger("evkit.server")


class Ingress:
    """The broadcaster's queue of emitted events (``pending``), and its wake-ups.

    ``wake`` is called on the loop when events are queued (the backplane's ``wake``).
    """

    def __init__(self, queue_size: int, redact: Redactor, counters: Counters) -> None:
        self.queue_size = queue_size
        self.pending: deque[Pending] = deque()
        self.closing = False
        self._redact = redact
        self._counters = counters
        self._loop: LoopHandle | None = None
        self._wake: Callable[[], None] = lambda: None
        self._scheduled = False
        # Events a POST /events handed to publish() through the bus (see capture()).
        self._posted: set[int] | None = None

    def attach(self, loop: LoopHandle, wake: Callable[[], None]) -> None:
        """Start waking ``wake`` on ``loop`` for queued events."""
        self._loop, self._wake = loop, wake

    def publish(self, event: Event) -> None:
        """Queue an event for broadcast. Safe from any thread; never blocks.

        The payload is redacted and serialised here, on the caller's thread. When the
        queue is full the event is dropped and counted. Once handed out, ``event.id``
        holds the stream id it was given.
        """
        posted = self._posted
        if posted is not None:  # a POST /events on the loop is emitting on the bus
            posted.add(id(event))
        if len(self.pending) >= self.queue_size or self.closing:
            count = self._counters.dropped(event.type)
            if count % 10_000 == 0:
                logger.warning(
                    "evkit broadcaster queue is full (%d events): dropping events; %d dropped so far",
                    self.queue_size,
                    count + 1,
                )
            return
        try:
            payload_json = encode(self._redact(event.payload))
        except (InvalidEventError, RecursionError) as exc:  # too deep for the redactor
            self._counters.dropped(event.type, unencodable=True)
            logger.error("dropped %s: %s", event.type, exc)
            return
        correlation_id = event.payload.get("correlationId")
        self.pending.append(
            (
                event,
                correlation_id if isinstance(correlation_id, str) else None,
                payload_json,
                time.perf_counter(),
            )
        )
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            if not self._loop.call_soon(self._woken):  # loop closed: the server is gone
                self._scheduled = False

    @property
    def waking(self) -> bool:
        """Whether the backplane will be woken (a wake is scheduled); any thread."""
        return self._scheduled

    def _woken(self) -> None:
        self._scheduled = False
        self._wake()

    def again(self, delay: float = 0.0) -> None:
        """Wake once more, after ``delay`` seconds (on the loop)."""
        if self._scheduled or self._loop is None:
            return
        self._scheduled = True
        self._loop.call_later(delay, self._woken)

    def capture(self) -> set[int]:
        """Start noting which events reach :meth:`publish` (by ``id()``), on the loop.

        A ``POST /events`` emits on the bus: the events that do not come back here
        (this broadcaster is not attached to its bus) are then published directly, in
        time linear in the events. End with :meth:`end_capture`.
        """
        self._posted = set()
        return self._posted

    def end_capture(self) -> None:
        self._posted = None
