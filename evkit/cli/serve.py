"""``evkit serve``: a broadcaster until interrupted, configured without writing Python.

Every setting comes from a flag, the environment or a TOML file (:mod:`evkit.config`);
``--print-config`` shows the result with credentials masked and exits. Logs go to
stderr as text lines or, with ``--log-format json``, one JSON object a line; what
evkit logs never shows a credential. ``SIGTERM`` and Ctrl-C stop it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import signal
import sys
import threading
from typing import Any

import orjson

from evkit import config

__all__ = ["JsonLines", "add_parser"]


def add_parser(commands: Any) -> None:
    """Add ``serve`` to the subcommands."""
    serve = commands.add_parser(
        "serve",
        help="run a broadcaster until interrupted",
        description="Run a broadcaster until interrupted. Every setting is a flag, an "
        "environment variable EVKIT_<NAME> and a key of the --config TOML file; a flag "
        "wins over the environment, which wins over the file.",
    )
    serve.add_argument(
        "--print-config", action="store_true", help="show the settings in effect and exit"
    )
    demo = serve.add_argument_group("simulated services")
    demo.add_argument("--simulate", action="store_true", help="run the simulated services too")
    demo.add_argument("--rate", type=float, default=10.0, help="simulated requests per second")
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated services")
    config.add_arguments(serve)
    serve.set_defaults(run=_serve)


class JsonLines(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document).decode()


def _configure_logging(level: str, form: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _serve(args: argparse.Namespace) -> int:
    import evkit
    from evkit.simulate import Simulation

    resolved = config.resolve(vars(args), os.environ)
    if args.print_config:
        print(config.render(resolved))
        return 0
    _configure_logging(resolved.log_level, resolved.log_format)
    log = logging.getLogger("evkit.cli")
    for warning in resolved.warnings:
        log.warning("%s", warning)
    stop = threading.Event()
    # Both signals only ask the loop below to stop, from before serving on: a signal
    # that lands anywhere (starting, printing) is never a KeyboardInterrupt mid-call.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    settings = resolved.settings
    options = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    server = evkit.serve(**options)
    print(
        f"evkit: serving {server.url} (dashboard {server.http_url}/, health "
        f"{server.http_url}/healthz); Ctrl-C stops",
        flush=True,
    )
    simulation = None
    if args.simulate:
        simulation = Simulation(seed=args.seed, rate=args.rate).start()
        print(f"evkit: simulated services running at {args.rate:g} requests/s", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        if simulation is not None:
            simulation.stop()
        server.stop()
    return 0
