"""The analyses' view of an event DataFrame: the columns they read, normalised.

This module is responsible for reading the collector's event frame (or a hand-built
one) the same way for every analysis: a missing column is all missing, identifiers
are strings with NaN for "none", timestamps are UTC nanoseconds (integers being the
wire format's epoch milliseconds), and durations are float milliseconds.

It must not pair, aggregate or draw anything, and must not mutate its input.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

__all__ = [
    "MILLISECOND",
    "column",
    "correlation_ids",
    "event_table",
    "identifiers",
    "timestamps",
]

MILLISECOND: Final = pd.Timedelta(milliseconds=1)
"""Divide a timedelta by it to get float milliseconds."""


def event_table(df: pd.DataFrame) -> pd.DataFrame:
    """The columns the analyses read, normalised, one row per input row.

    Columns: ``position`` (the row's place in ``df``), ``timestamp``,
    ``operation`` and ``action`` (the event type split at its last dot, "" when
    missing), ``correlation_id``, ``span_id``, ``parent_span_id``, ``duration_ms``.

    Raises:
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    frame = df.reset_index(drop=True)
    codes, uniques = pd.factorize(column(frame, "type"))
    names = [str(name) for name in uniques]
    # Index -1 (a missing type) lands on the trailing empty string.
    operations = np.array([name.rpartition(".")[0] for name in names] + [""], dtype=object)
    actions = np.array([name.rpartition(".")[2] for name in names] + [""], dtype=object)
    return pd.DataFrame(
        {
            "position": np.arange(len(frame), dtype="int64"),
            "timestamp": timestamps(column(frame, "timestamp")),
            "operation": pd.Series(operations[codes], dtype="str"),
            "action": pd.Series(actions[codes], dtype="str"),
            "correlation_id": correlation_ids(frame),
            "span_id": identifiers(column(frame, "spanId")),
            "parent_span_id": identifiers(column(frame, "parentSpanId")),
            "duration_ms": _durations(frame),
        }
    )


def correlation_ids(frame: pd.DataFrame) -> pd.Series:
    """Each row's correlation id (``correlation_id``, else payload ``correlationId``)."""
    correlation = identifiers(column(frame, "correlation_id"))
    if "correlationId" in frame.columns:
        correlation = correlation.fillna(identifiers(frame["correlationId"]))
    return correlation.reset_index(drop=True)


def _durations(frame: pd.DataFrame) -> pd.Series:
    # The collector names payload.duration duration_ms; hand-built frames may not.
    name = "duration_ms" if "duration_ms" in frame.columns else "duration"
    values = column(frame, name)
    return pd.to_numeric(values, errors="coerce").astype("float64").reset_index(drop=True)


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """The named column, or an all-missing one when the frame lacks it."""
    if name in frame.columns:
        return frame[name]
    return pd.Series(np.nan, index=frame.index, dtype=object)


def identifiers(values: pd.Series) -> pd.Series:
    """Identifiers as strings, with None, NaN and the empty string as NaN."""
    text = values.astype("str")
    return text.where(text != "")


def timestamps(values: pd.Series) -> pd.Series:
    """UTC nanosecond timestamps; integers are epoch milliseconds (the wire format).

    Raises:
        ValueError: ``values`` cannot be parsed as datetimes.
    """
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
