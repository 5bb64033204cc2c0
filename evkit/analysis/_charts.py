"""Charts of the analyses: latency per request, and one request's waterfall.

This module is responsible for :class:`Figure` (a matplotlib figure that shows
itself in Jupyter, interactive when it carries a Vega-Lite specification),
:func:`plot_latency_by_correlation` and :func:`plot_waterfall`. Every chart is a new,
unattached figure; a chart of nothing says "no data".

It must not compute what it draws (it reads :mod:`evkit.analysis._latency`,
``_trace`` and ``_vega``), and must not touch pyplot's global state: figures are
built with :class:`~matplotlib.figure.Figure` directly, so no GUI backend is selected.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as _MatplotlibFigure
from matplotlib.patches import Patch

from evkit.analysis._latency import latency_by_correlation
from evkit.analysis._spans import FAILED, RUNNING
from evkit.analysis._trace import idle_gaps, trace_spans
from evkit.analysis._vega import (
    COLORS,
    GAP_COLOR,
    MIME_TYPE,
    format_ms,
    span_payloads,
    spec_from,
    tree_labels,
)

__all__ = ["Figure", "plot_latency_by_correlation", "plot_waterfall"]

_WALL_COLOR: Final = "tab:blue"
_OPERATION_COLOR: Final = "tab:orange"
# The waterfall's colors are the interactive chart's: one palette for both.
_SPAN_COLOR, _CRITICAL_COLOR, _FAILED_COLOR, _RUNNING_COLOR = COLORS
_FAILED_EDGE: Final = "darkred"
_LABEL_POINTS: Final = 9
_INTERACTIVE_SPANS: Final = 2_000


class Figure(_MatplotlibFigure):
    """A matplotlib Figure that shows itself in Jupyter with no ``%matplotlib`` magic.

    Without pyplot, a bare Figure has no display hook and a notebook prints its repr;
    this one gives every Jupyter frontend the PNG. When :attr:`vega_lite` holds a
    Vega-Lite specification (the waterfall's), the output carries it too, as
    ``application/vnd.vegalite.v5+json``: JupyterLab, Notebook 7 and VS Code draw that
    interactive chart, and frontends without a Vega renderer (GitHub, nbviewer,
    nbconvert) show the PNG. ``savefig`` and everything else are matplotlib's.
    """

    vega_lite: dict[str, Any] | None = None
    """The interactive version of this chart, or None."""

    def _repr_png_(self) -> bytes:
        from io import BytesIO

        buffer = BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "image/png": base64.b64encode(self._repr_png_()).decode("ascii"),
            "text/plain": repr(self),
        }
        if self.vega_lite is not None:
            bundle[MIME_TYPE] = self.vega_lite
        return bundle


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

    Rows are the :func:`trace_spans` tree: each parent directly above its children,
    which are indented under it with a branch mark; siblings by start time. Bars run
    from each span's start for its duration, in milliseconds since the request's
    first event, and are labelled with that duration. Spans on the
    :func:`critical_path` are orange; failed spans are red and hatched, labelled
    "failed", and never narrower than a sliver so they stay visible; running spans
    are drawn, grey, up to the request's last timestamp and labelled "running".
    Shaded bands mark the :func:`idle_gaps` (nothing instrumented was running),
    with their length above them.

    The caller gets a new, unattached :class:`Figure`: its axes hold one bar patch
    per span, then one band per gap. In Jupyter it displays as an interactive chart
    (hover a bar for its payload, scroll to zoom on time) where the frontend can
    draw Vega-Lite, and as the picture elsewhere; ``figure.vega_lite`` is that
    specification (None beyond 2,000 spans). A frame with no events, or a request
    with no spans, shows "no data".

    Raises:
        KeyError: the frame has events, but none with this correlation id; the
            message lists some ids that are present.
        ValueError: the ``timestamp`` column cannot be parsed as datetimes.
    """
    title = f"Waterfall of {correlation_id}"
    table = trace_spans(df, correlation_id)
    if table.empty:
        return _no_data_figure(title)
    gaps = idle_gaps(df, correlation_id)
    offsets = table["offset_ms"].to_numpy(dtype="float64")
    lengths = table["length_ms"].to_numpy(dtype="float64")
    total = float((offsets + lengths).max()) or 1.0
    # A span of no length (or a failure at once) is still drawn, as a sliver.
    widths = np.maximum(lengths, total * 0.004)

    count = len(table)
    # At most 16 inches tall: a request with hundreds of spans stays a picture, not a poster.
    figure = Figure(figsize=(10.0, min(16.0, max(2.5, 0.32 * count + 1.6))), layout="constrained")
    axes = figure.add_subplot()
    rows = np.arange(count)
    statuses = table["status"].tolist()
    colors = [
        _FAILED_COLOR
        if status == FAILED
        else _RUNNING_COLOR
        if status == RUNNING
        else _CRITICAL_COLOR
        if critical
        else _SPAN_COLOR
        for status, critical in zip(statuses, table["critical"], strict=True)
    ]
    bars = axes.barh(rows, widths, left=offsets, height=0.6, color=colors)
    for row, (bar, status) in enumerate(zip(bars.patches, statuses, strict=True)):
        note = format_ms(float(lengths[row]))
        if status == FAILED:
            bar.set_edgecolor(_FAILED_EDGE)
            bar.set_hatch("//")
            note += " failed"
        elif status == RUNNING:
            bar.set_hatch("..")
            note += " running"
        right = offsets[row] + widths[row]
        axes.text(right, row, f" {note}", va="center", fontsize=8, color="0.2")
    _shade_gaps(axes, gaps)

    _tree_axis(axes, tree_labels(table["operation"].tolist(), table["depth"].tolist()))
    axes.set_xlim(0.0, total * 1.18)  # room for the last bars' labels
    axes.set_xlabel("milliseconds since the request's first event")
    axes.set_title(f"{title}: {format_ms(total)}, {count} span{'s' if count != 1 else ''}")
    legend = [
        Patch(color=_SPAN_COLOR, label="span"),
        Patch(color=_CRITICAL_COLOR, label="critical path"),
        Patch(facecolor=_FAILED_COLOR, edgecolor=_FAILED_EDGE, hatch="//", label="failed"),
    ]
    if not gaps.empty:
        legend.append(Patch(color=GAP_COLOR, label="nothing running"))
    # Outside the axes: never over the bars it explains.
    axes.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if count <= _INTERACTIVE_SPANS:
        payloads = span_payloads(df, correlation_id, table)
        figure.vega_lite = spec_from(table, gaps, payloads, correlation_id)
    return figure


def _tree_axis(axes: Any, labels: list[str]) -> None:
    """Rows labelled by the tree, left-aligned in monospace so the indentation shows."""
    axes.set_yticks(
        np.arange(len(labels)), labels=labels, fontfamily="monospace", fontsize=_LABEL_POINTS
    )
    for tick in axes.get_yticklabels():
        tick.set_horizontalalignment("left")
    # Right-aligned labels would hide the indentation; left-aligned ones need the
    # width of the longest pushed left of the axis (a monospace glyph is 0.6 em).
    widest = max(len(label) for label in labels)
    axes.tick_params(axis="y", length=0, pad=widest * _LABEL_POINTS * 0.6 + 6)
    axes.invert_yaxis()


def _shade_gaps(axes: Any, gaps: pd.DataFrame) -> None:
    for offset, duration in zip(gaps["offset_ms"], gaps["duration_ms"], strict=True):
        axes.axvspan(offset, offset + duration, color=GAP_COLOR, alpha=0.7, zorder=0, lw=0)
        axes.text(
            offset + duration / 2,
            -0.48,  # inside the top edge, above the first row's bar
            format_ms(float(duration)),
            ha="center",
            va="top",
            fontsize=7,
            color="0.35",
        )


def _no_data_figure(title: str) -> Figure:
    figure = Figure(figsize=(6.0, 2.5), layout="constrained")
    axes = figure.add_subplot()
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    return figure
