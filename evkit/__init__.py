"""evkit: stream events over WebSocket, collect them into pandas, find the bottlenecks.

The public API is exactly what ``__all__`` lists; everything else is private::

    import evkit
    srv = evkit.serve(port=0)                 # broadcaster on evkit's loop thread
    evkit.emit("repo.commit.created", {"path": "/src"}, correlation_id="req-7")
    evkit.flush()
    srv.stop()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

from evkit import bus
from evkit.bus import Event, EventBus, RequestBus, emit, emits, request_bus
from evkit.collector import Collector, capture, collect
from evkit.context import correlation, current_correlation_id
from evkit.exceptions import (
    ConnectError,
    EvkitError,
    EvkitWarning,
    InvalidEventError,
    InvalidPatternError,
    LoopError,
    PortInUseError,
    ProtocolError,
    ServerError,
    StoreUnavailable,
    WaitTimeout,
)
from evkit.recording import load
from evkit.server import Broadcaster, Server, ServerSettings, flush, running_servers, serve

if TYPE_CHECKING:
    from evkit.client import Forwarder
    from evkit.client.forwarder import ForwarderOptions
    from evkit.widgets import Dashboard

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("analysis", "simulate", "widgets")


def connect(url: str, token: str | None = None, **options: Unpack[ForwarderOptions]) -> Forwarder:
    """Forward this process's bus to a remote broadcaster (see :func:`evkit.client.connect`)."""
    from evkit.client import connect as forward

    return forward(url, token, **options)


def dashboard(source: object, **options: object) -> Dashboard:
    """A live ipywidgets dashboard over a collector (or a URL / server to collect from).

    See :func:`evkit.widgets.dashboard`; ipywidgets is imported only here.
    """
    from evkit.widgets import dashboard as build

    return build(source, **options)  # type: ignore[arg-type]  # options are checked there


def __getattr__(name: str) -> object:
    # evkit.analysis needs pandas and matplotlib; a broadcaster-only install must not
    # import them, so these submodules load on first use (``evkit.analysis.spans``).
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"evkit.{name}")
    raise AttributeError(f"module 'evkit' has no attribute {name!r}")


__all__ = [
    "Broadcaster",
    "Collector",
    "ConnectError",
    "Event",
    "EventBus",
    "EvkitError",
    "EvkitWarning",
    "InvalidEventError",
    "InvalidPatternError",
    "LoopError",
    "PortInUseError",
    "ProtocolError",
    "RequestBus",
    "Server",
    "ServerError",
    "ServerSettings",
    "StoreUnavailable",
    "WaitTimeout",
    "__version__",
    "bus",
    "capture",
    "collect",
    "connect",
    "correlation",
    "current_correlation_id",
    "dashboard",
    "emit",
    "emits",
    "flush",
    "load",
    "request_bus",
    "running_servers",
    "serve",
]
