"""Redaction of sensitive payload keys before an event leaves the process or is stored.

A key matches when its lower-cased name is in the configured set (default:
``password``, ``secret``, ``token``, ``authorization``, ``api_key``, ``cookie``), at any
depth, in dicts, in lists and tuples of them, and in dataclass instances (which JSON
encoding turns into objects too). Matching values are replaced by
:data:`REDACTED`; the caller's payload is never modified (a changed copy is returned).

Pure: plain values in, plain values out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

__all__ = ["DEFAULT_REDACT_KEYS", "REDACTED", "Redactor"]

DEFAULT_REDACT_KEYS = ("password", "secret", "token", "authorization", "api_key", "cookie")
REDACTED = "[redacted]"
_SAFE_CACHE_LIMIT = 10_000
_SCALARS = (str, int, float, bool, type(None))


def _fields(value: Any) -> dict[str, Any] | None:
    """A dataclass instance's fields as the dict its JSON encoding holds, else None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


class Redactor:
    """Replaces the values of sensitive keys; cheap when a payload has none."""

    def __init__(self, keys: Iterable[str] = DEFAULT_REDACT_KEYS) -> None:
        self.keys = frozenset(k.lower() for k in keys)
        self._safe: set[str] = set()

    def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` itself when nothing matches, else a redacted copy."""
        if not self.keys or self._flat_and_known(payload) or not self._needs(payload):
            return payload
        result = self._redact(payload)
        assert isinstance(result, dict)
        return result

    def _flat_and_known(self, payload: dict[str, Any]) -> bool:
        # Most payloads are flat, with keys seen before: they need no walk.
        if not self._safe.issuperset(payload):
            return False
        for value in payload.values():  # noqa: SIM110 (a loop: twice as fast as all() here)
            if not isinstance(value, _SCALARS):
                return False
        return True

    def _is_sensitive(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in self._safe:
            return False
        if key.lower() in self.keys:
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
