"""How servers and collectors show themselves in a notebook: HTML cards from plain values.

This module is responsible for the rich reprs (``_repr_html_``) of
:class:`~evkit.server.Server` and :class:`~evkit.collector.Collector`: a title, a
state badge and a table of what matters (URLs, clients, counts, rates), every value
escaped. The callers pass plain values (their ``stats()`` and settings).

A server's counters have no clock, so the event rates of a server card are measured
between two displays of the same stream: the one state kept here is the last sample
per stream (a few numbers each, at most :data:`REMEMBERED_STREAMS` streams).

It must not import the server, the collector or pandas (a broadcaster-only install
uses it), and must not do I/O.
"""

from __future__ import annotations

import html
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["REMEMBERED_STREAMS", "card_html", "collector_html", "server_html"]

REMEMBERED_STREAMS: Final = 64
"""How many servers' last samples are kept for their rates."""

_BADGE_COLORS: Final = {
    "running": "#1f9d55",
    "connected": "#1f9d55",
    "stopped": "#6b7385",
    "failed": "#d64545",
}
_samples: OrderedDict[tuple[str, str], tuple[float, int, int]] = OrderedDict()
_samples_lock = threading.Lock()


def card_html(title: str, state: str, rows: Iterable[tuple[str, str]]) -> str:
    """A card: ``title``, a badge for ``state``, then one table row per (name, value).

    Values are escaped, except those that are already HTML (see :func:`_link`).
    """
    color = _BADGE_COLORS.get(state, "#c98a04")
    badge = (
        f"<span style='background:{color};color:#fff;border-radius:9px;padding:0 8px;"
        f"font-size:11px;margin-left:6px'>{html.escape(state)}</span>"
    )
    body = "".join(
        "<tr><th style='text-align:left;padding:1px 12px 1px 0;font-weight:600'>"
        f"{html.escape(name)}</th><td style='text-align:left;padding:1px 0'>"
        f"{value if isinstance(value, _Html) else html.escape(value)}</td></tr>"
        for name, value in rows
    )
    return (
        "<div style='font-family:system-ui,sans-serif;font-size:13px;border:1px solid #e3e6ec;"
        "border-radius:6px;padding:6px 10px;display:inline-block'>"
        f"<b>{html.escape(title)}</b>{badge}<table style='margin-top:4px'>{body}</table></div>"
    )


def server_html(url: str, running: bool, stats: Mapping[str, Any]) -> str:
    """The card of a server: its URLs, clients, what it published, delivered and dropped.

    ``stats`` is the server's ``stats()`` (an empty mapping for a stopped server).
    Rates are per second since this server's stream was last shown (see the module
    docstring).
    """
    page = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    page = page.removesuffix("/ws/events") + "/"
    rows: list[tuple[str, str]] = [
        ("stream", url),
        ("dashboard", _link(page)),
    ]
    if running and stats:
        published, delivered = int(stats.get("published", 0)), int(stats.get("delivered", 0))
        published_rate, delivered_rate = _rates(
            (url, str(stats.get("epoch"))), published, delivered
        )
        rows += [
            ("clients", f"{int(stats.get('clients', 0)):,}"),
            ("published", f"{published:,}{published_rate}"),
            ("delivered", f"{delivered:,}{delivered_rate}"),
            ("waiting", f"{int(stats.get('pending', 0)):,}"),
            ("dropped (queue full)", f"{int(stats.get('dropped', 0)):,}"),
            ("slow consumers cut", f"{int(stats.get('slow_consumer_disconnects', 0)):,}"),
            ("last id", str(stats.get("last_id") or "none yet")),
        ]
    return card_html("evkit Server", "running" if running else "stopped", rows)


def collector_html(
    source: str,
    patterns: Iterable[str],
    correlation_id: str | None,
    buffer_size: int,
    stats: Mapping[str, Any],
) -> str:
    """The card of a collector: what it subscribes to, holds, receives and lost."""
    rows = [
        ("source", str(source)),
        ("patterns", ", ".join(patterns)),
        ("correlation", correlation_id or "all"),
        ("events held", f"{int(stats['held']):,} of at most {buffer_size:,}"),
        ("received", f"{int(stats['received']):,}"),
        ("rate", f"{float(stats['rate']):,.1f} /s"),
        ("dropped (buffer full)", f"{int(stats['dropped']):,}"),
        ("reconnects", f"{int(stats.get('reconnects', 0)):,}"),
        ("replayed", f"{int(stats.get('replayed', 0)):,}"),
        ("gaps reported", f"{int(stats.get('gaps', 0)):,}"),
    ]
    return card_html("evkit Collector", str(stats["state"]), rows)


class _Html(str):
    """Text that is HTML already (built here from escaped parts)."""

    __slots__ = ()


def _link(url: str) -> str:
    safe = html.escape(url, quote=True)
    return _Html(f"<a href='{safe}' target='_blank'>{safe}</a>")


def _rates(key: tuple[str, str], published: int, delivered: int) -> tuple[str, str]:
    """`` (12.5/s ...)`` for both counts since this stream's previous sample; nothing the
    first time."""
    now = time.monotonic()
    with _samples_lock:
        previous = _samples.get(key)
        _samples[key] = (now, published, delivered)
        _samples.move_to_end(key)
        while len(_samples) > REMEMBERED_STREAMS:
            _samples.popitem(last=False)
    if previous is None or now <= previous[0]:
        return "", ""
    seconds = now - previous[0]
    return (
        f" ({max(published - previous[1], 0) / seconds:,.1f}/s since last shown)",
        f" ({max(delivered - previous[2], 0) / seconds:,.1f}/s since last shown)",
    )
