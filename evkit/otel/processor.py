"""In-process: an OpenTelemetry ``SpanProcessor`` that puts finished spans on evkit's bus.

Add :class:`EvkitSpanProcessor` to a ``TracerProvider`` and the process's own spans
(its OTel instrumentation, or OTel libraries used in a notebook) reach
``evkit.capture()``, ``collect()`` and a local broadcaster as span events, with no
exporter: the same events OTLP ingest makes (:mod:`evkit.otel.convert`).

Needs ``opentelemetry-sdk`` (the ``otel`` extra). Must not block: ``on_end`` runs on
the thread that ended the span, and only hands an event to the bus.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from evkit.bus import EventBus, global_bus
from evkit.otel.convert import span_event
from evkit.protocol import now_ms

__all__ = ["EvkitSpanProcessor"]


class EvkitSpanProcessor(SpanProcessor):
    """Emits each ended span as an evkit span event on ``bus`` (the global bus).

    Spans that cannot be events (see :func:`evkit.otel.convert.span_event`) are counted
    in ``refused``.
    """

    def __init__(self, bus: EventBus | None = None) -> None:
        self.bus = bus if bus is not None else global_bus
        self.refused = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        resource = dict(span.resource.attributes) if span.resource is not None else {}
        service = str(resource.pop("service.name", "unknown_service"))
        parent = span.parent
        status = span.status
        result = span_event(
            service=service,
            resource=resource,
            scope=span.instrumentation_scope.name if span.instrumentation_scope else "",
            trace_id=f"{context.trace_id:032x}",
            span_id=f"{context.span_id:016x}",
            parent_span_id=f"{parent.span_id:016x}" if parent is not None else "",
            name=span.name,
            kind=span.kind.value + 1,  # the SDK counts kinds from 0, OTLP from 1
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            attributes=dict(span.attributes or {}),
            status_code=status.status_code.value,
            status_message=status.description or "",
            span_events=[(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events],
            now_ms=now_ms(),
        )
        if isinstance(result, str):
            self.refused += 1
            return
        self.bus.dispatch(result)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
