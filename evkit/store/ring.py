"""The newest records in memory, bounded in count and in bytes: the ring every store keeps.

A record's size is the length of its encoded frame, which is what the ring holds; past
``max_events`` records or ``max_bytes`` bytes the oldest go first (the newest record
is always kept, whatever its size). ``dropped_through`` is the id of the newest record
that left, so a replay from before it is known to be incomplete.

Pure: no I/O, no clocks, no threads. Called only from the broadcaster's loop.
"""

from __future__ import annotations

import itertools
import operator
from collections import deque
from collections.abc import Iterator

from evkit.store.base import Record

__all__ = ["HistoryRing"]

_FRAME = operator.itemgetter(4)  # Record.frame


class HistoryRing:
    """Records in id order, oldest first; see the module docstring."""

    __slots__ = ("_records", "bytes", "dropped_through", "max_bytes", "max_events")

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError(
                f"a history ring needs room for an event: got max_events={max_events}, "
                f"max_bytes={max_bytes}"
            )
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped_through = 0
        self._records: deque[Record] = deque()

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def append(self, record: Record) -> None:
        """Keep ``record`` (the newest); drop the oldest past either bound."""
        records = self._records
        records.append(record)
        self.bytes += len(record.frame)
        while len(records) > 1 and (len(records) > self.max_events or self.bytes > self.max_bytes):
            oldest = records.popleft()
            self.bytes -= len(oldest.frame)
            self.dropped_through = oldest.id

    def extend(self, records: list[Record]) -> None:
        """:meth:`append` each of ``records`` (in id order), in one pass."""
        if not records:
            return
        kept = self._records
        kept.extend(records)
        self.bytes += sum(map(len, map(_FRAME, records)))
        excess = len(kept) - self.max_events
        if excess > 0:  # past the count: the oldest go, all at once
            gone = [kept.popleft() for _ in range(excess)]
            self.bytes -= sum(map(len, map(_FRAME, gone)))
            self.dropped_through = gone[-1].id
        while len(kept) > 1 and self.bytes > self.max_bytes:
            oldest = kept.popleft()
            self.bytes -= len(oldest.frame)
            self.dropped_through = oldest.id

    def clear(self, dropped_through: int) -> None:
        """Forget every record; ``dropped_through`` says how far history is known to be lost."""
        self._records.clear()
        self.bytes = 0
        self.dropped_through = dropped_through

    def first_id(self, default: int) -> int:
        """The oldest id held, or ``default`` when empty."""
        return self._records[0].id if self._records else default

    def read_after(self, after: int) -> Iterator[Record]:
        """The records with an id greater than ``after``, in order."""
        records = self._records
        low, high = 0, len(records)
        while low < high:  # the first record with an id greater than `after`
            middle = (low + high) // 2
            if records[middle].id <= after:
                low = middle + 1
            else:
                high = middle
        return itertools.islice(records, low, None)
