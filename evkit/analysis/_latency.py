"""Latency tables: spans summarised per request and per operation, and ranked.

This module is responsible for :func:`latency_by_correlation`,
:func:`latency_by_operation` and :func:`bottlenecks`, their columns
(:data:`CORRELATION_COLUMNS`, :data:`OPERATION_COLUMNS`, :data:`BOTTLENECK_COLUMNS`)
and the slow-operation events :func:`bottlenecks` counts.

It must not pair events itself (it reads :func:`~evkit.analysis.spans`), draw, or
mutate its input.
"""

from __future__ import annotations

from typing import Final

import pandas as pd

from evkit.analysis._events import MILLISECOND, column, event_table, identifiers
from evkit.analysis._spans import FAILED, spans

__all__ = [
    "BOTTLENECK_COLUMNS",
    "CORRELATION_COLUMNS",
    "OPERATION_COLUMNS",
    "SLOW_OPERATION_TYPE",
    "bottlenecks",
    "latency_by_correlation",
    "latency_by_operation",
]

CORRELATION_COLUMNS: Final[tuple[str, ...]] = (
    "events",
    "operations",
    "wall_ms",
    "operation_ms",
    "slowest_operation",
    "slowest_ms",
    "errors",
)
"""Columns of :func:`latency_by_correlation`, in order."""

OPERATION_COLUMNS: Final[tuple[str, ...]] = (
    "count",
    "errors",
    "error_rate",
    "mean_ms",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "total_ms",
)
"""Columns of :func:`latency_by_operation`, in order."""

BOTTLENECK_COLUMNS: Final[tuple[str, ...]] = (*OPERATION_COLUMNS, "share", "slow_events")
"""Columns of :func:`bottlenecks`, in order."""

SLOW_OPERATION_TYPE: Final = "performance.slowOperation.detected"
"""Event type counted by :func:`bottlenecks` as ``slow_events``."""


def latency_by_correlation(df: pd.DataFrame) -> pd.DataFrame:
    """Summarise each request (correlation id): how long it took and where.

    The caller gets a DataFrame indexed by ``correlation_id`` with
    :data:`CORRELATION_COLUMNS`, sorted by ``wall_ms`` descending (ties by id):

    - ``events``: events carrying that correlation id (of any type);
    - ``operations``: spans of the request (see :func:`spans`);
    - ``wall_ms``: from the earliest to the latest moment seen, counting both
      event timestamps and reconstructed span starts, so it is never shorter
      than the longest span;
    - ``operation_ms``: sum of span durations (nested spans are counted on
      their own, so this can exceed ``wall_ms``);
    - ``slowest_operation`` / ``slowest_ms``: the longest span (NaN when no
      span has a duration);
    - ``errors``: spans that failed.

    Events without a correlation id are left out. An empty frame gives an empty
    table with these columns.

    Raises:
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    events = event_table(df)
    events = events[events["correlation_id"].notna() & events["timestamp"].notna()]
    if events.empty:
        return _empty_frame(CORRELATION_COLUMNS, index_name="correlation_id")

    by_request = events.groupby("correlation_id", sort=True)["timestamp"]
    table = pd.DataFrame(
        {
            "events": by_request.size(),
            "first": by_request.min(),
            "last": by_request.max(),
        }
    )

    span_table = spans(df)
    span_table = span_table[span_table["correlation_id"].notna()]
    by_span = span_table.groupby("correlation_id", sort=True)
    slowest = (
        span_table[span_table["duration_ms"].notna()]
        .sort_values("duration_ms", ascending=False, kind="stable")
        .drop_duplicates("correlation_id")
        .set_index("correlation_id")
    )
    span_summary = pd.DataFrame(
        {
            "operations": by_span.size(),
            "operation_ms": by_span["duration_ms"].sum(),
            "errors": (span_table["status"] == FAILED).groupby(span_table["correlation_id"]).sum(),
            "span_start": by_span["start"].min(),
            "span_end": by_span["end"].max(),
            "slowest_operation": slowest["operation"],
            "slowest_ms": slowest["duration_ms"],
        }
    )
    table = table.join(span_summary, how="outer")

    window_start = table[["first", "span_start"]].min(axis=1)
    window_end = table[["last", "span_end"]].max(axis=1)
    result = pd.DataFrame(
        {
            "events": table["events"].fillna(0).astype("int64"),
            "operations": table["operations"].fillna(0).astype("int64"),
            "wall_ms": ((window_end - window_start) / MILLISECOND).astype("float64"),
            "operation_ms": table["operation_ms"].fillna(0.0).astype("float64"),
            "slowest_operation": table["slowest_operation"].astype("str"),
            "slowest_ms": table["slowest_ms"].astype("float64"),
            "errors": table["errors"].fillna(0).astype("int64"),
        }
    )
    result.index.name = "correlation_id"
    return result.sort_values("wall_ms", ascending=False, kind="stable")


def latency_by_operation(df: pd.DataFrame) -> pd.DataFrame:
    """Summarise each operation's latency and errors across all requests.

    The caller gets a DataFrame indexed by ``operation`` with
    :data:`OPERATION_COLUMNS`, sorted by ``total_ms`` descending (ties by name):

    - ``count``: spans of the operation, running ones included;
    - ``errors`` / ``error_rate``: failed spans and ``errors / count``;
    - ``mean_ms``, ``p50_ms``, ``p95_ms``, ``p99_ms``, ``max_ms``: over spans
      with a known duration; percentiles use pandas' default *linear*
      interpolation between the two nearest ranks (``numpy.percentile``'s
      default too), so ``p99_ms`` of few samples lies between the two largest;
    - ``total_ms``: sum of durations, the time the operation cost in total.

    Statistics of an operation with no known duration are NaN (``total_ms``
    is 0). An empty frame gives an empty table with these columns.

    Raises:
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    return _operation_table(spans(df))


def bottlenecks(df: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """Rank operations by the time they cost, most expensive first.

    The caller gets the first ``top`` rows of :func:`latency_by_operation`
    (already ranked by ``total_ms``) with two more columns
    (:data:`BOTTLENECK_COLUMNS`):

    - ``share``: the operation's ``total_ms`` as a fraction of all span time
      (0 when no span has a duration);
    - ``slow_events``: how many ``performance.slowOperation.detected`` events
      name the operation. An event names it when its payload ``operation``
      equals the operation (``github.api``), or its payload ``service`` and
      ``operation`` joined by a dot do (the collector stores that payload
      ``service`` as ``payload.service``; a frame without that column may keep
      it under ``service``). Only an event that names no operation this way is
      matched leniently against each operation's last segment (``api``).

    Raises:
        ValueError: ``top`` is smaller than 1.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}; pass e.g. top=10")
    table = latency_by_operation(df)
    total = float(table["total_ms"].sum())
    share = table["total_ms"] / total if total > 0 else table["total_ms"] * 0.0
    slow = _slow_event_counts(df, list(table.index))
    result = table.assign(
        share=share.astype("float64"),
        slow_events=pd.Series(slow, index=table.index, dtype="int64"),
    )
    return result.head(top)


def _operation_table(span_table: pd.DataFrame) -> pd.DataFrame:
    if span_table.empty:
        return _empty_frame(OPERATION_COLUMNS, index_name="operation")
    by_operation = span_table.groupby("operation", sort=True)
    durations = by_operation["duration_ms"]
    count = by_operation.size()
    errors = (span_table["status"] == FAILED).groupby(span_table["operation"]).sum()
    percentiles = durations.quantile([0.5, 0.95, 0.99]).unstack()
    result = pd.DataFrame(
        {
            "count": count.astype("int64"),
            "errors": errors.astype("int64"),
            "error_rate": (errors / count).astype("float64"),
            "mean_ms": durations.mean().astype("float64"),
            "p50_ms": percentiles[0.5].astype("float64"),
            "p95_ms": percentiles[0.95].astype("float64"),
            "p99_ms": percentiles[0.99].astype("float64"),
            "max_ms": durations.max().astype("float64"),
            "total_ms": durations.sum().astype("float64"),
        }
    )
    result.index.name = "operation"
    return result.sort_values("total_ms", ascending=False, kind="stable")


def _slow_event_counts(df: pd.DataFrame, operations: list[str]) -> list[int]:
    """For each operation, the slow-operation events that name it."""
    if not operations or len(df) == 0:
        return [0] * len(operations)
    slow = (column(df, "type") == SLOW_OPERATION_TYPE).to_numpy()
    if not slow.any():
        return [0] * len(operations)
    named = identifiers(column(df, "operation"))[slow]
    service = identifiers(column(df, "payload.service"))[slow]
    if service.isna().all():
        # Frames not built by the collector may keep the payload's "service"
        # under its own name; ignore it where it is just the event's service.
        plain = identifiers(column(df, "service"))[slow]
        service = plain.where(plain != SLOW_OPERATION_TYPE.partition(".")[0])
    pairs = pd.DataFrame({"operation": named, "service": service}).dropna(subset=["operation"])
    tally = pairs.value_counts(dropna=False)

    known = set(operations)
    counts = dict.fromkeys(operations, 0)
    for (operation, owner), number in tally.items():
        exact = {
            name
            for name in (operation, f"{owner}.{operation}" if isinstance(owner, str) else None)
            if name in known
        }
        matches = exact or {name for name in operations if name.rpartition(".")[2] == operation}
        for name in matches:
            counts[name] += int(number)
    return [counts[name] for name in operations]


def _empty_frame(columns: tuple[str, ...], index_name: str) -> pd.DataFrame:
    dtypes = {
        "events": "int64",
        "operations": "int64",
        "errors": "int64",
        "count": "int64",
        "slow_events": "int64",
        "slowest_operation": "str",
    }
    frame = pd.DataFrame(
        {name: pd.Series(dtype=dtypes.get(name, "float64")) for name in columns},
        index=pd.Index([], dtype="str", name=index_name),
    )
    return frame
