"""History: the interface the broadcaster reads and records a stream's events through.

A history holds the events of one stream, in id order, and serves replays (``since``).
Where ids come from and how events reach delivery is the backplane's job
(:mod:`evkit.backplane`): a local backplane hands out ids with :meth:`History.claim`
and :meth:`History.append`; a shared one (Redis) records what it reads back.
``Store`` is the former name of :class:`History`, kept as an alias.

Called only from the broadcaster's loop thread. Must not block the loop on disk or
network for what is recent: durable histories write on a thread of their own, and
what only a remote stream still holds is read with the async :meth:`History.read_older`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

__all__ = ["History", "Record", "Store", "new_epoch"]


class Record(NamedTuple):
    """One stored event: id, timestamp (ms), type, correlation ID and the encoded frame."""

    id: int
    timestamp: int
    type: str
    correlation_id: str | None
    frame: bytes


def new_epoch() -> str:
    """A fresh random epoch name (8 hex characters)."""
    return os.urandom(4).hex()


class History(ABC):
    """History of one stream. Called only from the broadcaster's loop thread.

    ``last_id`` is the id of the newest event (0 before the first); ``first_id`` the
    oldest still held (``last_id + 1`` when none is).
    """

    name: str
    epoch: str
    last_id: int
    #: True when ``sync()`` makes what was appended survive a crash of the process.
    durable: bool = False

    def parse_id(self, text: str) -> int:
        """The position of the wire id ``text`` (an id this kind of store hands out).

        Raises:
            ValueError: ``text`` is not such an id.
        """
        if not text.isdigit():
            raise ValueError(f"an event id of this server is a decimal number, got {text!r}")
        return int(text)

    def format_id(self, position: int) -> str:
        """The wire id of a position (``parse_id``'s inverse)."""
        return str(position)

    def trimmed_through(self) -> int:
        """The newest position no longer held here (0 when nothing was ever dropped).

        A replay after ``since`` is complete when ``since`` is at least this.
        """
        return self.first_id() - 1

    def open(self) -> None:
        """Prepare the store (create files, read where the stream stands).

        Raises:
            OSError, sqlite3.Error: the store cannot be opened; the message says where.
        """
        return None

    def claim(self, count: int) -> int:
        """How many of the next ``count`` ids may be handed out now (call before assigning).

        A durable store may allow fewer while it commits how far ids may go, so that an
        id handed out before a crash is never handed out again; ask again shortly.
        """
        return count

    def continues(self, epoch: str) -> bool:
        """Whether ids of ``epoch`` are positions in this stream (an epoch this one replaced
        after a crash, with ids that never repeat): a resume from it is served, incomplete.
        """
        return False

    @abstractmethod
    def append(self, record: Record) -> None:
        """Record an event whose id is ``last_id + 1`` (the caller assigns it)."""

    def extend(self, records: list[Record]) -> None:
        """Record several events, in id order (:meth:`append` each, by default)."""
        for record in records:
            self.append(record)

    def on_written(self, callback: Callable[[int], object]) -> bool:
        """Call ``callback(last id written)``, from any thread, each time appended events
        became durable; False when this history has nothing to wait for (it does not
        write, and ``callback`` is never called).

        A backplane uses it to deliver an event only once it would survive a crash.
        """
        return False

    @abstractmethod
    def first_id(self) -> int:
        """The oldest id still held."""

    @abstractmethod
    def read_after(self, after: int) -> Iterator[Record]:
        """Every held event with an id greater than ``after``, in id order."""

    async def read_older(self, after: int, count: int) -> tuple[list[Record], int]:
        """Up to ``count`` events after ``after`` that only a remote stream still holds, and
        the newest position that stream no longer holds (0: nothing was ever dropped).

        Called for positions before :meth:`trimmed_through`. A history held here entirely
        has nothing more: ``([], trimmed_through())``.

        Raises:
            StoreUnavailable: the remote stream cannot be read now.
        """
        return [], self.trimmed_through()

    def sync(self) -> None:
        """Block until everything appended is durable (no-op for memory). Not on the loop."""
        return None

    def close(self) -> None:
        """Write what is pending and release the store."""
        return None

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """``name``, ``state`` (ok or error), counts, and any last error."""


#: The former name of :class:`History`.
Store = History
