"""Prometheus exposition of a broadcaster's counters (``GET /metrics``).

The broadcaster counts in plain integers on its hot path; this module turns a snapshot
of them into Prometheus metric families at scrape time, through prometheus_client's
own text format. prometheus_client is imported only here, when ``/metrics`` is asked
for (``pip install 'evkit[metrics]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["LATENCY_BUCKETS", "render"]

# Upper bounds, in seconds, of the emit-to-send latency histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def render(snapshot: dict[str, Any]) -> tuple[bytes, str]:
    """The Prometheus text for ``snapshot`` (see ``Broadcaster.metrics_snapshot``) and its
    content type.

    Raises:
        ImportError: prometheus_client is not installed.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry), CONTENT_TYPE_LATEST


# The counters, in exposition order: (name, help, label or None, snapshot key).
_COUNTERS = (
    ("evkit_connections", "WebSocket connections accepted", None, "connections_total"),
    (
        "evkit_connections_rejected",
        "Connections refused before any event was sent, by reason",
        "reason",
        "rejected",
    ),
    ("evkit_events_published", "Events published, by category", "category", "published"),
    ("evkit_events_delivered", "Event deliveries to clients, by category", "category", "delivered"),
    (
        "evkit_events_dropped",
        "Events dropped before broadcast (queue full or unencodable), by category",
        "category",
        "dropped",
    ),
    ("evkit_disconnects", "Client disconnects, by reason", "reason", "disconnects"),
    (
        "evkit_slow_consumer_disconnects",
        "Clients closed with 1013 for falling behind",
        None,
        "slow_consumer_disconnects",
    ),
    ("evkit_replays", "History replays served (since)", None, "replays"),
    (
        "evkit_client_message_errors",
        "Client messages rejected, by error code",
        "code",
        "client_errors",
    ),
    ("evkit_store_outages", "Times the store became unreachable (Redis)", None, "store_outages"),
)
_GAUGES = (
    ("evkit_connections", "WebSocket clients connected now", "connections"),
    ("evkit_store_up", "1 while the store reports no error", "store_up"),
    (
        "evkit_events_waiting",
        "Events emitted and not yet handed out (queued, or waiting for Redis)",
        "waiting",
    ),
)


class _SnapshotCollector:
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        s = self.snapshot
        for name, doc, key in _GAUGES:
            yield GaugeMetricFamily(name, doc, s[key])
        for name, doc, label, key in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=[label] if label else None)
            if label is None:
                family.add_metric([], s[key])
            else:
                for value_label, value in sorted(s[key].items()):
                    family.add_metric([value_label], value)
            yield family
        counts, total = s["latency"]
        cumulative, buckets = 0, []
        for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        cumulative += counts[-1]
        buckets.append(("+Inf", cumulative))
        yield HistogramMetricFamily(
            "evkit_emit_to_send_seconds",
            "Time from emit() to the write to the clients' connections",
            buckets=buckets,
            sum_value=total,
        )
