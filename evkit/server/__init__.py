"""The broadcaster: a WebSocket server at ``/ws/events`` that fans events out by subscription.

One module per job (the module docstring of :mod:`evkit.server.broadcaster` maps them);
the names users reach are re-exported here: :func:`serve`, :class:`Server`,
:func:`flush`, :func:`running_servers`, :class:`Broadcaster`, :class:`ServerSettings`.
"""

from __future__ import annotations

from evkit.server.broadcaster import Broadcaster
from evkit.server.counters import MAX_CATEGORIES, OTHER_CATEGORY
from evkit.server.handle import Server, flush, running_servers, serve
from evkit.server.settings import ServerSettings

__all__ = [
    "MAX_CATEGORIES",
    "OTHER_CATEGORY",
    "Broadcaster",
    "Server",
    "ServerSettings",
    "flush",
    "running_servers",
    "serve",
]
