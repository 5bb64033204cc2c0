"""The command line, run as a person runs it: ``python -m evkit`` in subprocesses
against real servers (started here, or by ``evkit serve`` itself), with and without
auth. Every failure must be one line on stderr with its exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest

import evkit
from evkit.cli.stream import one_line
from evkit.cli.target import normalize_url
from evkit.exceptions import ConfigError
from evkit.testing import wait_until
from tests.cli_support import run_evkit, serving, simulated_store, started

TOKEN = "cli-token-0123456789abcdef0123456789"
UNREACHABLE = "ws://127.0.0.1:9/ws/events"  # the discard port: nothing listens


@pytest.fixture
def auth_server() -> Iterator[evkit.Server]:
    with evkit.serve(port=0, token=TOKEN) as srv:
        yield srv


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [x for x in result.stderr.strip().splitlines() if not x.startswith("listening to")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("evkit: ")
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr


# -- the command itself -------------------------------------------------------------------------


def test_version_is_the_installed_one() -> None:
    result = run_evkit("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"evkit {version('evkit')}")


def test_no_command_prints_the_usage_and_exits_2() -> None:
    result = run_evkit()
    assert result.returncode == 2
    assert "usage: evkit" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["publish", "bad type!", "--url", UNREACHABLE], 2, "is not a dotted name"),
        (["publish", "a.b", "--payload", "[1]", "--url", UNREACHABLE], 2, "must be a JSON object"),
        (["publish", "a.b", "--payload", "{", "--url", UNREACHABLE], 2, "not valid JSON"),
        (["tail", "--url", "ftp://x"], 2, "is not a server URL"),
        (["tail", "--token-file", "/no/such/token"], 2, "--token-file: cannot read"),
        (["serve", "--port", "99999"], 2, "--port: port must be an integer from 0 to 65535"),
        (["serve", "--ssl-certfile", "/no/cert.pem"], 1, "ssl_certfile: '/no/cert.pem'"),
        (["record", "--out", "x.db", "--count", "0"], 2, "--count must be a positive number"),
        (["report", "/no/such.db"], 1, "no recording at /no/such.db"),
        (["report", "x.db", "--top", "0"], 2, "--top must be a positive number"),
    ],
)
def test_usage_and_input_errors_are_one_line(
    args: list[str], code: int, text: str, tmp_path: Path
) -> None:
    assert_one_line_error(run_evkit(*args, cwd=tmp_path), code, text)


@pytest.mark.parametrize("command", ["tail", "publish a.b", "record --out x.db", "report"])
def test_an_unreachable_server_is_exit_1_in_one_line(command: str, tmp_path: Path) -> None:
    args = [*command.split(), "--url", UNREACHABLE, "--connect-timeout", "1", "--seconds", "1"]
    if command.split()[0] not in ("record", "report"):
        args = args[:-2]
    result = run_evkit(*args, cwd=tmp_path)
    assert_one_line_error(result, 1, "ws://127.0.0.1:9/ws/events")
    assert not (tmp_path / "x.db").exists()  # record leaves no empty file behind


def test_a_port_in_use_is_exit_1_in_one_line(server: evkit.Server) -> None:
    result = run_evkit("serve", "--port", str(server.port))
    assert_one_line_error(result, 1, f"port {server.port} on 127.0.0.1 is already in use")


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("127.0.0.1:3001", "ws://127.0.0.1:3001/ws/events"),
        ("http://localhost:3001", "ws://localhost:3001/ws/events"),
        ("https://events.example/", "wss://events.example/ws/events"),
        ("wss://events.example/custom", "wss://events.example/custom"),
        ("ws://[::1]:3000", "ws://[::1]:3000/ws/events"),
    ],
)
def test_a_server_may_be_named_as_a_person_types_it(typed: str, url: str) -> None:
    assert normalize_url(typed) == url


@pytest.mark.parametrize("typed", ["ftp://x", "http://", "x:port"])
def test_what_is_no_server_url_is_refused(typed: str) -> None:
    with pytest.raises(ConfigError):
        normalize_url(typed)


# -- the client commands against a server, with and without auth ----------------------------


@pytest.mark.parametrize("auth", [False, True])
def test_tail_publish_record_replay_and_report_against_one_server(
    auth: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    srv: evkit.Server = request.getfixturevalue("auth_server" if auth else "server")
    env = {"EVKIT_URL": f"127.0.0.1:{srv.port}"}  # one way to name the server for all
    if auth:
        env["EVKIT_TOKEN"] = TOKEN
    recording = tmp_path / "incident.jsonl"
    with (
        started("tail", "--patterns", "cli.*", "--count", "2", "--json", env=env) as tail,
        started("record", "--out", str(recording), "--count", "2", env=env) as record,
    ):
        tail.wait_for("websocket.connected")
        wait_until(lambda: srv.stats()["clients"] == 2, "tail and record connected")
        for n, kind, extra in ((1, "started", {}), (2, "completed", {"duration": 12.5})):
            payload = json.dumps({"n": n, "correlationId": "req-cli", "spanId": "s1", **extra})
            published = run_evkit("publish", f"cli.job.{kind}", "--payload", payload, env=env)
            assert published.returncode == 0, published.stderr
            assert published.stdout.startswith(f"published cli.job.{kind} as id ")
        assert tail.process.wait(30) == 0, "".join(tail.stderr)
        assert record.process.wait(30) == 0, "".join(record.stderr)
    events = [orjson.loads(line) for line in tail.stdout[1:]]
    assert [event["payload"]["n"] for event in events] == [1, 2]
    assert "recorded 2 events" in "".join(record.stdout)
    replayed = run_evkit("replay", str(recording), "--speed", "100", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 2 events" in replayed.stdout
    report = run_evkit("report", str(recording), "--out", str(tmp_path / "charts"))
    assert report.returncode == 0, report.stderr
    assert "cli.job" in report.stdout
    assert "Critical path of req-cli: cli.job 12 ms" in report.stdout


def test_a_server_with_auth_refuses_the_commands_without_its_token(
    auth_server: evkit.Server,
) -> None:
    for command in (["tail"], ["publish", "a.b.c"], ["record", "--out", "x.db"]):
        result = run_evkit(*command, "--url", auth_server.url, "--token", "wrong-token")
        assert_one_line_error(result, 1, "invalid token")
        result = run_evkit(*command, "--url", auth_server.url)
        assert_one_line_error(result, 1, "unauthorized")


def test_tail_shows_one_line_per_message_without_a_correlation_id(server: evkit.Server) -> None:
    with started("tail", "--url", server.url, "--patterns", "repo.*", "--count", "2") as tail:
        tail.wait_for("websocket.connected")
        evkit.emit("repo.commit.created", {"n": 1}, correlation_id="req-7")
        evkit.emit("repo.push.completed", {"n": 2})
        evkit.flush()
        assert tail.process.wait(30) == 0, "".join(tail.stderr)
    first, second = tail.stdout[1:]
    assert "repo.commit.created" in first
    assert "req-7" in first
    assert '{"n":1' in first
    assert "repo.push.completed" in second


def test_one_line_leaves_a_missing_or_null_correlation_id_blank() -> None:
    welcome = {
        "type": "websocket.connected",
        "timestamp": 0,
        "payload": {"clientId": "ws-1", "correlationId": None, "subscriptions": ["*"]},
    }
    line = one_line(welcome)
    assert "websocket.connected" in line
    assert "None" not in line.split('{"clientId"')[0]
    event = {"type": "a.b.c", "timestamp": 0, "id": "7", "payload": {"correlationId": "r-1"}}
    assert " r-1 " in one_line(event)
    assert "      7 a.b.c" in one_line(event)


def test_the_old_way_of_giving_the_url_still_works_and_says_so(server: evkit.Server) -> None:
    with started("tail", server.url, "--count", "1") as tail:
        tail.wait_for("websocket.connected")
        evkit.emit("repo.commit.created", {})
        evkit.flush()
        assert tail.process.wait(30) == 0
    assert "deprecated; use --url" in "".join(tail.stderr)


# -- record -------------------------------------------------------------------------------------


def test_record_draws_its_progress_only_on_a_terminal(server: evkit.Server, tmp_path: Path) -> None:
    piped = run_evkit(
        "record", "--url", server.url, "--out", str(tmp_path / "a.db"), "--seconds", "1"
    )
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr
    assert piped.stderr == ""
    # Through a terminal, the progress line is drawn (on stderr).
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evkit",
            "record",
            "--url",
            server.url,
            "--out",
            str(tmp_path / "b.db"),
            "--seconds",
            "1.5",
        ],
        stdout=subprocess.PIPE,
        stderr=follower,
        env={k: v for k, v in os.environ.items() if not k.startswith("EVKIT_")},
    )
    os.close(follower)
    try:
        assert process.wait(30) == 0
        drawn = b""
        try:
            while chunk := os.read(leader, 4096):
                drawn += chunk
        except OSError:
            pass  # the terminal closed with the process
        assert b"\rrecorded 0 events" in drawn
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
        assert process.stdout is not None
        process.stdout.close()


# -- serve ----------------------------------------------------------------------------------


def test_serve_takes_its_settings_from_a_file_the_environment_and_flags(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = tmp_path / "evkit.toml"
    config.write_text(
        f'history_size = 7\nallowed_origins = ["null"]\ntoken_file = "{token_file}"\n'
        'log_format = "json"\n'
    )
    env = {"EVKIT_CONFIG": str(config), "EVKIT_MAX_SUBSCRIPTIONS": "3"}
    with serving("--history-size", "8", env=env) as server:
        url = server.url
        wrong = run_evkit("tail", "--url", url, "--count", "1", "--token", "nope")
        assert wrong.returncode == 1
        right = run_evkit("publish", "a.b.c", "--url", url, "--token", TOKEN)
        assert right.returncode == 0, right.stderr
        too_many = run_evkit("tail", "--url", url, "--token", TOKEN, "--patterns", "a,b,c,d")
        assert_one_line_error(too_many, 1, "the limit is 3 per client")
    records = [json.loads(line) for line in server.stderr if line.startswith("{")]
    assert records
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any("listening on ws://127.0.0.1:" in r["message"] for r in records)
    assert not any(TOKEN in line for line in server.stderr + server.stdout)


def test_print_config_shows_the_effect_with_secrets_masked(tmp_path: Path) -> None:
    result = run_evkit(
        "serve",
        "--print-config",
        "--token",
        TOKEN,
        "--allowed-origins",
        "null",
        env={"EVKIT_PORT": "4321", "EVKIT_STORE": "redis://u:hunter2@redis:6379/0"},
    )
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout
    assert "hunter2" not in result.stdout
    for line in (
        'token = "***"',
        "port = 4321",
        'allowed_origins = ["null"]',
        'store = "redis://u:***@redis:6379/0"',
    ):
        assert line in result.stdout
    assert "# EVKIT_PORT" in result.stdout
    assert "# --allowed-origins" in result.stdout


def test_serve_stops_cleanly_on_sigterm_and_ctrl_c() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with started("serve", "--port", "0") as server:
            server.wait_for("evkit: serving")
            assert server.stop(sig) == 0


def test_serve_logs_at_the_level_asked(tmp_path: Path) -> None:
    with serving("--log-level", "warning") as server:
        run_evkit("publish", "a.b.c", "--url", server.url)
    assert not any("listening" in line for line in server.stderr)


# -- demo and report ----------------------------------------------------------------------------


def test_demo_prints_the_bottleneck_report_and_writes_the_charts(tmp_path: Path) -> None:
    result = run_evkit("demo", "--seconds", "2", "--out", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("Top operations by impact", "p99 ms", "Slowest requests", "Critical path of req-"):
        assert text in out
    for operation in ("github.api", "graphql.query", "claude.session"):
        assert operation in out
    assert "0 dropped" in out
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "latency-by-correlation.png" in pngs
    assert any(name.startswith("waterfall-req-") for name in pngs)
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("form", ["path", "sqlite url", "jsonl"])
def test_report_of_a_store_or_a_recording(form: str, tmp_path: Path) -> None:
    store = tmp_path / "events.db"
    simulated_store(store)
    source = {"path": str(store), "sqlite url": f"sqlite:///{store}"}.get(form, "")
    if form == "jsonl":
        source = str(tmp_path / "events.jsonl")
        lines = [orjson.dumps(e).decode() for e in evkit.recording.read_events(store)]
        Path(source).write_text("\n".join(lines))
    result = run_evkit("report", source, "--out", str(tmp_path / "charts"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Top operations by impact" in result.stdout
    assert "Critical path of req-" in result.stdout
    assert (tmp_path / "charts" / "latency-by-correlation.png").exists()
    frame = evkit.load(f"sqlite:///{store}")
    assert f"{len(frame):,} events from" in result.stdout


def test_report_of_a_live_server_for_some_seconds(server: evkit.Server, tmp_path: Path) -> None:
    from evkit.simulate import Simulation

    simulation = Simulation(seed=5, rate=20).start()
    try:
        result = run_evkit(
            "report", server.http_url, "--seconds", "2", "--out", str(tmp_path), timeout=120
        )
    finally:
        simulation.stop()
    assert result.returncode == 0, result.stderr
    assert f"listening to {server.url} for 2 s" in result.stderr
    assert "Top operations by impact" in result.stdout


def test_the_library_version_and_its_silent_logger() -> None:
    import logging

    assert evkit.__version__ == version("evkit")
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("evkit").handlers)
