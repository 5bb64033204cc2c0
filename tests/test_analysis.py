"""Tests for evkit.analysis: hand-built event frames with known answers."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from evkit import analysis

BASE_MS = 1_700_000_000_000
FIXED_COLUMNS = [
    "id",
    "timestamp",
    "type",
    "service",
    "entity",
    "action",
    "correlation_id",
    "duration_ms",
]


def _flatten(payload: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def make_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    """A frame in the collector's shape (DESIGN 2) from ``{type, at, payload}`` dicts.

    ``at`` is milliseconds after an arbitrary base time. Payload keys that clash
    with a fixed column are renamed ``payload.<key>``, as the collector does.
    """
    rows: list[dict[str, Any]] = []
    payload_columns: list[str] = []
    for number, event in enumerate(events, start=1):
        event_type: str = event["type"]
        service, *middle, action = event_type.split(".")
        payload = event.get("payload", {})
        row: dict[str, Any] = {
            "id": str(number),
            "timestamp": BASE_MS + event["at"],
            "type": event_type,
            "service": service,
            "entity": ".".join(middle),
            "action": action,
            "correlation_id": payload.get("correlationId"),
            "duration_ms": float(payload["duration"]) if "duration" in payload else math.nan,
        }
        for key, value in _flatten(payload).items():
            column = f"payload.{key}" if key in FIXED_COLUMNS else key
            if column not in payload_columns:
                payload_columns.append(column)
            row[column] = value
        rows.append(row)
    frame = pd.DataFrame(rows, columns=FIXED_COLUMNS + payload_columns)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="ms", utc=True)
    frame["duration_ms"] = frame["duration_ms"].astype("float64")
    return frame


def operation(
    name: str,
    start: int | None,
    end: int | None,
    *,
    span: str | None = None,
    parent: str | None = None,
    correlation: str | None = "req-1",
    status: str = "completed",
    duration: float | None = None,
) -> list[dict[str, Any]]:
    """The started and completed/failed events of one call, as ``@emits`` sends them.

    ``start=None`` leaves out the started event, ``end=None`` the end event.
    ``duration`` defaults to ``end - start``; pass ``math.nan`` to leave it out.
    """
    ids: dict[str, Any] = {"correlationId": correlation}
    if span is not None:
        ids["spanId"] = span
        ids["parentSpanId"] = parent
    events: list[dict[str, Any]] = []
    if start is not None:
        events.append({"type": f"{name}.started", "at": start, "payload": dict(ids)})
    if end is not None:
        payload = dict(ids)
        if duration is None and start is not None:
            duration = end - start
        if duration is not None and not math.isnan(duration):
            payload["duration"] = duration
        if status == "failed":
            payload |= {"errorType": "HTTPError", "errorMessage": "boom"}
        events.append({"type": f"{name}.{status}", "at": end, "payload": payload})
    return events


def in_time_order(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = [event for group in groups for event in group]
    return sorted(events, key=lambda event: event["at"])


def ms(offset: int) -> pd.Timestamp:
    return pd.Timestamp(BASE_MS + offset, unit="ms", tz="UTC")


def nested_trace(correlation: str = "req-1") -> pd.DataFrame:
    """root(0-100) -> a(10-40) -> d(15-35); root -> b(20-90) -> c(30-80)."""
    return make_frame(
        in_time_order(
            operation("svc.root", 0, 100, span="r", correlation=correlation),
            operation("svc.a", 10, 40, span="a", parent="r", correlation=correlation),
            operation("svc.d", 15, 35, span="d", parent="a", correlation=correlation),
            operation("svc.b", 20, 90, span="b", parent="r", correlation=correlation),
            operation("svc.c", 30, 80, span="c", parent="b", correlation=correlation),
        )
    )


# ---------------------------------------------------------------- spans


def test_spans_pairs_by_span_id_with_nesting() -> None:
    frame = make_frame(
        in_time_order(
            operation("github.api", 0, 100, span="s1", duration=99.5),
            operation("repo.scan", 10, 60, span="s2", parent="s1"),
            [{"type": "repo.commit.created", "at": 20, "payload": {"correlationId": "req-1"}}],
        )
    )

    result = analysis.spans(frame)

    assert list(result.columns) == list(analysis.SPAN_COLUMNS)
    assert result["operation"].tolist() == ["github.api", "repo.scan"]
    assert result["span_id"].tolist() == ["s1", "s2"]
    assert result["parent_span_id"].isna().tolist() == [True, False]
    assert result.loc[1, "parent_span_id"] == "s1"
    assert result["start"].tolist() == [ms(0), ms(10)]
    assert result["end"].tolist() == [ms(100), ms(60)]
    # The end event's payload duration wins over end - start.
    assert result["duration_ms"].tolist() == [99.5, 50.0]
    assert result["status"].tolist() == ["completed", "completed"]
    assert result["correlation_id"].tolist() == ["req-1", "req-1"]
    assert str(result["start"].dtype) == "datetime64[ns, UTC]"


def test_spans_duration_falls_back_to_end_minus_start() -> None:
    frame = make_frame(operation("github.api", 5, 30, span="s1", duration=math.nan))

    assert analysis.spans(frame)["duration_ms"].tolist() == [25.0]


def test_spans_pairs_span_ids_even_when_rows_are_interleaved_across_requests() -> None:
    frame = make_frame(
        in_time_order(
            operation("github.api", 0, 50, span="x", correlation="req-1"),
            operation("github.api", 10, 20, span="y", correlation="req-2"),
        )
    )

    result = analysis.spans(frame).set_index("span_id")

    assert result.loc["x", "duration_ms"] == 50.0
    assert result.loc["y", "duration_ms"] == 10.0
    assert result.loc["y", "correlation_id"] == "req-2"


def test_spans_without_span_ids_pair_first_in_first_out_per_request() -> None:
    frame = make_frame(
        in_time_order(
            # Two overlapping calls of one operation in one request.
            operation("graphql.query", 0, 50, duration=math.nan),
            operation("graphql.query", 10, 70, duration=math.nan),
            # The same operation in another request must not be mixed in.
            operation("graphql.query", 5, 20, correlation="req-2", duration=math.nan),
        )
    )
    assert "spanId" not in frame.columns

    result = analysis.spans(frame)

    mine = result[result["correlation_id"] == "req-1"]
    assert mine["start"].tolist() == [ms(0), ms(10)]
    assert mine["end"].tolist() == [ms(50), ms(70)]
    other = result[result["correlation_id"] == "req-2"]
    assert other["duration_ms"].tolist() == [15.0]
    assert set(result["status"]) == {"completed"}


def test_spans_completed_without_start_is_placed_before_its_end() -> None:
    frame = make_frame(
        in_time_order(
            operation("github.api", None, 100, span="s1", duration=40),
            # Without span ids: an end that precedes any start is not paired
            # with the later start.
            operation("repo.push", None, 30, duration=25),
            operation("repo.push", 50, 80, duration=math.nan),
        )
    )

    result = analysis.spans(frame)

    api = result[result["operation"] == "github.api"].iloc[0]
    assert api["start"] == ms(60)
    assert api["end"] == ms(100)
    assert api["duration_ms"] == 40.0
    push = result[result["operation"] == "repo.push"]
    assert push["start"].tolist() == [ms(5), ms(50)]
    assert push["end"].tolist() == [ms(30), ms(80)]
    assert push["duration_ms"].tolist() == [25.0, 30.0]


def test_spans_start_without_end_is_running() -> None:
    frame = make_frame(operation("claude.session", 0, None, span="s1"))

    row = analysis.spans(frame).iloc[0]

    assert row["status"] == "running"
    assert pd.isna(row["end"])
    assert math.isnan(row["duration_ms"])


def test_spans_skip_events_that_are_not_operations() -> None:
    frame = make_frame(
        [
            {"type": "repo.commit.created", "at": 0, "payload": {"correlationId": "req-1"}},
            {
                "type": "performance.slowOperation.detected",
                "at": 1,
                "payload": {
                    "service": "github",
                    "operation": "api",
                    "duration": 900,
                    "threshold": 500,
                    "correlationId": "req-1",
                },
            },
        ]
    )

    assert analysis.spans(frame).empty
    assert list(analysis.spans(frame).columns) == list(analysis.SPAN_COLUMNS)


def test_spans_failed_status_comes_from_the_end_event() -> None:
    frame = make_frame(operation("github.api", 0, 10, span="s1", status="failed"))

    assert analysis.spans(frame)["status"].tolist() == ["failed"]


def test_spans_accept_epoch_millisecond_timestamps_and_any_index() -> None:
    frame = make_frame(operation("github.api", 0, 10, span="s1"))
    frame["timestamp"] = BASE_MS + np.array([0, 10])
    frame.index = [40, 7]

    result = analysis.spans(frame)

    assert result["start"].tolist() == [ms(0)]
    assert result["duration_ms"].tolist() == [10.0]


# ---------------------------------------------------------------- latency tables


def test_latency_by_operation_counts_errors_and_rates() -> None:
    frame = make_frame(
        in_time_order(
            operation("github.api", 0, 10, span="1"),
            operation("github.api", 20, 40, span="2", status="failed"),
            operation("github.api", 50, 80, span="3"),
            operation("github.api", 90, 130, span="4", status="failed"),
            operation("repo.scan", 0, 5, span="5"),
        )
    )

    table = analysis.latency_by_operation(frame)

    assert list(table.columns) == list(analysis.OPERATION_COLUMNS)
    assert table.index.tolist() == ["github.api", "repo.scan"]
    assert table.loc["github.api", "count"] == 4
    assert table.loc["github.api", "errors"] == 2
    assert table.loc["github.api", "error_rate"] == 0.5
    assert table.loc["repo.scan", "errors"] == 0
    assert table.loc["repo.scan", "error_rate"] == 0.0


def test_latency_by_operation_percentiles_match_numpy_linear() -> None:
    durations = [10, 20, 30, 40, 1000, 15, 25]
    events: list[dict[str, Any]] = []
    for number, duration in enumerate(durations):
        events += operation("github.api", number * 2000, number * 2000 + duration, span=str(number))
    table = analysis.latency_by_operation(make_frame(events))

    row = table.loc["github.api"]
    for column, percent in [("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)]:
        assert row[column] == pytest.approx(np.percentile(durations, percent))
    assert row["mean_ms"] == pytest.approx(np.mean(durations))
    assert row["max_ms"] == 1000.0
    assert row["total_ms"] == float(sum(durations))


def test_latency_by_operation_sorts_by_total_time() -> None:
    frame = make_frame(
        in_time_order(
            operation("fast.many", 0, 10, span="1"),
            operation("fast.many", 10, 20, span="2"),
            operation("fast.many", 20, 30, span="3"),
            operation("slow.once", 0, 25, span="4"),
            operation("slow.big", 0, 100, span="5"),
        )
    )

    table = analysis.latency_by_operation(frame)

    assert table.index.tolist() == ["slow.big", "fast.many", "slow.once"]
    assert table["total_ms"].tolist() == [100.0, 30.0, 25.0]


def test_latency_by_correlation_wall_operation_and_slowest() -> None:
    frame = make_frame(
        in_time_order(
            operation("github.api", 0, 100, span="r", correlation="req-1"),
            operation("repo.scan", 10, 70, span="c", parent="r", correlation="req-1"),
            [{"type": "repo.commit.created", "at": 150, "payload": {"correlationId": "req-1"}}],
            operation("github.api", 0, 30, span="x", correlation="req-2", status="failed"),
            operation("repo.scan", 0, 500, span="u", correlation=None),
        )
    )

    table = analysis.latency_by_correlation(frame)

    assert list(table.columns) == list(analysis.CORRELATION_COLUMNS)
    assert table.index.name == "correlation_id"
    assert table.index.tolist() == ["req-1", "req-2"]
    first = table.loc["req-1"]
    assert first["events"] == 5
    assert first["operations"] == 2
    assert first["wall_ms"] == 150.0
    assert first["operation_ms"] == 160.0
    assert first["slowest_operation"] == "github.api"
    assert first["slowest_ms"] == 100.0
    assert first["errors"] == 0
    assert table.loc["req-2", "errors"] == 1
    assert table.loc["req-2", "wall_ms"] == 30.0


def test_latency_by_correlation_wall_is_at_least_the_longest_span() -> None:
    # Only the completion was collected: the request's single event is at 100,
    # yet the operation took 80 ms.
    frame = make_frame(operation("github.api", None, 100, span="s", duration=80))

    assert analysis.latency_by_correlation(frame).loc["req-1", "wall_ms"] == 80.0


# ---------------------------------------------------------------- bottlenecks


def _slow_event(at: int, operation_name: str, service: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"operation": operation_name, "duration": 900, "threshold": 500}
    if service is not None:
        payload["service"] = service
    return {"type": analysis.SLOW_OPERATION_TYPE, "at": at, "payload": payload}


def test_bottlenecks_rank_by_total_time_with_share_and_slow_events() -> None:
    frame = make_frame(
        in_time_order(
            operation("github.api", 0, 600, span="1"),
            operation("github.api", 600, 900, span="2"),
            operation("repo.scan", 0, 100, span="3"),
            operation("graphql.query", 0, 40, span="4"),
            operation("graphql.query", 0, 40, span="5"),
            [
                _slow_event(601, "github.api"),  # the span's operation name
                _slow_event(602, "api", service="github"),  # service.operation
                _slow_event(603, "scan"),  # only the last segment
                _slow_event(604, "unrelated.thing"),
            ],
        )
    )

    table = analysis.bottlenecks(frame, top=2)

    assert list(table.columns) == list(analysis.BOTTLENECK_COLUMNS)
    assert table.index.tolist() == ["github.api", "repo.scan"]
    assert table["share"].tolist() == pytest.approx([900 / 1080, 100 / 1080])
    assert table["slow_events"].tolist() == [2, 1]
    everything = analysis.bottlenecks(frame)
    assert everything.index.tolist() == ["github.api", "repo.scan", "graphql.query"]
    assert everything.loc["graphql.query", "slow_events"] == 0
    assert everything["share"].sum() == pytest.approx(1.0)


def test_bottlenecks_without_slow_operation_columns() -> None:
    frame = make_frame(operation("github.api", 0, 10, span="1"))
    assert "operation" not in frame.columns

    assert analysis.bottlenecks(frame)["slow_events"].tolist() == [0]


@pytest.mark.parametrize("top", [0, -1])
def test_bottlenecks_reject_a_non_positive_top(top: int) -> None:
    with pytest.raises(ValueError, match="top must be a positive integer"):
        analysis.bottlenecks(make_frame([]), top=top)


# ---------------------------------------------------------------- critical path


def test_critical_path_follows_the_latest_ending_children() -> None:
    frame = pd.concat([nested_trace("req-1"), nested_trace("req-2")], ignore_index=True)

    path = analysis.critical_path(frame, "req-1")

    assert list(path.columns) == list(analysis.CRITICAL_PATH_COLUMNS)
    assert path["span_id"].tolist() == ["r", "b", "c"]
    assert path["operation"].tolist() == ["svc.root", "svc.b", "svc.c"]
    assert set(path["correlation_id"]) == {"req-1"}
    assert path.index.tolist() == [0, 1, 2]
    # Own time: root 100 - b 70; b 70 - c 50; c 50 (a leaf). Shares of the 100 ms.
    assert path["own_ms"].tolist() == [30.0, 20.0, 50.0]
    assert path["share"].tolist() == pytest.approx([0.3, 0.2, 0.5])


def test_critical_path_answers_where_the_request_lost_the_most_time() -> None:
    # root(0-100): a(0-30) then b(30-100) -> b1(40-50); b's own 60 ms beat a's 30.
    frame = make_frame(
        in_time_order(
            operation("svc.root", 0, 100, span="r"),
            operation("svc.a", 0, 30, span="a", parent="r"),
            operation("svc.b", 30, 100, span="b", parent="r"),
            operation("svc.b1", 40, 50, span="b1", parent="b"),
        )
    )

    path = analysis.critical_path(frame, "req-1")

    culprit = path.loc[path["own_ms"].idxmax()]
    assert (culprit["operation"], culprit["own_ms"], culprit["share"]) == ("svc.b", 60.0, 0.6)
    assert path["share"].sum() == pytest.approx(1.0)


def test_own_time_uses_the_events_durations_not_whole_milliseconds() -> None:
    # Timestamps are whole ms; durations are not: own time is read from the durations.
    frame = make_frame(
        in_time_order(
            operation("svc.root", 0, 10, span="r", duration=9.75),
            operation("svc.child", 1, 10, span="c", parent="r", duration=8.5),
        )
    )

    path = analysis.critical_path(frame, "req-1")

    assert path["own_ms"].tolist() == pytest.approx([1.25, 8.5])


def test_critical_path_starts_at_the_root_that_ends_last() -> None:
    frame = make_frame(
        in_time_order(
            operation("svc.early", 0, 50, span="e"),
            operation("svc.late", 10, 80, span="l", parent="not-collected"),
            operation("svc.child", 20, 70, span="k", parent="l"),
        )
    )

    assert analysis.critical_path(frame, "req-1")["span_id"].tolist() == ["l", "k"]


def test_critical_path_of_unknown_correlation_id_names_known_ones() -> None:
    frame = nested_trace("req-1")

    with pytest.raises(KeyError, match=r"'nope' not found.*'req-1'"):
        analysis.critical_path(frame, "nope")


def test_critical_path_of_request_without_spans_is_empty() -> None:
    frame = make_frame(
        [{"type": "repo.commit.created", "at": 0, "payload": {"correlationId": "req-1"}}]
    )

    path = analysis.critical_path(frame, "req-1")

    assert path.empty
    assert list(path.columns) == list(analysis.CRITICAL_PATH_COLUMNS)


# ---------------------------------------------------------------- one trace: tree and gaps


def test_trace_spans_lays_the_tree_out_with_offsets_and_own_time() -> None:
    table = analysis.trace_spans(nested_trace("req-1"), "req-1")

    assert list(table.columns) == list(analysis.TRACE_COLUMNS)
    assert table["span_id"].tolist() == ["r", "a", "d", "b", "c"]
    assert table["depth"].tolist() == [0, 1, 2, 1, 2]
    assert table["offset_ms"].tolist() == [0.0, 10.0, 15.0, 20.0, 30.0]
    assert table["length_ms"].tolist() == [100.0, 30.0, 20.0, 70.0, 50.0]
    # root: 100 less a(10-40) and b(20-90) overlapping: 100 - 80.
    assert table["own_ms"].tolist() == [20.0, 10.0, 20.0, 20.0, 50.0]
    assert table["critical"].tolist() == [True, False, False, True, True]


def test_trace_spans_measures_running_spans_to_the_last_moment() -> None:
    frame = make_frame(
        in_time_order(
            operation("svc.root", 0, 100, span="r"),
            operation("svc.bg", 50, None, span="g", parent="r"),
        )
    )

    table = analysis.trace_spans(frame, "req-1")

    assert table.set_index("span_id").loc["g", ["status", "length_ms"]].tolist() == [
        "running",
        50.0,
    ]
    assert analysis.trace_spans(make_frame([]), "req-1").empty


def test_idle_gaps_are_where_no_step_ran() -> None:
    # root(0-100) waits on a(0-30) and b(60-90): idle 30-60 and 90-100.
    frame = make_frame(
        in_time_order(
            operation("svc.root", 0, 100, span="r"),
            operation("svc.a", 0, 30, span="a", parent="r"),
            operation("svc.b", 60, 90, span="b", parent="r"),
            operation("svc.b1", 60, 70, span="b1", parent="b"),
        )
    )

    gaps = analysis.idle_gaps(frame, "req-1")

    assert list(gaps.columns) == list(analysis.GAP_COLUMNS)
    assert gaps["offset_ms"].tolist() == [30.0, 90.0]
    assert gaps["duration_ms"].tolist() == [30.0, 10.0]
    assert gaps["start"].tolist() == [ms(30), ms(90)]
    assert analysis.idle_gaps(frame, "req-1", min_ms=15).shape[0] == 1


def test_idle_gaps_between_spans_without_a_root_and_none_inside_a_lone_span() -> None:
    flat = make_frame(
        in_time_order(
            operation("svc.a", 0, 10, span="a"),
            operation("svc.b", 40, 50, span="b"),
        )
    )
    assert analysis.idle_gaps(flat, "req-1")["offset_ms"].tolist() == [10.0]
    lone = make_frame(operation("svc.a", 0, 10, span="a"))
    assert analysis.idle_gaps(lone, "req-1").empty
    # Gaps shorter than 1 % of the wall time (and than 1 ms) are rounding, not waiting.
    close = make_frame(
        in_time_order(
            operation("svc.a", 0, 500, span="a"),
            operation("svc.b", 504, 1000, span="b"),
        )
    )
    assert analysis.idle_gaps(close, "req-1").empty
    with pytest.raises(ValueError, match="min_ms"):
        analysis.idle_gaps(lone, "req-1", min_ms=-1)


# ---------------------------------------------------------------- plots


def test_plot_latency_by_correlation_draws_two_bars_per_request(tmp_path: Path) -> None:
    frame = pd.concat([nested_trace(f"req-{number}") for number in range(3)], ignore_index=True)

    figure = analysis.plot_latency_by_correlation(frame)

    assert isinstance(figure, Figure)
    (axes,) = figure.axes
    assert len(axes.patches) == 6
    assert len(analysis.plot_latency_by_correlation(frame, top=2).axes[0].patches) == 4
    target = tmp_path / "latency.png"
    figure.savefig(target)
    assert target.read_bytes().startswith(b"\x89PNG")


def test_plot_latency_by_correlation_puts_the_slowest_on_top() -> None:
    frame = make_frame(
        in_time_order(
            operation("svc.op", 0, 10, span="1", correlation="quick"),
            operation("svc.op", 0, 90, span="2", correlation="slow"),
        )
    )

    axes = analysis.plot_latency_by_correlation(frame).axes[0]

    labels = [label.get_text() for label in axes.get_yticklabels()]
    positions = list(axes.get_yticks())
    top_label = labels[positions.index(min(positions))]
    assert axes.yaxis_inverted()
    assert top_label == "slow"


def test_plot_waterfall_marks_critical_failed_and_running_spans(tmp_path: Path) -> None:
    frame = make_frame(
        in_time_order(
            operation("svc.root", 0, 100, span="r"),
            operation("svc.a", 10, 40, span="a", parent="r", status="failed"),
            operation("svc.b", 20, 90, span="b", parent="r"),
            operation("svc.bg", 50, None, span="g", parent="a"),
            operation("svc.quick", 95, 95, span="q", parent="r", status="failed"),
        )
    )

    figure = analysis.plot_waterfall(frame, "req-1")

    (axes,) = figure.axes
    bars = axes.patches[:5]
    labels = [label.get_text() for label in axes.get_yticklabels()]
    assert labels == [
        "svc.root",
        "\u2514\u00a0svc.a",
        "\u00a0\u00a0\u2514\u00a0svc.bg",  # indented under its parent
        "\u2514\u00a0svc.b",
        "\u2514\u00a0svc.quick",
    ]
    assert {label.get_horizontalalignment() for label in axes.get_yticklabels()} == {"left"}
    by_label = dict(zip((label.split("\u00a0")[-1] for label in labels), bars, strict=True))
    critical = by_label["svc.root"].get_facecolor()
    assert by_label["svc.b"].get_facecolor() == critical
    assert by_label["svc.a"].get_facecolor() != critical
    assert by_label["svc.a"].get_hatch() == "//"
    # A failure of no length is still a visible sliver.
    assert by_label["svc.quick"].get_width() > 0
    notes = [text.get_text().strip() for text in axes.texts]
    assert notes[:5] == [
        "100.0 ms",
        "30.0 ms failed",
        "50.0 ms running",
        "70.0 ms",
        "0.00 ms failed",
    ]
    # The running span is drawn up to the request's last timestamp (100 ms).
    running = by_label["svc.bg"]
    assert isinstance(running, Rectangle)
    assert running.get_x() == pytest.approx(50.0)
    assert running.get_width() == pytest.approx(50.0)
    target = tmp_path / "waterfall.png"
    figure.savefig(target)
    assert target.stat().st_size > 0


def test_plot_waterfall_shades_the_idle_gaps() -> None:
    frame = make_frame(
        in_time_order(
            operation("svc.root", 0, 100, span="r"),
            operation("svc.a", 0, 30, span="a", parent="r"),
            operation("svc.b", 60, 100, span="b", parent="r"),
        )
    )

    axes = analysis.plot_waterfall(frame, "req-1").axes[0]

    assert len(axes.patches) == 4  # three spans, one gap
    band = axes.patches[3]
    assert band.get_x() == pytest.approx(30.0)
    assert band.get_width() == pytest.approx(30.0)
    assert "30.0 ms" in [text.get_text() for text in axes.texts[3:]]


def test_plot_waterfall_carries_an_interactive_version() -> None:
    frame = make_frame(
        in_time_order(
            operation("svc.root", 0, 100, span="r"),
            operation("svc.a", 0, 30, span="a", parent="r", status="failed"),
            operation("svc.b", 60, 100, span="b", parent="r"),
        )
    )
    frame["endpoint"] = ["/x" if span == "a" else None for span in frame["spanId"]]

    figure = analysis.plot_waterfall(frame, "req-1")

    spec = figure.vega_lite
    assert spec == analysis.waterfall_spec(frame, "req-1")
    assert spec is not None
    bundle = figure._repr_mimebundle_()
    assert bundle["application/vnd.vegalite.v5+json"] is spec
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    json.dumps(spec)  # JSON-safe
    gaps, bars, durations = spec["layer"]
    assert gaps["data"]["values"] == [
        {"start": 30.0, "end": 60.0, "text": "nothing instrumented ran for 30.0 ms"}
    ]
    rows = spec["data"]["values"]
    assert [row["kind"] for row in rows] == ["critical path", "failed", "critical path"]
    assert [row["text"] for row in rows] == ["100.0 ms", "30.0 ms failed", "40.0 ms"]
    assert rows[1]["info"] == {
        "operation": "svc.a",
        "duration": "30.0 ms",
        "own time": "30.0 ms",
        "starts at": "+0.00 ms",
        "span status": "failed",
        "span id": "a",
        "parent span id": "r",
        "errorType": "HTTPError",
        "errorMessage": "boom",
        "endpoint": "/x",
    }
    assert bars["params"][0]["bind"] == "scales"  # zoom on time
    assert "data" not in bars
    assert "data" not in durations


def test_plot_waterfall_of_unknown_correlation_id_raises_key_error() -> None:
    with pytest.raises(KeyError, match="req-1"):
        analysis.plot_waterfall(nested_trace("req-1"), "missing")
    with pytest.raises(KeyError, match="req-1"):
        analysis.waterfall_spec(nested_trace("req-1"), "missing")


def test_a_request_without_spans_has_a_spec_that_says_so() -> None:
    spec = analysis.waterfall_spec(make_frame([]), "req-1")
    assert spec["data"]["values"] == [{"text": "no data"}]
    assert analysis.plot_waterfall(make_frame([]), "req-1").vega_lite is None


# ---------------------------------------------------------------- empty input


@pytest.mark.parametrize(
    "frame",
    [pd.DataFrame(), pd.DataFrame(columns=FIXED_COLUMNS), make_frame([])],
    ids=["no-columns", "fixed-columns", "helper"],
)
def test_empty_frames_give_empty_results(frame: pd.DataFrame, tmp_path: Path) -> None:
    assert list(analysis.spans(frame).columns) == list(analysis.SPAN_COLUMNS)
    assert analysis.spans(frame).empty
    by_request = analysis.latency_by_correlation(frame)
    assert by_request.empty
    assert list(by_request.columns) == list(analysis.CORRELATION_COLUMNS)
    assert list(analysis.latency_by_operation(frame).columns) == list(analysis.OPERATION_COLUMNS)
    assert list(analysis.bottlenecks(frame).columns) == list(analysis.BOTTLENECK_COLUMNS)
    assert analysis.critical_path(frame, "req-1").empty

    for figure in (
        analysis.plot_latency_by_correlation(frame),
        analysis.plot_waterfall(frame, "req-1"),
    ):
        assert isinstance(figure, Figure)
        assert len(figure.axes[0].patches) == 0
        assert [text.get_text() for text in figure.axes[0].texts] == ["no data"]
        figure.savefig(tmp_path / "empty.png")


def test_frame_without_spans_plots_no_data() -> None:
    frame = make_frame(
        [{"type": "repo.commit.created", "at": 0, "payload": {"correlationId": "req-1"}}]
    )

    assert analysis.latency_by_operation(frame).empty
    texts = analysis.plot_waterfall(frame, "req-1").axes[0].texts
    assert [text.get_text() for text in texts] == ["no data"]


def test_critical_path_includes_sequential_steps_not_parallel_ones() -> None:
    # root(0-100): a(0-30) then b(35-60) then c(60-100); p(40-55) ran beside b.
    frame = make_frame(
        in_time_order(
            operation("svc.root", 0, 100, span="r"),
            operation("svc.a", 0, 30, span="a", parent="r"),
            operation("svc.b", 35, 60, span="b", parent="r"),
            operation("svc.p", 40, 55, span="p", parent="r"),
            operation("svc.c", 60, 100, span="c", parent="r"),
            operation("svc.c1", 70, 95, span="c1", parent="c"),
        )
    )

    path = analysis.critical_path(frame, "req-1")

    assert path["span_id"].tolist() == ["r", "a", "b", "c", "c1"]
