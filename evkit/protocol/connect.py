"""Connect parameters, both ways: what a client puts in its URL and headers, and what a
server reads from them.

A client asks for its patterns, correlation filter, resume point and batching in the
query string of ``/ws/events`` (so they apply atomically from the first event), and
sends credentials as ``Authorization: Bearer`` (or ``?token=``, for browsers). The
server reads the same names back here, validated, into a :class:`ConnectRequest`.

Pure: no I/O. Checking that ``since`` is an id of the server's stream is the server's
job (it knows the stream); everything else is checked here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from evkit.exceptions import ProtocolError
from evkit.patterns import validate_patterns
from evkit.protocol.client_messages import BatchOptions, validate_batch, validate_correlation_id

__all__ = [
    "ConnectRequest",
    "bearer_token",
    "connect_query",
    "credential",
    "parse_connect",
    "too_many_subscriptions",
    "with_query",
]


@dataclass(frozen=True)
class ConnectRequest:
    """What a connection asked for in its URL (and headers).

    ``explicit_patterns``: the URL named its patterns (``?eventTypes=``, possibly none),
    rather than taking the default ``["*"]``.
    """

    patterns: list[str]
    correlation_id: str | None = None
    since: str | None = None
    epoch: str | None = None
    batch: BatchOptions | None = None
    explicit_patterns: bool = False


def connect_query(
    patterns: list[str],
    correlation_id: str | None = None,
    *,
    since: str | None = None,
    epoch: str | None = None,
    batch: tuple[int, float] | None = None,
) -> str:
    """The query string a client connects with (without the ``?``)."""
    query: dict[str, str] = {"eventTypes": ",".join(patterns)}
    if correlation_id is not None:
        query["correlationId"] = correlation_id
    if since is not None:
        query["since"] = since
        if epoch is not None:
            query["epoch"] = epoch
    if batch is not None:
        query["batch"] = f"{batch[0]},{batch[1]:g}"
    return urlencode(query)


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` appended (after ``?``, or ``&`` when it has a query)."""
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"


def too_many_subscriptions(requested: int, limit: int, what: str) -> ProtocolError:
    """The error for a client asking to hold more than ``limit`` patterns."""
    return ProtocolError(
        "too_many_subscriptions",
        f"{what} would hold {requested} patterns; the limit is {limit} per client "
        f"(unsubscribe some, or use broader patterns such as 'repo.*')",
        {"limit": limit, "requested": requested},
    )


def parse_connect(
    query: str,
    headers: Mapping[str, str],
    max_subscriptions: int,
    check_since: Callable[[str], Any],
) -> ConnectRequest:
    """Read a connection's parameters; ``check_since`` raises ValueError for a foreign id.

    Raises:
        ProtocolError: a bad pattern (``invalid_pattern``), too many of them, a bad
            correlation ID, ``since`` or ``batch`` (``invalid_message``).
    """
    params = parse_qs(query, keep_blank_values=True)
    patterns = ["*"]
    if "eventTypes" in params:
        raw = ",".join(params["eventTypes"])
        patterns = validate_patterns([p.strip() for p in raw.split(",") if p.strip()])
        if len(patterns) > max_subscriptions:
            raise too_many_subscriptions(len(patterns), max_subscriptions, "this connection")
    correlation_id = _last(params, "correlationId") or headers.get("x-correlation-id")
    correlation_id = validate_correlation_id(correlation_id or None)
    since = _last(params, "since") or None
    if since is not None:
        try:
            check_since(since)
        except ValueError as exc:
            raise ProtocolError(
                "invalid_message", f"since must be an event id received from this server: {exc}"
            ) from None
    return ConnectRequest(
        patterns,
        correlation_id,
        since,
        _last(params, "epoch") or None,
        _batch(_last(params, "batch")),
        explicit_patterns="eventTypes" in params,
    )


def _last(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def _batch(raw: str | None) -> BatchOptions | None:
    if not raw:
        return None
    try:
        max_events, max_delay = (float(part) for part in raw.split(","))
    except ValueError:
        raise ProtocolError(
            "invalid_message",
            f"batch must be 'maxEvents,maxDelayMs' such as batch=1000,50; got {raw!r}",
            {"field": "batch"},
        ) from None
    return validate_batch(
        {
            "maxEvents": int(max_events) if max_events.is_integer() else max_events,
            "maxDelayMs": max_delay,
        }
    )


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def credential(headers: Mapping[str, str], query: str) -> str | None:
    """A request's credential: the bearer token, else the ``token`` query parameter."""
    return bearer_token(headers.get("Authorization") or headers.get("authorization")) or (
        _last(parse_qs(query), "token")
    )
