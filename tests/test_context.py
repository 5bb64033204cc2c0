"""Tests for evkit.context: correlation and span context in contextvars."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

import evkit
from evkit.context import (
    correlation,
    current_correlation_id,
    current_span_id,
    new_span_id,
    span,
)
from evkit.exceptions import ProtocolError


def test_no_correlation_by_default() -> None:
    assert current_correlation_id() is None


def test_correlation_context_manager_sets_and_restores() -> None:
    with correlation("req-7") as entered:
        assert entered == "req-7"
        assert current_correlation_id() == "req-7"
    assert current_correlation_id() is None


def test_nested_correlation_restores_the_outer_id() -> None:
    with correlation("outer"):
        with correlation("inner"):
            assert current_correlation_id() == "inner"
        assert current_correlation_id() == "outer"
        with correlation(None) as entered:
            assert entered is None
            assert current_correlation_id() is None
        assert current_correlation_id() == "outer"
    assert current_correlation_id() is None


def test_correlation_restored_when_the_block_raises() -> None:
    with pytest.raises(KeyError), correlation("req-1"):
        raise KeyError("x")
    assert current_correlation_id() is None


def test_same_correlation_object_can_be_reentered() -> None:
    scope = correlation("again")
    with scope:
        with correlation("other"), scope:
            assert current_correlation_id() == "again"
        assert current_correlation_id() == "again"
    assert current_correlation_id() is None


def test_correlation_is_exported_from_the_package() -> None:
    assert evkit.correlation is correlation
    assert evkit.current_correlation_id is current_correlation_id


@pytest.mark.parametrize("bad", ["", 5, "x" * 257])
def test_invalid_correlation_id_raises(bad: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        correlation(bad)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_message"
    assert caught.value.detail == {"field": "correlationId"}


def test_correlation_as_decorator_on_a_sync_function() -> None:
    @correlation("nightly-scan")
    def scan(x: int, *, y: int) -> tuple[int, str | None]:
        """Scan things."""
        return x + y, current_correlation_id()

    assert scan(1, y=2) == (3, "nightly-scan")
    assert current_correlation_id() is None
    assert scan.__name__ == "scan"
    assert scan.__doc__ == "Scan things."
    with correlation("outer"):
        assert scan(0, y=0) == (0, "nightly-scan")
        assert current_correlation_id() == "outer"


def test_correlation_decorator_restores_when_the_function_raises() -> None:
    @correlation("req-x")
    def fail() -> None:
        raise RuntimeError(current_correlation_id())

    with pytest.raises(RuntimeError, match=r"^req-x$"):
        fail()
    assert current_correlation_id() is None


def test_correlation_as_decorator_on_an_async_function() -> None:
    @correlation("async-req")
    async def work(value: int) -> tuple[int, str | None]:
        await asyncio.sleep(0)
        return value * 2, current_correlation_id()

    async def main() -> tuple[tuple[int, str | None], str | None]:
        result = await work(21)
        return result, current_correlation_id()

    assert asyncio.iscoroutinefunction(work)
    assert work.__name__ == "work"
    assert asyncio.run(main()) == ((42, "async-req"), None)
    assert current_correlation_id() is None


def test_concurrent_async_calls_keep_their_own_correlation() -> None:
    @correlation("a")
    async def in_a() -> str | None:
        await asyncio.sleep(0)
        return current_correlation_id()

    @correlation("b")
    async def in_b() -> str | None:
        await asyncio.sleep(0)
        return current_correlation_id()

    async def main() -> list[str | None]:
        return list(await asyncio.gather(in_a(), in_b(), in_a()))

    assert asyncio.run(main()) == ["a", "b", "a"]


def test_correlation_does_not_leak_into_a_thread_started_inside_the_block() -> None:
    seen: list[str | None] = []
    with correlation("req-7"):
        thread = threading.Thread(target=lambda: seen.append(current_correlation_id()))
        thread.start()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert seen == [None]


def test_correlation_set_in_a_thread_does_not_leak_out() -> None:
    seen: list[str | None] = []

    def worker() -> None:
        with correlation("thread-req"):
            seen.append(current_correlation_id())
        seen.append(current_correlation_id())

    with correlation("main-req"):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(timeout=5)
        assert current_correlation_id() == "main-req"
    assert seen == ["thread-req", None]


def test_correlation_follows_an_explicitly_copied_context() -> None:
    with correlation("copied"):
        context = contextvars.copy_context()
    assert current_correlation_id() is None
    assert context.run(current_correlation_id) == "copied"


def test_span_sets_current_span_and_yields_the_parent() -> None:
    assert current_span_id() is None
    with span("outer-span") as parent:
        assert parent is None
        assert current_span_id() == "outer-span"
        with span("inner-span") as inner_parent:
            assert inner_parent == "outer-span"
            assert current_span_id() == "inner-span"
        assert current_span_id() == "outer-span"
    assert current_span_id() is None


def test_span_restored_when_the_block_raises() -> None:
    with pytest.raises(ValueError, match="boom"), span("s1"):
        raise ValueError("boom")
    assert current_span_id() is None


def test_new_span_id_is_sixteen_hex_characters_and_unique() -> None:
    ids = {new_span_id() for _ in range(1000)}
    assert len(ids) == 1000
    for span_id in ids:
        assert len(span_id) == 16
        int(span_id, 16)
        assert span_id == span_id.lower()
