"""The interactive waterfall: one request's trace as a Vega-Lite specification.

This module is responsible for :func:`waterfall_spec`, a plain dict in Vega-Lite 5's
JSON grammar that Jupyter frontends draw themselves from the
``application/vnd.vegalite.v5+json`` output type (JupyterLab and Notebook 7 ship the
renderer, VS Code's notebook renderers too; a saved notebook keeps the output and
draws it again without a kernel). Nothing is loaded from the network. The chart
shows what :func:`~evkit.analysis.plot_waterfall` shows (the tree of spans, their
durations, the critical path, failed and running spans, idle gaps) and adds a tooltip
with each span's payload and zooming on time (wheel or drag on the time axis;
double-click resets).

It must not import a plotting library (the spec is data), touch pyplot, or mutate its
input. Values put in the spec are JSON-safe.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import pandas as pd

from evkit.analysis._events import correlation_ids
from evkit.analysis._spans import FAILED, RUNNING
from evkit.analysis._trace import idle_gaps, trace_spans

__all__ = ["MIME_TYPE", "SCHEMA", "format_ms", "spec_from", "tree_labels", "waterfall_spec"]

MIME_TYPE: Final = "application/vnd.vegalite.v5+json"
"""The output type Jupyter frontends render as a Vega-Lite 5 chart."""

SCHEMA: Final = "https://vega.github.io/schema/vega-lite/v5.json"
"""Names the grammar's version; renderers read it, nothing fetches it."""

KINDS: Final = ("span", "critical path", "failed", "running")
COLORS: Final = ("#1f77b4", "#ff7f0e", "#d62728", "#9aa5b1")
GAP_COLOR: Final = "#d9d9d9"

_FIXED: Final = frozenset(
    ("id", "timestamp", "type", "service", "entity", "action", "correlation_id", "duration_ms")
)
_NOT_PAYLOAD: Final = _FIXED | {"spanId", "parentSpanId", "correlationId", "duration"}
_MOST_FIELDS: Final = 20
_MOST_CHARS: Final = 200
_ROW_PIXELS: Final = 20
_LABEL_FONT_SIZE: Final = 11
_GLYPH_PIXELS: Final = 6.7  # a monospace glyph at 11 px


def waterfall_spec(df: pd.DataFrame, correlation_id: str) -> dict[str, Any]:
    """One request's waterfall as a Vega-Lite 5 specification (a JSON-safe dict).

    Display it in Jupyter with ``IPython.display.display({MIME_TYPE: spec},
    raw=True)``, or let :func:`~evkit.analysis.plot_waterfall`'s figure do it. A request
    without spans gives a spec that says "no data".

    Raises:
        KeyError: the frame has events, but none with this correlation id.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    table = trace_spans(df, correlation_id)
    gaps = idle_gaps(df, correlation_id) if not table.empty else None
    return spec_from(table, gaps, span_payloads(df, correlation_id, table), correlation_id)


def spec_from(
    table: pd.DataFrame,
    gaps: pd.DataFrame | None,
    payloads: dict[str, dict[str, Any]],
    correlation_id: str,
) -> dict[str, Any]:
    """The spec of a :func:`trace_spans` table, its :func:`idle_gaps` and the spans'
    payloads (by span id)."""
    title = f"Waterfall of {correlation_id}"
    if table.empty:
        return {
            "$schema": SCHEMA,
            "title": title,
            "data": {"values": [{"text": "no data"}]},
            "mark": {"type": "text", "fontSize": 14},
            "encoding": {"text": {"field": "text"}},
        }
    # Vega trims labels (JavaScript's trim takes no-break spaces too): a zero-width
    # space first keeps the indentation.
    labels = [
        "\u200b" + label
        for label in tree_labels(table["operation"].tolist(), table["depth"].tolist())
    ]
    total = float((table["offset_ms"] + table["length_ms"]).max())
    least = max(total * 0.004, 1e-3)
    rows = []
    for number, (label, record) in enumerate(zip(labels, table.to_dict("records"), strict=True)):
        start = float(record["offset_ms"])
        length = float(record["length_ms"])
        status = str(record["status"])
        kind = "failed" if status == FAILED else "running" if status == RUNNING else None
        rows.append(
            {
                "row": f"{number:05d}{label}",
                "start": round(start, 3),
                "end": round(start + max(length, least), 3),
                "kind": kind or ("critical path" if record["critical"] else "span"),
                "text": format_ms(length) + (f" {status}" if kind else ""),
                "info": _tooltip(record, payloads, length),
            }
        )
    return _layers(title, total, rows, _gap_rows(gaps), max(len(label) for label in labels) - 1)


def span_payloads(
    df: pd.DataFrame, correlation_id: str, table: pd.DataFrame
) -> dict[str, dict[str, Any]]:
    """What the events of each span carried, by span id (the end event's values win)."""
    if table.empty or len(df) == 0:
        return {}
    frame = df.reset_index(drop=True)
    wanted = set(table["span_id"].dropna())
    if "spanId" not in frame.columns or not wanted:
        return {}
    mine = (correlation_ids(frame) == correlation_id).to_numpy() & frame["spanId"].isin(
        wanted
    ).to_numpy(dtype=bool)
    columns = [name for name in frame.columns if name not in _NOT_PAYLOAD]
    payloads: dict[str, dict[str, Any]] = {}
    for span_id, record in zip(
        frame.loc[mine, "spanId"], frame.loc[mine, columns].to_dict("records"), strict=True
    ):
        fields = payloads.setdefault(str(span_id), {})
        for name, value in record.items():
            if len(fields) < _MOST_FIELDS and not _missing(value):
                fields[str(name)] = _json_safe(value)
    return payloads


def tree_labels(operations: list[str], depths: list[int]) -> list[str]:
    """Labels that draw the tree: children indented under their parent, with a branch."""
    return [
        str(operation) if depth == 0 else "\u00a0\u00a0" * (depth - 1) + "\u2514\u00a0" + operation
        for operation, depth in zip(operations, depths, strict=True)
    ]


def format_ms(milliseconds: float) -> str:
    """``0.42 ms``, ``12.3 ms``, ``1.25 s``: a duration as a person reads it."""
    if not math.isfinite(milliseconds):
        return ""
    if milliseconds >= 1000:
        return f"{milliseconds / 1000:.2f} s"
    if milliseconds >= 10:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds:.2f} ms"


def _layers(
    title: str,
    total: float,
    rows: list[dict[str, Any]],
    gaps: list[dict[str, Any]],
    widest_label: int,
) -> dict[str, Any]:
    label_pixels = int(widest_label * _GLYPH_PIXELS) + 8
    y = {
        "field": "row",
        "type": "ordinal",
        "sort": "ascending",
        "axis": {
            "title": None,
            "labelExpr": "substring(datum.label, 5)",
            "labelFont": "monospace",
            "labelFontSize": _LABEL_FONT_SIZE,
            "labelAlign": "left",
            "labelPadding": label_pixels,
            "labelLimit": label_pixels,
            "ticks": False,
            "domain": False,
        },
    }
    x_scale = {"domain": [0, round(total * 1.15, 3)], "nice": False}
    bars: dict[str, Any] = {
        "params": [
            {
                "name": "zoom",
                "select": {"type": "interval", "encodings": ["x"]},
                "bind": "scales",
            }
        ],
        "mark": {"type": "bar", "tooltip": {"expr": "datum.info"}, "cornerRadius": 2},
        "encoding": {
            "y": y,
            "x": {
                "field": "start",
                "type": "quantitative",
                "scale": x_scale,
                "title": "ms since the request's first event",
            },
            "x2": {"field": "end"},
            "color": {
                "field": "kind",
                "type": "nominal",
                "scale": {"domain": list(KINDS), "range": list(COLORS)},
                "legend": {"title": None, "orient": "top"},
            },
        },
    }
    durations = {
        "mark": {"type": "text", "align": "left", "dx": 3, "fontSize": 10, "clip": True},
        "encoding": {
            "y": {"field": "row", "type": "ordinal", "sort": "ascending"},
            "x": {"field": "end", "type": "quantitative"},
            "text": {"field": "text"},
            "color": {"value": "#333333"},
        },
    }
    layers: list[dict[str, Any]] = [bars, durations]
    if gaps:
        layers.insert(
            0,
            {
                "data": {"values": gaps},
                "mark": {"type": "rect", "color": GAP_COLOR, "opacity": 0.7, "clip": True},
                "encoding": {
                    "x": {"field": "start", "type": "quantitative"},
                    "x2": {"field": "end"},
                    "tooltip": [{"field": "text", "title": "idle"}],
                },
            },
        )
    return {
        "$schema": SCHEMA,
        "title": {"text": title, "subtitle": "hover a bar for its payload; scroll to zoom"},
        "width": 640,
        "height": {"step": _ROW_PIXELS},
        "data": {"values": rows},  # the spans; the gaps' layer has its own
        "layer": layers,
        "config": {"view": {"stroke": None}},
    }


def _gap_rows(gaps: pd.DataFrame | None) -> list[dict[str, Any]]:
    if gaps is None or gaps.empty:
        return []
    return [
        {
            "start": round(float(offset), 3),
            "end": round(float(offset + duration), 3),
            "text": f"nothing instrumented ran for {format_ms(float(duration))}",
        }
        for offset, duration in zip(gaps["offset_ms"], gaps["duration_ms"], strict=True)
    ]


def _tooltip(
    record: dict[str, Any], payloads: dict[str, dict[str, Any]], length: float
) -> dict[str, Any]:
    span_id = record["span_id"]
    info: dict[str, Any] = {
        "operation": str(record["operation"]),
        "duration": format_ms(length),
        "own time": format_ms(float(record["own_ms"])),
        "starts at": f"+{format_ms(float(record['offset_ms']))}",
        "span status": str(record["status"]),
    }
    parent = record["parent_span_id"]
    if isinstance(span_id, str):
        info["span id"] = span_id
    if isinstance(parent, str):
        info["parent span id"] = parent
    if isinstance(span_id, str):
        for name, value in payloads.get(span_id, {}).items():
            info[f"payload {name}" if name in info else name] = value
    return info


def _missing(value: object) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _json_safe(value: object) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # a whole number made float by pandas (a column with gaps)
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    text = str(value)
    return text if len(text) <= _MOST_CHARS else text[: _MOST_CHARS - 1] + "\u2026"
