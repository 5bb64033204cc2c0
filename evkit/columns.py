"""Events as a DataFrame: the fixed columns, and the column-wise buffer that builds it.

Each event is flattened on arrival into per-column lists (``id``, ``timestamp``,
``type``, ``correlation_id``, ``duration_ms`` and one list per payload key, nested keys
joined by ``.``; a payload key named like a fixed column becomes ``payload.<key>``),
so building a frame converts whole columns at once. The collector buffers live events
this way, and :func:`evkit.load` reads recordings the same way, so both give the same
shape.

pandas and numpy are imported only when a frame is built. Not thread-safe: the
collector holds its own lock around a buffer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FIXED_COLUMNS", "ColumnBuffer", "empty_frame"]

FIXED_COLUMNS = (
    "id",
    "timestamp",
    "type",
    "service",
    "entity",
    "action",
    "correlation_id",
    "duration_ms",
)
_FIXED = frozenset(FIXED_COLUMNS)


def _flatten(payload: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _flatten(value, name + ".", out)
        else:
            out[name] = value


class ColumnBuffer:
    """Rows not yet converted, one list per column; all lists always have equal length."""

    def __init__(self) -> None:
        self.ids: list[str | None] = []
        self.timestamps: list[float] = []
        self.types: list[str] = []
        self.correlations: list[str | None] = []
        self.durations: list[float] = []
        self.payload: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, event: dict[str, Any]) -> None:
        payload = event.get("payload")
        if not isinstance(payload, dict):
            payload = {}
        rows = len(self.ids)
        self.ids.append(event.get("id"))
        timestamp = event.get("timestamp")
        self.timestamps.append(
            timestamp
            if isinstance(timestamp, int | float) and not isinstance(timestamp, bool)
            else float("nan")
        )
        self.types.append(event.get("type", ""))
        correlation = payload.get("correlationId")
        self.correlations.append(correlation if isinstance(correlation, str) else None)
        duration = payload.get("duration")
        self.durations.append(
            float(duration)
            if isinstance(duration, int | float) and not isinstance(duration, bool)
            else float("nan")
        )
        if any(value.__class__ is dict for value in payload.values()):
            flat: dict[str, Any] = {}
            _flatten(payload, "", flat)
        else:
            flat = payload  # the common case: nothing nested, no copy
        columns = self.payload
        written = 0
        for name, value in flat.items():
            column = columns.get(name)
            if column is None:
                if name in _FIXED:
                    name = f"payload.{name}"
                    column = columns.get(name)
                if column is None:
                    column = columns[name] = [None] * rows
            column.append(value)
            written += 1
        if written != len(columns):
            for column in columns.values():
                if len(column) == rows:
                    column.append(None)

    def drop_oldest(self, count: int) -> None:
        for column in (self.ids, self.timestamps, self.types, self.correlations, self.durations):
            del column[:count]
        for column in self.payload.values():
            del column[:count]

    def to_frame(self) -> pd.DataFrame:
        import numpy as np
        import pandas as pd

        parts = {}
        for type_ in set(self.types):
            segments = type_.split(".")
            parts[type_] = (
                segments[0],
                ".".join(segments[1:-1]) if len(segments) > 2 else "",
                segments[-1] if len(segments) > 1 else "",
            )
        data: dict[str, Any] = {
            "id": pd.array(self.ids, dtype="string"),
            "timestamp": pd.to_datetime(
                np.asarray(self.timestamps, dtype="float64"), unit="ms", utc=True
            ),
            "type": pd.array(self.types, dtype="string"),
            "service": pd.array([parts[t][0] for t in self.types], dtype="string"),
            "entity": pd.array([parts[t][1] for t in self.types], dtype="string"),
            "action": pd.array([parts[t][2] for t in self.types], dtype="string"),
            "correlation_id": pd.array(self.correlations, dtype="string"),
            "duration_ms": pd.array(self.durations, dtype="float64"),
        }
        for name, column in self.payload.items():
            data[name] = column
        return pd.DataFrame(data)


def empty_frame() -> pd.DataFrame:
    """A frame with the fixed columns and no rows."""
    return ColumnBuffer().to_frame()
