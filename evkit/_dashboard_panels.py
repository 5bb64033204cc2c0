"""What the dashboard's panels show, as plain values: charts as PNG, tables as HTML.

This module is responsible for turning what :mod:`evkit.widgets` reads from the
collector (an event DataFrame, the collector's ``stats``) into the values its widgets
hold: PNG bytes of the charts (drawn by :mod:`evkit.analysis`, or a note in their
place) and the HTML of the event table and of the counters, every value escaped.

Everything here is a pure function of its arguments, testable without a kernel. It
must not hold state, touch widgets or threads, touch pyplot's global state, or
import the server.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from evkit import analysis
from evkit.collector import FIXED_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["categories", "counters_html", "placeholder", "png", "table_html", "waterfall"]

_CATEGORY_PATTERN: Final = re.compile(r"([A-Za-z0-9_-]+)\.\*")
_PAYLOAD_CHARS: Final = 160
_TOP_TYPES: Final = 8
_DPI: Final = 80


def categories(
    known: Sequence[str], types: Iterable[str], patterns: Iterable[str], most: int
) -> tuple[str, ...]:
    """The category toggles a dashboard shows, learnt from the system it watches.

    ``known`` first (a starting set, such as the original system's five), then the
    first segment of each event type seen (``types``) and each category a held
    pattern names (``log.*``), in the order given, without repeats; at most ``most``.
    """
    shown = dict.fromkeys(known)
    for pattern in patterns:
        match = _CATEGORY_PATTERN.fullmatch(pattern)
        if match:
            shown.setdefault(match.group(1))
    for type_ in types:
        shown.setdefault(type_.partition(".")[0])
    shown.pop("", None)
    return tuple(shown)[:most]


def waterfall(request: pd.DataFrame, correlation_id: str, most_spans: int) -> analysis.Figure:
    """The request's waterfall, or a note when it has more than ``most_spans`` spans.

    A waterfall of hundreds of spans is too tall to read and slow to draw;
    ``evkit.analysis.plot_waterfall`` draws it in full, and the note says so.
    """
    count = len(analysis.spans(request))
    if count > most_spans:
        return placeholder(
            f"Waterfall of {correlation_id}",
            f"{count:,} spans: too many to draw here (at most {most_spans});\n"
            f"evkit.analysis.plot_waterfall(col.df, {correlation_id!r}) draws them all",
        )
    return analysis.plot_waterfall(request, correlation_id)


def png(figure: analysis.Figure) -> bytes:
    """The figure as PNG bytes, at the dashboard's resolution."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def placeholder(title: str, text: str) -> analysis.Figure:
    """A chart-sized figure that shows ``text`` where a chart would be."""
    figure = analysis.Figure(figsize=(6.0, 2.5), layout="constrained")
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)
    return figure


def table_html(rows: pd.DataFrame, in_view: int, selected: str | None) -> str:
    """The rows (newest first) as an HTML table; every value is escaped."""
    scope = "all requests" if selected is None else f"request {selected}"
    if rows.empty:
        return f"<i>no events yet ({html.escape(scope)})</i>"
    payload_columns = [name for name in rows.columns if name not in FIXED_COLUMNS]
    header = "".join(
        f"<th style='text-align:left;padding:0 .6em'>{name}</th>"
        for name in ("time (UTC)", "type", "correlation", "ms", "id", "payload")
    )
    body = []
    for record in rows.to_dict("records"):
        timestamp = record["timestamp"]
        when = "" if _missing(timestamp) else timestamp.strftime("%H:%M:%S.%f")[:-3]
        duration = record["duration_ms"]
        milliseconds = "" if _missing(duration) else f"{float(duration):.1f}"
        payload = ", ".join(
            f"{name}={record[name]}" for name in payload_columns if not _missing(record[name])
        )
        if len(payload) > _PAYLOAD_CHARS:
            payload = payload[: _PAYLOAD_CHARS - 1] + "\u2026"
        cells = (
            html.escape(when),
            _cell(record["type"]),
            _cell(record["correlation_id"]),
            html.escape(milliseconds),
            _cell(record["id"]),
            html.escape(payload),
        )
        body.append(
            "<tr>"
            + "".join(f"<td style='text-align:left;padding:0 .6em'>{cell}</td>" for cell in cells)
            + "</tr>"
        )
    caption = f"latest {len(rows):,} of {in_view:,} events ({html.escape(scope)}), newest first"
    return (
        "<table style='border-collapse:collapse;font-family:monospace;font-size:12px'>"
        f"<caption style='text-align:left'>{caption}</caption>"
        f"<thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def counters_html(stats: dict[str, Any], redraws: int) -> str:
    """Collector counters and the most frequent event types, escaped."""
    counters = [
        ("held", f"{stats.get('held', 0):,}"),
        ("received", f"{stats.get('received', 0):,}"),
        ("rate", f"{float(stats.get('rate', 0.0)):,.1f}/s"),
        ("dropped", f"{stats.get('dropped', 0):,}"),
        ("reconnects", f"{stats.get('reconnects', 0):,}"),
        ("gaps", f"{stats.get('gaps', 0):,}"),
        ("state", str(stats.get("state", ""))),
        ("redraws", f"{redraws:,}"),
    ]
    line = " &middot; ".join(
        f"{html.escape(name)} <b>{html.escape(value)}</b>" for name, value in counters
    )
    top = Counter(stats.get("types", {})).most_common(_TOP_TYPES)
    types = ", ".join(f"{html.escape(str(name))} {count:,}" for name, count in top)
    return f"<div>{line}</div><div>types: {types or '<i>none yet</i>'}</div>"


def _missing(value: object) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    import pandas as pd

    return value is pd.NA or value is pd.NaT


def _cell(value: object) -> str:
    return "" if _missing(value) else html.escape(str(value))
