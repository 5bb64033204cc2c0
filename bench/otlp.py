"""OTLP ingest cost: spans through ``POST /v1/traces`` against events through ``POST /events``.

Usage::

    .venv/bin/python bench/otlp.py --spans 50000 --batch 512 --runs 3

A broadcaster runs in a subprocess (``evkit.serve(port=0)``, 127.0.0.1, no clients).
This process posts the same number of items three ways, in bodies of ``--batch``
items (512 is the SDK's BatchSpanProcessor batch):

- ``POST /events``: events ``{"type", "timestamp", "payload"}`` whose payload holds what
  a span event holds (trace and span ids, duration, kind, service, five attributes);
  the reference;
- ``POST /v1/traces`` protobuf: spans with the same five attributes, made with
  opentelemetry-proto as an SDK exporter makes them;
- ``POST /v1/traces`` JSON: the same spans in OTLP/JSON.

The metric is the broadcaster process's CPU time per item (user + system, from
/proc, between the first request and ``/healthz`` reporting every item published),
and items per second of wall time. The target (issue #14): a span costs no more than
twice an event. Requests are sent one after the other on fresh connections, the same
for all three; the bodies are built before the clock starts.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SERVER = """
import sys, evkit
srv = evkit.serve(port=0, queue_size=10_000_000, history_size=1000, max_post_size=64 << 20)
print(srv.port, flush=True)
sys.stdin.read()
srv.stop()
"""

ATTRIBUTES = {
    "http.method": "POST",
    "http.route": "/cart/{id}",
    "http.status_code": 200,
    "net.peer.name": "payments.internal",
    "order.items": 3,
}


def event_bodies(count: int, batch: int) -> list[bytes]:
    now = int(time.time() * 1000)
    bodies = []
    for first in range(0, count, batch):
        events = [
            {
                "type": "checkout.charge_card.completed",
                "timestamp": now,
                "payload": {
                    "correlationId": f"{n + 1:032x}",
                    "spanId": f"{n + 1:016x}",
                    "parentSpanId": f"{n + 2:016x}",
                    "duration": 12.5,
                    "kind": "client",
                    "service": "checkout",
                    **ATTRIBUTES,
                },
            }
            for n in range(first, min(count, first + batch))
        ]
        bodies.append(orjson.dumps(events))
    return bodies


def span_requests(count: int, batch: int) -> tuple[list[bytes], list[bytes]]:
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    end = time.time_ns()
    protobuf, json = [], []
    for first in range(0, count, batch):
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.add(key="service.name").value.string_value = "checkout"
        spans = resource_spans.scope_spans.add()
        spans.scope.name = "bench"
        for n in range(first, min(count, first + batch)):
            span = spans.spans.add()
            span.trace_id = (n + 1).to_bytes(16, "big")
            span.span_id = (n + 1).to_bytes(8, "big")
            span.parent_span_id = (n + 2).to_bytes(8, "big")
            span.name = "charge card"
            span.kind = 3
            span.start_time_unix_nano = end - 12_500_000
            span.end_time_unix_nano = end
            for key, value in ATTRIBUTES.items():
                attribute = span.attributes.add(key=key).value
                if isinstance(value, int):
                    attribute.int_value = value
                else:
                    attribute.string_value = value
        protobuf.append(request.SerializeToString())
        document = MessageToDict(request)
        for resource in document["resourceSpans"]:  # OTLP/JSON ids are hex, not base64
            for scope in resource["scopeSpans"]:
                for span in scope["spans"]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        span[key] = __import__("base64").b64decode(span[key]).hex()
        json.append(orjson.dumps(document))
    return protobuf, json


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def published(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/healthz")
    events = int(orjson.loads(connection.getresponse().read())["events"])
    connection.close()
    return events


def post_all(port: int, path: str, content_type: str, bodies: list[bytes]) -> None:
    for body in bodies:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        answer = response.read()
        if response.status not in (200, 202):
            raise RuntimeError(f"{path}: HTTP {response.status}: {answer[:200]!r}")
        connection.close()


def measure(
    label: str, path: str, content_type: str, bodies: list[bytes], count: int
) -> tuple[float, float]:
    """CPU seconds per item in the server, and items per second, for one run."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base = published(port)
        cpu_before, began = cpu_seconds(server.pid), time.perf_counter()
        post_all(port, path, content_type, bodies)
        deadline = time.monotonic() + 120
        while published(port) < base + count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: not every item was published within 120 s")
            time.sleep(0.005)
        wall = time.perf_counter() - began
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(30)
    return cpu / count, count / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=50_000, help="items per run")
    parser.add_argument("--batch", type=int, default=512, help="items per request body")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    events = event_bodies(args.spans, args.batch)
    protobuf, json = span_requests(args.spans, args.batch)
    systems = [
        ("POST /events (reference)", "/events", "application/json", events),
        ("OTLP protobuf", "/v1/traces", "application/x-protobuf", protobuf),
        ("OTLP JSON", "/v1/traces", "application/json", json),
    ]
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in systems}
    for _ in range(args.runs):  # the three take turns, so drift spreads over all of them
        for label, path, content_type, bodies in systems:
            results[label].append(measure(label, path, content_type, bodies, args.spans))
    print(f"{args.spans:,} items per run in bodies of {args.batch}, median of {args.runs} runs")
    print("| ingest | server CPU per item | items/s | CPU per item / POST /events |")
    print("|---|---:|---:|---:|")
    reference = statistics.median(cpu for cpu, _ in results[systems[0][0]])
    for label, *_ in systems:
        cpu = statistics.median(c for c, _ in results[label])
        rate = statistics.median(r for _, r in results[label])
        print(f"| {label} | {cpu * 1e6:.1f} us | {rate:,.0f} | {cpu / reference:.2f} |")
    print("target: a span costs no more than 2.00x an event")


if __name__ == "__main__":
    main()
