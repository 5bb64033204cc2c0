"""OpenTelemetry in and out of evkit.

- In, over the network: the broadcaster answers OTLP/HTTP at ``POST /v1/traces``
  (:mod:`evkit.server.otlp`); each span becomes an evkit span event
  (:mod:`evkit.otel.convert` says how).
- In, in-process: :class:`EvkitSpanProcessor` puts a process's own OTel spans on
  evkit's bus.
- Out: :class:`SpanBridge` hands evkit's own spans (``@emits``, ``evkit.span``) to an
  OTel ``SpanProcessor`` and so to any exporter.
- Trace context: :func:`inject`, :func:`continue_trace`, :func:`traceparent`,
  :func:`new_trace_id` carry evkit's correlation and span ids as W3C ``traceparent``.

The processor and the bridge need ``opentelemetry-sdk`` (``pip install 'evkit[otel]'``);
they are imported on first use, so the trace-context helpers work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evkit.otel.convert import span_type
from evkit.otel.propagation import (
    TraceContext,
    continue_trace,
    inject,
    new_trace_id,
    parse_traceparent,
    trace_id_of,
    traceparent,
)

if TYPE_CHECKING:
    from evkit.otel.export import SpanBridge
    from evkit.otel.processor import EvkitSpanProcessor

__all__ = [
    "EvkitSpanProcessor",
    "SpanBridge",
    "TraceContext",
    "continue_trace",
    "inject",
    "new_trace_id",
    "parse_traceparent",
    "span_type",
    "trace_id_of",
    "traceparent",
]


def __getattr__(name: str) -> object:
    # opentelemetry-sdk is optional: imported when these are first asked for.
    if name == "EvkitSpanProcessor":
        from evkit.otel.processor import EvkitSpanProcessor

        return EvkitSpanProcessor
    if name == "SpanBridge":
        from evkit.otel.export import SpanBridge

        return SpanBridge
    raise AttributeError(f"module 'evkit.otel' has no attribute {name!r}")
