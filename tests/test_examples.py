"""The examples against a real broadcaster: the seed's Node client, the Python client,
the shell check and the instrumented service.

Clients run as subprocesses on 127.0.0.1; their output is read line by line on a
thread so every wait is bounded, and every subprocess is killed when its test ends.
The Node client resolves ``ws`` through ``NODE_PATH=tests/node/node_modules``
(``npm install --prefix tests/node --no-audit --no-fund``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest

import evkit
from evkit.testing import free_port
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
STEP_TIMEOUT = 15.0
CLIENT_TIMEOUT = 10  # seconds a client waits for its events: its own report comes first
CLIENT_ID = re.compile(r"ws-\d+-[0-9a-z]{9}")
SEED_PATTERNS = ["claude.*", "repo.commit.created", "performance.*"]

Sample = tuple[str, dict[str, Any]]  # an event type and its payload

SESSION_STARTED: Sample = (
    "claude.session.started",
    {"sessionId": "session-1", "workingDirectory": "/srv"},
)
COMMIT_CREATED: Sample = (
    "repo.commit.created",
    {"path": "/srv/app", "commitHash": "ab12cd34", "message": "fix the build"},
)
SLOW_OPERATION: Sample = (
    "performance.slowOperation.detected",
    {"service": "github", "operation": "github.api", "duration": 61.5, "threshold": 25.0},
)
GITHUB_COMPLETED: Sample = (
    "github.api.completed",
    {
        "endpoint": "/repos/acme/app/pulls",
        "method": "POST",
        "statusCode": 201,
        "duration": 12.5,
        "rateLimitRemaining": 4999,
    },
)
GRAPHQL_COMPLETED: Sample = (
    "graphql.query.completed",
    {"operationName": "RepoStatus", "duration": 3.25},
)


class LineReader:
    """The lines of a subprocess's stream, pumped by a thread so that waits can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _next(self, deadline: float, waiting_for: str) -> str | None:
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no {waiting_for} within {STEP_TIMEOUT:g} s; output:\n{self}")
        if line is None:
            self._ended = True
        else:
            self.lines.append(line)
        return line

    def until(self, predicate: Callable[[str], bool], waiting_for: str) -> list[str]:
        """Lines up to and including the first one ``predicate`` accepts."""
        start = len(self.lines)
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            line = None if self._ended else self._next(deadline, waiting_for)
            if line is None:
                pytest.fail(f"output ended before {waiting_for}; output:\n{self}")
            if predicate(line):
                return self.lines[start:]

    def rest(self) -> list[str]:
        """Every line up to the end of the stream."""
        start = len(self.lines)
        deadline = time.monotonic() + STEP_TIMEOUT
        while not self._ended:
            self._next(deadline, "end of output")
        return self.lines[start:]

    def __str__(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Running:
    process: subprocess.Popen[str]
    stdout: LineReader
    stderr_path: Path

    def wait(self) -> int:
        """The exit status; fails the test when the process is still running after the step timeout."""
        try:
            return self.process.wait(timeout=STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.process.args!r} still running after {STEP_TIMEOUT:g} s:\n{self}")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def __str__(self) -> str:
        return f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@contextlib.contextmanager
def spawn(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Running]:
    """Run ``args`` in its own process group; kill the group on the way out, whatever happened."""
    stderr_path = tmp_path / f"stderr-{Path(args[1]).name}.txt"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    assert process.stdout is not None
    try:
        yield Running(process, LineReader(process.stdout), stderr_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STEP_TIMEOUT)
        process.stdout.close()


def emit_all(events: list[tuple[Sample, str | None]]) -> None:
    for (type_, payload), correlation_id in events:
        evkit.emit(type_, payload, correlation_id=correlation_id)
    evkit.flush()


def with_correlation(payload: dict[str, Any], correlation_id: str) -> dict[str, Any]:
    return {**payload, "correlationId": correlation_id}


# -- the seed's Node client ---------------------------------------------------------------


@pytest.mark.node
def test_seed_client_receives_only_its_requests_events(
    server: evkit.Server, tmp_path: Path
) -> None:
    require_service(
        shutil.which("node") is not None and (NODE_MODULES / "ws").is_dir(),
        "the seed's Node client needs node and the ws package "
        "(npm install --prefix tests/node --no-audit --no-fund)",
    )
    # A connection starts subscribed to "*" and the seed's subscribe only adds its patterns
    # (DESIGN 1, as in the original), so github.api.completed of req-7 reaches it too: the
    # correlation filter is what keeps every other event out.
    expected = [SESSION_STARTED, GITHUB_COMPLETED, COMMIT_CREATED, SLOW_OPERATION]
    args = ["node", str(EXAMPLES / "seed_client.js"), server.url, "req-7", str(len(expected))]
    args.append(str(CLIENT_TIMEOUT * 1000))
    with spawn(args, tmp_path, env={"NODE_PATH": str(NODE_MODULES)}) as client:
        handshake = [
            json.loads(line)
            for line in client.stdout.until(lambda line: '"type":"pong"' in line, "pong")
        ]
        assert [m["type"] for m in handshake] == [
            "websocket.connected",
            "websocket.subscribed",
            "pong",
        ]
        welcome, subscribed, pong = (m["payload"] for m in handshake)
        assert CLIENT_ID.fullmatch(welcome["clientId"]), welcome
        assert welcome["correlationId"] == "req-7"
        assert welcome["subscriptions"] == ["*"]
        assert subscribed == {
            "eventTypes": SEED_PATTERNS,
            "subscriptions": ["*", *SEED_PATTERNS],
            "correlationId": "req-7",
        }
        assert isinstance(pong["echo"]["timestamp"], int)

        # Every event the filter must stop comes before the last one the client waits
        # for, so a leak shows up in what it printed.
        emit_all(
            [
                (SESSION_STARTED, "req-7"),
                (SESSION_STARTED, "req-8"),
                (GITHUB_COMPLETED, "req-7"),
                (COMMIT_CREATED, None),
                (COMMIT_CREATED, "req-7"),
                (SLOW_OPERATION, "req-8"),
                (SLOW_OPERATION, "req-7"),
            ]
        )
        assert client.wait() == 0, str(client)
        received = [json.loads(line) for line in client.stdout.rest()]

    assert [(m["type"], m["payload"]) for m in received] == [
        (type_, with_correlation(payload, "req-7")) for type_, payload in expected
    ]
    ids = [int(m["id"]) for m in received]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(isinstance(m["timestamp"], int) for m in received)


# -- the Python client --------------------------------------------------------------------


def python_client(*args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / "websocket_client.py"), *args]


def without_ids(lines: list[str]) -> list[str]:
    return [re.sub(r" #\d+ ", " #ID ", line) for line in lines]


def test_python_client_prints_the_subscribed_events_of_its_request(
    server: evkit.Server, tmp_path: Path
) -> None:
    args = python_client(
        "--url",
        server.url,
        "--correlation-id",
        "req-7",
        "--count",
        "5",
        "--timeout",
        str(CLIENT_TIMEOUT),
    )
    with spawn(args, tmp_path) as client:
        handshake = client.stdout.until(lambda line: line.startswith("pong "), "pong")
        assert len(handshake) == 3, str(client)
        assert re.fullmatch(
            r'websocket\.connected clientId=ws-\d+-[0-9a-z]{9} correlationId=req-7 subscriptions=\["\*"\]',
            handshake[0],
        )
        assert handshake[1] == (
            'websocket.subscribed subscriptions=["claude.*","repo.commit.created",'
            '"performance.*","github.api.*","graphql.*"] correlationId=req-7'
        )
        assert re.fullmatch(r'pong echo=\{"timestamp":\d+\}', handshake[2])

        emit_all(
            [
                (SESSION_STARTED, "req-7"),
                (("repo.push.completed", {"branch": "main"}), "req-7"),  # not subscribed
                (GITHUB_COMPLETED, "req-7"),
                (SESSION_STARTED, "req-8"),  # another request
                (GRAPHQL_COMPLETED, "req-7"),
                (SLOW_OPERATION, "req-7"),
                (COMMIT_CREATED, "req-7"),
            ]
        )
        assert client.wait() == 0, str(client)
        printed = client.stdout.rest()

    assert without_ids(printed) == [
        "claude.session.started #ID [req-7] sessionId=session-1 workingDirectory=/srv",
        "github.api.completed #ID [req-7] endpoint=/repos/acme/app/pulls method=POST "
        "statusCode=201 duration=12.5ms rateLimitRemaining=4999",
        "graphql.query.completed #ID [req-7] operationName=RepoStatus duration=3.25ms",
        "performance.slowOperation.detected #ID [req-7] service=github operation=github.api "
        "duration=61.5ms threshold=25ms",
        'repo.commit.created #ID [req-7] path=/srv/app commitHash=ab12cd34 message="fix the build"',
    ]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ws://127.0.0.1:{free_port}/ws/events", "is the broadcaster running?"),
        ("ws://127.0.0.1:{server_port}/not/the/stream", "HTTP 404"),
        ("http://127.0.0.1:{server_port}/ws/events", "is not a WebSocket URL"),
    ],
    ids=["refused", "wrong-path", "not-websocket"],
)
def test_python_client_says_why_it_cannot_connect(
    server: evkit.Server, url: str, reason: str
) -> None:
    url = url.format(free_port=free_port(), server_port=server.port)
    result = subprocess.run(
        python_client("--url", url, "--count", "1", "--timeout", "10"),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("cannot connect to the evkit broadcaster: ")
    assert reason in result.stderr


def test_python_client_stops_when_its_subscription_is_rejected(server: evkit.Server) -> None:
    result = subprocess.run(
        python_client("--url", server.url, "--patterns", "repo.*,not a pattern", "--timeout", "10"),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        "the server rejected the subscription: websocket.error code=invalid_pattern: "
    )
    assert "'not a pattern'" in result.stderr


def test_python_client_times_out_without_events(server: evkit.Server) -> None:
    result = subprocess.run(
        python_client("--url", server.url, "--count", "1", "--timeout", "1"),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == "timed out after 1 s: received 0 of 1 events\n"
    assert result.stdout.splitlines()[-1].startswith("pong ")


# -- test_websocket.sh --------------------------------------------------------------------


def shell_check_available() -> None:
    require_service(
        shutil.which("bash") is not None and shutil.which("curl") is not None,
        "examples/test_websocket.sh needs bash and curl",
    )


def test_shell_check_watches_events_of_a_healthy_server(
    server: evkit.Server, tmp_path: Path
) -> None:
    shell_check_available()
    env = {
        "EVKIT_URL": server.http_url,
        "EVKIT_COUNT": "2",
        "EVKIT_TIMEOUT": str(CLIENT_TIMEOUT),
        "PYTHON": sys.executable,
    }
    args = ["bash", str(EXAMPLES / "test_websocket.sh"), "--correlation-id", "req-sh"]
    with spawn(args, tmp_path, env=env) as check:
        before = check.stdout.until(lambda line: line.startswith("pong "), "pong")
        assert before[0] == f"checking {server.http_url}/healthz"
        assert json.loads(before[1].removeprefix("healthy: "))["status"] == "ok"
        emit_all([(SESSION_STARTED, "req-sh"), (COMMIT_CREATED, "req-sh")])
        assert check.wait() == 0, str(check)
        printed = without_ids(check.stdout.rest())

    assert printed == [
        "claude.session.started #ID [req-sh] sessionId=session-1 workingDirectory=/srv",
        'repo.commit.created #ID [req-sh] path=/srv/app commitHash=ab12cd34 message="fix the build"',
    ]


def test_shell_check_fails_clearly_without_a_server() -> None:
    shell_check_available()
    base_url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        ["bash", str(EXAMPLES / "test_websocket.sh")],
        env={**os.environ, "EVKIT_URL": base_url, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    assert f"no evkit broadcaster answers at {base_url}/healthz" in result.stderr
    assert "waiting for" not in result.stdout


# -- the instrumented service -------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> ModuleType:
    path = EXAMPLES / "instrumented_service.py"
    spec = importlib.util.spec_from_file_location("instrumented_service", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_instrumented_request_emits_nested_spans_and_a_slow_operation(
    service: ModuleType,
) -> None:
    events: list[evkit.Event] = []
    evkit.bus.on("*", events.append)
    try:
        commit_hash = asyncio.run(service.handle(3))  # every third request is slow
    finally:
        evkit.bus.off(events.append)

    assert [e.type for e in events] == [
        "gateway.request.started",
        "claude.session.started",
        "repo.commit.started",
        "repo.commit.created",
        "repo.commit.completed",
        "github.api.started",
        "github.api.completed",
        "performance.slowOperation.detected",
        "gateway.request.completed",
    ]
    assert {e.correlation_id for e in events} == {"req-3"}
    by_type = {e.type: e.payload for e in events}

    request = by_type["gateway.request.started"]
    assert request["parentSpanId"] is None
    for operation in ("gateway.request", "repo.commit", "github.api"):
        started, completed = by_type[f"{operation}.started"], by_type[f"{operation}.completed"]
        assert completed["spanId"] == started["spanId"]
        assert completed["parentSpanId"] == started["parentSpanId"]
        assert completed["duration"] >= 0
    assert by_type["repo.commit.started"]["parentSpanId"] == request["spanId"]
    assert by_type["github.api.started"]["parentSpanId"] == request["spanId"]
    assert (
        by_type["gateway.request.completed"]["duration"]
        >= by_type["github.api.completed"]["duration"]
    )

    assert by_type["claude.session.started"] == {
        "sessionId": "session-3",
        "workingDirectory": service.WORKING_DIRECTORY,
        "correlationId": "req-3",
    }
    assert by_type["repo.commit.created"] == {
        "path": service.WORKING_DIRECTORY,
        "commitHash": commit_hash,
        "message": "change 3",
        "correlationId": "req-3",
    }
    github = by_type["github.api.completed"]
    assert github["duration"] > service.SLOW_MS
    assert github["endpoint"] == "/repos/acme/app/pulls"
    assert github["method"] == "POST"
    assert github["statusCode"] == 201
    assert isinstance(github["rateLimitRemaining"], int)
    assert by_type["performance.slowOperation.detected"] == {
        "service": "github",
        "operation": "github.api",
        "duration": github["duration"],
        "threshold": service.SLOW_MS,
        "spanId": github["spanId"],
        "correlationId": "req-3",
    }


def test_instrumented_service_script_serves_and_reports(tmp_path: Path) -> None:
    args = [sys.executable, str(EXAMPLES / "instrumented_service.py")]
    args += ["--port", "0", "--seconds", "0.5", "--interval", "0.05"]
    with spawn(args, tmp_path) as script:
        assert script.wait() == 0, str(script)
        printed = script.stdout.rest()

    assert re.fullmatch(r"streaming events on ws://127\.0\.0\.1:\d+/ws/events", printed[0])
    requests = printed[1:-1]
    assert requests, str(printed)
    for number, line in enumerate(requests, start=1):
        slow = " \\(slow github\\.api\\)" if number % 3 == 0 else ""
        assert re.fullmatch(rf"req-{number}: committed [0-9a-f]{{12}}{slow}", line)
    summary = re.fullmatch(r"handled (\d+) requests, published (\d+) events", printed[-1])
    assert summary is not None, printed[-1]
    handled, published = int(summary[1]), int(summary[2])
    assert handled == len(requests)
    # Eight events per request, and a slow-operation event for at least every third.
    assert published >= 8 * handled + handled // 3
