"""Batched delivery (``websocket.batch``): batch groups and the one timer that sends them.

Batched clients with the same patterns, correlation filter and batch options are routed
the same events, so they share a batch group: an event is queued once per group, and
each batch is framed once for all its members. A group's batch goes out when it holds
``maxEvents`` events, or when its window (``maxDelayMs``) ends: one timer, set for the
earliest window of all groups, sends the batches that are due.

Must not write to connections itself: it hands whole messages to ``write`` (the
fan-out's), which keeps each connection's frames in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from evkit.protocol import BatchOptions, batch_message

__all__ = ["BatchGroup", "BatchGroups", "ClientBatch", "GroupKey"]

# A batch is sent this much before its window ends (at most half the window), so that
# with the loop's lateness and the write it still reaches the client within maxDelayMs.
_BATCH_LEAD = 0.001
_BATCH_SLACK = 0.0005  # a batch timer also sends the batches due this soon after it

P = TypeVar("P")

# A batch group's key: the patterns, correlation filter and batch options its clients share.
GroupKey = tuple[frozenset[str], str | None, BatchOptions]


@dataclass(eq=False)
class BatchGroup(Generic[P]):
    """Live events waiting for the batched clients that get the same ones, batched alike.

    ``deadline`` is the loop time by which the oldest waiting frame must be sent.
    """

    key: GroupKey
    options: BatchOptions
    members: dict[P, None] = field(default_factory=dict)
    frames: list[bytes] = field(default_factory=list)
    deadline: float = 0.0


@dataclass
class ClientBatch(Generic[P]):
    """A batched client: its options, its group, and the frames queued for it alone.

    ``frames`` holds what only this client gets: history it asked to replay, sent in
    batches of ``max_events`` and the rest when the replay ends. Its live events wait in
    ``group``, sent at ``max_events`` or within ``max_delay_ms``.
    """

    options: BatchOptions
    frames: list[bytes] = field(default_factory=list)
    group: BatchGroup[P] | None = None


class BatchGroups(Generic[P]):
    """Every batch group of one broadcaster, and the one timer.

    ``write(members, message)`` sends one message to each member; ``after_timer`` runs
    after the timer sent what was due (the fan-out evicts slow consumers there);
    ``changed`` runs whenever a group's membership changes (write plans go stale).
    """

    def __init__(
        self,
        write: Callable[[Iterable[P], bytes], None],
        after_timer: Callable[[], None],
        changed: Callable[[], None],
    ) -> None:
        self._write = write
        self._after_timer = after_timer
        self._changed = changed
        self.groups: dict[GroupKey, BatchGroup[P]] = {}
        self.due: dict[BatchGroup[P], None] = {}  # groups holding frames
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def collect(self, groups: list[BatchGroup[P]], frame: bytes, now: float) -> None:
        """Queue ``frame`` once in each group; send a group's batch once it is full."""
        due = self.due
        for group in groups:
            frames = group.frames
            if not frames:
                delay = group.options.max_delay_ms / 1000.0
                group.deadline = now + delay - min(_BATCH_LEAD, delay / 2)
                due[group] = None
            frames.append(frame)
            if len(frames) >= group.options.max_events:
                self.flush(group)

    def schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the batches whose time has come; set the one timer for the next."""
        due = self.due
        if not due:
            return
        now = loop.time() + _BATCH_SLACK
        for group in [group for group in due if group.deadline <= now]:
            self.flush(group)
        if due:
            earliest = min(group.deadline for group in due)
            timer = self._timer
            if timer is None or earliest < self._timer_at:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(earliest, self._on_timer, loop)
                self._timer_at = earliest

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self.schedule(loop)
        self._after_timer()

    def flush(self, group: BatchGroup[P]) -> None:
        """Send what ``group`` holds to all its members at once."""
        frames = group.frames
        if not frames:
            return
        group.frames = []
        self.due.pop(group, None)
        self._write(group.members, batch_message(frames))

    def flush_client(self, client: P, batch: ClientBatch[P]) -> None:
        """Send what waits for ``client`` now: its own frames, then its group's batch.

        The group's batch goes to all its members at once (earlier than their window:
        never later, and never to one of them twice).
        """
        if batch.frames:
            frames, batch.frames = batch.frames, []
            self._write((client,), batch_message(frames))
        if batch.group is not None:
            self.flush(batch.group)

    def place(self, client: P, batch: ClientBatch[P], key: GroupKey) -> BatchGroup[P]:
        """The batch group of a routed client, joining or changing group as ``key`` says."""
        group = batch.group
        if group is not None:
            if group.key == key:
                return group
            self.leave(client, batch, flush=True)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = BatchGroup(key, batch.options)
        else:
            self.flush(group)  # what it holds was routed before this client joined
        group.members[client] = None
        batch.group = group
        self._changed()
        return group

    def leave(self, client: P, batch: ClientBatch[P], flush: bool) -> None:
        """Take a client out of its group, first sending the group's batch when ``flush``."""
        group = batch.group
        if group is None:
            return
        if flush:
            self.flush(group)
        batch.group = None
        group.members.pop(client, None)
        if not group.members:
            if self.groups.get(group.key) is group:
                del self.groups[group.key]
            self.due.pop(group, None)
        self._changed()
