"""Where the time goes: spans, latency tables and charts over collected events.

This package is responsible for turning the collector's event DataFrame (the
shape described in DESIGN section 2: ``id, timestamp, type, service, entity,
action, correlation_id, duration_ms`` followed by one column per payload key)
into answers:

- :func:`spans` pairs ``X.started`` with ``X.completed`` / ``X.failed`` into one
  row per operation;
- :func:`latency_by_correlation` and :func:`latency_by_operation` summarise them
  per request and per operation;
- :func:`bottlenecks` ranks operations by the time they cost in total;
- :func:`critical_path` follows the spans one request actually waited on;
- :func:`plot_latency_by_correlation` and :func:`plot_waterfall` draw them.

Every function takes a DataFrame and returns a new DataFrame or a
:class:`matplotlib.figure.Figure`; none mutates its input. Payload columns the
analyses read (``spanId``, ``parentSpanId``, ``operation``) may be missing from a
frame; they are then treated as all missing. Empty frames give empty results
with the documented columns, and plots of nothing show "no data".

The public API is what this module exports (``__all__``, and :class:`Figure`, the
type the charts return); the private modules hold one concept each: ``_events``
(reading the input frame), ``_spans`` (pairing), ``_latency`` (the tables),
``_trace`` (one request's span tree) and ``_charts``.

It must not import evkit modules outside this package (it takes DataFrames, so it
needs neither client nor server), open sockets, read files or touch pyplot's global
state (figures are built with :class:`~matplotlib.figure.Figure` directly, so no GUI
backend is selected).
"""

from __future__ import annotations

from evkit.analysis._charts import Figure as Figure
from evkit.analysis._charts import plot_latency_by_correlation, plot_waterfall
from evkit.analysis._latency import (
    BOTTLENECK_COLUMNS,
    CORRELATION_COLUMNS,
    OPERATION_COLUMNS,
    SLOW_OPERATION_TYPE,
    bottlenecks,
    latency_by_correlation,
    latency_by_operation,
)
from evkit.analysis._spans import SPAN_COLUMNS, spans
from evkit.analysis._trace import critical_path

__all__ = [
    "BOTTLENECK_COLUMNS",
    "CORRELATION_COLUMNS",
    "OPERATION_COLUMNS",
    "SLOW_OPERATION_TYPE",
    "SPAN_COLUMNS",
    "bottlenecks",
    "critical_path",
    "latency_by_correlation",
    "latency_by_operation",
    "plot_latency_by_correlation",
    "plot_waterfall",
    "spans",
]
