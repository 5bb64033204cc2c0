"""The reconnect core: one WebSocket connection to a broadcaster, kept open until stopped.

:class:`Reconnecting` opens the connection (credentials as ``Authorization: Bearer``,
never in the URL; websockets' own log records go through
:data:`~evkit.redaction.CLIENT_WIRE_LOGGER`, so no credential reaches a log), waits
for the server's welcome, hands the open connection to its owner's session, and when
it ends opens a new one after a delay drawn with full jitter
(:func:`backoff_delay`). The URL is asked for again at each attempt, so an owner can
put its resume position in it. A refused handshake is read by
:func:`evkit.protocol.refusal`: the owner says which HTTP statuses end the loop (as
the :class:`~evkit.exceptions.ProtocolError` they stand for) and which are retried.

The owners are :class:`~evkit.client.subscriber.Subscriber` (reading) and
:class:`~evkit.client.publisher.Publisher` (writing). The core runs on one asyncio
loop and is not thread-safe, except :attr:`Reconnecting.status`: an immutable
snapshot, replaced on every change, that any thread may read.

It must not decode events or know what the session does with the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from evkit.exceptions import ProtocolError
from evkit.protocol import CONNECTED, decode_server_message, ping_message, refusal
from evkit.protocol.vocabulary import CLOSE_POLICY
from evkit.redaction import CLIENT_WIRE_LOGGER
from evkit.tls import SSLOption, client_context

__all__ = ["RETRYABLE", "ConnectionStatus", "Reconnecting", "backoff_delay"]

#: Errors that end one connection and are retried: the peer refused, vanished, garbled
#: or closed the handshake (a server restarting, a proxy), or did not answer in time.
RETRYABLE = (OSError, ConnectionClosed, TimeoutError, InvalidHandshake)
#: The ping a writer without credentials sends first: a server with auth, which would
#: otherwise wait for an ``auth`` message until its timeout, refuses it at once.
_PROBE_PAYLOAD = "evkit.probe"
_TOKEN_HINT = (
    "the server requires a token: pass token=... (on the command line --token, or set $EVKIT_TOKEN)"
)


def backoff_delay(
    attempt: int,
    first: float,
    largest: float,
    draw: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before attempt ``attempt`` (1 after a connection that worked).

    Full jitter: drawn uniformly between 0 and the exponential bound
    ``min(largest, first * 2 ** attempt)``, so clients cut off together do not come
    back together.
    """
    return draw(0, min(largest, first * 2 ** min(attempt, 16)))


@dataclass(frozen=True)
class ConnectionStatus:
    """Where a connection stands; replaced whole on every change, so any thread may read it.

    ``state`` is connecting, connected (welcomed), backoff or stopped; ``retries`` the
    attempts made after a failure or a drop; ``connections`` the connections welcomed;
    ``last_error`` the latest reason a connection failed or ended, or None.
    """

    state: str = "connecting"
    retries: int = 0
    connections: int = 0
    last_error: str | None = None


class _Unwelcome(Exception):
    """The server closed a new connection before welcoming it: authentication failed
    (a signal inside this module, never raised to a caller)."""


class Reconnecting:
    """Keep one connection open to ``url()`` until :meth:`stop`.

    Args:
        url: called before each attempt for the URL to open (with its query).
        name: what the owner is, for log lines ("subscriber", "forwarder").
        token: bearer token sent in the ``Authorization`` header, or None.
        open_timeout: seconds for the handshake, and again for the welcome.
        backoff: first and largest delay between attempts, in seconds.
        fatal_refusals: HTTP statuses of a refused handshake that end :meth:`run`
            with the :class:`~evkit.exceptions.ProtocolError` the refusal stands for
            (401 also covers a server closing with 1008 before its welcome); other
            refusals are retried, logged once when retrying cannot help by itself.
        probe: without a token, send a ``ping`` first so a server with auth refuses at
            once (only for a connection that reads no events: the ``pong`` follows).
        survive_errors: an unexpected exception ends the connection, logged, and is
            retried, rather than ending :meth:`run`.
        max_size, close_timeout: as for websockets' ``connect``.
        ssl: for a ``wss://`` URL, an :class:`ssl.SSLContext` or the path of a CA file
            to trust instead of the system's (see :func:`evkit.tls.client_context`).

    Raises:
        ValueError: ``ssl`` for a ``ws://`` URL, or a CA file that cannot be used.
    """

    def __init__(
        self,
        url: Callable[[], str],
        *,
        name: str,
        logger: logging.Logger,
        token: str | None = None,
        open_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.05, 5.0),
        fatal_refusals: Collection[int] = (),
        probe: bool = False,
        survive_errors: bool = False,
        max_size: int | None = 2**20,
        close_timeout: float = 10.0,
        ssl: SSLOption = None,
    ) -> None:
        self.url = url
        self.name = name
        self.token = token
        self.open_timeout = open_timeout
        self.backoff = backoff
        self.fatal_refusals = frozenset(fatal_refusals)
        self.probe = probe
        self.survive_errors = survive_errors
        self.status = ConnectionStatus()
        self._logger = logger
        self._connect_options: dict[str, Any] = {
            "logger": CLIENT_WIRE_LOGGER,
            "max_size": max_size,
            "open_timeout": open_timeout,
            "close_timeout": close_timeout,
            "additional_headers": {"Authorization": f"Bearer {token}"} if token else None,
        }
        context = client_context(ssl, url())
        if context is not None:
            self._connect_options["ssl"] = context
        self._ws: ClientConnection | None = None
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._warned: set[str] = set()

    # -- the loop ---------------------------------------------------------------------------

    async def run(
        self,
        welcomed: Callable[[dict[str, Any]], None],
        session: Callable[[ClientConnection], Awaitable[None]],
    ) -> None:
        """Connect, call ``welcomed(welcome)`` then ``session(connection)``, reconnect.

        ``session`` returns (or raises one of :data:`RETRYABLE`) when its connection
        ended; it is called again for the next one.

        Raises:
            ProtocolError: a refusal with one of ``fatal_refusals``.
            InvalidURI: the URL is not a WebSocket URL.
            Exception: what ``session`` raised, unless ``survive_errors``.
        """
        attempt = 0
        try:
            while not self._stopping.is_set():
                self._set(state="connecting")
                welcome_came = False
                try:
                    async with connect(self.url(), **self._connect_options) as ws:
                        self._ws = ws
                        if self._stopping.is_set():
                            break  # stop() came during the handshake, with nothing to close
                        welcome = await self._welcome(ws)
                        welcome_came = True
                        welcomed(welcome)
                        self._set(state="connected", connections=self.status.connections + 1)
                        self._connected.set()
                        await session(ws)
                        if not self._stopping.is_set():
                            closed = _described(ws.close_code, ws.close_reason)
                            self.error(f"the server closed the connection ({closed})")
                except InvalidStatus as exc:
                    self._refused(exc)
                except InvalidURI:
                    raise
                except _Unwelcome as exc:
                    if 401 in self.fatal_refusals:
                        raise ProtocolError("unauthorized", str(exc)) from None
                    self.error(str(exc), warn="closed-before-welcome")
                except RETRYABLE as exc:
                    if not self._stopping.is_set():  # stop() closing the connection is no error
                        self.error(f"{type(exc).__name__}: {exc}")
                except Exception as exc:
                    if not self.survive_errors:
                        raise
                    # A garbled message ends this connection, not the loop: the next
                    # connection may do better.
                    self._logger.exception("%s to %s: unexpected error", self.name, self.address)
                    self.error(f"{type(exc).__name__}: {exc}")
                finally:
                    self._ws = None
                    self._connected.clear()
                if self._stopping.is_set():
                    break
                attempt = 1 if welcome_came else attempt + 1
                delay = backoff_delay(attempt, *self.backoff)
                self._set(state="backoff", retries=self.status.retries + 1)
                self._logger.info(
                    "%s reconnecting to %s in %.2f s (%s)",
                    self.name,
                    self.address,
                    delay,
                    self.status.last_error,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            self._connected.clear()
            self._set(state="stopped")

    async def _welcome(self, ws: ClientConnection) -> dict[str, Any]:
        """Wait for ``websocket.connected`` (messages before it are skipped).

        Raises:
            _Unwelcome: the server closed the connection first (authentication).
            TimeoutError: no welcome within ``open_timeout``.
        """
        if self.probe and self.token is None:
            await ws.send(ping_message(_PROBE_PAYLOAD), text=True)
        try:
            async with asyncio.timeout(self.open_timeout):
                while True:
                    message = decode_server_message(await ws.recv())
                    if message.get("type") == CONNECTED:
                        return message
        except ConnectionClosed as exc:
            close = exc.rcvd
            if close is None or close.code != CLOSE_POLICY:
                raise
            hint = _TOKEN_HINT if self.token is None else "the server refused the token"
            closed = _described(close.code, close.reason)
            raise _Unwelcome(
                f"unauthorized: {hint} (it closed the connection with {closed})"
            ) from None

    def _refused(self, exc: InvalidStatus) -> None:
        response = exc.response
        refused = refusal(response.status_code, response.reason_phrase, bytes(response.body or b""))
        if refused.status in self.fatal_refusals:
            raise refused.as_error() from None
        self.error(refused.describe(), warn=f"http-{refused.status}" if refused.permanent else None)

    # -- what the owner calls ---------------------------------------------------------------

    def error(self, message: str, warn: str | None = None) -> None:
        """Record ``message`` as the last error; log a warning the first time for ``warn``."""
        self._set(last_error=message)
        if warn is not None and warn not in self._warned:
            self._warned.add(warn)
            self._logger.warning(
                "%s to %s: %s; retrying with backoff", self.name, self.address, message
            )

    @property
    def address(self) -> str:
        """The URL without its query, for log lines and messages."""
        return self.url().split("?", 1)[0]

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    @property
    def connected(self) -> bool:
        """Whether a connection is open and welcomed now."""
        return self._connected.is_set()

    @property
    def current(self) -> ClientConnection | None:
        """The open connection, or None between connections."""
        return self._ws

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a connection is open and welcomed (None: however long it takes).

        Raises:
            TimeoutError: not connected in time (``status.last_error`` says why).
        """
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def wait_started(self, running: asyncio.Future[None], timeout: float) -> bool:
        """Wait until a connection is welcomed, ``running`` (the task of :meth:`run`)
        ended, or ``timeout`` seconds passed; return whether connected.

        Raises:
            Exception: what ended :meth:`run` (a fatal refusal).
        """
        welcomed = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait(
                (welcomed, running), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            welcomed.cancel()
        if running.done():
            running.result()
        return self.connected

    async def wait_stopping(self) -> None:
        """Return once :meth:`stop` was called."""
        await self._stopping.wait()

    async def stop(self) -> None:
        """Close the connection and end :meth:`run` (a backoff wait ends at once)."""
        self._stopping.set()
        self._connected.clear()
        if self._ws is not None:
            await self._ws.close()

    def drop(self) -> None:
        """Cut the connection without a closing handshake (:meth:`run` reconnects)."""
        if self._ws is not None and self._ws.transport is not None:
            self._ws.transport.abort()

    def _set(self, **changes: Any) -> None:
        self.status = dataclasses.replace(self.status, **changes)


def _described(code: int | None, reason: str | None) -> str:
    return f"{code} {reason or ''}".strip()
