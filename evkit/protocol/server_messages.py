"""What clients read: server messages and refused handshakes.

A server message is decoded into a dict (the hot path of a subscriber only asks for
``id`` and ``type``); :func:`error_from` turns a ``websocket.error`` payload into the
:class:`~evkit.exceptions.ProtocolError` it stands for. A refused handshake (an HTTP
status with a JSON reason instead of 101) becomes a :class:`Refusal` that says what
happened and whether retrying can help.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from evkit.exceptions import ProtocolError

__all__ = ["Refusal", "decode_server_message", "error_from", "refusal"]

_HINTS = {
    401: " (check the token)",
    403: " (the token may lack a scope, or the origin or host is not allowed)",
}


def decode_server_message(data: str | bytes) -> dict[str, Any]:
    """One server message as a dict.

    Raises:
        ProtocolError: ``invalid_message`` when it is not a JSON object.
    """
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("invalid_message", f"the server sent invalid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("invalid_message", "the server sent a message that is not an object")
    return message


def error_from(payload: Any) -> ProtocolError:
    """The error a ``websocket.error`` payload reports."""
    payload = payload if isinstance(payload, dict) else {}
    return ProtocolError(
        str(payload.get("code") or "invalid_message"),
        str(payload.get("error") or "the server rejected the message"),
        payload.get("detail"),
    )


@dataclass(frozen=True)
class Refusal:
    """A handshake the server answered with an HTTP status instead of switching protocols."""

    status: int
    reason: str
    code: str | None
    error: str

    @property
    def permanent(self) -> bool:
        """Whether retrying the same request cannot help (bad request, credentials, route)."""
        return self.status in (400, 401, 403, 404)

    def describe(self) -> str:
        """One sentence for a log line or an exception."""
        detail = f": {self.error}" if self.error else ""
        return (
            f"the server refused the connection: HTTP {self.status} {self.reason}{detail}"
            f"{_HINTS.get(self.status, '')}"
        )

    def as_error(self) -> ProtocolError:
        """The refusal as the ProtocolError a caller can catch (``code`` from the body)."""
        default = {401: "unauthorized", 403: "forbidden"}.get(self.status, "invalid_message")
        return ProtocolError(self.code or default, self.describe(), {"status": self.status})


def refusal(status: int, reason: str, body: bytes | None) -> Refusal:
    """Read a refused handshake's status and JSON body (``{"error", "code"}``)."""
    code: str | None = None
    error = ""
    try:
        document = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        error = (body or b"").decode(errors="replace")[:200]
    else:
        if isinstance(document, dict):
            error = str(document.get("error") or "")
            code = document.get("code") if isinstance(document.get("code"), str) else None
    return Refusal(status, reason, code, error)
