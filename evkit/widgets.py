"""A live ipywidgets dashboard over a :class:`~evkit.collector.Collector`.

:func:`dashboard` returns a :class:`Dashboard`: a pattern chooser (a toggle per event
category, the first segment of the types: the seed's five to start with, then each one
seen in the stream or named by a held pattern; plus free-text patterns, applied
atomically with ``subscribe(..., replace=True)``), a correlation-ID picker, live counters, a latency
chart per correlation ID, the waterfall of one request, the latest events as a
table, and Pause / Resume and Clear buttons. It displays itself in Jupyter.

The collector is the model; the dashboard is a view over it and holds no events of
its own. The correlation picker only filters what is drawn: it does not change what
the collector subscribes to. What the panels hold (charts as PNG bytes, the table and
the counters as HTML) is computed by :mod:`evkit._dashboard_panels` from the
collector's frame and stats; this module owns the widgets, their callbacks and the
refresher thread.

Threads: a listener registered on the collector runs on the collector's ingest thread
and only marks the dashboard dirty. One daemon refresher thread per dashboard redraws
when the dashboard is dirty, at most ``max_redraws_per_second`` times a second, and
never spends more than about half of its time drawing (a redraw that takes longer than
the interval pushes the next one back by as much). It updates the widgets only through
their own API (trait assignment, PNG bytes into ``Image.value``), never ``with out:``.
Widget callbacks (Apply, Clear, the picker) run on the kernel's thread.

This module must not render on the ingest thread, touch pyplot's global state, or
import the server.
"""

from __future__ import annotations

import html
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self

import ipywidgets as widgets

from evkit import _dashboard_panels as panels
from evkit import analysis
from evkit.collector import Collector, collect

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ALL", "CATEGORIES", "MOST_CATEGORIES", "Dashboard", "Rendering", "dashboard"]

CATEGORIES: Final[tuple[str, ...]] = ("claude", "repo", "github", "graphql", "performance")
"""The seed's event categories: the toggles a dashboard starts with. The toggle for
``name`` means the pattern ``name.*``; more appear for the categories seen."""

MOST_CATEGORIES: Final = 24
"""At most this many category toggles; past them, the free-text patterns."""

ALL: Final = "all"
"""The correlation picker's first option: every request."""

CHART_REQUESTS: Final = 20
"""How many requests (the slowest) the latency chart shows."""

PICKER_LIMIT: Final = 500
"""The picker lists the correlation IDs of at most this many requests, the latest seen."""

WATERFALL_SPANS: Final = 60
"""A request with more spans than this gets a note instead of a waterfall (too tall to read
and slow to draw); ``evkit.analysis.plot_waterfall`` draws it in full."""

RENDERED_AT_LIMIT: Final = 1_000
"""How many redraw times :attr:`Dashboard.rendered_at` keeps."""

_POLL_SECONDS: Final = 0.1
_SUBSCRIBE_TIMEOUT: Final = 10.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rendering:
    """What one redraw showed: the dashboard's state, for code and tests to read.

    ``at`` is the :func:`time.monotonic` time the redraw started.
    """

    at: float
    correlation: str | None
    """The picker's choice (None: all requests)."""
    events: int
    """Events in view: all held events, or those of ``correlation``."""
    correlation_ids: tuple[str, ...]
    """The picker's options after ``"all"``."""
    latency_correlations: tuple[str, ...]
    """The requests in the latency chart, slowest first."""
    waterfall_correlation: str | None
    """The request whose waterfall is shown: the chosen one, else the slowest."""
    table: pd.DataFrame
    """The events in the table, newest first."""
    categories: tuple[str, ...]
    """The category toggles shown, in order."""
    seconds: float
    """How long the redraw took."""


class Dashboard:
    """A live view of a collector, built by :func:`dashboard`.

    The widgets are attributes, so code can drive the dashboard the way a user would
    (``dash.category_toggles["repo"].value = True; dash.apply_button.click()``):
    ``category_toggles``, ``pattern_text``, ``apply_button``, ``correlation_picker``,
    ``pause_button``, ``clear_button``, ``status``, ``counters``, ``latency_image``,
    ``waterfall_image``, ``table``; ``widget`` is the whole layout.

    Call :meth:`close` when done: it stops the refresher thread and detaches from
    the collector (and stops the collector when the dashboard made it).
    """

    def __init__(
        self,
        collector: Collector,
        *,
        max_redraws_per_second: float = 2.0,
        table_rows: int = 20,
        owns_collector: bool = False,
    ) -> None:
        self.max_redraws_per_second, self.table_rows = _check_options(
            max_redraws_per_second, table_rows
        )
        self.collector = collector
        self.redraws = 0
        """Redraws so far (by the refresher and by :meth:`refresh`)."""
        self.ticks = 0
        """Times the refresher woke up, whether it redrew or not."""
        self.rendering: Rendering | None = None
        """What the last successful redraw showed."""
        self._owns_collector = owns_collector
        self._interval = 1.0 / self.max_redraws_per_second
        self._dirty = True
        self._paused = False
        self._closed = False
        self._selected: str | None = None
        self._render_failed = False
        self._next_redraw = 0.0
        self._rendered_at: deque[float] = deque(maxlen=RENDERED_AT_LIMIT)
        self._render_lock = threading.Lock()
        # Held while the picker's options are replaced, and by the picker's observer, so
        # a user's choice and the refresher's option update do not interleave.
        self._picker_lock = threading.RLock()
        # Set on the refresher's own thread while it changes the picker, so its
        # observer ignores those changes (and only those).
        self._updating_picker = threading.local()
        self._build_widgets()

        self._listener = self._mark_dirty
        # Copy-on-write: the ingest thread iterates the list it read, never a list
        # being changed under it.
        collector.add_listener(self._listener)
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(
            target=self._refresh_loop, name="evkit-dashboard", daemon=True
        )
        self._thread.start()

    # -- the view -----------------------------------------------------------------------

    def _build_widgets(self) -> None:
        auto = widgets.Layout(width="auto")
        # Toggles for categories seen later are made now, hidden, and revealed by trait
        # assignment: the refresher thread never creates widgets.
        self._toggle_pool = [
            widgets.ToggleButton(layout=widgets.Layout(width="auto", display="none"))
            for _ in range(MOST_CATEGORIES)
        ]
        self.category_toggles: dict[str, widgets.ToggleButton] = {}
        self._reveal_categories(CATEGORIES)
        self.pattern_text = widgets.Text(
            placeholder="more patterns, comma-separated: *.completed, github.api.*",
            description="patterns",
            layout=widgets.Layout(width="28em"),
        )
        self.apply_button = widgets.Button(
            description="Apply",
            button_style="primary",
            tooltip="subscribe to exactly the chosen patterns",
            layout=auto,
        )
        self.correlation_picker = widgets.Dropdown(
            options=[ALL], value=ALL, description="request", layout=widgets.Layout(width="18em")
        )
        self.pause_button = widgets.ToggleButton(
            description="Pause", icon="pause", tooltip="stop redrawing", layout=auto
        )
        self.clear_button = widgets.Button(
            description="Clear", icon="trash", tooltip="forget the collected events", layout=auto
        )
        self.status = widgets.Label(value="")
        self.counters = widgets.HTML(value="")
        half = widgets.Layout(width="50%", height="auto", object_fit="contain")
        self.latency_image = widgets.Image(format="png", value=b"", layout=half)
        self.waterfall_image = widgets.Image(format="png", value=b"", layout=half)
        self.table = widgets.HTML(value="")
        self._show_patterns(self.collector.patterns)

        self.apply_button.on_click(self._on_apply)
        self.clear_button.on_click(self._on_clear)
        self.pause_button.observe(self._on_pause, names="value")
        self.correlation_picker.observe(self._on_pick, names="value")

        title = widgets.HTML(
            value=f"<b>evkit dashboard</b> &middot; {html.escape(str(self.collector.url))}"
        )
        self.widget = widgets.VBox(
            [
                title,
                widgets.HBox(self._toggle_pool, layout=widgets.Layout(flex_flow="row wrap")),
                widgets.HBox([self.pattern_text, self.apply_button]),
                widgets.HBox([self.correlation_picker, self.pause_button, self.clear_button]),
                self.status,
                self.counters,
                widgets.HBox([self.latency_image, self.waterfall_image]),
                self.table,
            ]
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]  # IPython has no annotations here

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "paused" if self._paused else "live"
        return (
            f"<evkit.Dashboard {self.collector.url} {state} redraws={self.redraws} "
            f"correlation={self._selected or ALL}>"
        )

    # -- state ----------------------------------------------------------------------------

    @property
    def selected_correlation(self) -> str | None:
        """The correlation ID the charts and table are restricted to (None: all)."""
        return self._selected

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def rendered_at(self) -> list[float]:
        """:func:`time.monotonic` start times of the latest redraws (at most 1,000)."""
        return list(self._rendered_at)

    def chosen_patterns(self) -> list[str]:
        """The patterns the chooser shows now: ``name.*`` per toggle, then the free text."""
        chosen = [f"{name}.*" for name, toggle in self.category_toggles.items() if toggle.value]
        typed = [part.strip() for part in str(self.pattern_text.value).split(",")]
        return [*chosen, *(part for part in typed if part)]

    # -- actions --------------------------------------------------------------------------

    def refresh(self) -> Rendering | None:
        """Redraw now, on the calling thread, even when paused or not dirty.

        Returns what was drawn, or None when drawing failed (the status label and the
        ``evkit.widgets`` log say why).
        """
        return self._redraw()

    def pause(self) -> None:
        """Stop redrawing (the collector keeps collecting); same as the Pause button."""
        self.pause_button.value = True

    def resume(self) -> None:
        """Redraw again, starting with what arrived meanwhile."""
        self.pause_button.value = False

    def close(self) -> None:
        """Stop the refresher, detach from the collector, and disable the controls.

        The widgets keep showing the last redraw. A collector the dashboard made
        itself (from a URL or a server) is stopped too. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        collector = self.collector
        collector.remove_listener(self._listener)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        for control in (
            *self._toggle_pool,
            self.pattern_text,
            self.apply_button,
            self.correlation_picker,
            self.pause_button,
            self.clear_button,
        ):
            control.disabled = True
        if self._owns_collector:
            collector.stop()
        self.status.value = "closed"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- widget callbacks (kernel thread) -------------------------------------------------

    def _on_apply(self, _button: Any = None) -> None:
        subscribe = getattr(self.collector, "subscribe", None)
        if subscribe is None:
            self.status.value = (
                f"this {type(self.collector).__name__}'s subscription cannot be changed"
            )
            return
        patterns = self.chosen_patterns()
        if not patterns:
            self.status.value = (
                "not applied: choose a category or type a pattern (* for every event); "
                f"still subscribed to {', '.join(self.collector.patterns)}"
            )
            return
        self.status.value = f"subscribing to {', '.join(patterns)}..."
        try:
            if "timeout" in _parameters(subscribe):
                held = subscribe(patterns, replace=True, timeout=_SUBSCRIBE_TIMEOUT)
            else:
                held = subscribe(patterns, replace=True)
        except Exception as exc:  # shown to the user; the collector kept its subscription
            self.status.value = (
                f"not applied: {exc}; still subscribed to {', '.join(self.collector.patterns)}"
            )
            return
        self._show_patterns(held)
        self.status.value = f"subscribed to {', '.join(held)}"

    def _on_clear(self, _button: Any = None) -> None:
        self.collector.clear()
        self._dirty = True
        self.status.value = "cleared: the collector holds no events"

    def _on_pause(self, change: dict[str, Any]) -> None:
        self._paused = bool(change["new"])
        self.pause_button.description = "Resume" if self._paused else "Pause"
        self.pause_button.icon = "play" if self._paused else "pause"
        if self._paused:
            self.status.value = "paused: the collector keeps collecting; press Resume to redraw"
        else:
            self._dirty = True
            self.status.value = ""

    def _on_pick(self, change: dict[str, Any]) -> None:
        if getattr(self._updating_picker, "active", False):
            return
        with self._picker_lock:
            value = change["new"]
            self._selected = None if value is None or value == ALL else str(value)
            self._dirty = True

    def _show_patterns(self, patterns: Iterable[str]) -> None:
        held = list(patterns)
        self._reveal_categories(panels.categories((), (), held, MOST_CATEGORIES))
        for name, toggle in self.category_toggles.items():
            toggle.value = f"{name}.*" in held
        category_patterns = {f"{name}.*" for name in self.category_toggles}
        self.pattern_text.value = ", ".join(p for p in held if p not in category_patterns)

    def _reveal_categories(self, names: Iterable[str]) -> None:
        shown = dict(self.category_toggles)
        for name in names:
            if name in shown or len(shown) >= len(self._toggle_pool):
                continue
            toggle = self._toggle_pool[len(shown)]
            toggle.description = name
            toggle.tooltip = f"{name}.*: every {name} event"
            toggle.layout.display = None
            shown[name] = toggle
        # Replaced, never changed in place: the kernel's thread may be iterating it.
        self.category_toggles = shown

    # -- updates ------------------------------------------------------------------------

    def _mark_dirty(self, event: dict[str, Any]) -> None:
        # Runs on the collector's ingest thread for every event: keep it this cheap.
        self._dirty = True

    def _refresh_loop(self) -> None:
        last_counters = 0.0
        poll = min(_POLL_SECONDS, self._interval)
        while True:
            delay = self._next_redraw - time.monotonic()
            if self._stop.wait(max(delay, poll)):
                return
            self.ticks += 1
            if self._paused:
                continue
            try:
                if self._dirty:
                    self._redraw()
                    last_counters = time.monotonic()
                elif time.monotonic() - last_counters >= self._interval:
                    # Keep the rate honest when nothing arrives; not a redraw.
                    self.counters.value = panels.counters_html(self.collector.stats, self.redraws)
                    last_counters = time.monotonic()
            except Exception:  # the refresher must outlive any one failure
                logger.exception("evkit dashboard: refresher step failed")

    def _redraw(self) -> Rendering | None:
        with self._render_lock:
            started = time.monotonic()
            self._dirty = False
            self.redraws += 1
            self._rendered_at.append(started)
            try:
                rendering = self._render(started)
            except Exception as exc:
                logger.exception("evkit dashboard: redraw failed")
                self._render_failed = True
                self.status.value = (
                    f"redraw failed: {type(exc).__name__}: {exc} "
                    "(the dashboard keeps running; details in the evkit.widgets log)"
                )
                rendering = None
            else:
                self.rendering = rendering
                if self._render_failed:
                    self._render_failed = False
                    self.status.value = ""
            finished = time.monotonic()
            # At most max_redraws_per_second, and at most half of the time spent drawing.
            self._next_redraw = max(started + self._interval, finished + (finished - started))
            return rendering

    def _render(self, started: float) -> Rendering:
        selected = self._selected
        seen = self.collector.stats["types"]
        self._reveal_categories(
            panels.categories(CATEGORIES, seen, self.collector.patterns, MOST_CATEGORIES)
        )
        frame = self.collector.to_dataframe()
        ids = _correlation_ids(frame, selected)
        self._set_picker(ids, selected)
        view = frame if selected is None else _only(frame, selected)

        requests = analysis.latency_by_correlation(view)
        charted = tuple(str(label) for label in requests.index[:CHART_REQUESTS])
        latency_png = panels.png(analysis.plot_latency_by_correlation(view, top=CHART_REQUESTS))
        waterfall_id = selected if selected is not None else (charted[0] if charted else None)
        if waterfall_id is None:
            waterfall_png = panels.png(panels.placeholder("Waterfall", "no request yet"))
        else:
            request = view if selected is not None else _only(view, waterfall_id)
            waterfall_png = panels.png(panels.waterfall(request, waterfall_id, WATERFALL_SPANS))
        rows = view.tail(self.table_rows).iloc[::-1]

        self.latency_image.value = latency_png
        self.waterfall_image.value = waterfall_png
        self.table.value = panels.table_html(rows, len(view), selected)
        self.counters.value = panels.counters_html(self.collector.stats, self.redraws)
        return Rendering(
            at=started,
            correlation=selected,
            events=len(view),
            correlation_ids=ids,
            latency_correlations=charted,
            waterfall_correlation=waterfall_id,
            table=rows.reset_index(drop=True),
            categories=tuple(self.category_toggles),
            seconds=time.monotonic() - started,
        )

    def _set_picker(self, ids: tuple[str, ...], selected: str | None) -> None:
        picker = self.correlation_picker
        options = (ALL, *ids)
        wanted = ALL if selected is None else selected
        with self._picker_lock:
            if tuple(picker.options) == options and picker.value == wanted:
                return
            self._updating_picker.active = True
            try:
                with picker.hold_sync():
                    picker.options = options
                    picker.value = wanted
            finally:
                self._updating_picker.active = False


def dashboard(
    collector_or_url: Collector | str | Any,
    *,
    max_redraws_per_second: float = 2.0,
    table_rows: int = 20,
) -> Dashboard:
    """A live dashboard over a collector, or over a new one for a URL or a server.

    ``collector_or_url`` is a :class:`~evkit.collector.Collector`, a ``ws://`` URL or
    anything with a ``url`` (a server): then the dashboard collects every event with
    :func:`evkit.collect` and stops that collector when it is closed. The first draw
    happens before this returns; later ones follow the events, at most
    ``max_redraws_per_second`` times a second. The table shows the latest
    ``table_rows`` events.

    Raises:
        ValueError: ``max_redraws_per_second`` is not a positive number, ``table_rows``
            not a positive integer, or the URL is not a WebSocket URL.
        TypeError: ``collector_or_url`` is none of the above.
        ConnectionError: a collector could not connect.
    """
    _check_options(max_redraws_per_second, table_rows)
    if isinstance(collector_or_url, Collector):
        return Dashboard(
            collector_or_url,
            max_redraws_per_second=max_redraws_per_second,
            table_rows=table_rows,
        )
    collector = collect(collector_or_url)
    try:
        return Dashboard(
            collector,
            max_redraws_per_second=max_redraws_per_second,
            table_rows=table_rows,
            owns_collector=True,
        )
    except BaseException:
        collector.stop()
        raise


# -- pure helpers ----------------------------------------------------------------------------


def _check_options(max_redraws_per_second: object, table_rows: object) -> tuple[float, int]:
    if (
        isinstance(max_redraws_per_second, bool)
        or not isinstance(max_redraws_per_second, int | float)
        or not math.isfinite(max_redraws_per_second)
        or max_redraws_per_second <= 0
    ):
        raise ValueError(
            "max_redraws_per_second must be a positive number such as 2.0, "
            f"got {max_redraws_per_second!r}"
        )
    if isinstance(table_rows, bool) or not isinstance(table_rows, int) or table_rows < 1:
        raise ValueError(f"table_rows must be a positive integer such as 20, got {table_rows!r}")
    return float(max_redraws_per_second), table_rows


def _parameters(function: Any) -> frozenset[str]:
    import inspect

    try:
        return frozenset(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _only(frame: pd.DataFrame, correlation_id: str) -> pd.DataFrame:
    return frame[frame["correlation_id"].eq(correlation_id).fillna(False).to_numpy(dtype=bool)]


def _correlation_ids(frame: pd.DataFrame, selected: str | None) -> tuple[str, ...]:
    """The picker's options: the latest requests seen, sorted, and the chosen one."""
    seen = frame["correlation_id"].dropna().unique()
    ids = {str(value) for value in seen[-PICKER_LIMIT:]}
    if selected is not None:
        ids.add(selected)
    return tuple(sorted(ids))
