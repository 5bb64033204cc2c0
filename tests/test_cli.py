"""The command line: `evkit demo` (the main job), `evkit tail`, and usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import evkit


def evkit_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evkit", *args], capture_output=True, text=True, timeout=timeout
    )


def start_tail(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "evkit", "tail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_demo_prints_the_bottleneck_report_and_writes_the_charts(tmp_path: Path) -> None:
    result = evkit_command("demo", "--seconds", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Top operations by impact" in out
    for operation in ("github.api", "graphql.query", "claude.session"):
        assert operation in out
    assert "p99 ms" in out
    assert "Slowest requests" in out
    assert "Critical path of req-" in out
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "latency-by-correlation.png" in pngs
    assert any(name.startswith("waterfall-req-") for name in pngs)
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0 dropped" in out


def test_tail_prints_events_then_exits_after_count(server: evkit.Server) -> None:
    process = start_tail(server.url, "--patterns", "repo.*", "--count", "2", "--json")
    try:
        assert process.stdout is not None
        welcome = process.stdout.readline()  # connected: the subscription is in place
        assert '"websocket.connected"' in welcome
        evkit.emit("claude.session.started", {"n": 0})
        evkit.emit("repo.commit.created", {"n": 1})
        evkit.emit("repo.push.completed", {"n": 2})
        evkit.flush()
        out, _ = process.communicate(timeout=20)
        lines = out.strip().splitlines()
        assert [('"repo.commit.created"' in lines[0]), ('"repo.push.completed"' in lines[1])] == [
            True,
            True,
        ]
        assert process.returncode == 0
    finally:
        process.kill()


def test_tail_prints_one_line_per_message_without_a_correlation_id(server: evkit.Server) -> None:
    # The welcome carries correlationId null: it once crashed the line formatter.
    process = start_tail(server.url, "--patterns", "repo.*", "--count", "2")
    try:
        assert process.stdout is not None
        welcome = process.stdout.readline()
        assert "websocket.connected" in welcome, process.stderr and process.stderr.read()
        evkit.emit("repo.commit.created", {"n": 1}, correlation_id="req-7")
        evkit.emit("repo.push.completed", {"n": 2})
        evkit.flush()
        out, err = process.communicate(timeout=20)
        assert process.returncode == 0, err
        assert "Traceback" not in err
        first, second = out.strip().splitlines()
        assert "repo.commit.created" in first
        assert "req-7" in first
        assert '{"n":1' in first
        assert "repo.push.completed" in second
    finally:
        process.kill()


def test_one_line_leaves_a_missing_or_null_correlation_id_blank() -> None:
    from evkit.cli import _one_line

    welcome = {
        "type": "websocket.connected",
        "timestamp": 0,
        "payload": {"clientId": "ws-1", "correlationId": None, "subscriptions": ["*"]},
    }
    line = _one_line(welcome)
    assert "websocket.connected" in line
    assert "None" not in line.split('{"clientId"')[0]
    event = {"type": "a.b.c", "timestamp": 0, "id": "7", "payload": {"correlationId": "r-1"}}
    assert " r-1 " in _one_line(event)
    assert "      7 a.b.c" in _one_line(event)


def test_tail_without_a_server_says_so_in_one_line() -> None:
    # The discard port: nothing listens. The first connection has a deadline (10 s).
    result = evkit_command("tail", "ws://127.0.0.1:9/ws/events", timeout=30)
    assert result.returncode == 1
    assert "evkit: ws://127.0.0.1:9/ws/events did not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_are_one_line_messages() -> None:
    result = evkit_command("publish", "bad type!", "--url", "ws://127.0.0.1:9/ws/events")
    assert result.returncode == 1
    assert "evkit:" in result.stderr
    assert "Traceback" not in result.stderr
    assert evkit_command().returncode == 2
