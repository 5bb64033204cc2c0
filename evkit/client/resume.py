"""Where a subscription resumes after a drop, and what the server said about its replays.

A :class:`ResumeCursor` holds the last event id a subscriber saw (``since``) and the
stream it saw it on (``epoch``); a reconnecting subscriber puts both in its connect
URL, and the server replays what came after. The cursor follows the server's messages:

- the welcome (``websocket.connected``) gives the stream's epoch and position. An
  empty cursor takes both (what is emitted while a first connection is down is still
  replayed). A cursor of another stream (a restarted server) keeps its epoch until the
  first event of the new stream, or the end of the replay: a resume cut before either
  resumes from the old stream's cursor again, not from a meaningless position in the
  new one;
- events move it forward;
- ``websocket.gap`` (announced before the events replayed after it) counts a gap once
  per ``(since, epoch)``: a resume cut before it got past the gap, then announced again,
  counts once;
- ``websocket.replayed`` adds its count, counts a gap when it says ``complete: false``
  and no gap message came (a server that does not announce gaps), adopts the epoch and
  moves the cursor to the position the replay covered.

Pure: plain values in, plain values out; one cursor per subscriber, on its loop.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_GAP_REPORTS", "ResumeCursor"]

#: Gap reports kept for inspection; the count goes on beyond it.
MAX_GAP_REPORTS = 100


class ResumeCursor:
    """The resume position ``since`` / ``epoch`` and the replay and gap counts."""

    __slots__ = (
        "_gap_announced",
        "_last_gap",
        "_welcome_position",
        "epoch",
        "gap_reports",
        "gaps",
        "last_id",
        "pending_epoch",
        "replayed",
    )

    def __init__(self, since: str | None = None, epoch: str | None = None) -> None:
        self.last_id = since
        self.epoch = epoch
        #: The epoch of the current connection's stream, adopted with its first id.
        self.pending_epoch: str | None = None
        self.replayed = 0
        self.gaps = 0
        self.gap_reports: list[dict[str, Any]] = []
        self._welcome_position: str | None = None
        self._gap_announced = False
        self._last_gap: tuple[Any, str | None] | None = None

    def welcomed(self, payload: dict[str, Any]) -> None:
        """A new connection's ``websocket.connected`` payload (``epoch``, ``lastId``)."""
        epoch = payload.get("epoch", self.epoch)
        self._welcome_position = payload.get("lastId")
        self._gap_announced = False
        self.pending_epoch = None
        if self.last_id is None:
            self.last_id = self._welcome_position
            self.epoch = epoch
        elif epoch != self.epoch:
            self.pending_epoch = epoch

    def advanced(self, last_id: str | None) -> None:
        """Events arrived; ``last_id`` is the id of the last one."""
        self.last_id = last_id
        if self.pending_epoch is not None:
            self.epoch, self.pending_epoch = self.pending_epoch, None

    def gap(self, report: dict[str, Any]) -> bool:
        """A ``websocket.gap`` payload; returns whether it counted as a new gap."""
        self._gap_announced = True
        return self._count_gap(report)

    def replay_ended(self, payload: dict[str, Any]) -> bool:
        """A ``websocket.replayed`` payload; returns whether it counted as a new gap."""
        self.replayed += int(payload.get("count", 0))
        counted = False
        if payload.get("complete") is False and not self._gap_announced:
            counted = self._count_gap(payload)
        self._gap_announced = False
        self.pending_epoch = None
        self.epoch = payload.get("epoch", self.epoch)
        covered = payload.get("lastId") or self._welcome_position
        if covered is not None:
            # The replay covered this stream up to that position (after a resume into
            # another stream, the old id means nothing here).
            self.last_id = covered
        self._welcome_position = None
        return counted

    def _count_gap(self, report: dict[str, Any]) -> bool:
        key = (report.get("since"), self.epoch)
        if key == self._last_gap:
            return False
        self._last_gap = key
        self.gaps += 1
        if len(self.gap_reports) < MAX_GAP_REPORTS:
            self.gap_reports.append(report)
        return True
