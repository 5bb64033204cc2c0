"""The DataFrame shape of events (evkit.columns): fixed columns, dtypes, flattened payloads.

Frames are built by a collector, from the bus (``evkit.capture``, synchronous) or over a
real socket, so what is checked is what a notebook gets.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

import evkit
from evkit.columns import FIXED_COLUMNS

TIMEOUT = 10.0


SHAPE_PAYLOAD: dict[str, Any] = {
    "z": 1,
    "a": {"b": 1, "c": {"d": "deep"}},
    "type": "payload type",
    "id": "payload id",
    "duration": 12.5,
    "m": "text",
}
SHAPE_COLUMNS = [
    *FIXED_COLUMNS,
    "z",
    "a.b",
    "a.c.d",
    "payload.type",
    "payload.id",
    "duration",
    "m",
    "correlationId",
]


def assert_fixed_dtypes(df: pd.DataFrame) -> None:
    timestamp = df["timestamp"].dtype
    assert isinstance(timestamp, pd.DatetimeTZDtype), timestamp
    assert str(timestamp.tz) == "UTC"
    assert df["duration_ms"].dtype == "float64"
    for name in ("id", "type", "service", "entity", "action", "correlation_id"):
        assert isinstance(df[name].dtype, pd.StringDtype), (name, df[name].dtype)


def test_empty_frame_has_the_fixed_columns_and_dtypes() -> None:
    with evkit.capture(["never.*"]) as col:
        df = col.to_dataframe()
    assert list(df.columns) == list(FIXED_COLUMNS)
    assert len(df) == 0
    assert_fixed_dtypes(df)


def test_frame_columns_order_names_and_dtypes() -> None:
    with evkit.capture(["shape.*"]) as col:
        event = evkit.emit("shape.op.completed", SHAPE_PAYLOAD, correlation_id="c1")
        evkit.emit("shape.op.started", {"m": "second"})
        df = col.to_dataframe()
    assert list(df.columns) == SHAPE_COLUMNS
    assert_fixed_dtypes(df)
    first = df.iloc[0]
    assert first["timestamp"] == pd.Timestamp(event.timestamp, unit="ms", tz="UTC")
    assert first["type"] == "shape.op.completed"
    assert (first["service"], first["entity"], first["action"]) == ("shape", "op", "completed")
    assert first["correlation_id"] == "c1"
    assert first["duration_ms"] == 12.5
    assert (first["a.b"], first["a.c.d"]) == (1, "deep")
    assert (first["payload.type"], first["payload.id"]) == ("payload type", "payload id")
    second = df.iloc[1]
    assert pd.isna(second["correlation_id"])
    assert math.isnan(second["duration_ms"])
    assert pd.isna(second["z"])
    assert second["m"] == "second"


def test_type_segments_become_service_entity_action() -> None:
    with evkit.capture(["*"]) as col:
        for type_ in ("a.b.c", "a.b.c.d", "a.b"):
            evkit.emit(type_)
        df = col.to_dataframe()
    assert list(df["service"]) == ["a", "a", "a"]
    assert list(df["entity"]) == ["b", "b.c", ""]
    assert list(df["action"]) == ["c", "d", "b"]


def test_duration_ms_is_nan_where_absent_or_not_a_number() -> None:
    with evkit.capture(["op.*"]) as col:
        evkit.emit("op.x.completed", {"duration": 5})
        evkit.emit("op.x.completed", {})
        evkit.emit("op.x.completed", {"duration": "slow"})
        evkit.emit("op.x.completed", {"duration": True})
        evkit.emit("op.x.completed", {"duration": 0.25})
        df = col.to_dataframe()
    assert df["duration_ms"].dtype == "float64"
    values = list(df["duration_ms"])
    assert values[0] == 5.0
    assert math.isnan(values[1])
    assert math.isnan(values[2])
    assert math.isnan(values[3])
    assert values[4] == 0.25


def test_mixed_payloads_missing_keys_are_na_and_differing_types_are_kept() -> None:
    with evkit.capture(["mix.*"]) as col:
        evkit.emit("mix.a.b", {"x": 1, "y": "one"})
        evkit.emit("mix.a.b", {"y": 2, "w": True})
        evkit.emit("mix.a.b", {})
        df = col.to_dataframe()
    assert list(df.columns) == [*FIXED_COLUMNS, "x", "y", "w"]
    assert df["x"].iloc[0] == 1
    assert df["x"].iloc[1:].isna().all()
    assert df["y"].dtype == object
    assert df["y"].iloc[0] == "one"
    assert df["y"].iloc[1] == 2
    assert type(df["y"].iloc[1]) is int
    assert pd.isna(df["y"].iloc[2])
    assert pd.isna(df["w"].iloc[0])
    assert df["w"].iloc[1] == True  # noqa: E712 (a numpy or Python bool)
    assert pd.isna(df["w"].iloc[2])


def test_socket_frame_has_the_same_shape_as_captured(server: evkit.Server) -> None:
    with evkit.collect(server, ["shape.*"]) as col, evkit.capture(["shape.*"]) as local:
        evkit.emit("shape.op.completed", SHAPE_PAYLOAD, correlation_id="c1")
        evkit.emit("shape.op.started", {"m": "second"})
        evkit.flush()
        col.wait(count=2, timeout=TIMEOUT)
        df = col.to_dataframe()
        captured = local.to_dataframe()
    assert list(df.columns) == SHAPE_COLUMNS
    assert_fixed_dtypes(df)
    assert df["id"].str.fullmatch(r"\d+").all()
    assert int(df["id"].iloc[0]) < int(df["id"].iloc[1])
    assert captured["id"].isna().all()  # no stream id in process
    pd.testing.assert_frame_equal(df.drop(columns="id"), captured.drop(columns="id"))
