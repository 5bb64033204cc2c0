"""Glob matching cost: evkit's non-backtracking matcher against a backtracking regex.

Usage::

    .venv/bin/python bench/patterns.py

The reference, run in the same invocation, is what evkit matched with until the
hardening issue: ``*`` compiled to ``.*`` and ``?`` to ``.``, matched with
``re.fullmatch``. Two families of patterns:

everyday
    The routing benchmark's mix (``claude.*``, ``repo.*.created``, ``*.completed``,
    ``graphql.?uery.*``...) against the seed's event types: what a broadcaster matches
    when it builds a route. Reported as ns per match, evkit / regex.
adversarial
    ``*?`` repeated ``k`` times then ``*Z``, against a type of ``n`` characters that does
    not end in ``Z``: the backtracking regex's time grows like ``n ** k``; evkit's stays
    linear in ``n``. The regex is given at most ``--budget`` seconds per case and
    reported as "over budget" past it.

No sockets, no server: the matchers alone, timed with ``time.perf_counter_ns``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evkit.patterns import compile_pattern

EVERYDAY = [
    "*",
    "claude.*",
    "repo.*.created",
    "*.completed",
    "github.api.*",
    "graphql.?uery.*",
    "repo.commit.created",
    "performance.slowOperation.detected",
    "*.*.started",
    "g*.*.c*d",
]
TYPES = [
    "claude.session.started",
    "claude.session.completed",
    "claude.command.executed",
    "repo.status.queried",
    "repo.commit.created",
    "repo.push.completed",
    "github.api.started",
    "github.api.completed",
    "graphql.query.started",
    "graphql.query.completed",
    "graphql.mutation.completed",
    "performance.slowOperation.detected",
]


def backtracking(pattern: str) -> Callable[[str], bool]:
    """The matcher evkit used before: a regex with ``.*`` for each ``*``."""
    regex = re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
        re.DOTALL,
    )
    return lambda text: regex.fullmatch(text) is not None


def per_match_ns(matcher: Callable[[str], bool], texts: list[str], rounds: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(rounds):
        for text in texts:
            matcher(text)
    return (time.perf_counter_ns() - started) / (rounds * len(texts))


def once_s(matcher: Callable[[str], bool], text: str) -> float:
    started = time.perf_counter()
    matcher(text)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="passes over the types")
    parser.add_argument("--runs", type=int, default=3, help="medians of this many runs")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per regex case")
    args = parser.parse_args()

    print("everyday patterns x the seed's types (ns per match, median of runs)")
    print("| pattern | evkit | backtracking regex | evkit / regex |")
    print("|---|---:|---:|---:|")
    ratios = []
    for pattern in EVERYDAY:
        ours = statistics.median(
            per_match_ns(compile_pattern(pattern), TYPES, args.rounds) for _ in range(args.runs)
        )
        theirs = statistics.median(
            per_match_ns(backtracking(pattern), TYPES, args.rounds) for _ in range(args.runs)
        )
        ratios.append(ours / theirs)
        print(f"| `{pattern}` | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f} |")
    print(f"geometric mean evkit / regex: {statistics.geometric_mean(ratios):.2f}")
    print()
    print("adversarial: ('*?' * k) + '*Z' against a type of n characters (one match)")
    print("| k | n | evkit | backtracking regex |")
    print("|---:|---:|---:|---:|")
    for k, n in ((4, 64), (6, 64), (8, 64), (10, 64), (20, 34), (127, 256)):
        pattern = "*?" * k + "*Z"
        text = ("a." * n)[:n]
        ours = statistics.median(once_s(compile_pattern(pattern), text) for _ in range(args.runs))
        regex = backtracking(pattern)
        if k <= 8:  # larger ones run past any budget (minutes to years): not started
            theirs = once_s(regex, text)
            shown = f"{theirs * 1e3:,.1f} ms" if theirs < args.budget else "over budget"
        else:
            shown = f"not run (grows like n**{k})"
        print(f"| {k} | {n} | {ours * 1e6:,.1f} us | {shown} |")


if __name__ == "__main__":
    main()
