"""docs/deployment.md against what the code accepts: its TOML files load, its systemd
unit's command line parses and names real variables, every ``evkit`` line parses, and
its nginx snippet routes the paths evkit serves with timeouts evkit's pings fit in."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from evkit import config
from evkit.cli import _parser
from evkit.protocol import EVENTS_PATH
from evkit.server.settings import ServerSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
TEXT = DOC.read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TEXT, re.DOTALL)


def evkit_argv(line: str) -> list[str] | None:
    words = shlex.split(line.removeprefix("$ "), comments=True)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        words = words[1:]
    if words and (words[0] == "evkit" or words[0].endswith("/evkit")):
        return words[1:]
    return None


def test_the_toml_files_load_as_they_are(tmp_path: Path) -> None:
    files = blocks("toml")
    assert len(files) >= 2
    for number, text in enumerate(files):
        path = tmp_path / f"{number}.toml"
        path.write_text(text)
        resolved = config.resolve({"config": str(path)}, {})
        assert resolved.settings != ServerSettings()


def test_the_systemd_unit_runs_a_command_evkit_accepts(tmp_path: Path) -> None:
    [unit] = blocks("ini")
    entries = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    argv = evkit_argv(entries["ExecStart"])
    assert argv is not None
    assert argv[0] == "serve"
    args = _parser().parse_args(argv)
    assert args.config == "/etc/evkit/evkit.toml"
    # Every variable the unit sets is one evkit reads.
    known = {o.variable for o in config.OPTIONS.values()} | config.OTHER_VARIABLES
    known |= {f"EVKIT_{name.upper()}_FILE" for name in config.FILE_SETTINGS}
    variables = re.findall(r"^Environment=(\w+)=(.*)$", unit, re.MULTILINE)
    assert variables
    assert all(name in known for name, _ in variables)
    # The credential systemd loads is the file the variable names.
    credential = entries["LoadCredential"].split(":")[0]
    assert dict(variables)["EVKIT_TOKEN_FILE"] == f"%d/{credential}"
    # With the credential in place (%d is $CREDENTIALS_DIRECTORY), the settings load.
    (tmp_path / credential).write_text("a-token-from-systemd\n")
    toml = tmp_path / "evkit.toml"
    toml.write_text(blocks("toml")[0])
    environment = {name: value.replace("%d", str(tmp_path)) for name, value in variables}
    resolved = config.resolve({**vars(args), "config": str(toml)}, environment)
    assert resolved.settings.token == "a-token-from-systemd"
    assert entries["TimeoutStopSec"]
    assert int(entries["TimeoutStopSec"]) > 5


@pytest.mark.parametrize(
    "line",
    [
        line
        for block in blocks("sh") + blocks("console")
        for line in block.splitlines()
        if evkit_argv(line) is not None
    ],
)
def test_every_evkit_line_parses(line: str) -> None:
    argv = evkit_argv(line)
    assert argv is not None
    _parser().parse_args(argv)


def test_the_nginx_snippet_fits_what_evkit_serves() -> None:
    [nginx] = blocks("nginx")
    locations = re.findall(r"location (\S+) \{(.*?)\n    \}", nginx, re.DOTALL)
    routes = dict(locations)
    assert set(routes) == {EVENTS_PATH, "/"}
    stream = routes[EVENTS_PATH]
    for directive in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Host $host;",
    ):
        assert directive in stream
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", stream).group(1))  # type: ignore[union-attr]
    ping = ServerSettings().ping_interval
    assert ping is not None
    assert read_timeout > 2 * ping
    # Keep-alive to evkit: HTTP/1.1 and no "Connection: close" passed on.
    assert 'proxy_set_header Connection "";' in routes["/"]
    assert "proxy_http_version 1.1;" in routes["/"]
    # The name nginx passes in Host is one the loopback-bound instance answers.
    server_name = re.search(r"server_name (\S+);", nginx).group(1)  # type: ignore[union-attr]
    toml = blocks("toml")[0]
    assert f'allowed_hosts = ["{server_name}"]' in toml
    assert 'host = "127.0.0.1"' in toml
    assert "server 127.0.0.1:3000;" in nginx
    assert "port = 3000" in toml
