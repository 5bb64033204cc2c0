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
- :func:`critical_path` follows the spans one request actually waited on, with
  each step's own time and share of the request;
- :func:`trace_spans` lays one request's spans out as a tree (depth, offsets, own
  time) and :func:`idle_gaps` finds when it waited on nothing;
- :func:`plot_latency_by_correlation` and :func:`plot_waterfall` draw them; the
  waterfall is interactive in Jupyter (a Vega-Lite chart, :func:`waterfall_spec`)
  with the matplotlib picture as its fallback.

Every function takes a DataFrame and returns a new DataFrame or a
:class:`matplotlib.figure.Figure`; none mutates its input. Payload columns the
analyses read (``spanId``, ``parentSpanId``, ``operation``) may be missing from a
frame; they are then treated as all missing. Empty frames give empty results
with the documented columns, and plots of nothing show "no data".

The public API is what this module exports (``__all__``, and :class:`Figure`, the
type the charts return); the private modules hold one concept each: ``_events``
(reading the input frame), ``_spans`` (pairing), ``_latency`` (the tables),
``_trace`` (one request's span tree), ``_charts`` (matplotlib) and ``_vega`` (the
interactive waterfall's Vega-Lite specification).

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
from evkit.analysis._trace import (
    CRITICAL_PATH_COLUMNS,
    GAP_COLUMNS,
    TRACE_COLUMNS,
    critical_path,
    idle_gaps,
    trace_spans,
)
from evkit.analysis._vega import waterfall_spec

__all__ = [
    "BOTTLENECK_COLUMNS",
    "CORRELATION_COLUMNS",
    "CRITICAL_PATH_COLUMNS",
    "GAP_COLUMNS",
    "OPERATION_COLUMNS",
    "SLOW_OPERATION_TYPE",
    "SPAN_COLUMNS",
    "TRACE_COLUMNS",
    "bottlenecks",
    "critical_path",
    "idle_gaps",
    "latency_by_correlation",
    "latency_by_operation",
    "plot_latency_by_correlation",
    "plot_waterfall",
    "spans",
    "trace_spans",
    "waterfall_spec",
]
