"""Redaction of sensitive payload keys before an event leaves the process or is stored.

A key is compared in a normalised form: lower-cased, with ``-``, ``_``, ``.`` and
spaces removed, so ``X-Auth-Token``, ``x_auth_token`` and ``xAuthToken`` are the same
key. It is sensitive when

- the default patterns match anywhere in it (unless turned off with
  ``defaults=False``): ``passw`` (password, passwd), ``passphrase``, ``pwd`` at the end,
  ``secret``, ``token`` (but not ``tokens``, ``tokenCount``, ``tokenUsage``,
  ``tokenLimit``, ``tokenType``, ``tokenizer``: counts of a language model's tokens are
  not credentials), ``apikey``, ``accesskey``, ``privatekey``, ``encryptionKey``,
  ``signingKey``, ``masterKey``, ``sessionKey``, ``auth`` (but not
  ``author``), ``bearer``, ``cookie``, ``credential``, ``signature``, and ``session``
  at the end of the key (``session``, ``userSession``; ``sessionId``, a name the wire
  protocol's ``claude.session.*`` events carry, is an identifier and stays);
- or it equals one of the custom keys given, normalised the same way; a custom key
  with ``*`` is a glob over the normalised key (``*ssn`` matches ``userSsn``).

Custom keys add to the defaults. Matching values are replaced by :data:`REDACTED` at
any depth, in dicts, in lists and tuples of them, and in dataclass instances (which
JSON encoding turns into objects too); the caller's payload is never modified (a
changed copy is returned).

:func:`scrub_credentials` does the same for log lines: bearer tokens, ``token=`` query
parameters, credential headers and ``"token"`` fields in logged frames;
:class:`CredentialFilter` and :class:`ScrubbingLogger` apply it to every record a logger
produces.

Pure: plain values in, plain values out.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from typing import Any

from evkit.patterns import compile_glob

__all__ = [
    "CLIENT_WIRE_LOGGER",
    "DEFAULT_REDACT_KEYS",
    "DEFAULT_REDACT_PATTERN",
    "REDACTED",
    "CredentialFilter",
    "Redactor",
    "ScrubbingLogger",
    "normalise_key",
    "scrub_credentials",
]

#: The key names redacted before patterns were used; all of them match the default
#: patterns, so passing them as custom keys changes nothing.
DEFAULT_REDACT_KEYS = ("password", "secret", "token", "authorization", "api_key", "cookie")
#: What the default patterns look for in a normalised key (see the module docstring).
DEFAULT_REDACT_PATTERN = re.compile(
    r"passw|passphrase|pwd$|secret|token(?!s|count|usage|limit|type|iz)|apikey|accesskey"
    r"|privatekey|(?:encryption|signing|master|session)key|auth(?!or(?!iz))|bearer|cookie"
    r"|credential|signature|session$"
)
REDACTED = "[redacted]"
_SAFE_CACHE_LIMIT = 10_000
_SCALARS = (str, int, float, bool, type(None))
_SEPARATORS = str.maketrans("", "", "-_. ")


def normalise_key(key: str) -> str:
    """``key`` as redaction compares it: lower case, without ``-``, ``_``, ``.`` or spaces."""
    return key.lower().translate(_SEPARATORS)


def _fields(value: Any) -> dict[str, Any] | None:
    """A dataclass instance's fields as the dict its JSON encoding holds, else None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


class Redactor:
    """Replaces the values of sensitive keys; cheap when a payload has none.

    Args:
        keys: custom keys to redact besides the defaults (exact names after
            normalisation, or globs with ``*``).
        defaults: whether the default patterns apply (see the module docstring).
    """

    def __init__(self, keys: Iterable[str] = (), *, defaults: bool = True) -> None:
        normalised = [normalise_key(key) for key in keys]
        self.keys = frozenset(key for key in normalised if "*" not in key and "?" not in key)
        self._globs = [compile_glob(key) for key in normalised if "*" in key or "?" in key]
        self.defaults = defaults
        self._safe: set[str] = set()

    @property
    def enabled(self) -> bool:
        """Whether any key can be sensitive."""
        return self.defaults or bool(self.keys) or bool(self._globs)

    def sensitive(self, key: str) -> bool:
        """Whether the value of ``key`` is redacted (not cached: see ``_is_sensitive``)."""
        name = normalise_key(key)
        if name in self.keys or any(glob(name) for glob in self._globs):
            return True
        return self.defaults and DEFAULT_REDACT_PATTERN.search(name) is not None

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` itself when nothing matches, else a redacted copy."""
        if not self.enabled or self._flat_and_known(payload) or not self._needs(payload):
            return payload
        result = self._redact(payload)
        assert isinstance(result, dict)
        return result

    def _flat_and_known(self, payload: dict[str, Any]) -> bool:
        # Most payloads are flat, with keys seen before: they need no walk.
        if not self._safe.issuperset(payload):
            return False
        for value in payload.values():  # noqa: SIM110 (a plain loop: no generator per payload)
            if not isinstance(value, _SCALARS):
                return False
        return True

    def _is_sensitive(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self._safe:
            return False
        if self.sensitive(key):
            return True
        if len(self._safe) < _SAFE_CACHE_LIMIT:
            self._safe.add(key)
        return False

    def _needs(self, value: Any) -> bool:
        if isinstance(value, dict):
            for key, item in value.items():
                if self._is_sensitive(key):
                    return True
                if not isinstance(item, _SCALARS) and self._needs(item):
                    return True
            return False
        if isinstance(value, list | tuple):
            return any(not isinstance(item, _SCALARS) and self._needs(item) for item in value)
        fields = _fields(value)
        return fields is not None and self._needs(fields)

    def _redact(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: REDACTED if self._is_sensitive(key) else self._redact(item)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._redact(item) for item in value]
        fields = _fields(value)
        return value if fields is None else self._redact(fields)


# Credentials as they appear in log lines: a header line (websockets logs "< Name: value"
# at DEBUG), a bearer token anywhere, a token in a query string, a "token" field of a
# logged JSON frame (first-message auth).
_CREDENTIAL_PATTERNS = (
    (
        re.compile(
            r"((?:proxy-)?authorization|cookie|set-cookie|x-api-key|x-auth-token)(\s*[:=]\s*)"
            r"[^\r\n]*",
            re.IGNORECASE,
        ),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(bearer\s+)[^\s'\"]+", re.IGNORECASE), rf"\1{REDACTED}"),
    (
        re.compile(r"([?&](?:token|access_token|api_key|apikey)=)[^&\s'\"#]*", re.IGNORECASE),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(\\?[\"']token\\?[\"']\s*:\s*\\?[\"'])[^\"'\\]*"), rf"\1{REDACTED}"),
)


def scrub_credentials(text: str) -> str:
    """``text`` with the credentials it shows replaced by :data:`REDACTED`."""
    for pattern, replacement in _CREDENTIAL_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class CredentialFilter(logging.Filter):
    """A logging filter that scrubs credentials from each record's formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub_credentials(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


class ScrubbingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Logs through ``logger`` with credentials scrubbed: for a library's own logging
    (websockets logs request lines and headers at DEBUG), without a filter on its
    logger that would change it for every other user in the process."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, scrub_credentials(text), **kwargs)


#: What evkit's clients log websockets' client side through (Authorization headers).
CLIENT_WIRE_LOGGER = ScrubbingLogger(logging.getLogger("websockets.client"))
