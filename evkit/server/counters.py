"""One counters object per broadcaster, feeding ``stats()``, ``/healthz`` and ``/metrics``.

Counting happens in plain integers and dicts on the hot path; the snapshots below are
built only when asked for. Event-type categories (the first segment of a type) are
counted by name up to :data:`MAX_CATEGORIES`, then under :data:`OTHER_CATEGORY`:
publishers choose the types, and must not grow the label set without bound.

Everything is updated on the broadcaster's loop, except drops, which happen on the
emitting threads and are counted under a lock. Must not do I/O.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evkit.metrics import LATENCY_BUCKETS
from evkit.protocol.vocabulary import CLOSE_REASONS

if TYPE_CHECKING:
    from evkit.backplane import Pending

__all__ = ["MAX_CATEGORIES", "OTHER_CATEGORY", "Counters", "category"]

#: Event-type categories counted by name in the stats and /metrics; the rest are "other".
MAX_CATEGORIES = 100
OTHER_CATEGORY = "other"


def category(counts: dict[str, int], type_: str) -> str:
    """The label ``type_`` is counted under in ``counts``: its first segment, or ``other``
    once :data:`MAX_CATEGORIES` are counted."""
    name = type_.partition(".")[0]
    if name in counts or len(counts) < MAX_CATEGORIES:
        return name
    return OTHER_CATEGORY


def _increment(counts: dict[str, int], key: str, amount: int = 1) -> None:
    counts[key] = counts.get(key, 0) + amount


@dataclass
class Counters:
    """What a broadcaster counts. See the module docstring for who updates what."""

    published: int = 0
    delivered: int = 0
    connections_total: int = 0
    slow_consumer_disconnects: int = 0
    replays: int = 0
    client_errors: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    disconnects: dict[str, int] = field(default_factory=dict)
    published_by_category: dict[str, int] = field(default_factory=dict)
    delivered_by_category: dict[str, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    # Drops happen on emitting threads: itertools.count is the thread-safe counter,
    # and the per-category dict has its lock.
    _dropped: itertools.count[int] = field(default_factory=itertools.count)
    _unencodable: itertools.count[int] = field(default_factory=itertools.count)
    _dropped_by_category: dict[str, int] = field(default_factory=dict)
    _drop_lock: threading.Lock = field(default_factory=threading.Lock)

    # -- any thread -----------------------------------------------------------------------

    def dropped(self, type_: str, unencodable: bool = False) -> int:
        """Count an event dropped before broadcast; returns how many were dropped before."""
        count = next(self._unencodable if unencodable else self._dropped)
        with self._drop_lock:
            _increment(self._dropped_by_category, category(self._dropped_by_category, type_))
        return count

    # -- the loop -------------------------------------------------------------------------

    def count_published(self, items: Iterable[Pending]) -> None:
        """Count events handed out: by category, and how long they waited since emit()."""
        published_by = self.published_by_category
        latency_counts = self.latency_counts
        latency_sum = 0.0
        count = 0
        now = time.perf_counter()
        for event, _, _, stamp in items:
            name = category(published_by, event.type)
            published_by[name] = published_by.get(name, 0) + 1
            waited = now - stamp
            latency_sum += waited
            latency_counts[bisect.bisect_left(LATENCY_BUCKETS, waited)] += 1
            count += 1
        self.latency_sum += latency_sum
        self.published += count

    def count_delivered(self, by_type: dict[str, int]) -> None:
        """Count deliveries of one delivery call, ``{event type: recipients}``."""
        delivered_by = self.delivered_by_category
        total = 0
        for type_, count in by_type.items():
            _increment(delivered_by, category(delivered_by, type_), count)
            total += count
        self.delivered += total

    def reject(self, reason: str) -> None:
        """A connection or request refused before any event was sent."""
        _increment(self.rejected, reason)

    def client_error(self, code: str) -> None:
        """A client message rejected with ``code``."""
        _increment(self.client_errors, code)

    def disconnected(self, close_code: int) -> None:
        """A client left; counted by the reason its close code stands for."""
        _increment(self.disconnects, CLOSE_REASONS.get(close_code, "other"))

    # -- snapshots (on the loop) ----------------------------------------------------------

    def stats(self, **state: Any) -> dict[str, Any]:
        """The ``stats()`` dict: these counters, with the broadcaster's ``state`` merged in."""
        return {
            "clients": state.pop("clients"),
            "connections_total": self.connections_total,
            "published": self.published,
            "delivered": self.delivered,
            "pending": state.pop("pending"),
            "dropped": _peek(self._dropped),
            "unencodable": _peek(self._unencodable),
            "slow_consumer_disconnects": self.slow_consumer_disconnects,
            "replays": self.replays,
            "client_errors": dict(self.client_errors),
            **state,
        }

    def metrics(self, connections: int, store: dict[str, Any], waiting: int) -> dict[str, Any]:
        """The snapshot ``/metrics`` renders (see :mod:`evkit.metrics`)."""
        with self._drop_lock:
            dropped = dict(self._dropped_by_category)
        return {
            "connections": connections,
            "connections_total": self.connections_total,
            "rejected": dict(self.rejected),
            "published": dict(self.published_by_category),
            "delivered": dict(self.delivered_by_category),
            "dropped": dropped,
            "disconnects": dict(self.disconnects),
            "slow_consumer_disconnects": self.slow_consumer_disconnects,
            "replays": self.replays,
            "client_errors": dict(self.client_errors),
            "latency": (list(self.latency_counts), self.latency_sum),
            "store_up": 1 if store["state"] == "ok" else 0,
            "store_outages": store.get("outages", 0),
            "waiting": waiting,
        }


def _peek(counter: itertools.count[int]) -> int:
    # itertools.count is the thread-safe counter here; its repr is "count(N)".
    return int(repr(counter)[6:-1])
