"""``evkit demo`` and ``evkit report``: the bottleneck report, of a demo run or of a source.

The report is the top operations by impact (count, errors, p50/p95/p99, total time,
share, slow-operation events), the slowest requests with the costliest step of each
one's critical path, the critical path of the slowest, and two PNG charts (latency by
correlation ID, the slowest request's waterfall). ``demo`` makes its events with a
server, simulated services and a collector; ``report`` reads them with
:func:`evkit.load` from a recording (``.db``, ``.jsonl``), a SQLite store
(``sqlite:///events.db``) or a live server (``ws://``, ``http://``) for ``--seconds``.

Needs the notebook extra (pandas, matplotlib), imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from evkit.cli.target import add_target_arguments, normalize_url, target
from evkit.exceptions import ConfigError

__all__ = ["add_parsers", "render_report", "write_charts"]

_LIVE_SCHEMES = ("ws://", "wss://", "http://", "https://")


def add_parsers(commands: Any) -> None:
    """Add ``demo`` and ``report`` to the subcommands."""
    demo = commands.add_parser(
        "demo", help="server + simulated services + a collector, then a bottleneck report"
    )
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to run (default 5)")
    demo.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    demo.add_argument("--rate", type=float, default=20.0, help="simulated requests per second")
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulated services")
    demo.add_argument("--patterns", default="*", help="comma-separated patterns to subscribe to")
    demo.add_argument("--out", default="evkit-report", help="folder for the PNG charts")
    demo.set_defaults(run=_demo)

    report = commands.add_parser(
        "report",
        help="the bottleneck report of a recording, a SQLite store or a live server",
        description="The bottleneck report of evkit demo, for events read from SOURCE: a "
        "recording (.db, .jsonl), a SQLite store (sqlite:///events.db), or a live server "
        "(ws://..., http://HOST:PORT) listened to for --seconds. Without SOURCE: the "
        "server of --url or EVKIT_URL.",
    )
    report.add_argument("source", nargs="?", metavar="SOURCE", help="where the events are")
    report.add_argument(
        "--seconds", type=float, default=10.0, help="how long to listen to a live server"
    )
    report.add_argument("--patterns", default="*", help="comma-separated patterns")
    report.add_argument("--correlation-id", help="only the events of this correlation ID")
    report.add_argument("--out", default="evkit-report", help="folder for the PNG charts")
    report.add_argument("--top", type=int, default=8, help="operations listed (default 8)")
    add_target_arguments(report)
    report.set_defaults(run=_report)


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _progress(fraction: float, events: int) -> None:
    if not sys.stdout.isatty():
        return
    bar = "#" * int(fraction * 30)
    print(f"\r[{bar:<30}] {fraction:4.0%}  {events} events", end="", flush=True)


def _demo(args: argparse.Namespace) -> int:
    import evkit
    from evkit.simulate import Simulation

    patterns = _patterns(args.patterns)
    server = evkit.serve(port=args.port)
    try:
        print(f"evkit demo: broadcaster at {server.url}")
        print(f"collecting {', '.join(patterns)} over WebSocket while the simulated services run")
        with evkit.collect(server, patterns) as collector:
            simulation = Simulation(seed=args.seed, rate=args.rate).start(seconds=args.seconds)
            began = time.monotonic()
            while simulation.running:
                elapsed = time.monotonic() - began
                _progress(min(elapsed / args.seconds, 1.0), collector.stats()["received"])
                time.sleep(0.1)
            simulation.stop()
            evkit.flush()
            _progress(1.0, collector.stats()["received"])
            print()
            # Everything emitted has been written to the socket; wait until it was read.
            published = server.stats()["published"]
            if patterns == ["*"]:
                collector.wait(count=published, timeout=10)
            frame = collector.to_dataframe()
            stats = collector.stats()
    finally:
        server.stop()
    if frame.empty:
        print("evkit: no events were collected; check the patterns", file=sys.stderr)
        return 1
    print(
        f"\n{stats['received']:,} events from {frame['correlation_id'].nunique():,} requests "
        f"({stats['dropped']} dropped, {stats['reconnects']} reconnects)\n"
    )
    return _print_report(frame, Path(args.out), top=8)


def _report(args: argparse.Namespace) -> int:
    import evkit

    if not args.seconds > 0:
        raise ConfigError(f"--seconds must be positive, got {args.seconds:g}")
    if args.top < 1:
        raise ConfigError(f"--top must be a positive number of operations, got {args.top}")
    source = args.source
    patterns = _patterns(args.patterns)
    if source is None or source.startswith(_LIVE_SCHEMES):
        if source is not None:
            args.url = normalize_url(source)
        server = target(args)
        print(f"listening to {server.url} for {args.seconds:g} s", file=sys.stderr)
        frame = evkit.load(
            server.url,
            patterns,
            args.correlation_id,
            seconds=args.seconds,
            token=server.token,
            ssl=server.ssl,
            connect_timeout=server.connect_timeout,
        )
    else:
        frame = evkit.load(source, patterns, args.correlation_id)
    if frame.empty:
        print(f"evkit: no events in {source or args.url} matched", file=sys.stderr)
        return 1
    requests = frame["correlation_id"].nunique()
    print(f"{len(frame):,} events from {requests:,} requests\n")
    return _print_report(frame, Path(args.out), top=args.top)


def _print_report(frame: Any, out: Path, top: int) -> int:
    from evkit import analysis

    text = render_report(frame, analysis, top=top)
    print(text)
    if text.endswith(_NO_SPANS):
        return 1
    for label, path in write_charts(frame, analysis, out):
        print(f"{label:<26} {path}")
    return 0


_NO_SPANS = "no operations: no *.started / *.completed events with span ids"


def render_report(frame: Any, analysis: Any, top: int = 8) -> str:
    """The report's text for the events of ``frame`` (the collector's DataFrame shape)."""
    table = analysis.bottlenecks(frame, top=top)
    if table.empty:
        return _NO_SPANS
    lines = ["Top operations by impact (total time spent):", ""]
    lines.append(
        f"  {'operation':<20} {'count':>6} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'total s':>8} {'share':>6} {'slow':>5}"
    )
    for operation, row in table.iterrows():
        lines.append(
            f"  {operation!s:<20} {int(row['count']):>6} {int(row['errors']):>6} "
            f"{row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['total_ms'] / 1000:>8.2f} {row['share']:>6.0%} {int(row['slow_events']):>5}"
        )
    slowest = analysis.latency_by_correlation(frame).head(5)
    if slowest.empty:
        return "\n".join([*lines, "", "No correlation IDs: no request to follow."])
    lines += ["", "Slowest requests (wall time, first to last event):", ""]
    lines.append(
        f"  {'correlation id':<16} {'wall ms':>8} {'ops':>4} {'errors':>6}  "
        "where the time went (costliest step on the critical path)"
    )
    for correlation_id, row in slowest.iterrows():
        path = analysis.critical_path(frame, str(correlation_id))
        where = "no operations"
        if not path.empty:
            step = path.loc[path["own_ms"].idxmax()]
            where = f"{step['operation']} ({step['own_ms']:.1f} ms of its own)"
        lines.append(
            f"  {correlation_id!s:<16} {row['wall_ms']:>8.1f} {int(row['operations']):>4} "
            f"{int(row['errors']):>6}  {where}"
        )
    critical = analysis.critical_path(frame, str(slowest.index[0]))
    chain = " -> ".join(f"{r.operation} {r.duration_ms:.0f} ms" for r in critical.itertuples())
    lines += ["", f"Critical path of {slowest.index[0]}: {chain or 'no operations'}"]
    return "\n".join(lines)


def write_charts(frame: Any, analysis: Any, out: Path) -> list[tuple[str, Path]]:
    """Write the latency chart and the slowest request's waterfall as PNG into ``out``;
    returns what was written, labelled."""
    by_correlation = analysis.latency_by_correlation(frame)
    if by_correlation.empty:
        return []
    out.mkdir(parents=True, exist_ok=True)
    latency_png = out / "latency-by-correlation.png"
    analysis.plot_latency_by_correlation(frame).savefig(latency_png, dpi=110)
    slowest = str(by_correlation.index[0])
    waterfall_png = out / f"waterfall-{slowest}.png"
    analysis.plot_waterfall(frame, slowest).savefig(waterfall_png, dpi=110)
    return [("latency chart:", latency_png), ("slowest request waterfall:", waterfall_png)]
