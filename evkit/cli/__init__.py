"""The ``evkit`` command: ``serve``, ``demo``, ``report``, ``tail``, ``publish``,
``record``, ``replay``.

Each subcommand is a thin layer over the public API, in a module of this package:
:mod:`~evkit.cli.serve` (the broadcaster, its settings from :mod:`evkit.config`),
:mod:`~evkit.cli.report` (``demo`` and ``report``: the bottleneck report),
:mod:`~evkit.cli.stream` (``tail``, ``publish``, ``record``, ``replay``), and
:mod:`~evkit.cli.target` (how every client command is told which server: ``--url`` or
``EVKIT_URL``, credentials, TLS).

Exit codes: 0 for success, 1 for a failure the message explains (a server that cannot
be reached, a refusal, a port in use), 2 for a usage or configuration error, 130 when
interrupted. An error is one line on stderr, ``evkit: ...``, never a traceback
(``EVKIT_DEBUG=1`` shows it). This package must hold no logic the API lacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from evkit.exceptions import ConfigError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("EVKIT_DEBUG") == "1":
            raise
        print(f"evkit: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def _one_line(exc: BaseException) -> str:
    from evkit.exceptions import EvkitError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, EvkitError | OSError | ValueError | TimeoutError):
        return text
    return f"unexpected {type(exc).__name__}: {text} (EVKIT_DEBUG=1 shows the traceback)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("evkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    from evkit.cli import report, serve, stream

    parser = argparse.ArgumentParser(
        prog="evkit",
        description="Stream events over WebSocket, collect them, find bottlenecks.",
        epilog="Exit codes: 0 success, 1 failure, 2 usage or configuration error. "
        "Client commands find the server with --url or $EVKIT_URL.",
    )
    parser.add_argument("--version", action="version", version=f"evkit {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.add_parser(commands)
    report.add_parsers(commands)
    stream.add_parsers(commands)
    return parser
