"""Spans: started / completed / failed events paired into one row per operation.

This module is responsible for :func:`spans`, the table every other analysis is
built on, and for the shape of that table (:data:`SPAN_COLUMNS`, its dtypes, the
span statuses).

It must not summarise or draw spans (that is :mod:`evkit.analysis._latency`,
``_trace`` and ``_charts``), and must not mutate its input.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from evkit.analysis._events import MILLISECOND, event_table

__all__ = ["FAILED", "RUNNING", "SPAN_COLUMNS", "empty_spans", "spans"]

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

RUNNING: Final = "running"
"""Status of a span whose start has no end (yet)."""

FAILED: Final = "failed"
"""Status of a span that ended with ``X.failed``."""

_STARTED: Final = "started"
_ENDED: Final = ("completed", FAILED)
_TIMESTAMP_DTYPE: Final = "datetime64[ns, UTC]"


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
    events = event_table(df)
    is_span_event = (events["action"] == _STARTED) | events["action"].isin(_ENDED)
    events = events[is_span_event & (events["operation"] != "") & events["timestamp"].notna()]
    if events.empty:
        return empty_spans()

    events = _in_pairing_order(events)
    orphan = _orphan_ends(events)
    paired = _paired_spans(events, orphan)
    unstarted = _unstarted_spans(events[orphan])

    parts = [part for part in (paired, unstarted) if not part.empty]
    result = pd.concat(parts, ignore_index=True)
    result = result.sort_values(["start", "position"], kind="stable", ignore_index=True)
    return _conform_spans(result.drop(columns="position"))


def empty_spans() -> pd.DataFrame:
    """A span table with no rows, with :data:`SPAN_COLUMNS` and their dtypes."""
    return _conform_spans(pd.DataFrame({name: pd.Series(dtype=object) for name in SPAN_COLUMNS}))


def _in_pairing_order(events: pd.DataFrame) -> pd.DataFrame:
    """The span events numbered by pairing ``group``, sorted by group then stream order."""
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
    return events.sort_values(["group", "timestamp", "position"], kind="stable").reset_index(
        drop=True
    )


def _orphan_ends(events: pd.DataFrame) -> pd.Series:
    """True for each end event with no open start to close (events in pairing order)."""
    group = events["group"]
    # FIFO matching: a start pushes, an end pops the oldest open start. An end
    # is an orphan exactly when the open count would go below zero, i.e. when
    # the running balance reaches a new minimum below zero.
    balance = pd.Series(np.where(events["is_start"], 1, -1)).groupby(group).cumsum()
    lowest_before = balance.groupby(group).cummin().groupby(group).shift(1).fillna(0).clip(upper=0)
    orphan: pd.Series = ~events["is_start"] & (balance < lowest_before)
    return orphan


def _paired_spans(events: pd.DataFrame, orphan: pd.Series) -> pd.DataFrame:
    """One row per start event, closed by its end event when it has one."""
    paired_end = ~events["is_start"] & ~orphan
    starts = events[events["is_start"]]
    starts = starts.assign(rank=starts.groupby("group").cumcount())
    ends = events[paired_end]
    ends = ends.assign(rank=ends.groupby("group").cumcount())
    # With orphans removed, the k-th end of a group closes its k-th start.
    merged = starts.merge(ends, on=["group", "rank"], how="left", suffixes=("", "_end"))

    end_time = merged["timestamp_end"]
    return pd.DataFrame(
        {
            "operation": merged["operation"],
            "correlation_id": merged["correlation_id"].fillna(merged["correlation_id_end"]),
            "span_id": merged["span_id"].fillna(merged["span_id_end"]),
            "parent_span_id": merged["parent_span_id"].fillna(merged["parent_span_id_end"]),
            "start": merged["timestamp"],
            "end": end_time,
            "duration_ms": merged["duration_ms_end"].fillna(
                (end_time - merged["timestamp"]) / MILLISECOND
            ),
            "status": merged["action_end"].fillna(RUNNING),
            "position": merged["position"],
        }
    )


def _unstarted_spans(lonely: pd.DataFrame) -> pd.DataFrame:
    """One row per orphan end event, started ``duration`` before it ended."""
    known_duration = pd.to_timedelta(lonely["duration_ms"], unit="ms").fillna(pd.Timedelta(0))
    return pd.DataFrame(
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
