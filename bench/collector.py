"""Collector benchmarks: ingest through a real socket, and to_dataframe() at 100k and 1M.

    .venv/bin/python bench/collector.py --events 200000 --runs 3

Ingest: a broadcaster in a subprocess (127.0.0.1, ephemeral port) holds N events in
its history; in this process the evkit collector takes them in through a replay
(``since=0``), batched (its default) and one event per frame, against a reference in
the same run: a bare ``websockets`` client that only ``orjson.loads`` each message and
walks its events (the ceiling of any Python client). The server replays frames it
already holds; until the hardening its matching of every replayed event was the limit
of both clients (bench/README.md). Each is timed from connect to the last event.

to_dataframe(): N events ingested into a collector (no socket), then the conversion,
against a reference that builds the same frame from plain column lists (including
the timestamp conversion). Memory per buffered event comes from tracemalloc.

Prints medians of ``--runs`` runs and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import orjson

SERVER = """
import sys, evkit
n = int(sys.argv[1])
srv = evkit.serve(
    port=0, queue_size=n + 1, history_size=n, history_bytes=1 << 31, client_buffer_limit=1 << 30
)
for i in range(n):
    evkit.emit("bench.collector.event", {"seq": i, "duration": 1.5, "spanId": "ab", "path": "/src"},
               correlation_id=f"req-{i % 100}")
evkit.flush(timeout=120)
print(srv.port, flush=True)
sys.stdin.read()
"""


def event(i: int) -> dict[str, Any]:
    return {
        "type": ("graphql.query.completed", "github.api.completed", "repo.commit.created")[i % 3],
        "timestamp": 1_795_000_000_000 + i,
        "id": str(i + 1),
        "payload": {
            "correlationId": f"req-{i % 1000}",
            "duration": float(i % 500),
            "spanId": f"{i:016x}",
            "parentSpanId": None,
            "endpoint": "/repos/x",
        },
    }


def bench_to_dataframe(n: int) -> tuple[float, float, float]:
    import pandas as pd

    from evkit.collector import FIXED_COLUMNS, Collector

    frames = [orjson.dumps(event(i)) for i in range(n)]
    gc.collect()
    tracemalloc.start()
    collector = Collector("bench", ["*"], None, buffer_size=n)
    before = tracemalloc.get_traced_memory()[0]
    for frame_bytes in frames:  # decoded here, as off the wire: every value is the buffer's own
        collector._ingest(orjson.loads(frame_bytes))
    per_event = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    events = [orjson.loads(f) for f in frames]
    began = time.perf_counter()
    frame = collector.to_dataframe()
    evkit_seconds = time.perf_counter() - began
    assert len(frame) == n

    # Reference: the same columns from plain lists.
    columns: dict[str, list[Any]] = {k: [] for k in FIXED_COLUMNS}
    payload_columns: dict[str, list[Any]] = {}
    for e in events:
        p = e["payload"]
        service, entity, action = e["type"].split(".")
        for key, value in (
            ("id", e["id"]),
            ("timestamp", e["timestamp"]),
            ("type", e["type"]),
            ("service", service),
            ("entity", entity),
            ("action", action),
            ("correlation_id", p["correlationId"]),
            ("duration_ms", p["duration"]),
        ):
            columns[key].append(value)
        for key, value in p.items():
            payload_columns.setdefault(key, []).append(value)
    began = time.perf_counter()
    data: dict[str, Any] = dict(columns)
    data["timestamp"] = pd.to_datetime(data["timestamp"], unit="ms", utc=True)
    data.update(payload_columns)
    reference = pd.DataFrame(data)
    reference_seconds = time.perf_counter() - began
    assert len(reference) == n
    return evkit_seconds, reference_seconds, per_event


async def reference_client(url: str, n: int) -> float:
    """A bare websockets client that decodes every message and walks its events."""
    from websockets.asyncio.client import connect

    seen = 0
    async with connect(url, max_size=None) as ws:
        began = time.perf_counter()
        async for raw in ws:
            message = orjson.loads(raw)
            if message["type"] == "websocket.batch":
                for event in message["payload"]["events"]:
                    seen += event["id"] is not None
            elif "id" in message:
                seen += 1
            if seen >= n:
                return n / (time.perf_counter() - began)
    raise RuntimeError("stream ended early")


def bench_ingest(n: int) -> dict[str, float]:
    """Events/s taken in from a replay of ``n`` stored events (the server only writes
    history it already framed; see bench/README.md for when that was the limit)."""
    import evkit

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"ws://127.0.0.1:{port}/ws/events"
        rates: dict[str, float] = {}
        for label, batch in (("batched", (1000, 20.0)), ("unbatched", None)):
            query = "since=0" + ("&batch=1000,20" if batch else "")
            rates[f"reference {label}"] = asyncio.run(reference_client(f"{url}?{query}", n))
            began = time.perf_counter()
            with evkit.collect(url, since="0", batch=batch, buffer_size=n) as collector:
                collector.wait(count=n, timeout=120)
                rates[f"evkit {label}"] = n / (time.perf_counter() - began)
        return rates
    finally:
        server.kill()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per ingest run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="100000,1000000", help="to_dataframe sizes")
    args = parser.parse_args()

    print(
        f"ingest through a socket (replay of {args.events:,} stored events), median of {args.runs} runs"
    )
    runs = [bench_ingest(args.events) for _ in range(args.runs)]
    for label in ("batched", "unbatched"):
        ours = statistics.median(r[f"evkit {label}"] for r in runs)
        reference = statistics.median(r[f"reference {label}"] for r in runs)
        print(
            f"  {label:<9}  evkit collector {ours:>10,.0f} events/s   bare websockets+orjson "
            f"client {reference:>10,.0f} events/s   ratio {ours / reference:.2f}"
        )
    for size in (int(s) for s in args.sizes.split(",")):
        runs = [bench_to_dataframe(size) for _ in range(args.runs)]
        ours = statistics.median(r[0] for r in runs)
        reference = statistics.median(r[1] for r in runs)
        memory = statistics.median(r[2] for r in runs)
        print(
            f"to_dataframe {size:>9,}: evkit {ours:6.3f} s   reference {reference:6.3f} s   "
            f"ratio {ours / reference:.2f}   buffered memory {memory:,.0f} bytes/event"
        )


if __name__ == "__main__":
    main()
