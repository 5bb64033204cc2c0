"""Real processes for the Redis backplane tests: a redis-server, evkit instances, a TCP relay.

:class:`RedisServer` runs the Debian ``redis-server`` binary on a free 127.0.0.1 port in
a directory of its own, with or without persistence, and can be stopped (SIGKILL, or
``SHUTDOWN``) and started again on the same port and directory. :class:`Instance` runs
``python -m evkit serve`` against it in a child process. :class:`Relay` stands in for a
load balancer: it forwards each new TCP connection to whichever instance it currently
points at, so a client with one URL can be moved from one instance to another.

Every wait here has a deadline; a failure says what was awaited and shows the child's
output. Nothing here sleeps to synchronise: readiness is a PING answered, a line
printed, a socket accepting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

import orjson

__all__ = [
    "REDIS_MISSING",
    "Instance",
    "RedisServer",
    "Relay",
    "closed_port",
    "get_json",
    "get_text",
    "post_events",
    "redis_available",
    "wait_for",
]

REDIS_SERVER = "redis-server"
REDIS_MISSING = "redis-server not found: apt-get install redis-server"
TIMEOUT = 20.0


def redis_available() -> bool:
    """Whether a ``redis-server`` binary is on PATH."""
    return shutil.which(REDIS_SERVER) is not None


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` every 5 ms until it holds.

    Raises:
        TimeoutError: it did not hold within ``timeout`` seconds (the message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(0.005)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _listen_port() -> int:
    """A free port *below* the kernel's ephemeral range.

    A server that restarts on its port must find it free: a port from the ephemeral range
    may meanwhile have become the local end of some client connection.
    """
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(max(1025, low - 12_000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("found no free port below the ephemeral range")


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connections to it are refused)."""
    return _listen_port()


def _ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server on ``port`` answers PING (RESP, by hand: no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` of this test alone; use it as a context manager.

    ``persistence=True`` turns on the append-only file with ``appendfsync always``: every
    write is on disk before it is acknowledged, so even SIGKILL loses nothing. With
    ``persistence=False`` nothing is ever written (``--save ""``, no AOF): a restart comes
    back empty.
    """

    def __init__(self, directory: Path, *, persistence: bool = True) -> None:
        self.directory = directory
        self.persistence = persistence
        self.port = _listen_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def start(self, timeout: float = TIMEOUT) -> Self:
        """Start (again) on the same port and directory; return once it answers PING.

        Raises:
            RuntimeError: it exited or did not answer in time (with its log).
        """
        assert not self.running, "already running"
        for attempt in range(3):
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.directory),
                    "--save",
                    "",
                    "--appendonly",
                    "yes" if self.persistence else "no",
                    "--appendfsync",
                    "always",
                    "--logfile",
                    str(self.log_path),
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                if _ping(self.port):
                    self.starts += 1
                    return self
                time.sleep(0.01)
            else:
                self.stop(kill=True)
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{timeout:g} s; log:\n{self.log()}"
                )
            if self.starts == 0 and attempt < 2 and "Address already in use" in self.log():
                self.port = _listen_port()  # lost a race for a fresh port: take another
                continue
            break
        raise RuntimeError(
            f"redis-server on port {self.port} exited with {self.process.returncode}; "
            f"log:\n{self.log()}"
        )

    def stop(self, *, kill: bool = False, timeout: float = TIMEOUT) -> None:
        """Stop the server: SIGKILL (``kill``), or ``SHUTDOWN`` (``NOSAVE`` without persistence).

        With persistence on, neither loses an acknowledged write (``appendfsync always``).
        """
        process = self.process
        if process is None or process.poll() is not None:
            self.process = None
            return
        if not kill:
            command = b"SHUTDOWN\r\n" if self.persistence else b"SHUTDOWN NOSAVE\r\n"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.sendall(command)
                    sock.recv(64)  # the server closes the connection as it exits
            except OSError:
                kill = True
        if kill:
            process.send_signal(signal.SIGKILL)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        self.process = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def client(self) -> Any:
        """A synchronous redis-py client (``decode_responses=False``); close it after use."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(kill=True)


SERVING = re.compile(r"serving (wss?://\S+) \(dashboard \S+, health (https?://\S+)/healthz\)")


class Instance:
    """``python -m evkit serve --port 0 --store URL --stream KEY`` in a child process.

    :meth:`start` waits for the "serving" line and reads the URLs from it. Stdout goes
    to a reader thread, stderr (the server's log) to a file; both are in :meth:`output`
    and in every failure message.
    """

    def __init__(
        self,
        store: str,
        directory: Path,
        *,
        stream: str = "evkit:events",
        maxlen: int | None = None,
        name: str = "instance",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.stream = stream
        self.maxlen = maxlen
        self.name = name
        self.extra = extra
        self.directory = directory
        self.stderr_path = directory / f"{name}.stderr"
        self.stdout_lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.http_url = ""
        self.returncode: int | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def port(self) -> int:
        return int(self.http_url.rsplit(":", 1)[1])

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "evkit", "serve", "--port", "0", "--store", self.store]
        args += ["--stream", self.stream]
        if self.maxlen is not None:
            args += ["--maxlen", str(self.maxlen)]
        return [*args, *self.extra]

    def start(self, timeout: float = TIMEOUT) -> Self:
        """Start the child; return once it printed the URL it serves.

        Raises:
            RuntimeError: it exited or printed nothing in time (with its output).
        """
        self.launch()
        return self.wait_serving(timeout)

    def launch(self) -> None:
        """Start the child and return at once (then :meth:`wait_serving`)."""
        assert self.process is None, "already started"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        environment.pop("EVKIT_TOKEN", None)
        stderr = self.stderr_path.open("ab")
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                env=environment,
            )
        finally:
            stderr.close()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def wait_serving(self, timeout: float = TIMEOUT) -> Self:
        """Wait for the "serving" line and read the URLs from it.

        Raises:
            RuntimeError: the child exited or printed nothing in time (with its output).
        """
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(
                    f"{self.name} printed no URL within {timeout:g} s\n{self.output()}"
                ) from None
            if line is None:
                self.process.wait(5)
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before serving\n"
                    f"{self.output()}"
                )
            match = SERVING.search(line)
            if match:
                self.url, self.http_url = match.group(1), match.group(2)
                return self

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def output(self) -> str:
        try:
            stderr = self.stderr_path.read_text(errors="replace")[-6000:]
        except OSError:
            stderr = ""
        stdout = "\n".join(self.stdout_lines[-50:])
        return f"--- {self.name} stdout ---\n{stdout}\n--- {self.name} stderr ---\n{stderr}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` s; the exit code."""
        process = self.process
        if process is None:
            return self.returncode if self.returncode is not None else 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self.returncode = process.returncode
        if process.stdout is not None:
            process.stdout.close()
        self.process = None
        return self.returncode

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
        self.stop(timeout=5)


# -- HTTP ----------------------------------------------------------------------------------------


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url``: the status and the decoded JSON body (error statuses included)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read() or b"null")


def get_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text: str = response.read().decode()
        return text


def post_events(http_url: str, events: Any, timeout: float = 10.0) -> tuple[int, Any]:
    """``POST /events`` with one event or a list; the status and the decoded answer."""
    request = urllib.request.Request(
        f"{http_url}/events",
        data=orjson.dumps(events),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read() or b"null")


# -- a load balancer stand-in -------------------------------------------------------------------


class Relay:
    """A TCP relay on 127.0.0.1 that sends each new connection to the current ``backend``.

    Like a load balancer without sticky sessions: connections already open stay with
    their instance; the next one goes wherever ``backend`` (a port) points now. A
    connection whose backend refuses is closed at once (the client sees it fail and
    retries). Runs its own event loop on a daemon thread; :meth:`close` stops it.
    """

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._thread.start()
        self._server: asyncio.Server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, "127.0.0.1", 0), self._loop
        ).result(TIMEOUT)
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/events"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.backend
            )
        except OSError:
            writer.close()
            return
        self.connections += 1

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            current = asyncio.current_task()
            tasks = [task for task in asyncio.all_tasks() if task is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
