"""What ``evkit.LoggingHandler`` costs a ``logger.info(...)`` call, against ``NullHandler``.

    .venv/bin/python bench/logging_handler.py --records 100000 --runs 5

Each row logs the same records (``logger.info("order %d loaded in %.1f ms", i, ms)``,
inside a correlation and a span, as production code would) through one handler:

- ``NullHandler``: the reference, logging's own cost (record creation, level checks);
- ``StreamHandler`` to ``/dev/null``: what plain production logging costs (format, write);
- ``LoggingHandler``, no subscriber: the event built and dispatched on the bus;
- ``LoggingHandler``, server: also serialised and queued for a broadcaster (no client).

Reported: microseconds per call (median of ``--runs``) and the ratio to ``NullHandler``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import evkit


def per_call(logger: logging.Logger, records: int) -> float:
    info = logger.info
    with evkit.correlation("bench-logging"), evkit.span("bench.logging"):
        began = time.perf_counter()
        for i in range(records):
            info("order %d loaded in %.1f ms", i, 12.5)
        elapsed = time.perf_counter() - began
    return elapsed / records * 1e6


def measure(handler: logging.Handler, records: int, runs: int) -> float:
    logger = logging.getLogger("bench.logging_handler")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        timings = []
        for _ in range(runs):
            timings.append(per_call(logger, records))
            evkit.flush(timeout=120)
        return statistics.median(timings)
    finally:
        logger.removeHandler(handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with open(os.devnull, "w") as devnull:
        stream = logging.StreamHandler(devnull)
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        results = {
            "NullHandler (reference)": measure(logging.NullHandler(), args.records, args.runs),
            "StreamHandler to /dev/null": measure(stream, args.records, args.runs),
            "LoggingHandler, no subscriber": measure(
                evkit.LoggingHandler(), args.records, args.runs
            ),
        }
    server = evkit.serve(port=0, queue_size=args.records * 2)
    try:
        results["LoggingHandler, server"] = measure(evkit.LoggingHandler(), args.records, args.runs)
        dropped = server.stats()["dropped"]
    finally:
        server.stop()

    base = results["NullHandler (reference)"]
    for name, micros in results.items():
        print(f"{name:<32} {micros:6.2f} us/call   {micros / base:5.1f}x NullHandler")
    print(f"dropped by the server's queue: {dropped}")


if __name__ == "__main__":
    main()
