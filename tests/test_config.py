"""evkit.config with plain values: every setting from flags, the environment and a TOML
file, the precedence between them, and one clear error per mistake."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from evkit import config
from evkit.exceptions import ConfigError, EvkitError
from evkit.server.settings import ServerSettings

FIELDS = [f.name for f in dataclasses.fields(ServerSettings)]


def parser() -> argparse.ArgumentParser:
    command = argparse.ArgumentParser(exit_on_error=False)
    config.add_arguments(command)
    return command


def resolve(
    argv: list[str] = (),  # type: ignore[assignment]
    env: dict[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
) -> config.Resolved:
    flags = vars(parser().parse_args(list(argv)))
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "evkit.toml"
        path.write_text(toml)
        flags["config"] = str(path)
    return config.resolve(flags, env or {})


def error(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        resolve(*args, **kwargs)
    return str(info.value)


# A value for every field that differs from its default, as a flag, a variable and TOML.
SAMPLES: dict[str, tuple[str, Any]] = {
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("4000", 4000),
    "max_message_size": ("1000", 1000),
    "max_subscriptions": ("5", 5),
    "queue_size": ("7", 7),
    "history_size": ("1_000", 1000),
    "history_bytes": ("2048", 2048),
    "client_buffer_limit": ("4096", 4096),
    "compression": ("true", True),
    "ping_interval": ("none", None),
    "store": ("sqlite:///x.db", "sqlite:///x.db"),
    "stream": ("s", "s"),
    "maxlen": ("9", 9),
    "token": ("t0ken", "t0ken"),
    "jwt_secret": ("", None),  # set below through jwt_* checks
    "jwt_public_key": ("", None),
    "jwt_jwks_url": ("https://idp.example/jwks", "https://idp.example/jwks"),
    "jwt_audience": ("a,b", ("a", "b")),
    "jwt_issuer": ("https://idp.example/", "https://idp.example/"),
    "jwt_algorithms": ("RS256,ES256", ("RS256", "ES256")),
    "jwt_leeway": ("30", 30.0),
    "auth_timeout": ("2.5", 2.5),
    "allowed_origins": ("null,https://app.example", ("null", "https://app.example")),
    "loopback_origins": ("false", False),
    "allow_missing_origin": ("false", False),
    "allowed_hosts": ("events.example", ("events.example",)),
    "allow_publish": ("false", False),
    "max_connections": ("11", 11),
    "max_authenticating": ("12", 12),
    "max_connections_per_ip": ("13", 13),
    "connections_per_second_per_ip": ("14.5", 14.5),
    "messages_per_second": ("15", 15.0),
    "message_burst": ("16", 16),
    "rate_limit_strikes": ("17", 17),
    "redact_keys": ("ssn,*card", ("ssn", "*card")),
    "redact_defaults": ("false", False),
    "max_post_size": ("18", 18),
    "public_metrics": ("true", True),
    "ssl_certfile": ("cert.pem", "cert.pem"),
    "ssl_keyfile": ("key.pem", "key.pem"),
    "ssl_ca_certs": ("ca.pem", "ca.pem"),
}
# The JWT secret and public key exclude the JWKS URL: tested on their own below.
SET = {k: v for k, v in SAMPLES.items() if k not in ("jwt_secret", "jwt_public_key")}


def test_every_setting_has_a_sample_and_a_help_line() -> None:
    assert set(SAMPLES) == set(FIELDS)
    assert set(config.OPTIONS) == {*FIELDS, "log_level", "log_format"}
    for option in config.OPTIONS.values():
        assert option.help, option.name
        assert option.flag == "--" + option.name.replace("_", "-")
        assert option.variable == "EVKIT_" + option.name.upper()


def flag_argv(samples: dict[str, tuple[str, Any]]) -> list[str]:
    argv = []
    for name, (text, _) in samples.items():
        option = config.OPTIONS[name]
        if option.kind == "bool":
            argv.append(option.flag if text == "true" else "--no-" + option.flag[2:])
        else:
            argv += [option.flag, text]
    return argv


def toml_text(samples: dict[str, tuple[str, Any]]) -> str:
    lines = []
    for name, (text, value) in samples.items():
        if value is None:
            lines.append(f'{name} = "{text}"')
        elif isinstance(value, bool):
            lines.append(f"{name} = {str(value).lower()}")
        elif isinstance(value, int | float):
            lines.append(f"{name} = {value!r}")
        elif isinstance(value, tuple):
            lines.append(
                f"{name} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]"
            )
        else:
            lines.append(f'{name} = "{value}"')
    return "\n".join(lines)


@pytest.mark.parametrize("source", ["flags", "environment", "file"])
def test_every_setting_is_reachable_from_each_source(source: str, tmp_path: Path) -> None:
    if source == "flags":
        resolved = resolve(flag_argv(SET))
    elif source == "environment":
        resolved = resolve(env={f"EVKIT_{name.upper()}": text for name, (text, _) in SET.items()})
    else:
        resolved = resolve(toml=toml_text(SET), tmp_path=tmp_path)
    for name, (_, value) in SET.items():
        assert getattr(resolved.settings, name) == value, name
        assert resolved.sources[name] != "default", name


def test_the_secret_and_the_public_key_from_each_source(tmp_path: Path) -> None:
    assert resolve(["--jwt-secret", "s" * 32]).settings.jwt_secret == "s" * 32
    assert resolve(env={"EVKIT_JWT_PUBLIC_KEY": "PEM"}).settings.jwt_public_key == "PEM"
    assert resolve(toml='jwt_secret = "x"', tmp_path=tmp_path).settings.jwt_secret == "x"


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path: Path) -> None:
    toml = 'port = 1001\nhistory_size = 1002\nstream = "from-file"\n'
    env = {"EVKIT_PORT": "2001", "EVKIT_HISTORY_SIZE": "2002"}
    resolved = resolve(["--port", "3001"], env, toml, tmp_path)
    settings = resolved.settings
    assert (settings.port, settings.history_size, settings.stream) == (3001, 2002, "from-file")
    assert settings.maxlen == ServerSettings().maxlen
    path = str(tmp_path / "evkit.toml")
    assert resolved.sources["port"] == "--port"
    assert resolved.sources["history_size"] == "EVKIT_HISTORY_SIZE"
    assert resolved.sources["stream"] == f"{path}: stream"
    assert resolved.sources["maxlen"] == "default"


def test_list_flags_repeat_and_split_on_commas() -> None:
    resolved = resolve(["--allowed-origins", "null", "--allowed-origins", " a , b,,"])
    assert resolved.settings.allowed_origins == ("null", "a", "b")
    assert resolve(env={"EVKIT_ALLOWED_ORIGINS": ""}).settings.allowed_origins == ()
    assert resolve(["--history", "5"]).settings.history_size == 5  # the former flag


def test_the_config_file_comes_from_the_environment_too(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text("port = 1234\n")
    assert resolve(env={"EVKIT_CONFIG": str(path)}).settings.port == 1234


def test_credentials_are_read_from_files_at_every_level(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    assert resolve(["--token-file", str(secret)]).settings.token == "from-a-file"
    resolved = resolve(env={"EVKIT_TOKEN_FILE": str(secret)})
    assert resolved.settings.token == "from-a-file"
    assert resolved.sources["token"] == "EVKIT_TOKEN_FILE"
    toml = f'jwt_secret_file = "{secret}"\n'
    assert resolve(toml=toml, tmp_path=tmp_path).settings.jwt_secret == "from-a-file"
    # A file given as a flag beats the variable.
    env = {"EVKIT_TOKEN": "from-env"}
    assert resolve(["--token-file", str(secret)], env).settings.token == "from-a-file"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "abc"], {}, "--port: 'abc' is not an integer"),
        ([], {"EVKIT_PORT": "70000"}, "EVKIT_PORT: port must be an integer from 0 to 65535"),
        ([], {"EVKIT_COMPRESSION": "maybe"}, "EVKIT_COMPRESSION: 'maybe' is not true or false"),
        (["--ping-interval", "soon"], {}, "--ping-interval: 'soon' is not a number or none"),
        (["--queue-size", "0"], {}, "--queue-size: queue_size must be a positive integer"),
        (["--log-level", "loud"], {}, "--log-level: 'loud' is not one of debug, info"),
        (["--token", "a", "--token-file", "b"], {}, "give --token or --token-file, not both"),
        (["--token-file", "/no/such/file"], {}, "--token-file: cannot read '/no/such/file'"),
        (
            ["--jwt-issuer", "x"],
            {},
            "jwt_issuer has no effect without a JWT key: set jwt_secret, jwt_public_key or "
            "jwt_jwks_url (jwt_issuer from --jwt-issuer)",
        ),
        (
            ["--jwt-secret", "s", "--jwt-algorithms", "RS256"],
            {},
            "jwt_algorithms ['RS256'] cannot be used with a shared secret",
        ),
        (["--ssl-keyfile", "k.pem"], {}, "ssl_keyfile needs ssl_certfile"),
    ],
)
def test_a_bad_value_is_one_error_naming_its_source(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    assert message in error(argv, env)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("prot = 3000", "unknown setting 'prot'; did you mean 'port'?"),
        ("history-size = 5", "unknown setting 'history-size'; did you mean 'history_size'?"),
        ("colour = 1", "unknown setting 'colour'"),
        ("port = ?", "is not valid TOML: Invalid value (at line 1, column 8)"),
        ("[server]\nport = 1", "[server] tables are not read: settings are top-level keys"),
        ('port = "3000x"', "port: '3000x' is not an integer"),
        ("allowed_origins = [1, 2]", "allowed_origins: must be a list of strings"),
        ("compression = 1", "compression: must be true or false, got 1"),
        ("port = true", "port: must be an integer, got True"),
        ('token = "a"\ntoken_file = "b"', "token or"),
    ],
)
def test_a_bad_file_is_one_error_naming_the_key(toml: str, message: str, tmp_path: Path) -> None:
    assert message in error(toml=toml, tmp_path=tmp_path)


def test_a_missing_config_file_is_named() -> None:
    message = error(env={"EVKIT_CONFIG": "/no/such/evkit.toml"})
    assert message == "config file '/no/such/evkit.toml' does not exist"


def test_config_errors_are_value_errors_of_evkit() -> None:
    assert issubclass(ConfigError, EvkitError)
    assert issubclass(ConfigError, ValueError)


def test_a_misspelt_variable_is_a_warning_and_others_are_ignored() -> None:
    resolved = resolve(env={"EVKIT_TOKNE": "x", "EVKIT_REQUIRE_SERVICES": "1", "EVKIT_FOO": "1"})
    assert resolved.warnings == (
        "EVKIT_TOKNE is not a setting and is ignored; did you mean 'EVKIT_TOKEN'?",
    )


def test_render_is_toml_that_reads_back_with_credentials_masked(tmp_path: Path) -> None:
    resolved = resolve(
        ["--token", "s3cret-token", "--store", "redis://user:hunter2@redis:6379/0"],
        {"EVKIT_ALLOWED_ORIGINS": "null", "EVKIT_LOG_FORMAT": "json"},
    )
    text = config.render(resolved)
    assert "s3cret" not in text
    assert "hunter2" not in text
    document = tomllib.loads(text)
    assert document["token"] == "***"
    assert document["store"] == "redis://user:***@redis:6379/0"
    assert document["allowed_origins"] == ["null"]
    assert document["log_format"] == "json"
    assert document["ping_interval"] == 20.0
    assert "jwt_secret" not in document  # not set: a comment
    assert 'token = "***"' in text
    assert "# --token" in text
    # What it prints (masked credentials aside) is a config file evkit reads as is.
    document.pop("token")
    path = tmp_path / "printed.toml"
    kept = [line for line in text.splitlines() if not line.startswith(("token", "store"))]
    path.write_text("\n".join(kept))
    again = config.resolve({"config": str(path)}, {})
    assert again.settings == dataclasses.replace(resolved.settings, token=None, store="memory://")
