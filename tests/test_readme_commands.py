"""Every ``evkit ...`` line of the README's shell blocks, run as a person would run it.

Each line is a test of its own. It runs in a folder holding a recording
(``incident.db``, ``incident.jsonl``) and a store (``events.db``) of simulated events, a
settings file (``evkit.toml``) and a token file (``token.txt``), against a
broadcaster of this test (``EVKIT_URL`` names it; the README's ``127.0.0.1:3000`` is
rewritten to it), with simulated services running. Only what cannot run here as
written is rewritten: ports (``--port 0``), Redis addresses (a ``redis-server`` of the
test), and durations (``--seconds 1``). Commands that run until stopped (``serve``,
``tail``) are stopped once they show they work.
"""

from __future__ import annotations

import re
import shlex
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import evkit
from evkit.simulate import Simulation
from tests.cli_support import run_evkit, simulated_store, started

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"```(?:sh|bash|console|shell)\n(.*?)```", re.DOTALL)


def readme_commands() -> list[str]:
    """The ``evkit`` lines of the README's shell blocks, comments dropped."""
    lines = []
    for block in _BLOCK.findall(README.read_text(encoding="utf-8")):
        for line in block.splitlines():
            words = shlex.split(line.removeprefix("$ "), comments=True)
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                words = words[1:]  # VAR=value before the command: the test sets its own
            if words[:1] == ["evkit"] or words[:3] == ["python", "-m", "evkit"]:
                lines.append(shlex.join(words[words.index("evkit") + 1 :]))
    return lines


def test_the_readme_shows_every_command() -> None:
    shown = {shlex.split(line)[0] for line in readme_commands()}
    assert shown >= {"serve", "demo", "tail", "publish", "record", "replay", "report"}


def rewritten(line: str, url: str, redis_url: str | None) -> list[str]:
    line = re.sub(r"(?:127\.0\.0\.1|localhost):3000", url.split("//")[1].split("/")[0], line)
    if redis_url is not None:
        line = re.sub(r"redis://[^/\s]+/", redis_url.rsplit("/", 1)[0] + "/", line)
    words = shlex.split(line)
    if words[0] == "serve":
        if "--port" in words:
            words[words.index("--port") + 1] = "0"
        else:
            words += ["--port", "0"]
    if "--seconds" in words:
        words[words.index("--seconds") + 1] = "1"
    return words


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A folder with a recording and a store of simulated events."""
    from evkit.recording import RecordingWriter, read_events

    simulated_store(tmp_path / "events.db", seed=11)
    (tmp_path / "evkit.toml").write_text('history_size = 50000\nlog_format = "json"\n')
    (tmp_path / "token.txt").write_text("readme-token-0123456789abcdef\n")
    for name in ("incident.db", "incident.jsonl"):
        with RecordingWriter(tmp_path / name) as writer:
            for event in read_events(tmp_path / "events.db"):
                writer.write(event)
    return tmp_path


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command(line: str, workspace: Path, request: pytest.FixtureRequest) -> None:
    redis_url = None
    if "redis://" in line:
        redis_url = request.getfixturevalue("redis_server").url
    server = evkit.serve(port=0)
    simulation = Simulation(seed=3, rate=10).start()
    env = {"EVKIT_URL": server.url}
    try:
        words = rewritten(line, server.url, redis_url)
        command = words[0]
        if command in ("serve", "tail") and "--print-config" not in words:
            ready = "evkit: serving" if command == "serve" else "websocket.connected"
            with started(*words, env=env, cwd=workspace) as running:
                running.wait_for(ready)
                code = running.stop(signal.SIGTERM if command == "serve" else signal.SIGINT)
                assert code in (0, 130), "".join(running.stderr)
        else:
            result = run_evkit(*words, env=env, cwd=workspace, timeout=120)
            assert result.returncode == 0, (words, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr
    finally:
        simulation.stop()
        server.stop()
