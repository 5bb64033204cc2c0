"""Out: evkit's own spans as OpenTelemetry spans, through a ``SpanProcessor`` you configure.

:class:`SpanBridge` listens on evkit's bus for finished operations (the
``.completed`` / ``.failed`` events of ``@emits`` and ``evkit.span``, with their
``spanId``, ``parentSpanId``, ``duration`` and ``correlationId``) and hands each to a
processor as a finished OTel span: the trace id is the correlation id's
(:func:`evkit.otel.propagation.trace_id_of`), the span ids are evkit's, the times are
the event's own. Give it the processor of your exporter (``BatchSpanProcessor(
OTLPSpanExporter())``) and they appear in Jaeger, Tempo or Logfire next to the rest.
Events that came from OpenTelemetry (``source: "otel"``) are not sent back.

Needs ``opentelemetry-sdk`` (the ``otel`` extra). Runs on the emitting thread: the
processor decides how much work that is (a batch processor only queues).
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from evkit.bus import Event, EventBus, global_bus
from evkit.otel.propagation import trace_id_of

__all__ = ["SpanBridge"]

_SCALARS = (str, bool, int, float)
_HIDDEN = frozenset({"correlationId", "spanId", "parentSpanId", "duration"})
_SCOPE = InstrumentationScope("evkit")


class SpanBridge:
    """Sends evkit's finished spans to ``processor`` until :meth:`close`.

    ``service`` names the resource (``service.name``) of the spans it makes.
    """

    def __init__(
        self, processor: SpanProcessor, *, service: str = "evkit", bus: EventBus | None = None
    ) -> None:
        self.processor = processor
        self.bus = bus if bus is not None else global_bus
        self.resource = Resource.create({"service.name": service})
        self.sent = 0
        self.bus.on("*.completed", self._on_event)
        self.bus.on("*.failed", self._on_event)

    def _on_event(self, event: Event) -> None:
        payload = event.payload
        span_id, correlation_id = payload.get("spanId"), payload.get("correlationId")
        duration = payload.get("duration")
        if payload.get("source") == "otel" or not isinstance(span_id, str):
            return
        if not isinstance(correlation_id, str) or not isinstance(duration, int | float):
            return
        try:
            trace_id = int(trace_id_of(correlation_id), 16)
            context = SpanContext(trace_id, int(span_id, 16), False, TraceFlags(1))
            parent_id = payload.get("parentSpanId")
            parent = (
                SpanContext(trace_id, int(parent_id, 16), False, TraceFlags(1))
                if isinstance(parent_id, str) and parent_id
                else None
            )
        except ValueError:
            return  # not hex ids: not a span evkit made
        end_ns = event.timestamp * 1_000_000
        failed = event.type.endswith(".failed")
        span = ReadableSpan(
            name=event.type.rpartition(".")[0],
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=_attributes(payload),
            kind=SpanKind.INTERNAL,
            status=Status(
                StatusCode.ERROR if failed else StatusCode.OK,
                str(payload.get("errorMessage", "")) if failed else None,
            ),
            start_time=end_ns - int(duration * 1_000_000),
            end_time=end_ns,
            instrumentation_scope=_SCOPE,
        )
        self.processor.on_end(span)
        self.sent += 1

    def close(self) -> None:
        """Stop sending (the processor is yours to shut down)."""
        self.bus.off(self._on_event)


def _attributes(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in payload.items()
        if key not in _HIDDEN and isinstance(value, _SCALARS)
    }
