"""evkit: stream events over WebSocket, collect them into pandas, find the bottlenecks.

The public API is exactly what ``__all__`` lists; everything else is private::

    import evkit
    srv = evkit.serve(port=0)                 # broadcaster on evkit's loop thread
    evkit.emit("repo.commit.created", {"path": "/src"}, correlation_id="req-7")
    evkit.flush()
    srv.stop()

In a notebook, ``%load_ext evkit`` adds ``%%trace`` and ``%evkit`` (:mod:`evkit.ipython`).
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Unpack

from evkit import bus
from evkit.bus import Event, EventBus, RequestBus, emit, request_bus
from evkit.client.stream import EventStream, subscribe
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
from evkit.logs import LoggingHandler
from evkit.recording import load
from evkit.server import Broadcaster, Server, ServerSettings, flush, running_servers, serve
from evkit.tracing import Span, emits, span

if TYPE_CHECKING:
    from evkit.client import Forwarder
    from evkit.client.forwarder import ForwarderOptions
    from evkit.widgets import Dashboard

try:
    __version__ = version("evkit")  # the installed metadata, as `evkit --version` says
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# A library's logger stays silent until the application configures logging.
logging.getLogger("evkit").addHandler(logging.NullHandler())

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


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext evkit``: registers ``%%trace`` and ``%evkit`` (see :mod:`evkit.ipython`).

    IPython is imported only here.
    """
    from evkit.ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext evkit``: stops the server ``%evkit serve`` started."""
    from evkit.ipython import unload_ipython_extension as unload

    unload(ipython)


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
    "EventStream",
    "EvkitError",
    "EvkitWarning",
    "InvalidEventError",
    "InvalidPatternError",
    "LoggingHandler",
    "LoopError",
    "PortInUseError",
    "ProtocolError",
    "RequestBus",
    "Server",
    "ServerError",
    "ServerSettings",
    "Span",
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
    "load_ipython_extension",
    "request_bus",
    "running_servers",
    "serve",
    "span",
    "subscribe",
    "unload_ipython_extension",
]
