"""The way out: recorded events routed to the clients that match them, each framed once.

Writing does not go through :func:`websockets.asyncio.server.broadcast`, which builds
and sends a frame per event per connection (``bench/README.md`` says what that cost).
Instead each event becomes one WebSocket text frame, built once, and each client gets
one write per delivery call holding all its frames of that call, in order: a run of
consecutive events with the same recipients is joined once for all of them. A client
whose connection compresses gets messages through websockets' own protocol, which keeps
its compression state. Batched clients (``websocket.batch``) share batch groups
(:mod:`evkit.server.batching`).

Writes never await: one slow client never delays the others. A client whose outgoing
buffer passes ``limit`` after a write is handed to ``on_slow`` (the broadcaster closes
it with 1013); one whose connection is lost stops being routed to at once.

Clients are :class:`~evkit.server.wire.Peer` objects, or anything with the same
``write``, ``send_message``, ``compressed`` and ``buffered`` (the tests use plain
recorders): this module never touches sockets or websockets itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from evkit.patterns import SubscriptionIndex
from evkit.protocol import BatchOptions, text_frame
from evkit.server.batching import BatchGroup, BatchGroups, ClientBatch
from evkit.server.counters import Counters
from evkit.store.base import Record

__all__ = ["Fanout", "Writable"]

_PLAN_CACHE_SIZE = 1_024  # write plans kept, one per distinct list of recipients


class Writable(Protocol):
    """A client as the fan-out writes to it (see :class:`evkit.server.wire.Peer`)."""

    compressed: bool

    def __hash__(self) -> int: ...

    def write(self, data: bytes) -> int:
        """Write whole frames; the bytes now waiting, 0 if not open, -1 if lost."""

    def send_message(self, message: bytes) -> int:
        """Send one text message through the connection's protocol (compression)."""

    def buffered(self) -> int:
        """Bytes waiting to be sent; -1 if the connection is lost."""


@dataclass(frozen=True, slots=True)
class _WritePlan:
    """How the recipients of one ``route()`` answer are written to."""

    recipients: list[Writable]  # the answer itself: its identity keys the cache
    plain: list[Writable]  # unbatched, uncompressed: frames written as bytes
    deflate: list[Writable]  # unbatched with permessage-deflate: through websockets
    groups: list[BatchGroup[Writable]]  # batched: every member is a recipient


class Fanout:
    """Routing (``index``) and writing for the live clients of one broadcaster.

    ``index`` is the subscription table: register clients there (patterns and
    correlation filter); :meth:`forget` takes one out of everything.
    """

    def __init__(
        self,
        limit: int,
        counters: Counters,
        on_slow: Callable[[Writable], None],
        loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.get_running_loop,
    ) -> None:
        self.limit = limit
        self.index: SubscriptionIndex[Writable] = SubscriptionIndex()
        self._counters = counters
        self._on_slow = on_slow
        self._loop = loop
        self._batches: dict[Writable, ClientBatch[Writable]] = {}
        self.batching = BatchGroups(self._write_message, self.evict, self._forget_plans)
        self._plans: dict[int, _WritePlan] = {}  # by id() of the route answer
        self._plans_by_route: dict[tuple[str, str | None], _WritePlan] = {}
        # Clients a write found lost or past the limit, acted on after the writes.
        self._suspects: list[Writable] = []
        # While deliver() runs, every frame it sends (batches included) waits here, so
        # that each client gets one write at its end.
        self._pending: dict[Writable, list[bytes]] | None = None
        self._deflated: dict[Writable, list[bytes]] | None = None

    # -- delivery -------------------------------------------------------------------------

    def deliver(self, records: list[Record]) -> None:
        """Route recorded events, in order, to the live clients that match them.

        Each event is framed once. Every client gets one write for the whole call,
        holding its frames (events, or batches of batched clients) in stream order.
        """
        if not self.index:  # no client subscribed (an instance that only emits, say)
            self.evict()
            return
        route = self.index.route
        plans = self._plans
        pending: dict[Writable, list[bytes]] = {}
        deflated: dict[Writable, list[bytes]] = {}
        self._pending, self._deflated = pending, deflated
        # A run: consecutive events with the same plain recipients, joined once for all.
        run_to: list[Writable] = []
        run: list[bytes] = []
        delivered_by_type: dict[str, int] = {}
        now = -1.0
        try:
            for record in records:
                targets = route(record.type, record.correlation_id)
                if not targets:
                    continue
                type_ = record.type
                delivered_by_type[type_] = delivered_by_type.get(type_, 0) + len(targets)
                plan = plans.get(id(targets))
                if plan is None or plan.recipients is not targets:
                    plan = self._write_plan(targets, record)
                if plan.plain:
                    if plan.plain is not run_to:
                        if run:
                            _spread(run, run_to, pending)
                            run = []
                        run_to = plan.plain
                    run.append(text_frame(record.frame))
                for client in plan.deflate:
                    deflated.setdefault(client, []).append(record.frame)
                if plan.groups:
                    if now < 0:
                        now = self._loop().time()
                    self.batching.collect(plan.groups, record.frame, now)
            if run:
                _spread(run, run_to, pending)
            if self.batching.due:
                self.batching.schedule(self._loop())
        finally:
            self._pending = self._deflated = None
        if pending or deflated:
            self._write_pending(pending, deflated)
        if delivered_by_type:
            self._counters.count_delivered(delivered_by_type)
        self.evict()

    def _write_plan(self, recipients: list[Writable], record: Record) -> _WritePlan:
        """How to write to ``recipients`` (a ``route()`` answer); cached until clients change.

        Each batched recipient is put in the group of its patterns, filter and options
        (joining one, or moving when its subscription changed). A group's member that is
        not a recipient has a subscription of its own now: it leaves (after a flush) and
        joins its new group when it next is one. So every member of a planned group is a
        recipient, and a group's batch goes to exactly the clients that should get it.
        """
        route_key = (record.type, record.correlation_id)
        plan = self._plans_by_route.get(route_key)
        if plan is not None and plan.recipients == recipients:
            return plan  # the same recipients in a list built afresh (correlation filters)
        batches, index, batching = self._batches, self.index, self.batching
        plain: list[Writable] = []
        deflate: list[Writable] = []
        groups: dict[BatchGroup[Writable], int] = {}
        for client in recipients:
            batch = batches.get(client)
            if batch is None:
                (deflate if client.compressed else plain).append(client)
            else:
                key = (
                    frozenset(index.subscriptions(client)),
                    index.filter_of(client),
                    batch.options,
                )
                group = batching.place(client, batch, key)
                groups[group] = groups.get(group, 0) + 1
        for group, count in groups.items():
            if count < len(group.members):
                wanted = set(recipients)
                for member in [m for m in group.members if m not in wanted]:
                    batching.leave(member, batches[member], flush=True)
        plan = _WritePlan(recipients, plain, deflate, list(groups))
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._forget_plans()
        self._plans[id(recipients)] = plan
        self._plans_by_route[route_key] = plan
        return plan

    def _forget_plans(self) -> None:
        """Drop every plan: a client's batching or group changed, or it left."""
        self._plans.clear()
        self._plans_by_route.clear()

    def _write_pending(
        self, pending: dict[Writable, list[bytes]], deflated: dict[Writable, list[bytes]]
    ) -> None:
        """Write each client's frames of this call at once."""
        limit, suspects = self.limit, self._suspects
        for client, frames in pending.items():
            waiting = client.write(frames[0] if len(frames) == 1 else b"".join(frames))
            if waiting < 0 or waiting > limit:
                suspects.append(client)
        for client, messages in deflated.items():
            for message in messages:
                self._write_message((client,), message)

    def _write_message(self, clients: Iterable[Writable], message: bytes) -> None:
        """Write one text message to each client; framed once for all uncompressed ones.

        During a :meth:`deliver` call it joins that call's writes instead.
        """
        frame = b""
        pending, deflated = self._pending, self._deflated
        if pending is not None and deflated is not None:
            for client in clients:
                if client.compressed:
                    deflated.setdefault(client, []).append(message)
                else:
                    if not frame:
                        frame = text_frame(message)
                    pending.setdefault(client, []).append(frame)
            return
        limit, suspects = self.limit, self._suspects
        for client in clients:
            if client.compressed:
                waiting = client.send_message(message)
            else:
                if not frame:
                    frame = text_frame(message)
                waiting = client.write(frame)
            if waiting < 0 or waiting > limit:
                suspects.append(client)

    def evict(self) -> None:
        """Act on the clients a write found lost or past ``limit``.

        A lost one (the peer vanished) stops being routed to; a slow one goes to
        ``on_slow``.
        """
        suspects = self._suspects
        if not suspects:
            return
        self._suspects = []
        for client in dict.fromkeys(suspects):
            waiting = client.buffered()
            if waiting < 0:
                # Stop writing to it now rather than when its handler notices.
                self.forget(client)
            elif waiting > self.limit:
                self._on_slow(client)

    # -- one client -------------------------------------------------------------------------

    def send(self, client: Writable, message: bytes) -> None:
        """Send one message to ``client`` alone, after what is queued for it (stream order)."""
        batch = self._batches.get(client)
        if batch is not None:
            self.batching.flush_client(client, batch)
        self._write_message((client,), message)

    def queue_history(self, client: Writable, frame: bytes) -> None:
        """Send one replayed event to ``client`` alone: batched if it batches, else now."""
        batch = self._batches.get(client)
        if batch is None:
            self._write_message((client,), frame)
            return
        batch.frames.append(frame)
        if len(batch.frames) >= batch.options.max_events:
            self.batching.flush_client(client, batch)

    def flush(self, client: Writable) -> None:
        """Send what waits for ``client``'s batches now."""
        batch = self._batches.get(client)
        if batch is not None:
            self.batching.flush_client(client, batch)

    def flush_all(self) -> None:
        """Send every batch now (flush, stop)."""
        for client, batch in list(self._batches.items()):
            self.batching.flush_client(client, batch)
        self.evict()

    def set_batch(self, client: Writable, options: BatchOptions) -> None:
        """Deliver to ``client`` in ``websocket.batch`` messages from now on.

        ``maxEvents: 1`` turns batching off again (every event is sent alone).
        """
        self.flush(client)
        self.drop_batch(client)
        if options.max_events > 1:
            self._batches[client] = ClientBatch(options)

    def drop_batch(self, client: Writable) -> None:
        """Stop batching for ``client``, discarding what waits for it alone."""
        batch = self._batches.pop(client, None)
        if batch is not None:
            self.batching.leave(client, batch, flush=False)
        self._forget_plans()

    def forget(self, client: Writable) -> None:
        """Stop routing to ``client`` and drop its batches (it left, or is being closed)."""
        self.index.remove_subscriber(client)
        self.drop_batch(client)


def _spread(
    frames: list[bytes], clients: list[Writable], pending: dict[Writable, list[bytes]]
) -> None:
    """Queue ``frames``, joined once, for each of ``clients``."""
    chunk = frames[0] if len(frames) == 1 else b"".join(frames)
    for client in clients:
        queued = pending.get(client)
        if queued is None:
            pending[client] = [chunk]
        else:
            queued.append(chunk)
