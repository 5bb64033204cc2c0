"""Shared fixtures: a real broadcaster on 127.0.0.1 with an ephemeral port.

Tests that need an outside service (Node, Redis, Chromium) call
:func:`require_service`: it skips with the reason on a developer machine, and fails
when ``EVKIT_REQUIRE_SERVICES=1`` (as in CI), so CI never skips what it claims to test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import evkit


def require_service(available: bool, reason: str) -> None:
    """Skip (developer machine) or fail (CI) when a needed outside service is missing."""
    if available:
        return
    if os.environ.get("EVKIT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"EVKIT_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def server() -> Iterator[evkit.Server]:
    """A broadcaster on a free port, attached to the global bus; stopped afterwards."""
    srv = evkit.serve(port=0)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def _no_leaked_servers() -> Iterator[None]:
    yield
    for srv in evkit.running_servers():
        srv.stop()


@pytest.fixture
def redis_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """A real ``redis-server`` of this test alone (tests/redis_support.py), killed afterwards.

    Persistent (AOF, fsync always) unless parametrized indirectly with
    ``{"persistence": False}``. Skips, or fails under ``EVKIT_REQUIRE_SERVICES=1``,
    when the binary is missing.
    """
    from tests.redis_support import REDIS_MISSING, RedisServer, redis_available

    require_service(redis_available(), REDIS_MISSING)
    options = getattr(request, "param", None) or {}
    with RedisServer(tmp_path_factory.mktemp("redis"), **options) as redis_server:
        yield redis_server
