"""One request's trace: its spans as a tree, the path it waited on, and its idle gaps.

This module is responsible for :func:`critical_path` (the spans a request actually
waited on, with each step's own time and share), :func:`trace_spans` (the spans in
tree order with their depth, offset and own time: what the waterfall draws),
:func:`idle_gaps` (when no instrumented step was running), and for picking one
request's spans out of a frame, with an error that lists the ids present when the
asked-for one is not.

It must not draw (that is :mod:`evkit.analysis._charts` and ``_vega``) or mutate its
input.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Final

import numpy as np
import pandas as pd

from evkit.analysis._events import MILLISECOND, column, correlation_ids, timestamps
from evkit.analysis._spans import SPAN_COLUMNS, empty_spans, spans

__all__ = [
    "CRITICAL_PATH_COLUMNS",
    "GAP_COLUMNS",
    "TRACE_COLUMNS",
    "RequestSpans",
    "critical_labels",
    "critical_path",
    "idle_gaps",
    "nesting_order",
    "request_spans",
    "trace_spans",
]

CRITICAL_PATH_COLUMNS: Final[tuple[str, ...]] = (*SPAN_COLUMNS, "own_ms", "share")
"""Columns of :func:`critical_path`, in order."""

TRACE_COLUMNS: Final[tuple[str, ...]] = (
    *SPAN_COLUMNS,
    "depth",
    "offset_ms",
    "length_ms",
    "own_ms",
    "critical",
)
"""Columns of :func:`trace_spans`, in order."""

GAP_COLUMNS: Final[tuple[str, ...]] = ("start", "end", "offset_ms", "duration_ms")
"""Columns of :func:`idle_gaps`, in order."""


def critical_path(df: pd.DataFrame, correlation_id: str) -> pd.DataFrame:
    """The spans that determined one request's wall time, and what each step cost.

    Starting at the root span (no parent, or a parent that is not among the
    request's spans) that ends last, walk back from its end: the child that
    ended last is what it waited on; before that child started, the child that
    ended last then; and so on, descending into each chosen child the same way
    (the critical path of tracing tools: sequential steps are all on it, of
    parallel ones only the one that finished last). Running spans count as
    ending at the request's last timestamp. Ties go to the span that started
    first.

    The caller gets the rows of :func:`spans` on the path in start order (the
    root first), with a fresh index, and two more columns
    (:data:`CRITICAL_PATH_COLUMNS`):

    - ``own_ms``: the step's own time on the path, its duration less the time of
      its children on the path (never below 0). The largest ``own_ms`` is where the
      request lost the most time: ``path.loc[path["own_ms"].idxmax()]``.
    - ``share``: ``own_ms`` as a fraction of the path's total (the root's duration
      when children nest inside their parents); the shares add up to 1.

    A running span's length is measured to the request's last timestamp. A request
    with events but no spans gives an empty frame with these columns, as does a
    frame with no events at all.

    Raises:
        KeyError: the frame has events, but none with this correlation id; the
            message lists some ids that are present.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    request = request_spans(df, correlation_id)
    if request is None or request.spans.empty:
        return _with_columns(empty_spans(), own_ms=[], share=[])
    labels = critical_labels(request.spans, request.last)
    path = request.spans.loc[labels]
    lengths = _lengths(path, request.last)
    offsets = (path["start"] - request.first) / MILLISECOND
    own = _own_times(path, offsets, lengths)
    total = float(own.sum())
    share = own / total if total > 0 else own * 0.0
    return _with_columns(path.reset_index(drop=True), own_ms=own.to_numpy(), share=share.to_numpy())


def trace_spans(df: pd.DataFrame, correlation_id: str) -> pd.DataFrame:
    """One request's spans as a tree, in the order a waterfall draws them.

    The caller gets the rows of :func:`spans` of the request in nesting order (each
    parent directly above its children, roots and siblings by start time) with a
    fresh index and :data:`TRACE_COLUMNS`:

    - ``depth``: 0 for a root (no parent, or a parent not among the spans), 1 for
      its children, and so on;
    - ``offset_ms``: when the span started, in ms since the request's first event;
    - ``length_ms``: its duration, or for a running span the time to the request's
      last timestamp;
    - ``own_ms``: its length less the time covered by its children (self time);
    - ``critical``: whether it is on the :func:`critical_path`.

    A request with events but no spans, or a frame with no events, gives an empty
    frame with these columns.

    Raises:
        KeyError: the frame has events, but none with this correlation id.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    request = request_spans(df, correlation_id)
    if request is None or request.spans.empty:
        return _empty_trace()
    table = request.spans
    order = nesting_order(table)
    ordered = table.loc[[label for label, _ in order]]
    lengths = _lengths(ordered, request.last)
    offsets = (ordered["start"] - request.first) / MILLISECOND
    on_path = set(critical_labels(table, request.last))
    return _with_columns(
        ordered.reset_index(drop=True),
        depth=[depth for _, depth in order],
        offset_ms=offsets.to_numpy(dtype="float64"),
        length_ms=lengths.to_numpy(dtype="float64"),
        own_ms=_own_times(ordered, offsets, lengths).to_numpy(dtype="float64"),
        critical=[label in on_path for label, _ in order],
    )


def idle_gaps(df: pd.DataFrame, correlation_id: str, min_ms: float | None = None) -> pd.DataFrame:
    """When one request waited on nothing: no step of it was running.

    A step is any span below a root (a span without a parent among the request's
    spans), or a root with no children. Between the request's first and last moment,
    the stretches no step covers are time its root spent outside every instrumented
    step (code nobody timed, a sleep, a queue), or time between spans when nothing
    ran at all. Stretches shorter than ``min_ms`` are left out; by default 1 % of the
    request's wall time and at least 1 ms (event timestamps are whole milliseconds,
    so shorter gaps may be rounding).

    The caller gets :data:`GAP_COLUMNS`, one row per gap in time order: ``start``
    and ``end`` (UTC timestamps), ``offset_ms`` (since the request's first event)
    and ``duration_ms``. A request without spans has no gaps.

    Raises:
        KeyError: the frame has events, but none with this correlation id.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes;
            ``min_ms`` is negative.
    """
    if min_ms is not None and min_ms < 0:
        raise ValueError(f"min_ms must be 0 or more, got {min_ms!r}")
    request = request_spans(df, correlation_id)
    if request is None or request.spans.empty:
        return _gap_frame([], [], pd.NaT)
    table = request.spans
    wall = (request.last - request.first) / MILLISECOND
    offsets = ((table["start"] - request.first) / MILLISECOND).to_numpy(dtype="float64")
    ends = offsets + _lengths(table, request.last).to_numpy(dtype="float64")
    waiting_roots = _roots(table) & table["span_id"].isin(set(table["parent_span_id"].dropna()))
    steps = ~waiting_roots.to_numpy(dtype=bool)
    threshold = max(1.0, 0.01 * wall) if min_ms is None else min_ms
    gaps: list[tuple[float, float]] = []
    cursor = 0.0
    for begin, end in [*_merged(zip(offsets[steps], ends[steps], strict=True)), (wall, wall)]:
        if begin > cursor and begin - cursor >= threshold:
            gaps.append((cursor, begin))
        cursor = max(cursor, end)
    return _gap_frame([gap[0] for gap in gaps], [gap[1] for gap in gaps], request.first)


class RequestSpans:
    """One request's spans with the first and last moment it was seen."""

    __slots__ = ("first", "last", "spans")

    def __init__(self, spans: pd.DataFrame, first: pd.Timestamp, last: pd.Timestamp) -> None:
        self.spans = spans
        self.first = first
        self.last = last


def request_spans(df: pd.DataFrame, correlation_id: str) -> RequestSpans | None:
    """Spans of one request; None when the frame has no events at all.

    Raises:
        KeyError: the frame has events, but none with this correlation id.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    if len(df) == 0:
        return None
    correlation = correlation_ids(df)
    mine = correlation == correlation_id
    if not mine.any():
        raise KeyError(_unknown_correlation_message(correlation_id, correlation))
    request = df.reset_index(drop=True)[mine.to_numpy()]
    span_table = spans(request)
    seen = timestamps(column(request, "timestamp")).dropna()
    moments = pd.concat(
        [seen, span_table["start"].dropna(), span_table["end"].dropna()], ignore_index=True
    )
    if moments.empty:
        return RequestSpans(span_table, pd.NaT, pd.NaT)
    return RequestSpans(span_table, moments.min(), moments.max())


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


def critical_labels(span_table: pd.DataFrame, last: pd.Timestamp) -> list[Hashable]:
    """Index labels of the critical path, in start order (the root first)."""
    ends = span_table["end"].fillna(last)
    starts = span_table["start"]
    span_ids = span_table["span_id"]
    candidates = span_table.index[_roots(span_table).to_numpy()]
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


def nesting_order(span_table: pd.DataFrame) -> list[tuple[Hashable, int]]:
    """(label, depth) pairs, depth first: every parent right above its children.

    ``span_table`` is ordered by start, so roots and siblings come out by start.
    Spans whose parent is absent are roots; a parent cycle is broken where it
    is first entered.
    """
    span_ids = span_table["span_id"]
    children = _children_by_parent(span_table)
    is_root = _roots(span_table)

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


def _roots(span_table: pd.DataFrame) -> pd.Series:
    """Spans without a parent among these spans (or their own parent)."""
    span_ids = span_table["span_id"]
    parents = span_table["parent_span_id"]
    present = set(span_ids.dropna())
    is_root: pd.Series = parents.isna() | ~parents.isin(present) | (parents == span_ids)
    return is_root


def _lengths(span_table: pd.DataFrame, last: pd.Timestamp) -> pd.Series:
    """Each span's length in ms: its duration, else its start to its end (or ``last``)."""
    measured = (span_table["end"].fillna(last) - span_table["start"]) / MILLISECOND
    return span_table["duration_ms"].fillna(measured).astype("float64").clip(lower=0.0)


def _own_times(span_table: pd.DataFrame, offsets: pd.Series, lengths: pd.Series) -> pd.Series:
    """Each span's length less what its children (among these spans) cover of it."""
    intervals: dict[str, list[tuple[float, float]]] = {}
    for parent, begin, length in zip(span_table["parent_span_id"], offsets, lengths, strict=True):
        if isinstance(parent, str):
            intervals.setdefault(parent, []).append((begin, begin + length))
    own = []
    for span_id, length in zip(span_table["span_id"], lengths, strict=True):
        children = intervals.get(span_id, []) if isinstance(span_id, str) else []
        # Not clipped to the parent: starts are whole milliseconds, durations are not,
        # so a child may seem to poke out of its parent by less than one.
        covered = sum(end - begin for begin, end in _merged(children))
        own.append(max(0.0, length - covered))
    return pd.Series(own, index=span_table.index, dtype="float64")


def _merged(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping or touching intervals merged, in order."""
    merged: list[tuple[float, float]] = []
    for begin, end in sorted(intervals):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def _with_columns(frame: pd.DataFrame, **columns: object) -> pd.DataFrame:
    """``frame`` with these columns added (float64, except ``depth`` and ``critical``)."""
    result = frame.copy()
    for name, values in columns.items():
        series = pd.Series(values, index=result.index, dtype=object)
        result[name] = series.astype(_COLUMN_DTYPES.get(name, "float64"))
    return result


_COLUMN_DTYPES: Final = {"depth": "int64", "critical": "bool"}


def _empty_trace() -> pd.DataFrame:
    return _with_columns(
        empty_spans(), depth=[], offset_ms=[], length_ms=[], own_ms=[], critical=[]
    )


def _gap_frame(begins: list[float], ends: list[float], first: pd.Timestamp) -> pd.DataFrame:
    begin = np.asarray(begins, dtype="float64")
    end = np.asarray(ends, dtype="float64")
    origin = first if not pd.isna(first) else pd.Timestamp(0, tz="UTC")
    return pd.DataFrame(
        {
            "start": origin + pd.to_timedelta(begin, unit="ms"),
            "end": origin + pd.to_timedelta(end, unit="ms"),
            "offset_ms": begin,
            "duration_ms": end - begin,
        }
    ).astype({"start": "datetime64[ns, UTC]", "end": "datetime64[ns, UTC]"})
