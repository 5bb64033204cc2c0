"""The thread-facing handle: :func:`serve`, :class:`Server`, :func:`flush`.

:func:`serve` runs a :class:`~evkit.server.broadcaster.Broadcaster` on evkit's loop
thread and returns a :class:`Server` at once, attached to the bus. Everything a
:class:`Server` does with the broadcaster goes through :mod:`evkit._loop`'s API (it
never reads the broadcaster's state from the caller's thread). ``serve()`` is safe to
call again in a re-run notebook cell: equal settings give the running server back;
changed ones restart it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from evkit._loop import loop_thread
from evkit.bus import EventBus
from evkit.protocol import EVENTS_PATH
from evkit.server.broadcaster import Broadcaster
from evkit.server.settings import ServerSettings

__all__ = ["Server", "flush", "running_servers", "serve"]

T = TypeVar("T")
P = ParamSpec("P")


def _on_loop_thread(
    method: Callable[Concatenate[Broadcaster, P], T],
) -> Callable[Concatenate[Server, P], T]:
    """A :class:`Server` method calling the broadcaster's ``method`` on the broadcaster's
    loop, with its signature and documentation."""

    def call(self: Server, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._on_loop(lambda: method(self.broadcaster, *args, **kwargs))

    functools.update_wrapper(call, method)
    return call


class Server:
    """A running broadcaster on evkit's loop thread; the handle :func:`serve` returns.

    Use it as a context manager, or call :meth:`stop`.
    """

    def __init__(self, settings: ServerSettings, bus: EventBus | None = None) -> None:
        self.settings = settings
        self.broadcaster = Broadcaster(settings, bus)
        self._loop_thread = loop_thread()
        self._running = False

    def _start(self) -> None:
        self._loop_thread.run(self.broadcaster.start(), timeout=30)
        self.broadcaster.bus.on("*", self.broadcaster.publish)
        self._running = True

    @property
    def running(self) -> bool:
        """Whether it is accepting connections."""
        return self._running and self._loop_thread.alive

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        """The port bound (the real one when 0 was asked for)."""
        return self.broadcaster.port

    @property
    def url(self) -> str:
        """The event stream's URL, ``ws://HOST:PORT/ws/events`` (``wss://`` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "wss" if self.settings.tls else "ws"
        return f"{scheme}://{host}:{self.port}{EVENTS_PATH}"

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP routes (``/healthz``), ``http://`` or ``https://``."""
        return "http" + self.url.removeprefix("ws").removesuffix(EVENTS_PATH)

    def _on_loop(self, read: Callable[[], T]) -> T:
        """``read()`` on the broadcaster's loop, the one place its state may be touched.

        When the loop is gone (a stopped server), the counters no longer change: they
        are read here.
        """
        if not self._loop_thread.alive or self._loop_thread.in_loop_thread():
            return read()

        async def run() -> T:
            return read()

        return self._loop_thread.run(run(), 10)

    stats = _on_loop_thread(Broadcaster.stats)
    health = _on_loop_thread(Broadcaster.health)
    disconnect = _on_loop_thread(Broadcaster.disconnect)

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every event emitted before this call was handed to the clients."""
        if self.running:
            self._loop_thread.run(self.broadcaster.flush(), timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what was emitted, close clients with 1001 and stop listening."""
        if not self._running:
            return
        self._running = False
        self.broadcaster.bus.off(self.broadcaster.publish)
        with _registry_lock:
            for key, server in list(_servers.items()):
                if server is self:
                    del _servers[key]
        if self._loop_thread.alive:
            self._loop_thread.run(self.broadcaster.stop(timeout), timeout + 5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<evkit.Server {self.url} {state}>"

    def _repr_html_(self) -> str:
        """The card a notebook shows for a server: URLs, clients, counts and rates."""
        from evkit._notebook_repr import server_html

        return server_html(self.url, self.running, self.stats() if self.running else {})


_registry_lock = threading.RLock()
_servers: dict[tuple[str, int], Server] = {}


def serve(
    host: str = "127.0.0.1",
    port: int = 3000,
    *,
    bus: EventBus | None = None,
    **options: Any,
) -> Server:
    """Start a broadcaster on evkit's background loop thread and return at once.

    It listens on ``ws://host:port/ws/events`` when this returns and receives every
    event of ``bus`` (the global bus by default). Calling it again with the same
    arguments (a re-run notebook cell) returns the running server; with different ones
    it stops that server and starts a new one. ``options`` are the fields of
    :class:`ServerSettings`; ``token`` defaults to the ``EVKIT_TOKEN`` environment
    variable when it is set.

    Raises:
        PortInUseError: another process holds the port.
        TypeError: an unknown option.
        ValueError: an option out of range, or a TLS file that cannot be used.
    """
    if "token" not in options and os.environ.get("EVKIT_TOKEN"):
        options["token"] = os.environ["EVKIT_TOKEN"]
    settings = ServerSettings(host=host, port=port, **options)
    key = (host, port)
    with _registry_lock:
        existing = _servers.get(key)
        if existing is not None:
            if (
                existing.running
                and existing.settings == settings
                and (bus is None or existing.broadcaster.bus is bus)
            ):
                return existing
            existing.stop()
        server = Server(settings, bus)
        server._start()
        _servers[key] = server
        return server


def running_servers() -> list[Server]:
    """The servers :func:`serve` started in this process that are still running."""
    with _registry_lock:
        return [s for s in _servers.values() if s.running]


def flush(timeout: float = 5.0) -> None:
    """Block until everything emitted before this call was handed to the clients.

    Covers every server started with :func:`serve` in this process.

    Raises:
        TimeoutError: not done within ``timeout`` seconds.
        LoopError: called on evkit's own loop thread.
    """
    for server in running_servers():
        server.flush(timeout)
