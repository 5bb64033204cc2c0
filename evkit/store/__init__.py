"""Event history behind one interface (:class:`History`), chosen by URL.

``memory://`` (the default) keeps a bounded ring in memory; ``sqlite:///path/to.db``
keeps every event durably with the standard library's sqlite3 (see
:mod:`evkit.store.sqlite`). Both hand out the stream ids: ids are integers that only
grow within one ``epoch``; a store that starts empty starts a new epoch, so a client
can tell its ids no longer apply. A Redis stream shared by several broadcasters is a
backplane, not a history of this process: see :mod:`evkit.backplane`, which also
chooses by URL (``redis://``) and wraps these histories otherwise.

The broadcaster calls a history only from its own loop thread. ``append`` and
``read_after`` never wait on disk for what is recent; durable histories write in
batches on a thread of their own.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from evkit.store.base import History, Record, Store
from evkit.store.memory import MemoryStore

if TYPE_CHECKING:
    from evkit.store.sqlite import SQLiteStore

__all__ = ["History", "MemoryStore", "Record", "SQLiteStore", "Store", "open_store"]

#: The URL schemes of a shared stream (a backplane), which open_store does not open.
SHARED_SCHEMES = ("redis", "rediss", "unix")


def __getattr__(name: str) -> object:
    # Listed in __all__ but loaded on first use, like open_store does it.
    if name == "SQLiteStore":
        from evkit.store.sqlite import SQLiteStore

        return SQLiteStore
    raise AttributeError(f"module 'evkit.store' has no attribute {name!r}")


def open_store(
    url: str, history_size: int = 10_000, *, history_bytes: int = 16 * 1024 * 1024
) -> History:
    """Make the history a URL names (not yet opened).

    Every history keeps its newest events in memory, at most ``history_size`` of them
    and at most ``history_bytes`` of encoded frames, whichever comes first.

    - ``memory://`` — a ring of ``history_size`` events (``?size=N`` overrides it).
    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, with optional
      ``?size=N&max_age=SECONDS`` retention on disk (default: 1,000,000 events, no age
      limit; ``max_events`` is the former name of ``size``) and
      ``?synchronous=FULL`` (an fsync per commit, survives power loss; ``NORMAL`` by
      default).

    Raises:
        ValueError: an unknown scheme, a shared stream's URL (``redis://``: see
            :func:`evkit.backplane.open_backplane`), or a malformed option, naming what
            is accepted.
    """
    parts = urlsplit(url)
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    accepted = _OPTIONS.get(parts.scheme)
    if accepted is not None:
        for name in options:
            if name not in accepted and name not in _FORMER_OPTIONS:
                raise ValueError(
                    f"unknown option {name!r} for {parts.scheme}://; accepted: "
                    + ", ".join(accepted)
                )
    if parts.scheme == "memory":
        return MemoryStore(_int_option(options, "size", history_size), history_bytes)
    if parts.scheme == "sqlite":
        return _open_sqlite(url, parts.netloc + parts.path, options, history_size, history_bytes)
    if parts.scheme in SHARED_SCHEMES:
        raise ValueError(
            f"{parts.scheme}:// names a stream shared by several broadcasters, not a history "
            "of this process: open it with evkit.backplane.open_backplane()"
        )
    raise ValueError(
        f"unknown store URL {url!r}; use memory://, sqlite:///path/to/events.db"
        " or redis://host:6379/0"
    )


def _open_sqlite(
    url: str, path: str, options: dict[str, str], history_size: int, history_bytes: int
) -> History:
    if path.startswith("/") and not path.startswith("//"):
        path = path[1:]  # sqlite:///events.db -> events.db (relative)
    elif path.startswith("//"):
        path = path[1:]  # sqlite:////abs/events.db -> /abs/events.db
    if not path:
        raise ValueError(f"{url!r} names no file; use sqlite:///events.db")
    if "max_events" in options:
        _int_option(options, "max_events", 1)  # its own name in the error, if any
        warnings.warn(
            "the sqlite:// option max_events is now called size", DeprecationWarning, stacklevel=3
        )
        options.setdefault("size", options.pop("max_events"))
    from evkit.store.sqlite import SQLiteStore

    return SQLiteStore(
        path,
        history_size=history_size,
        history_bytes=history_bytes,
        retention_size=_int_option(options, "size", 1_000_000),
        max_age=_seconds_option(options, "max_age"),
        synchronous=options.get("synchronous", "NORMAL"),
    )


_OPTIONS = {"memory": ("size",), "sqlite": ("size", "max_age", "synchronous")}
_FORMER_OPTIONS = ("max_events",)  # still accepted, with a DeprecationWarning


def _int_option(options: dict[str, str], name: str, default: int) -> int:
    value = options.get(name)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"store option {name} must be a positive integer, got {value!r}")
    return int(value)


def _seconds_option(options: dict[str, str], name: str) -> float | None:
    value = options.get(name)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise ValueError(f"store option {name} must be a positive number of seconds, got {value!r}")
    return seconds
