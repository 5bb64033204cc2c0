"""Running the ``evkit`` command in subprocesses, for the tests of the command line.

Every process gets an environment without the caller's ``EVKIT_*`` variables (plus
what the test gives), every wait is bounded, and every process still running is
killed on the way out. :func:`serving` runs ``evkit serve --port 0`` and reads the
URL it prints, so tests never guess a port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import evkit
from evkit.testing import wait_until

TIMEOUT = 30.0
_SERVING = re.compile(r"evkit: serving (wss?://\S+/ws/events)")


def evkit_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``EVKIT_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVKIT_")}
    env.update(extra or {})
    return env


def run_evkit(
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m evkit ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "evkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=evkit_env(env),
        cwd=cwd,
    )


@dataclass
class Running:
    """A running ``evkit`` process; its output lines are collected as they come."""

    process: subprocess.Popen[str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    url: str = ""

    def wait_for(self, pattern: str, stream: str = "stdout", timeout: float = TIMEOUT) -> str:
        """The first line of ``stream`` matching ``pattern`` (a regex), once printed."""
        lines = self.stdout if stream == "stdout" else self.stderr
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in list(lines) if re.search(pattern, line)]
            if not found and self.process.poll() is not None:
                raise AssertionError(
                    f"evkit exited ({self.process.returncode}) before printing {pattern!r}: "
                    f"{''.join(self.stderr)}"
                )
            return bool(found)

        wait_until(seen, f"{pattern!r} on {stream}", timeout)
        return found[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        """Send ``sig`` and return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def _pump(stream: object, into: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.append(line)


@contextlib.contextmanager
def started(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Running]:
    """``python -m evkit ARGS`` in the background for the block; killed after it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "evkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=evkit_env(env),
        cwd=cwd,
    )
    running = Running(process)
    pumps = [
        threading.Thread(target=_pump, args=(process.stdout, running.stdout), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, running.stderr), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
        for pump in pumps:
            pump.join(TIMEOUT)


@contextlib.contextmanager
def serving(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Running]:
    """``evkit serve --port 0 ARGS`` until the block ends; ``url`` is where it listens."""
    with started("serve", "--port", "0", *args, env=env, cwd=cwd) as server:
        line = server.wait_for(_SERVING.pattern)
        match = _SERVING.search(line)
        assert match is not None
        server.url = match.group(1)
        yield server
        assert server.stop() == 0, "".join(server.stderr)


def simulated_store(path: Path, seed: int = 3) -> None:
    """A SQLite store at ``path`` holding a second of simulated services' events."""
    from evkit.simulate import simulate

    with evkit.serve(port=0, store=f"sqlite:///{path}"):
        simulate(seconds=1, rate=20, speed=4, seed=seed)
        evkit.flush()
