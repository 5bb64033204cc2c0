"""emit() cost on the caller's thread, with and without a server.

    .venv/bin/python bench/emit.py --events 200000 --runs 5

Reference, in the same run: the least a hand-off can cost on the caller's thread —
build the same event tuple (type, wall-clock milliseconds, payload copy) and append it
to a deque. Reported: microseconds per call (median of ``--runs``) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import deque
from typing import Any

import evkit


def per_call(function: Any, events: int) -> float:
    began = time.perf_counter()
    function(events)
    return (time.perf_counter() - began) / events * 1e6


def reference(events: int) -> None:
    queue: deque[tuple[str, int, dict[str, Any]]] = deque()
    append = queue.append
    for i in range(events):
        append(("bench.emit.event", time.time_ns() // 1_000_000, dict({"i": i})))


def emit(events: int) -> None:
    for i in range(events):
        evkit.emit("bench.emit.event", {"i": i})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    rows = {"reference (deque append)": reference, "emit(), no server": emit}
    results = {
        name: statistics.median(per_call(f, args.events) for _ in range(args.runs))
        for name, f in rows.items()
    }
    server = evkit.serve(port=0, queue_size=args.events * 2)
    try:
        timings = []
        for _ in range(args.runs):
            timings.append(per_call(emit, args.events))
            evkit.flush(timeout=60)
        results["emit(), server, no client"] = statistics.median(timings)
        dropped = server.stats()["dropped"]
    finally:
        server.stop()
    base = results["reference (deque append)"]
    for name, micros in results.items():
        print(f"{name:<28} {micros:6.2f} us/call   {micros / base:5.1f}x reference")
    print(f"dropped: {dropped}")


if __name__ == "__main__":
    main()
