"""Which server a client command talks to, and how: one set of options for all of them.

``--url`` (or ``EVKIT_URL``; default ``ws://127.0.0.1:3000/ws/events``) takes the
stream's URL, or just ``http://HOST:PORT`` / ``HOST:PORT`` (the path ``/ws/events`` and
the WebSocket scheme are filled in). ``--token`` / ``--token-file`` (or
``EVKIT_TOKEN`` / ``EVKIT_TOKEN_FILE``) authenticate; ``--ca-file`` (or
``EVKIT_CA_FILE``) trusts a private CA for ``wss://``, and ``--cert`` / ``--key`` present
a client certificate. Also the helpers every client command runs its client with.

Must not print: what goes wrong is raised, and ``evkit.cli.main`` says it in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from evkit.config import read_secret
from evkit.exceptions import ConfigError, ConnectError
from evkit.protocol import EVENTS_PATH
from evkit.tls import client_context

if TYPE_CHECKING:
    from evkit.client import Subscriber
    from evkit.client.publisher import Publisher

__all__ = [
    "DEFAULT_URL",
    "Target",
    "add_target_arguments",
    "deprecated_url",
    "normalize_url",
    "running",
    "target",
    "until",
]

DEFAULT_URL = "ws://127.0.0.1:3000/ws/events"


@dataclass(frozen=True)
class Target:
    """A server to talk to: the stream's URL, a token, a TLS context, the connect timeout."""

    url: str
    token: str | None
    ssl: ssl.SSLContext | None
    connect_timeout: float


def add_target_arguments(command: argparse.ArgumentParser, *, url_flag: str = "--url") -> None:
    """Add the options that say which server, and how to authenticate to it."""
    group = command.add_argument_group("server")
    group.add_argument(
        url_flag,
        dest="url",
        metavar="URL",
        help=f"the server: ws[s]://HOST:PORT/ws/events, http[s]://HOST:PORT or HOST:PORT "
        f"(env EVKIT_URL; default {DEFAULT_URL})",
    )
    group.add_argument("--token", help="bearer token (env EVKIT_TOKEN)")
    group.add_argument("--token-file", metavar="PATH", help="read the token from a file")
    group.add_argument("--ca-file", metavar="PATH", help="trust this CA for wss:// (PEM)")
    group.add_argument("--cert", metavar="PATH", help="client certificate (PEM), if asked for")
    group.add_argument("--key", metavar="PATH", help="the client certificate's key (PEM)")
    group.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the server at the start (default 10)",
    )


def target(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Target:
    """The server the parsed ``args`` name (flags first, then the environment).

    Raises:
        ConfigError: a malformed URL, two ways of giving one thing, an unreadable file.
    """
    url = normalize_url(args.url or environ.get("EVKIT_URL") or DEFAULT_URL)
    token = args.token or None
    if args.token and args.token_file:
        raise ConfigError("give --token or --token-file, not both")
    token_file = args.token_file or (None if token else environ.get("EVKIT_TOKEN_FILE"))
    if token_file:
        token = read_secret(token_file, "--token-file")
    token = token or environ.get("EVKIT_TOKEN") or None
    if not args.connect_timeout > 0:
        raise ConfigError(f"--connect-timeout must be positive, got {args.connect_timeout:g}")
    ca_file = args.ca_file or environ.get("EVKIT_CA_FILE") or None
    if args.key and not args.cert:
        raise ConfigError("--key needs --cert")
    try:
        context = client_context(ca_file, url, certfile=args.cert, keyfile=args.key)
    except ValueError as exc:
        raise ConfigError(f"{exc} (--ca-file, --cert, --key)") from None
    return Target(url, token, context, args.connect_timeout)


def normalize_url(text: str) -> str:
    """The stream's WebSocket URL for what a person may type.

    Raises:
        ConfigError: not a URL of a server.
    """
    given = text.strip()
    if "://" not in given:
        given = f"ws://{given}"
    parts = urlsplit(given)
    schemes = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(
            f"{text!r} is not a server URL: give ws://HOST:PORT/ws/events (wss:// with TLS), "
            "http://HOST:PORT or HOST:PORT"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ConfigError(f"{text!r} has a malformed port") from None
    path = parts.path if parts.path not in ("", "/") else EVENTS_PATH
    return urlunsplit(parts._replace(scheme=schemes[parts.scheme], path=path))


@contextlib.asynccontextmanager
async def running(
    client: Subscriber | Publisher, url: str, timeout: float | None
) -> AsyncIterator[asyncio.Future[None]]:
    """Run ``client`` for the block, once it is connected (within ``timeout``, if given);
    the block gets the task running it.

    Raises:
        ConnectError: not connected within ``timeout``.
        ProtocolError: the server refused the connection (refusals are final here).
    """
    task = asyncio.ensure_future(client.run())
    try:
        if timeout is not None and not await client.connection.wait_started(task, timeout):
            error = client.connection.status.last_error or "no answer"
            raise ConnectError(f"{url} did not answer within {timeout:g} s ({error})")
        try:
            yield task
        finally:
            if task.done():
                task.result()  # what ended the client (a refusal) says most: it ends the command
    finally:
        await client.stop()
        await asyncio.wait((task,), timeout=5)
        task.cancel()


async def until(
    done: asyncio.Event,
    running: asyncio.Future[None],
    seconds: float | None = None,
    tick: Callable[[], None] | None = None,
) -> None:
    """Wait until ``done`` is set, ``running`` ended or ``seconds`` passed; call ``tick``
    twice a second."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while not done.is_set() and not running.done():
        remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if remaining <= 0:
            return
        waiter = asyncio.ensure_future(done.wait())
        await asyncio.wait(
            (waiter, running), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if tick is not None:
            tick()


def deprecated_url(args: argparse.Namespace, given: str | None, how: str) -> None:
    """Take a URL given the old way (``how``) into ``args.url``, saying so on stderr."""
    if given is None:
        return
    if args.url is not None and normalize_url(args.url) != normalize_url(given):
        raise ConfigError(f"two servers given: {given} ({how}) and {args.url} (--url)")
    print(f"evkit: {how} is deprecated; use --url {given} (or EVKIT_URL)", file=sys.stderr)
    args.url = given
