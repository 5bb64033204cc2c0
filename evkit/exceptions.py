"""Every exception and warning evkit raises, under one root.

The tree::

    EvkitError
    ├── ProtocolError            a client message was rejected (carries the wire ``code``)
    │   └── InvalidPatternError  a subscription pattern is malformed (also a ValueError)
    ├── InvalidEventError        an event to emit or publish is malformed (also a ValueError)
    ├── ConfigError              a setting from a flag, a variable or a config file cannot
    │                            be used (also a ValueError)
    ├── ServerError              the broadcaster could not start or stop
    │   └── PortInUseError       the port is held by another process (also an OSError)
    ├── StoreUnavailable         a store or backplane (Redis) cannot be reached
    ├── ConnectError             a client could not connect or stay connected (also a
    │                            ConnectionError)
    ├── LoopError                evkit's background loop was used from the wrong place
    └── WaitTimeout              a collector's wait() ran out of time (also a TimeoutError)

    EvkitWarning                 evkit's own warnings (a UserWarning)

This module imports nothing from the rest of evkit.
"""

from __future__ import annotations

from typing import Any


class EvkitError(Exception):
    """Root of every error evkit raises on purpose."""


class ProtocolError(EvkitError):
    """A client message was rejected.

    ``code`` is the stable machine string sent as ``websocket.error`` ``code``
    (``invalid_json``, ``invalid_message``, ``unknown_type``, ``invalid_pattern``,
    ``too_many_subscriptions``, ``unauthorized``, ``forbidden``, ``rate_limited``,
    ``invalid_event``); ``detail`` is extra machine-readable context.
    """

    def __init__(self, code: str, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.code = code
        self.error = error
        self.detail = detail


class InvalidPatternError(ProtocolError, ValueError):
    """A subscription pattern is not a valid glob over event types."""

    def __init__(self, error: str, detail: Any = None) -> None:
        super().__init__("invalid_pattern", error, detail)


class InvalidEventError(EvkitError, ValueError):
    """An event's type or payload is malformed; nothing was emitted."""


class ConfigError(EvkitError, ValueError):
    """A setting cannot be used; the message names the flag, variable or file it came from."""


class ServerError(EvkitError):
    """The broadcaster could not start, or could not stop in time."""


class PortInUseError(ServerError, OSError):
    """The requested port is already bound by another process."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} is already in use by another process; "
            f"stop that process, or call serve(port=...) with another port "
            f"(port=0 picks a free one)"
        )
        self.host = host
        self.port = port


class StoreUnavailable(EvkitError):
    """A store or backplane could not be reached; the message names it (password hidden)."""


class ConnectError(EvkitError, ConnectionError):
    """A client could not connect to a broadcaster, or is not connected now.

    The message says why (refused, unreachable, closed); ``except ConnectionError``
    catches it too.
    """


class LoopError(EvkitError):
    """evkit's background loop was called in a way that would deadlock or cannot work."""


class WaitTimeout(EvkitError, TimeoutError):
    """A blocking wait on a collector ran out of time before its condition held."""


class EvkitWarning(UserWarning):
    """A warning about how evkit is used (for example an unauthenticated public bind)."""
