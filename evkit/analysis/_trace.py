"""One request's trace: its spans as a tree, and the paths through it.

This module is responsible for :func:`critical_path` (the spans a request actually
waited on), for the nesting order the waterfall draws (each parent above its
children), and for picking one request's spans out of a frame, with an error that
lists the ids present when the asked-for one is not.

It must not draw (that is :mod:`evkit.analysis._charts`) or mutate its input.
"""

from __future__ import annotations

from collections.abc import Hashable

import pandas as pd

from evkit.analysis._events import column, correlation_ids, timestamps
from evkit.analysis._spans import empty_spans, spans

__all__ = ["RequestSpans", "critical_labels", "critical_path", "nesting_order", "request_spans"]


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
    request = request_spans(df, correlation_id)
    if request is None or request.spans.empty:
        return empty_spans()
    labels = critical_labels(request.spans, request.last)
    return request.spans.loc[labels].reset_index(drop=True)


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


def nesting_order(span_table: pd.DataFrame) -> list[tuple[Hashable, int]]:
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
