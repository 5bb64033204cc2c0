"""The default store: the newest events in a bounded ring in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from evkit.store.base import History, Record, new_epoch
from evkit.store.ring import HistoryRing

__all__ = ["MemoryStore"]


class MemoryStore(History):
    """Keeps the newest ``history_size`` events (at most ``history_bytes`` of them); nothing
    survives the process.

    Every new MemoryStore starts empty, hence with a new epoch. Also the test double
    for the store interface: it needs no files and no threads.
    """

    name = "memory"

    def __init__(self, history_size: int = 10_000, history_bytes: int = 16 * 1024 * 1024) -> None:
        if history_size < 1:
            raise ValueError(
                f"a memory store's capacity must be positive: history_size={history_size}"
            )
        self.history_size = history_size
        self.epoch = new_epoch()
        self.last_id = 0
        self._ring = HistoryRing(history_size, history_bytes)

    @property
    def capacity(self) -> int:
        """The former name of ``history_size``."""
        return self.history_size

    def append(self, record: Record) -> None:
        self._ring.append(record)
        self.last_id = record.id

    def extend(self, records: list[Record]) -> None:
        if records:
            self._ring.extend(records)
            self.last_id = records[-1].id

    def first_id(self) -> int:
        return self._ring.first_id(self.last_id + 1)

    def read_after(self, after: int) -> Iterator[Record]:
        return self._ring.read_after(after)

    def __len__(self) -> int:
        return len(self._ring)

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": "ok",
            "events": len(self._ring),
            "bytes": self._ring.bytes,
            "capacity": self.history_size,
            "epoch": self.epoch,
            "lastId": str(self.last_id),
        }
