"""What the dashboard's panels show, computed from plain frames and stats.

No kernel, no collector, no thread: the dashboard's own tests (``test_widgets.py``)
check that these values reach the widgets.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from evkit._dashboard_panels import (
    categories,
    counters_html,
    placeholder,
    png,
    table_html,
    waterfall,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE_MS = 1_700_000_000_000


def events(*rows: dict[str, Any]) -> pd.DataFrame:
    """A frame in the collector's shape; ``at`` is milliseconds after a base time."""
    frame = pd.DataFrame(
        [
            {"id": str(number), "correlation_id": "req-1", "duration_ms": math.nan, **row}
            for number, row in enumerate(rows, start=1)
        ]
    )
    frame["timestamp"] = pd.to_datetime(BASE_MS + frame.pop("at"), unit="ms", utc=True)
    return frame


def spans(count: int) -> pd.DataFrame:
    """``count`` sequential spans of one request, 10 ms each."""
    rows: list[dict[str, Any]] = []
    for number in range(count):
        start = number * 10
        rows.append({"type": "svc.op.started", "at": start, "spanId": f"s{number}"})
        rows.append(
            {
                "type": "svc.op.completed",
                "at": start + 10,
                "spanId": f"s{number}",
                "duration_ms": 10.0,
            }
        )
    return events(*rows)


def test_table_html_escapes_every_value_and_says_what_it_shows() -> None:
    rows = events(
        {
            "type": "repo.commit.created",
            "at": 1_234,
            "correlation_id": "r<1>",
            "duration_ms": 12.345,
            "message": "<script>alert(1)</script> & co",
        }
    )
    table = table_html(rows, in_view=5, selected="r<1>")
    assert "<script>" not in table
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in table
    assert "r&lt;1&gt;" in table
    assert "<td style='text-align:left;padding:0 .6em'>12.3</td>" in table
    assert "latest 1 of 5 events (request r&lt;1&gt;), newest first" in table


def test_table_html_of_no_events_names_the_scope() -> None:
    assert (
        table_html(events({"type": "a.b.created", "at": 0}).iloc[0:0], 0, None)
        == "<i>no events yet (all requests)</i>"
    )


def test_table_html_cuts_long_payloads() -> None:
    table = table_html(events({"type": "a.b.created", "at": 0, "text": "x" * 500}), 1, None)
    assert "x" * 150 in table
    assert "x" * 160 not in table
    assert "\u2026" in table


def test_counters_html_shows_the_stats_and_the_most_frequent_types() -> None:
    stats = {"held": 1_200, "received": 3, "rate": 2.5, "state": "open", "types": {"a<b": 2}}
    counters = counters_html(stats, redraws=7)
    for shown in (
        "held <b>1,200</b>",
        "rate <b>2.5/s</b>",
        "state <b>open</b>",
        "redraws <b>7</b>",
    ):
        assert shown in counters
    assert "types: a&lt;b 2" in counters
    assert "<i>none yet</i>" in counters_html({}, redraws=0)


def test_waterfall_draws_at_most_most_spans_and_notes_more() -> None:
    drawn = waterfall(spans(3), "req-1", most_spans=3)
    assert len(drawn.axes[0].patches) == 3
    noted = waterfall(spans(3), "req-1", most_spans=2)
    assert len(noted.axes[0].patches) == 0
    [note] = [text.get_text() for text in noted.axes[0].texts]
    assert note.startswith("3 spans: too many to draw here (at most 2)")
    assert "evkit.analysis.plot_waterfall(col.df, 'req-1')" in note


def test_charts_become_png_bytes() -> None:
    assert png(placeholder("Waterfall", "no request yet")).startswith(PNG_SIGNATURE)


def test_categories_start_from_the_known_ones_and_learn_the_rest() -> None:
    known = ("claude", "repo")
    types = ["repo.commit.created", "billing.invoice.paid", "log.info", "billing.x"]
    assert categories(known, types, ["orders.*", "*.failed", "repo.*"], most=10) == (
        "claude",
        "repo",
        "orders",
        "billing",
        "log",
    )
    assert categories(known, types, [], most=3) == ("claude", "repo", "billing")
    assert categories((), ["", ".x"], ["a.b.*", "*"], most=5) == ()
