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

        def counter(name: str, doc: str, label: str | None, values: Any) -> Any:
            family = CounterMetricFamily(name, doc, labels=[label] if label else None)
            if label is None:
                family.add_metric([], values)
            else:
                for key, value in sorted(values.items()):
                    family.add_metric([key], value)
            return family

        yield GaugeMetricFamily(
            "evkit_connections", "WebSocket clients connected now", s["connections"]
        )
        yield counter(
            "evkit_connections", "WebSocket connections accepted", None, s["connections_total"]
        )
        yield counter(
            "evkit_connections_rejected",
            "Connections refused before any event was sent, by reason",
            "reason",
            s["rejected"],
        )
        yield counter(
            "evkit_events_published", "Events published, by category", "category", s["published"]
        )
        yield counter(
            "evkit_events_delivered",
            "Event deliveries to clients, by category",
            "category",
            s["delivered"],
        )
        yield counter(
            "evkit_events_dropped",
            "Events dropped before broadcast (queue full or unencodable), by category",
            "category",
            s["dropped"],
        )
        yield counter(
            "evkit_disconnects", "Client disconnects, by reason", "reason", s["disconnects"]
        )
        yield counter(
            "evkit_slow_consumer_disconnects",
            "Clients closed with 1013 for falling behind",
            None,
            s["slow_consumer_disconnects"],
        )
        yield counter("evkit_replays", "History replays served (since)", None, s["replays"])
        yield counter(
            "evkit_client_message_errors",
            "Client messages rejected, by error code",
            "code",
            s["client_errors"],
        )
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
        yield GaugeMetricFamily(
            "evkit_store_up", "1 while the store reports no error", s["store_up"]
        )
        yield counter(
            "evkit_store_outages",
            "Times the store became unreachable (Redis)",
            None,
            s["store_outages"],
        )
        yield GaugeMetricFamily(
            "evkit_events_waiting",
            "Events emitted and not yet handed out (queued, or waiting for Redis)",
            s["waiting"],
        )
