"""Simulated services: a workload that emits the seed's event categories.

Requests arrive at a steady rate, each under its own correlation ID, and run
concurrently: GraphQL queries that call the GitHub API and scan repositories, GraphQL
mutations that run a Claude session, commit and push, and now and then a GraphQL
subscription. Operations are instrumented with :func:`evkit.emits`, so they nest
(``spanId`` / ``parentSpanId``), carry the seed's payload fields, and a few are slow
enough to raise ``performance.slowOperation.detected``; a few Claude sessions fail.

With the same ``seed`` the same requests are made with the same planned durations
(each request draws from its own generator, so concurrency does not reorder the
draws); measured durations differ from plan only by timer jitter. ``speed`` scales
time: ``speed=10`` runs the same plan ten times faster (durations and slow-operation
thresholds shrink alike, so the same operations are reported slow).

The workload runs on its own thread with its own event loop, never on the caller's.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evkit.bus import EventBus, RequestBus, emits, global_bus

__all__ = ["Simulation", "simulate"]

GITHUB_THRESHOLD_MS = 250.0
CLAUDE_THRESHOLD_MS = 800.0
REPOSITORIES = ("/repos/meta-gothic-app", "/repos/ui-components", "/repos/claude-service")
QUERIES = ("GetRepositoryStatus", "ListWorkflows", "GetCommitHistory")
ENDPOINTS = ("/repos/{r}", "/repos/{r}/actions/runs", "/repos/{r}/commits", "/repos/{r}/pulls")


@dataclass
class _Plan:
    """One request's draws, made up front so the plan does not depend on timing."""

    rng: random.Random
    speed: float

    def ms(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high)

    async def wait(self, milliseconds: float) -> None:
        await asyncio.sleep(milliseconds / 1000.0 / self.speed)


@dataclass
class SimulationStats:
    """What a simulation has done so far."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Simulation:
    """The simulated services. Run them with :meth:`run` (blocking) or :meth:`start`.

    Args:
        seed: the same seed gives the same requests and planned durations.
        rate: requests started per second (in simulated time).
        speed: time scale; 2.0 runs twice as fast as real time.
        bus: where events go (the global bus by default, hence to any server).
        slow_fraction: share of GitHub calls that are slow (past the 250 ms threshold).
        failure_fraction: share of Claude sessions that fail.
    """

    def __init__(
        self,
        seed: int = 7,
        rate: float = 20.0,
        speed: float = 1.0,
        bus: EventBus | None = None,
        slow_fraction: float = 0.06,
        failure_fraction: float = 0.04,
    ) -> None:
        if rate <= 0 or speed <= 0:
            raise ValueError(f"rate and speed must be positive, got rate={rate} speed={speed}")
        self.seed = seed
        self.rate = rate
        self.speed = speed
        self.bus = bus if bus is not None else global_bus
        self.slow_fraction = slow_fraction
        self.failure_fraction = failure_fraction
        self.stats = SimulationStats()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._operations = self._instrument()

    # -- running ----------------------------------------------------------------------

    def run(self, seconds: float | None = None, requests: int | None = None) -> SimulationStats:
        """Run on the calling thread until ``seconds`` pass or ``requests`` have finished.

        Raises:
            ValueError: neither limit was given.
        """
        if seconds is None and requests is None:
            raise ValueError("give seconds=..., requests=... or both, or the run would never end")
        result: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self._main(seconds, requests))
            except BaseException as exc:  # re-raised on the caller's thread
                result.append(exc)

        thread = threading.Thread(target=main, name="evkit-simulation", daemon=True)
        thread.start()
        thread.join()
        if result:
            raise result[0]
        return self.stats

    def start(self, seconds: float | None = None, requests: int | None = None) -> Simulation:
        """Run in the background; :meth:`stop` or the limits end it. Returns self."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(seconds, requests)),
            name="evkit-simulation",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop starting requests, let the running ones finish, and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether a background run is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Simulation:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _main(self, seconds: float | None, requests: int | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        arrivals = random.Random(self.seed)
        tasks: set[asyncio.Task[None]] = set()
        number = 0
        while not self._stop.is_set():
            if requests is not None and number >= requests:
                break
            if deadline is not None and loop.time() >= deadline:
                break
            number += 1
            task = loop.create_task(self._request(number))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(arrivals.expovariate(self.rate) / self.speed)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _request(self, number: int) -> None:
        plan = _Plan(random.Random(self.seed * 1_000_003 + number), self.speed)
        request = RequestBus(f"req-{number:05d}", self.bus)
        roll = plan.rng.random()
        kind = "query" if roll < 0.6 else "mutation" if roll < 0.93 else "subscription"
        self.stats.started += 1
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        ops = self._operations
        with request:
            try:
                if kind == "query":
                    await ops["query"](plan, request, plan.rng.choice(QUERIES))
                elif kind == "mutation":
                    await ops["mutation"](plan, request, "CommitChanges")
                else:
                    await ops["subscription"](plan, request, "OnRepositoryEvents")
            except _SessionFailed:
                self.stats.failed += 1
                return
        self.stats.completed += 1

    # -- the services -----------------------------------------------------------------

    def _instrument(self) -> dict[str, Any]:
        bus = self.bus
        slow_fraction = self.slow_fraction
        failure_fraction = self.failure_fraction

        def graphql_fields(plan: _Plan, request: RequestBus, name: str) -> Mapping[str, Any]:
            return {"operationName": name}

        @emits(
            "github.api",
            GITHUB_THRESHOLD_MS / self.speed,
            bus=bus,
            fields=lambda plan, endpoint, method="GET": {"endpoint": endpoint, "method": method},
            result_fields=lambda result: result,
        )
        async def github_api(plan: _Plan, endpoint: str, method: str = "GET") -> dict[str, Any]:
            slow = plan.rng.random() < slow_fraction
            await plan.wait(plan.ms(300, 900) if slow else plan.ms(20, 140))
            return {
                "statusCode": 201 if method == "POST" else 200,
                "rateLimitRemaining": plan.rng.randint(3000, 5000),
            }

        @emits("repo.scan", bus=bus, fields=lambda plan, path: {"path": path})
        async def scan(plan: _Plan, path: str) -> None:
            await plan.wait(plan.ms(15, 70))

        @emits("repo.push", bus=bus, fields=lambda plan, path, sha: {"path": path})
        async def push(plan: _Plan, path: str, sha: str) -> None:
            await plan.wait(plan.ms(40, 160))
            await github_api(plan, f"{path}/git/refs/heads/main", "POST")

        @emits(
            "claude.session",
            CLAUDE_THRESHOLD_MS / self.speed,
            bus=bus,
            fields=lambda plan, request, session_id, path: {
                "sessionId": session_id,
                "workingDirectory": path,
            },
        )
        async def claude_session(
            plan: _Plan, request: RequestBus, session_id: str, path: str
        ) -> None:
            steps = plan.rng.randint(2, 4)
            fail_at = steps if plan.rng.random() < failure_fraction else -1
            for step in range(1, steps + 1):
                await plan.wait(plan.ms(40, 260))
                if step == fail_at:
                    raise _SessionFailed(f"claude session {session_id} exceeded its context window")
                request.emit(
                    "claude.command.executed",
                    {"sessionId": session_id, "command": f"step-{step}"},
                )
                request.emit(
                    "claude.agentRun.progress",
                    {"sessionId": session_id, "progress": round(step / steps, 2)},
                )

        @emits("graphql.query", bus=bus, fields=graphql_fields)
        async def query(plan: _Plan, request: RequestBus, name: str) -> None:
            path = plan.rng.choice(REPOSITORIES)
            repo = path.rsplit("/", 1)[-1]
            calls = [
                github_api(plan, plan.rng.choice(ENDPOINTS).format(r=repo))
                for _ in range(plan.rng.randint(1, 3))
            ]
            await asyncio.gather(*calls, scan(plan, path))
            request.emit(
                "repo.status.queried",
                {"path": path, "branch": "main", "clean": plan.rng.random() < 0.7},
            )

        @emits("graphql.mutation", bus=bus, fields=graphql_fields)
        async def mutation(plan: _Plan, request: RequestBus, name: str) -> None:
            path = plan.rng.choice(REPOSITORIES)
            session_id = f"session-{plan.rng.getrandbits(32):08x}"
            await claude_session(plan, request, session_id, path)
            sha = f"{plan.rng.getrandbits(40):010x}"
            request.emit(
                "repo.commit.created",
                {"path": path, "commitHash": sha, "message": "Apply Claude's suggested changes"},
            )
            await push(plan, path, sha)
            request.emit(
                "github.workflow.triggered",
                {"workflow": "ci.yml", "path": path, "commitHash": sha},
            )

        @emits("graphql.subscription", bus=bus, fields=graphql_fields)
        async def subscription(plan: _Plan, request: RequestBus, name: str) -> None:
            await plan.wait(plan.ms(100, 300))

        return {"query": query, "mutation": mutation, "subscription": subscription}


class _SessionFailed(RuntimeError):
    """A simulated Claude session failure (reported as ``claude.session.failed``)."""


def simulate(
    seconds: float | None = None,
    requests: int | None = None,
    *,
    seed: int = 7,
    rate: float = 20.0,
    speed: float = 1.0,
    bus: EventBus | None = None,
) -> SimulationStats:
    """Run the simulated services on a thread of their own and block until done."""
    return Simulation(seed=seed, rate=rate, speed=speed, bus=bus).run(seconds, requests)
