"""Charts of the analyses: latency per request, and one request's waterfall.

This module is responsible for :class:`Figure` (a matplotlib figure that shows
itself in Jupyter), :func:`plot_latency_by_correlation` and :func:`plot_waterfall`.
Every chart is a new, unattached figure; a chart of nothing says "no data".

It must not compute what it draws (it reads :mod:`evkit.analysis._latency` and
``_trace``), and must not touch pyplot's global state: figures are built with
:class:`~matplotlib.figure.Figure` directly, so no GUI backend is selected.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as _MatplotlibFigure
from matplotlib.patches import Patch

from evkit.analysis._events import MILLISECOND
from evkit.analysis._latency import latency_by_correlation
from evkit.analysis._spans import FAILED, RUNNING
from evkit.analysis._trace import critical_labels, nesting_order, request_spans

__all__ = ["Figure", "plot_latency_by_correlation", "plot_waterfall"]

_WALL_COLOR: Final = "tab:blue"
_OPERATION_COLOR: Final = "tab:orange"
_SPAN_COLOR: Final = "tab:blue"
_CRITICAL_COLOR: Final = "tab:orange"
_FAILED_EDGE: Final = "red"


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
    request = request_spans(df, correlation_id)
    if request is None or request.spans.empty:
        return _no_data_figure(title)

    span_table = request.spans
    order = nesting_order(span_table)
    on_path = set(critical_labels(span_table, request.last))
    ordered = span_table.loc[[label for label, _ in order]]
    ends = ordered["end"].fillna(request.last)
    offsets = ((ordered["start"] - request.first) / MILLISECOND).to_numpy(dtype="float64")
    widths = ((ends - ordered["start"]) / MILLISECOND).to_numpy(dtype="float64")

    count = len(ordered)
    # At most 16 inches tall: a request with hundreds of spans stays a picture, not a poster.
    figure = Figure(figsize=(9.0, min(16.0, max(2.5, 0.35 * count + 1.5))), layout="constrained")
    axes = figure.add_subplot()
    rows = np.arange(count)
    colors = [_CRITICAL_COLOR if label in on_path else _SPAN_COLOR for label, _ in order]
    bars = axes.barh(rows, widths, left=offsets, height=0.6, color=colors)

    for row, (bar, status) in enumerate(zip(bars.patches, ordered["status"], strict=True)):
        right = offsets[row] + widths[row]
        if status == FAILED:
            bar.set_edgecolor(_FAILED_EDGE)
            bar.set_linewidth(1.5)
            bar.set_hatch("//")
            axes.text(right, row, " failed", va="center", color=_FAILED_EDGE, fontsize=8)
        elif status == RUNNING:
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


def _no_data_figure(title: str) -> Figure:
    figure = Figure(figsize=(6.0, 2.5), layout="constrained")
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    return figure
