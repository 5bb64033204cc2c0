"""The settings ``evkit serve`` runs with, from flags, the environment and a TOML file.

Every field of :class:`~evkit.server.settings.ServerSettings` is one option under three
names: the flag ``--field-name``, the environment variable ``EVKIT_FIELD_NAME`` and the
top-level key ``field_name`` of the TOML file given with ``--config PATH`` (or
``EVKIT_CONFIG``). So are the two options of the command that are not the server's,
``log_level`` and ``log_format``. A value is taken from the first of: a flag, the
environment, the file, the default. List options take comma-separated values (flags
may also repeat, TOML takes arrays); switches take ``true``/``false`` (flags:
``--name`` / ``--no-name``); ``ping_interval`` takes ``none`` for never.

Credentials never need to be on a command line, where ``ps`` shows them: ``token``,
``jwt_secret`` and ``jwt_public_key`` are also read from a file named by
``--token-file`` / ``EVKIT_TOKEN_FILE`` / ``token_file`` (and so on), which is what
systemd's ``LoadCredential=`` and container secrets provide.

:func:`add_arguments` puts the flags on an argparse parser, :func:`resolve` reads the
three sources into a :class:`Resolved` (every mistake is a :class:`ConfigError` naming
where the value came from, and for an unknown key the closest known one), and
:func:`render` shows the result as TOML with credentials masked
(``evkit serve --print-config``).

Must not start a server, open a socket or configure logging: it reads and checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evkit.backplane.redis_stream import redacted_url
from evkit.exceptions import ConfigError
from evkit.server.settings import SECRET_SETTINGS, ServerSettings, check_setting

__all__ = [
    "OPTIONS",
    "ConfigError",
    "Option",
    "Resolved",
    "add_arguments",
    "read_secret",
    "render",
    "resolve",
]

#: Settings that may also be read from a file: ``<name>_file``.
FILE_SETTINGS = ("token", "jwt_secret", "jwt_public_key")
#: Variables of evkit that are not server settings (not reported as misspelt).
OTHER_VARIABLES = frozenset(
    {"EVKIT_CONFIG", "EVKIT_URL", "EVKIT_CA_FILE", "EVKIT_DEBUG", "EVKIT_REQUIRE_SERVICES"}
)
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_GROUPS = {
    "network and TLS": ("host", "port", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs"),
    "authentication": (
        "token",
        "jwt_secret",
        "jwt_public_key",
        "jwt_jwks_url",
        "jwt_audience",
        "jwt_issuer",
        "jwt_algorithms",
        "jwt_leeway",
        "auth_timeout",
        "public_metrics",
        "allow_publish",
    ),
    "browsers and hosts": (
        "allowed_origins",
        "loopback_origins",
        "allow_missing_origin",
        "allowed_hosts",
    ),
    "history and store": ("store", "stream", "maxlen", "history_size", "history_bytes"),
    "logging": ("log_level", "log_format"),
}
_ALIASES = {"history_size": ("--history",)}


@dataclass(frozen=True)
class Option:
    """One option: its kind (``int``, ``float``, ``bool``, ``str``, ``list``), whether
    it may be unset, its default and help, and what it accepts."""

    name: str
    kind: str
    nullable: bool
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return "EVKIT_" + self.name.upper()


def _attribute_help() -> dict[str, str]:
    """Each field's help: its line (or its group's) in ServerSettings' ``Attributes``."""
    doc = ServerSettings.__doc__ or ""
    section = doc.split("Attributes:", 1)[1]
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in section.splitlines():
        entry = re.match(r"^ {8}([a-z_][a-z_, /]*): (.*)$", line)
        if entry:
            names = re.split(r"\s*[,/]\s*", entry.group(1))
            for name in names:
                helps[name] = entry.group(2)
        elif line.startswith(" " * 12) and names:
            for name in names:
                helps[name] += " " + line.strip()
    return helps


def _kind(hint: Any) -> tuple[str, bool]:
    args = typing.get_args(hint)
    nullable = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if typing.get_origin(hint) is tuple or typing.get_origin(base) is tuple:
        return "list", nullable
    names = {int: "int", float: "float", bool: "bool", str: "str"}
    return names[base], nullable


def _options() -> dict[str, Option]:
    hints = typing.get_type_hints(ServerSettings)
    helps = _attribute_help()
    options = {}
    for field in dataclasses.fields(ServerSettings):
        kind, nullable = _kind(hints[field.name])
        options[field.name] = Option(
            field.name, kind, nullable, field.default, helps.get(field.name, "")
        )
    options["log_level"] = Option(
        "log_level",
        "str",
        False,
        "info",
        "how much the server logs",
        ("debug", "info", "warning", "error"),
    )
    options["log_format"] = Option(
        "log_format",
        "str",
        False,
        "text",
        "text lines, or one JSON object a line",
        ("text", "json"),
    )
    return options


#: Every option of ``evkit serve``, by name.
OPTIONS: dict[str, Option] = _options()
_KEYS = frozenset(OPTIONS) | {f"{name}_file" for name in FILE_SETTINGS}


@dataclass(frozen=True)
class Resolved:
    """What ``evkit serve`` runs with, and where each value came from (``default``, a
    flag, a variable, or the config file's path)."""

    settings: ServerSettings
    log_level: str
    log_format: str
    sources: dict[str, str]
    warnings: tuple[str, ...] = ()


# -- the parser --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and a flag per option (and ``--NAME-file`` for credentials).

    Flags default to nothing given (``argparse.SUPPRESS``), so :func:`resolve` can tell a
    flag from a default.
    """
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="TOML file of settings (top-level keys named like the flags, with _; "
        "env EVKIT_CONFIG)",
    )
    grouped = {name for names in _GROUPS.values() for name in names}
    groups = {title: parser.add_argument_group(title) for title in _GROUPS}
    other = parser.add_argument_group("limits, delivery and redaction")
    for option in OPTIONS.values():
        group = other
        for title, names in _GROUPS.items():
            if option.name in names:
                group = groups[title]
        if option.name not in grouped:
            group = other
        _add_flag(group, option)
        if option.name in FILE_SETTINGS:
            group.add_argument(
                f"{option.flag}-file",
                metavar="PATH",
                default=argparse.SUPPRESS,
                help=f"read {option.name} from this file (env {option.variable}_FILE)",
            )


def _add_flag(group: argparse._ArgumentGroup, option: Option) -> None:
    default = "unset" if option.default is None else _toml_value(option.default)
    help_text = f"{option.help} (env {option.variable}; default {default})"
    flags = (option.flag, *_ALIASES.get(option.name, ()))
    if option.kind == "bool":
        group.add_argument(
            option.flag,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text,
        )
    elif option.kind == "list":
        group.add_argument(
            *flags,
            dest=option.name,
            action="append",
            metavar="A,B",
            default=argparse.SUPPRESS,
            help=help_text,
        )
    else:
        group.add_argument(
            *flags,
            dest=option.name,
            metavar=_metavar(option),
            default=argparse.SUPPRESS,
            help=help_text.replace("%", "%%"),
        )


def _metavar(option: Option) -> str:
    if option.name.endswith(("file", "certs")):
        return "PATH"
    if option.name.endswith(("url", "store")):
        return "URL"
    if option.choices:
        return "{" + ",".join(option.choices) + "}"
    return "N" if option.kind in ("int", "float") else "VALUE"


# -- reading the sources -------------------------------------------------------------------------


def resolve(
    flags: Mapping[str, Any], environ: Mapping[str, str], config: str | None = None
) -> Resolved:
    """The settings from ``flags`` (what argparse put in the namespace), ``environ`` and
    the TOML file ``config`` (or ``flags["config"]``, or ``EVKIT_CONFIG``).

    Raises:
        ConfigError: a value of the wrong type or out of range, a missing or malformed
            file, an unknown key, a value given twice at one level; the message names
            the flag, variable or file it came from.
    """
    path = config or flags.get("config") or environ.get("EVKIT_CONFIG") or None
    layers: list[tuple[str, dict[str, Any]]] = []
    if path:
        layers.append((str(path), _read_file(Path(path))))
    layers.append(("environment", _from_environment(environ)))
    layers.append(("flags", {k: v for k, v in flags.items() if k in _KEYS}))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: "default" for name in OPTIONS}
    for level, given in layers:
        for name in OPTIONS:
            found = _given(name, given, level, path)
            if found is not None:
                values[name], sources[name] = found
    log_level = values.pop("log_level", "info")
    log_format = values.pop("log_format", "text")
    try:
        settings = ServerSettings(**values)
    except ValueError as exc:
        raise ConfigError(_with_source(str(exc), sources)) from None
    return Resolved(settings, log_level, log_format, sources, tuple(_misspelt(environ)))


def _given(
    name: str, given: dict[str, Any], level: str, path: str | None
) -> tuple[Any, str] | None:
    """The value of option ``name`` at one level, and where it came from; or None."""
    option = OPTIONS[name]
    file_key = f"{name}_file"
    where = {
        "flags": (option.flag, f"{option.flag}-file"),
        "environment": (option.variable, f"{option.variable}_FILE"),
    }.get(level, (f"{path}: {name}", f"{path}: {file_key}"))
    if name in given and file_key in given:
        raise ConfigError(f"give {where[0]} or {where[1]}, not both")
    if file_key in given:
        return read_secret(given[file_key], where[1]), where[1]
    if name not in given:
        return None
    raw = given[name]
    if level == "flags" and isinstance(raw, list):
        value = tuple(item for part in raw for item in _split(part))
    elif isinstance(raw, str):
        value = _parse_text(option, raw, where[0])
    else:
        value = _check_typed(option, raw, where[0])
    try:
        return check_setting(name, value) if name in _SETTING_NAMES else value, where[0]
    except ValueError as exc:
        raise ConfigError(f"{where[0]}: {exc}") from None


_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(ServerSettings))


def _parse_text(option: Option, text: str, where: str) -> Any:
    """A value given as text (a flag, a variable, or a TOML string)."""
    stripped = text.strip()
    if option.kind == "list":
        return tuple(_split(text))
    if option.nullable and option.kind != "str" and stripped.lower() == "none":
        return None
    if option.kind == "bool":
        if stripped.lower() in _TRUE | _FALSE:
            return stripped.lower() in _TRUE
        raise ConfigError(f"{where}: {text!r} is not true or false")
    if option.kind in ("int", "float"):
        convert = int if option.kind == "int" else float
        try:
            return convert(stripped.replace("_", ""))
        except ValueError:
            what = "an integer" if option.kind == "int" else "a number"
            extra = " or none" if option.nullable else ""
            raise ConfigError(f"{where}: {text!r} is not {what}{extra}") from None
    if option.choices and stripped.lower() not in option.choices:
        raise ConfigError(f"{where}: {text!r} is not one of {', '.join(option.choices)}")
    if option.choices:
        return stripped.lower()
    return None if option.nullable and not stripped else text


_TOML_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "list": ((list,), "a list of strings"),
    "str": ((str,), "a string"),
}


def _check_typed(option: Option, value: Any, where: str) -> Any:
    """A value of the TOML file, which has its own types."""
    types, described = _TOML_KINDS[option.kind]
    wrong_bool = isinstance(value, bool) and option.kind != "bool"
    if not isinstance(value, types) or wrong_bool:
        raise ConfigError(f"{where}: must be {described}, got {value!r}")
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: must be a list of strings, got {value!r}")
        return tuple(value)
    if option.kind == "float" and isinstance(value, int):
        return float(value)
    return value


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def read_secret(path: Any, where: str) -> str:
    """The credential in the file at ``path`` (without surrounding whitespace).

    Raises:
        ConfigError: no such file, unreadable, or empty; ``where`` says who named it.
    """
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: must be the path of a file, got {path!r}")
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path!r}: {exc.strerror or exc}") from None
    if not text:
        raise ConfigError(f"{where}: {path!r} is empty")
    return text


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.expanduser().open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for key, value in document.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}: [{key}] tables are not read: settings are top-level keys")
        if key not in _KEYS:
            raise ConfigError(f"{path}: unknown setting {key!r}{_suggestion(key, _KEYS)}")
    return document


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for name in _KEYS:
        value = environ.get("EVKIT_" + name.upper())
        if value is not None:
            given[name] = value
    return given


def _misspelt(environ: Mapping[str, str]) -> list[str]:
    """Warnings for ``EVKIT_`` variables that look like a setting's but are none."""
    known = {"EVKIT_" + key.upper() for key in _KEYS} | OTHER_VARIABLES
    names = {variable.removeprefix("EVKIT_") for variable in known}
    warnings = []
    for variable in sorted(environ):
        if variable.startswith("EVKIT_") and variable not in known:
            close = difflib.get_close_matches(variable[6:], sorted(names), n=1, cutoff=0.7)
            if close:
                warnings.append(
                    f"{variable} is not a setting and is ignored; did you mean 'EVKIT_{close[0]}'?"
                )
    return warnings


def _suggestion(key: str, known: frozenset[str] | set[str]) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), sorted(known), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def _with_source(message: str, sources: dict[str, str]) -> str:
    """``message`` (naming settings) followed by where the settings it names came from."""
    named = [name for name in OPTIONS if re.search(rf"\b{name}\b", message)]
    given = [f"{name} from {sources[name]}" for name in named if sources[name] != "default"]
    return f"{message} ({'; '.join(given)})" if given else message


# -- showing them --------------------------------------------------------------------------------


def render(resolved: Resolved) -> str:
    """The settings in effect as TOML, each with where it came from; credentials (and a
    store URL's password) masked."""
    lines = [
        "# evkit serve: the settings in effect (flag > environment > config file > default)",
    ]
    values = dataclasses.asdict(resolved.settings)
    values.update(log_level=resolved.log_level, log_format=resolved.log_format)
    width = 0
    rows = []
    for name in OPTIONS:
        value = values[name]
        if value is None and OPTIONS[name].kind in ("int", "float"):
            value = "none"
        if value is None:
            rows.append((f"# {name} is not set", resolved.sources[name]))
            continue
        if name in SECRET_SETTINGS:
            value = "***"
        elif name == "store":
            value = redacted_url(value)
        text = f"{name} = {_toml_value(value)}"
        width = max(width, len(text))
        rows.append((text, resolved.sources[name]))
    width = min(width, 60)
    for text, source in rows:
        lines.append(text if source == "default" else f"{text:<{width}}  # {source}")
    lines += [f"# warning: {warning}" for warning in resolved.warnings]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # a TOML basic string
