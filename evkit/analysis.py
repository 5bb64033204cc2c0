"""Where the time goes: spans, latency tables and charts over collected events.

This module is responsible for turning the collector's event DataFrame (the
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

It must not import any other evkit module, open sockets, read files or touch
pyplot's global state (figures are built with :class:`~matplotlib.figure.Figure`
directly, so no GUI backend is selected).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as _MatplotlibFigure
from matplotlib.patches import Patch


class Figure(_MatplotlibFigure):
    """A matplotlib Figure that shows itself in Jupyter with no ``%matplotlib`` magic.

    Without pyplot, a bare Figure has no display hook and a notebook prints its repr;
    ``_repr_png_`` gives every Jupyter frontend the picture. Where the inline backend
    is active its own formatter takes precedence, so the chart is shown once.
    """

    def _repr_png_(self) -> bytes:
        from io import BytesIO

        buffer = BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


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

SPAN_COLUMNS: Final[tuple[str, ...]] = (
    "operation",
    "correlation_id",
    "span_id",
    "parent_span_id",
    "start",
    "end",
    "duration_ms",
    "status",
)
"""Columns of :func:`spans` (and :func:`critical_path`), in order."""

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

_STARTED: Final = "started"
_ENDED: Final = ("completed", "failed")
_RUNNING: Final = "running"
_FAILED: Final = "failed"
_MILLISECOND: Final = pd.Timedelta(milliseconds=1)
_TIMESTAMP_DTYPE: Final = "datetime64[ns, UTC]"

_WALL_COLOR: Final = "tab:blue"
_OPERATION_COLOR: Final = "tab:orange"
_SPAN_COLOR: Final = "tab:blue"
_CRITICAL_COLOR: Final = "tab:orange"
_FAILED_EDGE: Final = "red"


# --------------------------------------------------------------------------
# Spans
# --------------------------------------------------------------------------


def spans(df: pd.DataFrame) -> pd.DataFrame:
    """Pair started/completed/failed events into one row per operation.

    The caller gets a new DataFrame with :data:`SPAN_COLUMNS`, one row per span,
    ordered by ``start`` (then by the position of the span's first event):

    - ``operation``: the event type without its last segment (``github.api``);
    - ``correlation_id``, ``span_id``, ``parent_span_id``: strings, NaN when
      missing (taken from the start event, else from the end event);
    - ``start`` / ``end``: ``datetime64[ns, UTC]``; ``end`` is NaT while running;
    - ``duration_ms``: the end event's ``duration_ms`` (payload ``duration``),
      otherwise ``end - start``; NaN while running;
    - ``status``: ``completed``, ``failed`` or ``running`` (a start with no end).

    Pairing: events carrying a ``spanId`` pair with the end event of the same
    ``spanId`` and operation. Events without one pair first-in-first-out within
    (``correlation_id``, operation), in stream order (``timestamp``, then row
    order). An end event with no start to pair with still yields a span whose
    ``start`` is ``end - duration`` (``start == end`` and NaN duration when the
    event carries no duration). Events of any other action (``*.created``,
    ``performance.slowOperation.detected``...) and events without a timestamp
    are not spans.

    The work is vectorised (one group-wise sort, cumulative sums and a merge),
    so a million-event frame takes seconds.

    Raises:
        ValueError: the ``timestamp`` column holds values pandas cannot parse
            as datetimes.
    """
    events = _event_table(df)
    is_span_event = (events["action"] == _STARTED) | events["action"].isin(_ENDED)
    events = events[is_span_event & (events["operation"] != "") & events["timestamp"].notna()]
    if events.empty:
        return _empty_spans()

    has_span_id = events["span_id"].notna()
    # Events with a spanId are keyed by it; the others queue per request.
    pairing_key = events["span_id"].where(has_span_id, events["correlation_id"])
    events = events.assign(
        group=pd.DataFrame({"by_span": has_span_id, "key": pairing_key, "op": events["operation"]})
        .groupby(["by_span", "key", "op"], sort=False, dropna=False)
        .ngroup()
        .to_numpy(),
        is_start=(events["action"] == _STARTED).to_numpy(),
    )
    events = events.sort_values(["group", "timestamp", "position"], kind="stable").reset_index(
        drop=True
    )

    group = events["group"]
    # FIFO matching: a start pushes, an end pops the oldest open start. An end
    # is an orphan exactly when the open count would go below zero, i.e. when
    # the running balance reaches a new minimum below zero.
    balance = pd.Series(np.where(events["is_start"], 1, -1)).groupby(group).cumsum()
    lowest_before = balance.groupby(group).cummin().groupby(group).shift(1).fillna(0).clip(upper=0)
    is_end = ~events["is_start"]
    orphan = is_end & (balance < lowest_before)
    paired_end = is_end & ~orphan

    starts = events[events["is_start"]]
    starts = starts.assign(rank=starts.groupby("group").cumcount())
    ends = events[paired_end]
    ends = ends.assign(rank=ends.groupby("group").cumcount())
    # With orphans removed, the k-th end of a group closes its k-th start.
    merged = starts.merge(ends, on=["group", "rank"], how="left", suffixes=("", "_end"))

    end_time = merged["timestamp_end"]
    paired = pd.DataFrame(
        {
            "operation": merged["operation"],
            "correlation_id": merged["correlation_id"].fillna(merged["correlation_id_end"]),
            "span_id": merged["span_id"].fillna(merged["span_id_end"]),
            "parent_span_id": merged["parent_span_id"].fillna(merged["parent_span_id_end"]),
            "start": merged["timestamp"],
            "end": end_time,
            "duration_ms": merged["duration_ms_end"].fillna(
                (end_time - merged["timestamp"]) / _MILLISECOND
            ),
            "status": merged["action_end"].fillna(_RUNNING),
            "position": merged["position"],
        }
    )

    lonely = events[orphan]
    known_duration = pd.to_timedelta(lonely["duration_ms"], unit="ms").fillna(pd.Timedelta(0))
    unstarted = pd.DataFrame(
        {
            "operation": lonely["operation"],
            "correlation_id": lonely["correlation_id"],
            "span_id": lonely["span_id"],
            "parent_span_id": lonely["parent_span_id"],
            "start": lonely["timestamp"] - known_duration,
            "end": lonely["timestamp"],
            "duration_ms": lonely["duration_ms"],
            "status": lonely["action"],
            "position": lonely["position"],
        }
    )

    parts = [part for part in (paired, unstarted) if not part.empty]
    result = pd.concat(parts, ignore_index=True)
    result = result.sort_values(["start", "position"], kind="stable", ignore_index=True)
    return _conform_spans(result.drop(columns="position"))


# --------------------------------------------------------------------------
# Latency tables
# --------------------------------------------------------------------------


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
    events = _event_table(df)
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
            "errors": (span_table["status"] == _FAILED).groupby(span_table["correlation_id"]).sum(),
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
            "wall_ms": ((window_end - window_start) / _MILLISECOND).astype("float64"),
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


def critical_path(df: pd.DataFrame, correlation_id: str) -> pd.DataFrame:
    """The spans that determined one request's wall time.

    Starting at the root span (no parent, or a parent that is not among the
    request's spans) that ends last, walk back from its end: the child that
    ended last is what it waited on; before that child started, the child that
    ended last then; and so on, descending into each chosen child the same way
    (the critical path of tracing tools: sequential steps are all on it, of
    parallel ones only the one that finished last). Running spans count as
    ending at the request's last timestamp. Ties go to the span that started
    first.

    The caller gets the rows of :func:`spans` on the path in start order (the
    root first), with a fresh index. A request with events but no spans gives an
    empty frame with :data:`SPAN_COLUMNS`, as does a frame with no events at all.

    Raises:
        KeyError: the frame has events, but none with this correlation id; the
            message lists some ids that are present.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    request = _request_spans(df, correlation_id)
    if request is None or request.spans.empty:
        return _empty_spans()
    labels = _critical_labels(request.spans, request.last)
    return request.spans.loc[labels].reset_index(drop=True)


# --------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------


def plot_latency_by_correlation(df: pd.DataFrame, top: int = 20) -> Figure:
    """Draw the ``top`` slowest requests as horizontal bars, slowest on top.

    Each request gets a wide bar for ``wall_ms`` and a narrower bar over it for
    ``operation_ms`` (see :func:`latency_by_correlation`), so the axes hold two
    patches per request. The caller gets a new, unattached
    :class:`~matplotlib.figure.Figure` (display it in Jupyter or call
    ``savefig``); with no correlated events it shows "no data".

    Raises:
        ValueError: ``top`` is smaller than 1.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}; pass e.g. top=20")
    table = latency_by_correlation(df).head(top)
    if table.empty:
        return _no_data_figure("Latency by correlation id")

    count = len(table)
    figure = Figure(figsize=(8.0, max(2.5, 0.4 * count + 1.5)), layout="constrained")
    axes = figure.add_subplot()
    rows = np.arange(count)
    axes.barh(rows, table["wall_ms"].to_numpy(), height=0.8, color=_WALL_COLOR, label="wall time")
    axes.barh(
        rows,
        table["operation_ms"].to_numpy(),
        height=0.4,
        color=_OPERATION_COLOR,
        label="sum of operation time",
    )
    axes.set_yticks(rows, labels=[str(label) for label in table.index])
    axes.invert_yaxis()
    axes.set_xlabel("milliseconds")
    axes.set_ylabel("correlation id")
    axes.set_title(f"Slowest {count} request{'s' if count != 1 else ''}")
    axes.legend(loc="lower right")
    return figure


def plot_waterfall(df: pd.DataFrame, correlation_id: str) -> Figure:
    """Draw one request's spans as a waterfall, one horizontal bar per span.

    Bars run from each span's start to its end, in milliseconds since the
    request's first event. Rows are in nesting order (each parent directly
    above its children, siblings by start time) and labels are indented by
    depth. Spans on the :func:`critical_path` are drawn in a distinct color;
    failed spans get a red hatched edge and a "failed" label; running spans are
    drawn, faded, up to the request's last timestamp and labelled "running".
    The axes hold exactly one patch per span.

    The caller gets a new, unattached :class:`~matplotlib.figure.Figure`. A
    frame with no events, or a request with no spans, shows "no data".

    Raises:
        KeyError: the frame has events, but none with this correlation id; the
            message lists some ids that are present.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    title = f"Waterfall of {correlation_id}"
    request = _request_spans(df, correlation_id)
    if request is None or request.spans.empty:
        return _no_data_figure(title)

    span_table = request.spans
    order = _nesting_order(span_table)
    on_path = set(_critical_labels(span_table, request.last))
    ordered = span_table.loc[[label for label, _ in order]]
    ends = ordered["end"].fillna(request.last)
    offsets = ((ordered["start"] - request.first) / _MILLISECOND).to_numpy(dtype="float64")
    widths = ((ends - ordered["start"]) / _MILLISECOND).to_numpy(dtype="float64")

    count = len(ordered)
    # At most 16 inches tall: a request with hundreds of spans stays a picture, not a poster.
    figure = Figure(figsize=(9.0, min(16.0, max(2.5, 0.35 * count + 1.5))), layout="constrained")
    axes = figure.add_subplot()
    rows = np.arange(count)
    colors = [_CRITICAL_COLOR if label in on_path else _SPAN_COLOR for label, _ in order]
    bars = axes.barh(rows, widths, left=offsets, height=0.6, color=colors)

    for row, (bar, status) in enumerate(zip(bars.patches, ordered["status"], strict=True)):
        right = offsets[row] + widths[row]
        if status == _FAILED:
            bar.set_edgecolor(_FAILED_EDGE)
            bar.set_linewidth(1.5)
            bar.set_hatch("//")
            axes.text(right, row, " failed", va="center", color=_FAILED_EDGE, fontsize=8)
        elif status == _RUNNING:
            bar.set_alpha(0.5)
            bar.set_hatch("..")
            axes.text(right, row, " running", va="center", fontsize=8)

    labels = [
        "    " * depth + str(operation)
        for (_, depth), operation in zip(order, ordered["operation"], strict=True)
    ]
    axes.set_yticks(rows, labels=labels)
    axes.invert_yaxis()
    axes.set_xlabel("milliseconds since the request's first event")
    axes.set_title(title)
    axes.legend(
        handles=[
            Patch(color=_SPAN_COLOR, label="span"),
            Patch(color=_CRITICAL_COLOR, label="critical path"),
            Patch(facecolor="white", edgecolor=_FAILED_EDGE, hatch="//", label="failed"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),  # outside the axes: never over the bars it explains
    )
    return figure


# --------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------


class _RequestSpans:
    """One request's spans with the first and last moment it was seen."""

    __slots__ = ("first", "last", "spans")

    def __init__(self, spans: pd.DataFrame, first: pd.Timestamp, last: pd.Timestamp) -> None:
        self.spans = spans
        self.first = first
        self.last = last


def _request_spans(df: pd.DataFrame, correlation_id: str) -> _RequestSpans | None:
    """Spans of one request; None when the frame has no events at all."""
    if len(df) == 0:
        return None
    correlation = _correlation_ids(df)
    mine = correlation == correlation_id
    if not mine.any():
        raise KeyError(_unknown_correlation_message(correlation_id, correlation))
    request = df.reset_index(drop=True)[mine.to_numpy()]
    span_table = spans(request)
    timestamps = _timestamps(_column(request, "timestamp")).dropna()
    moments = pd.concat(
        [timestamps, span_table["start"].dropna(), span_table["end"].dropna()], ignore_index=True
    )
    if moments.empty:
        return _RequestSpans(span_table, pd.NaT, pd.NaT)
    return _RequestSpans(span_table, moments.min(), moments.max())


def _unknown_correlation_message(correlation_id: str, correlation: pd.Series) -> str:
    known = sorted(str(value) for value in correlation.dropna().unique())
    if not known:
        return (
            f"correlation id {correlation_id!r} not found: no event in this frame carries "
            "a correlation id; emit events inside evkit.correlation(...) or with "
            "correlation_id=..."
        )
    shown = ", ".join(repr(value) for value in known[:5])
    more = f" and {len(known) - 5} more" if len(known) > 5 else ""
    return (
        f"correlation id {correlation_id!r} not found in this frame; "
        f"known ids: {shown}{more}. Pass one of them "
        "(latency_by_correlation(df).index lists them all)."
    )


def _critical_labels(span_table: pd.DataFrame, last: pd.Timestamp) -> list[Hashable]:
    """Index labels of the critical path, in start order (the root first)."""
    ends = span_table["end"].fillna(last)
    starts = span_table["start"]
    span_ids = span_table["span_id"]
    parents = span_table["parent_span_id"]
    present = set(span_ids.dropna())
    is_root = parents.isna() | ~parents.isin(present) | (parents == span_ids)
    candidates = span_table.index[is_root.to_numpy()]
    if len(candidates) == 0:  # every span has a parent present: a cycle
        candidates = span_table.index

    children = _children_by_parent(span_table)
    path: list[Hashable] = []
    visited: set[Hashable] = set()
    # Walk back from each span's end: the child that ended last before that point is what
    # the span was waiting on; before that child started, the one that ended last then;
    # and so on, descending into each (the critical path of tracing tools).
    stack: list[tuple[Hashable, pd.Timestamp]] = []
    root = _latest_ending(candidates, ends, starts)
    stack.append((root, ends.loc[root]))
    while stack:
        label, bound = stack.pop()
        if label in visited:
            continue
        path.append(label)
        visited.add(label)
        span_id = span_ids.loc[label]
        if pd.isna(span_id):
            continue
        waiting = [c for c in children.get(span_id, []) if c not in visited]
        bound = min(bound, ends.loc[label])
        while waiting:
            before = [c for c in waiting if ends.loc[c] <= bound]
            if not before:  # what remains overlapped the chosen step: it ran in parallel
                break
            child = _latest_ending(pd.Index(before), ends, starts)
            stack.append((child, bound))
            bound = starts.loc[child]
            waiting = [c for c in waiting if c != child and starts.loc[c] < bound]
    return sorted(path, key=lambda label: (starts.loc[label], -ends.loc[label].value))


def _latest_ending(candidates: pd.Index, ends: pd.Series, starts: pd.Series) -> Hashable:
    """The candidate that ends last; ties go to the earliest start, then order."""
    frame = pd.DataFrame({"end": ends.loc[candidates], "start": starts.loc[candidates]})
    ranked = frame.sort_values(["end", "start"], ascending=[False, True], kind="stable")
    label: Hashable = ranked.index[0]
    return label


def _children_by_parent(span_table: pd.DataFrame) -> dict[str, list[Hashable]]:
    children: dict[str, list[Hashable]] = {}
    for label, span_id, parent in zip(
        span_table.index, span_table["span_id"], span_table["parent_span_id"], strict=True
    ):
        if isinstance(parent, str) and parent != span_id:
            children.setdefault(parent, []).append(label)
    return children


def _nesting_order(span_table: pd.DataFrame) -> list[tuple[Hashable, int]]:
    """(label, depth) pairs, depth first: every parent right above its children.

    ``span_table`` is ordered by start, so roots and siblings come out by start.
    Spans whose parent is absent are roots; a parent cycle is broken where it
    is first entered.
    """
    span_ids = span_table["span_id"]
    parents = span_table["parent_span_id"]
    present = set(span_ids.dropna())
    children = _children_by_parent(span_table)
    is_root = parents.isna() | ~parents.isin(present) | (parents == span_ids)

    order: list[tuple[Hashable, int]] = []
    visited: set[Hashable] = set()

    def walk(label: Hashable, depth: int) -> None:
        stack = [(label, depth)]
        while stack:
            current, level = stack.pop()
            if current in visited:
                continue
            visited.add(current)
            order.append((current, level))
            span_id = span_ids.loc[current]
            kids = children.get(span_id, []) if isinstance(span_id, str) else []
            stack.extend((kid, level + 1) for kid in reversed(kids))

    for label in span_table.index[is_root.to_numpy()]:
        walk(label, 0)
    for label in span_table.index:  # only spans caught in a parent cycle remain
        walk(label, 0)
    return order


def _operation_table(span_table: pd.DataFrame) -> pd.DataFrame:
    if span_table.empty:
        return _empty_frame(OPERATION_COLUMNS, index_name="operation")
    by_operation = span_table.groupby("operation", sort=True)
    durations = by_operation["duration_ms"]
    count = by_operation.size()
    errors = (span_table["status"] == _FAILED).groupby(span_table["operation"]).sum()
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
    slow = (_column(df, "type") == SLOW_OPERATION_TYPE).to_numpy()
    if not slow.any():
        return [0] * len(operations)
    named = _identifiers(_column(df, "operation"))[slow]
    service = _identifiers(_column(df, "payload.service"))[slow]
    if service.isna().all():
        # Frames not built by the collector may keep the payload's "service"
        # under its own name; ignore it where it is just the event's service.
        plain = _identifiers(_column(df, "service"))[slow]
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


def _event_table(df: pd.DataFrame) -> pd.DataFrame:
    """The columns the analyses read, normalised, one row per input row."""
    frame = df.reset_index(drop=True)
    codes, uniques = pd.factorize(_column(frame, "type"))
    names = [str(name) for name in uniques]
    # Index -1 (a missing type) lands on the trailing empty string.
    operations = np.array([name.rpartition(".")[0] for name in names] + [""], dtype=object)
    actions = np.array([name.rpartition(".")[2] for name in names] + [""], dtype=object)
    return pd.DataFrame(
        {
            "position": np.arange(len(frame), dtype="int64"),
            "timestamp": _timestamps(_column(frame, "timestamp")),
            "operation": pd.Series(operations[codes], dtype="str"),
            "action": pd.Series(actions[codes], dtype="str"),
            "correlation_id": _correlation_ids(frame),
            "span_id": _identifiers(_column(frame, "spanId")),
            "parent_span_id": _identifiers(_column(frame, "parentSpanId")),
            "duration_ms": _durations(frame),
        }
    )


def _correlation_ids(frame: pd.DataFrame) -> pd.Series:
    correlation = _identifiers(_column(frame, "correlation_id"))
    if "correlationId" in frame.columns:
        correlation = correlation.fillna(_identifiers(frame["correlationId"]))
    return correlation.reset_index(drop=True)


def _durations(frame: pd.DataFrame) -> pd.Series:
    # The collector names payload.duration duration_ms; hand-built frames may not.
    name = "duration_ms" if "duration_ms" in frame.columns else "duration"
    values = _column(frame, name)
    return pd.to_numeric(values, errors="coerce").astype("float64").reset_index(drop=True)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """The named column, or an all-missing one when the frame lacks it."""
    if name in frame.columns:
        return frame[name]
    return pd.Series(np.nan, index=frame.index, dtype=object)


def _identifiers(values: pd.Series) -> pd.Series:
    """Identifiers as strings, with None, NaN and the empty string as NaN."""
    text = values.astype("str")
    return text.where(text != "")


def _timestamps(values: pd.Series) -> pd.Series:
    """UTC nanosecond timestamps; integers are epoch milliseconds (the wire format)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype) or values.dtype.kind == "M":
        converted = pd.to_datetime(values, utc=True)
    elif values.dtype.kind in "iuf":
        converted = pd.to_datetime(values, unit="ms", utc=True)
    else:
        try:
            converted = pd.to_datetime(values, utc=True)
        except (TypeError, ValueError) as error:
            raise ValueError(
                "the timestamp column must hold datetimes or epoch milliseconds; "
                f"pandas could not parse it: {error}"
            ) from error
    return converted.dt.as_unit("ns").reset_index(drop=True)


def _empty_spans() -> pd.DataFrame:
    return _conform_spans(pd.DataFrame({name: pd.Series(dtype=object) for name in SPAN_COLUMNS}))


def _conform_spans(frame: pd.DataFrame) -> pd.DataFrame:
    """Give a span table its documented column order and dtypes."""
    return pd.DataFrame(
        {
            "operation": frame["operation"].astype("str"),
            "correlation_id": frame["correlation_id"].astype("str"),
            "span_id": frame["span_id"].astype("str"),
            "parent_span_id": frame["parent_span_id"].astype("str"),
            "start": pd.to_datetime(frame["start"], utc=True).astype(_TIMESTAMP_DTYPE),
            "end": pd.to_datetime(frame["end"], utc=True).astype(_TIMESTAMP_DTYPE),
            "duration_ms": frame["duration_ms"].astype("float64"),
            "status": frame["status"].astype("str"),
        },
        index=frame.index,
    )


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


def _no_data_figure(title: str) -> Figure:
    figure = Figure(figsize=(6.0, 2.5), layout="constrained")
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    return figure
