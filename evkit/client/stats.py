"""Counters as evkit's objects hand them out: a snapshot dict that can also be called.

Every object with counters has ``stats()``, a method returning a plain dict. The
collector and the forwarder had ``stats`` as a property (``col.stats["received"]``, a
documented form), so theirs returns a :class:`Stats`: a dict snapshot that is also
callable, so ``col.stats()["received"]`` (the form to use) and ``col.stats["received"]``
both work.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Stats"]


class Stats(dict[str, Any]):
    """A snapshot of counters, taken when it was read; calling it returns a plain dict copy."""

    __slots__ = ()

    def __call__(self) -> dict[str, Any]:
        return dict(self)
