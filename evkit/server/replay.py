"""Replays: the history after a client's ``since``, paced by how fast it reads.

History goes out in slices of a quarter of the client's buffer limit, each once the
client has read the previous ones, so a client catching up is never cut as a slow
consumer and holds at most about a slice of the server's memory. What only a remote
stream still holds (Redis) is read from it, slice by slice. A gap (history no longer
reaching back, another stream's cursor, events a crash may have lost, a stream that
cannot be read) is announced with ``websocket.gap`` before the events that follow it,
so a client cut in the middle of its replay has already learnt of it; the caller sends
``websocket.replayed`` at the end and registers the client for live events with no
await in between: no gap, no duplicate at the seam.

Must not register clients or route live events: that is the caller's, after the return.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from evkit.exceptions import StoreUnavailable
from evkit.patterns import compile_pattern
from evkit.protocol import GAP, REPLAYED, encode_message
from evkit.protocol.vocabulary import CLOSE_TRY_AGAIN_LATER
from evkit.server.counters import Counters
from evkit.server.fanout import Fanout
from evkit.server.wire import Peer
from evkit.store.base import History, Record

__all__ = ["Replayer", "type_filter"]

logger = logging.getLogger("evkit.server")

_OLDER_SLICE = 500  # most entries per read of what only the remote stream holds
_TYPES_KEPT = 1_024  # per replay, types whose match is remembered
_READ_DEADLINE = 60.0  # seconds a client may take to read one slice


def type_filter(patterns: Iterable[str], already: Iterable[str]) -> Callable[[str], bool] | None:
    """Whether a type matches one of ``patterns`` and none of ``already``; None: no pattern.

    The answer is kept per type, so a replay runs the matchers once per distinct type,
    not once per event.
    """
    wanted = [compile_pattern(p) for p in patterns]
    if not wanted:
        return None
    skip = [compile_pattern(p) for p in already]
    known: dict[str, bool] = {}

    def accepts(type_: str) -> bool:
        answer = known.get(type_)
        if answer is None:
            answer = any(m(type_) for m in wanted) and not any(m(type_) for m in skip)
            if len(known) >= _TYPES_KEPT:
                known.clear()
            known[type_] = answer
        return answer

    return accepts


class Replayer:
    """Replays of one broadcaster's history to its clients; see the module docstring.

    ``stopping()`` tells whether the broadcaster is stopping (replays then end early);
    ``delivered()`` is the newest id live clients were sent: a replay stops there, and
    the live stream carries on from it.
    """

    def __init__(
        self,
        history: History,
        fanout: Fanout,
        counters: Counters,
        client_buffer_limit: int,
        stopping: Callable[[], bool],
        delivered: Callable[[], int],
    ) -> None:
        self.history = history
        self.delivered = delivered
        self._fanout = fanout
        self._counters = counters
        self._slice = max(1, client_buffer_limit // 4)
        self._stopping = stopping

    def plan(self, since: str, epoch: str | None) -> tuple[int, str | None]:
        """Where a replay after ``since`` starts, and why it cannot be complete (or None).

        ``since`` from another epoch (another stream) does not apply here: the whole
        history is sent, and the replay is reported incomplete. From an epoch a crash
        replaced (ids never repeat across them) the replay starts at ``since``, and is
        reported incomplete too, since what followed it may be lost.
        """
        history = self.history
        try:
            after = history.parse_id(since)
        except ValueError:
            return 0, "unknown_position"
        if epoch is not None and epoch != history.epoch:
            if history.continues(epoch):
                return after, "lost"
            return 0, "epoch"
        if after > self.delivered():  # an id this stream never handed out: another stream's
            return after, "unknown_position"
        return after, None

    async def replay(
        self,
        peer: Peer,
        since: str,
        epoch: str | None,
        accepts: Callable[[str], bool] | None,
        correlation_id: str | None,
    ) -> tuple[int, str | None] | None:
        """Send the history after ``since`` that ``accepts``; how many events were sent and
        the gap's reason (None: complete), or None if the client could not take its history
        within a minute (closed with 1013) or left."""
        self._counters.replays += 1
        history = self.history
        after, gap = self.plan(since, epoch)
        if gap is not None:
            self._send_gap(peer, since, after, gap)
        count = 0
        while accepts is not None:
            if not await self._readable(peer):
                return None
            if after < history.trimmed_through():  # older than what is held here
                reason: str | None
                try:
                    older, trimmed = await history.read_older(after, _OLDER_SLICE)
                except StoreUnavailable as exc:
                    logger.warning("replay for a resuming client is incomplete: %s", exc)
                    older, trimmed, reason = [], history.trimmed_through(), "unavailable"
                else:
                    reason = "trimmed" if trimmed > after else None
                if reason is not None and gap is None:
                    gap = reason
                    self._send_gap(peer, since, after, gap)
                if not older:
                    after = max(after, history.trimmed_through())
                    continue
                sent, after, _ = self._send(peer, older, after, accepts, correlation_id)
                count += sent
                self._fanout.flush(peer)
                continue
            sent, after, finished = self._send(
                peer, history.read_after(after), after, accepts, correlation_id
            )
            count += sent
            if finished:
                break
            self._fanout.flush(peer)
        return count, gap

    async def _readable(self, peer: Peer) -> bool:
        """Wait until ``peer`` has read what it was sent down to a slice; False: it won't."""
        deadline = time.monotonic() + _READ_DEADLINE
        while peer.buffered() > self._slice:
            if self._stopping() or peer.closing:
                return False
            if time.monotonic() > deadline:
                await peer.connection.close(CLOSE_TRY_AGAIN_LATER, "slow consumer")
                return False
            await asyncio.sleep(0.002)
        return not (self._stopping() or peer.closing)

    def _send(
        self,
        peer: Peer,
        records: Iterable[Record],
        after: int,
        accepts: Callable[[str], bool],
        correlation_id: str | None,
    ) -> tuple[int, int, bool]:
        """Send the ``records`` that match, stopping past a slice.

        Returns how many were sent, the last id looked at, and whether the records ran out.
        """
        count = sent_bytes = 0
        position = after
        queue = self._fanout.queue_history
        limit = self._slice
        delivered = self.delivered()
        for record in records:
            if sent_bytes >= limit:
                return count, position, False
            if record.id > delivered:  # recorded, not yet live: the live stream sends it
                return count, position, True
            position = record.id
            if correlation_id is not None and record.correlation_id != correlation_id:
                continue
            if accepts(record.type):
                queue(peer, record.frame)
                count += 1
                sent_bytes += len(record.frame)
        return count, position, True

    def _send_gap(self, peer: Peer, since: str, after: int, reason: str) -> None:
        """Tell the client, before the events that follow it, that its replay has a gap."""
        history = self.history
        self._fanout.send(
            peer,
            encode_message(
                GAP,
                {
                    "since": since,
                    "complete": False,
                    "after": history.format_id(after) if after > 0 else None,
                    "reason": reason,
                    "epoch": history.epoch,
                },
            ),
        )

    def send_replayed(self, peer: Peer, since: str, count: int, gap: str | None) -> None:
        """``websocket.replayed``: the end of a replay, where it leaves the client."""
        history = self.history
        self._fanout.send(
            peer,
            encode_message(
                REPLAYED,
                {
                    "since": since,
                    "count": count,
                    "complete": gap is None,
                    "epoch": history.epoch,
                    "lastId": history.format_id(self.delivered()),
                },
            ),
        )
