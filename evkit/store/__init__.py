"""Event history behind one small interface, chosen by URL.

``memory://`` (the default) keeps a bounded ring in memory; ``sqlite:///path/to.db``
keeps every event durably with the standard library's sqlite3 (see
:mod:`evkit.store.sqlite`). Both hand out the stream ids: ids are integers that only
grow within one ``epoch``; a store that starts empty starts a new epoch, so a client
can tell its ids no longer apply. ``redis://host:6379/0`` is a Redis stream shared by
several broadcasters (see :mod:`evkit.store.redis`): Redis assigns the ids
(``1764171234567-0``) and every instance delivers what it reads back.

The broadcaster calls a store only from its own loop thread. ``append`` and
``read_after`` never wait on disk for what is recent; durable stores write in batches
on a thread of their own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from evkit.store.base import Record, Store
from evkit.store.memory import MemoryStore

if TYPE_CHECKING:
    from evkit.store.redis import RedisStore
    from evkit.store.sqlite import SQLiteStore

__all__ = ["MemoryStore", "Record", "RedisStore", "SQLiteStore", "Store", "open_store"]


def __getattr__(name: str) -> object:
    # Listed in __all__ but loaded on first use, like open_store does it.
    if name == "SQLiteStore":
        from evkit.store.sqlite import SQLiteStore

        return SQLiteStore
    if name == "RedisStore":
        from evkit.store.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module 'evkit.store' has no attribute {name!r}")


def open_store(
    url: str,
    history_size: int = 10_000,
    *,
    stream: str = "evkit:events",
    maxlen: int = 1_000_000,
    history_bytes: int = 16 * 1024 * 1024,
) -> Store:
    """Make the store a URL names (not yet opened).

    Every store keeps its newest events in memory, at most ``history_size`` of them and
    at most ``history_bytes`` of encoded frames, whichever comes first.

    - ``memory://`` — a ring of ``history_size`` events.
    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, with optional
      ``?max_events=N&max_age=SECONDS`` retention (default: 1,000,000 events, no age
      limit); ``history_size`` recent events are also kept in memory for fast replay.
    - ``redis://[user:password@]host:6379/0``, ``rediss://`` (TLS) or
      ``unix:///path/redis.sock?db=0``: the Redis stream ``stream``, trimmed to about
      ``maxlen`` entries; redis-py reads the URL's options. ``history_size`` recent
      events are kept in memory too.

    Raises:
        ValueError: an unknown scheme or a malformed option, naming what is accepted.
    """
    parts = urlsplit(url)
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    accepted = _OPTIONS.get(parts.scheme)
    if accepted is not None:
        for name in options:
            if name not in accepted:
                raise ValueError(
                    f"unknown option {name!r} for {parts.scheme}://; accepted: "
                    + ", ".join(accepted)
                )
    if parts.scheme == "memory":
        return MemoryStore(_int_option(options, "size", history_size), history_bytes)
    if parts.scheme == "sqlite":
        path = parts.netloc + parts.path
        if path.startswith("/") and not path.startswith("//"):
            path = path[1:]  # sqlite:///events.db -> events.db (relative)
        elif path.startswith("//"):
            path = path[1:]  # sqlite:////abs/events.db -> /abs/events.db
        if not path:
            raise ValueError(f"{url!r} names no file; use sqlite:///events.db")
        from evkit.store.sqlite import SQLiteStore

        return SQLiteStore(
            path,
            memory_size=history_size,
            memory_bytes=history_bytes,
            max_events=_int_option(options, "max_events", 1_000_000),
            max_age=_seconds_option(options, "max_age"),
        )
    if parts.scheme in ("redis", "rediss", "unix"):
        from evkit.store.redis import RedisStore

        return RedisStore(url, stream, maxlen, history_size, history_bytes)
    raise ValueError(
        f"unknown store URL {url!r}; use memory://, sqlite:///path/to/events.db"
        " or redis://host:6379/0"
    )


_OPTIONS = {"memory": ("size",), "sqlite": ("max_events", "max_age")}


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
