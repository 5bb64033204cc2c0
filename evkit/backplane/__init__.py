"""Backplanes: how a broadcaster's queued events get ids and reach history and delivery.

:func:`open_backplane` chooses by the store URL: ``redis://`` (``rediss://``,
``unix://``) is a stream shared by several broadcasters
(:class:`~evkit.backplane.redis.RedisBackplane`); anything else names a history of this
process (``memory://``, ``sqlite:///...``, see :func:`evkit.store.open_store`) behind a
:class:`~evkit.backplane.local.LocalBackplane`. The interface is
:class:`~evkit.backplane.base.Backplane`.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from evkit.backplane.base import Backplane, Pending, Queue, Sink
from evkit.backplane.local import LocalBackplane
from evkit.store import SHARED_SCHEMES, open_store

__all__ = ["Backplane", "LocalBackplane", "Pending", "Queue", "Sink", "open_backplane"]


def open_backplane(
    url: str,
    *,
    history_size: int = 10_000,
    history_bytes: int = 16 * 1024 * 1024,
    stream: str = "evkit:events",
    maxlen: int = 1_000_000,
    clients: Callable[[], int] = lambda: 0,
) -> Backplane:
    """The backplane a store URL names (not yet opened or started).

    ``stream`` and ``maxlen`` apply to a Redis stream; ``clients`` tells a local
    backplane how many clients a delivery turn reaches (it sizes its turns by it).

    Raises:
        ValueError: an unknown scheme or a malformed option, naming what is accepted.
    """
    if urlsplit(url).scheme in SHARED_SCHEMES:
        from evkit.backplane.redis import RedisBackplane

        return RedisBackplane(url, stream, maxlen, history_size, history_bytes)
    history = open_store(url, history_size, history_bytes=history_bytes)
    return LocalBackplane(history, clients)
