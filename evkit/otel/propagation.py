"""W3C trace context (``traceparent``) for evkit's correlation and span ids, in and out.

evkit's correlation id is the trace id when it is one (32 lower-case hex characters,
as :func:`new_trace_id` makes and OTLP ingest produces); any other correlation id
(``req-7``) maps to a trace id derived from it (its SHA-256, cut to 16 bytes), the same
in every process, so one request stays one trace. evkit's span ids are W3C span ids
already (16 hex).

Pure: no I/O; the context is :mod:`evkit.context`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass

from evkit.context import correlation, current_correlation_id, current_span_id, span

__all__ = [
    "TraceContext",
    "continue_trace",
    "inject",
    "new_trace_id",
    "parse_traceparent",
    "trace_id_of",
    "traceparent",
]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class TraceContext:
    """A ``traceparent``: the trace, the caller's span, whether it was sampled."""

    trace_id: str
    parent_span_id: str
    sampled: bool


def new_trace_id() -> str:
    """A fresh trace id (32 hex): use it as a correlation id that OpenTelemetry keeps as is."""
    return os.urandom(16).hex()


def trace_id_of(correlation_id: str) -> str:
    """The trace id a correlation id stands for (itself when it is one)."""
    if _TRACE_ID.fullmatch(correlation_id) and correlation_id.strip("0"):
        return correlation_id
    return hashlib.sha256(correlation_id.encode()).hexdigest()[:32]


def traceparent(correlation_id: str | None = None, span_id: str | None = None) -> str | None:
    """The ``traceparent`` header of the current evkit context (or of the ids given).

    None when there is no correlation id to carry.
    """
    correlation_id = correlation_id or current_correlation_id()
    if correlation_id is None:
        return None
    span_id = span_id or current_span_id() or os.urandom(8).hex()
    return f"00-{trace_id_of(correlation_id)}-{span_id}-01"


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add ``traceparent`` for the current evkit context to ``headers`` (returned)."""
    value = traceparent()
    if value is not None:
        headers["traceparent"] = value
    return headers


def parse_traceparent(value: str | None) -> TraceContext | None:
    """A ``traceparent`` header's trace context; None when absent or malformed."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or not trace_id.strip("0") or not span_id.strip("0"):
        return None
    return TraceContext(trace_id, span_id, bool(int(flags, 16) & 1))


@contextlib.contextmanager
def continue_trace(headers: Mapping[str, str]) -> Iterator[TraceContext | None]:
    """Run the block inside the trace a request's ``traceparent`` names.

    The trace id becomes the correlation id and the caller's span the current span, so
    spans and events of the block are that trace's, children of the caller. Without a
    (valid) ``traceparent`` the block runs as it would have.
    """
    found = next((v for k, v in headers.items() if k.lower() == "traceparent"), None)
    context = parse_traceparent(found)
    if context is None:
        yield None
        return
    with correlation(context.trace_id), span(context.parent_span_id):
        yield context
