"""Correlation and span context, carried in :mod:`contextvars`.

``correlation(id)`` sets the correlation ID for a block of code (a context manager)
or for every call of a function (a decorator, sync or async). Whatever runs inside,
threads excepted, sees it through :func:`current_correlation_id`; events emitted there
are stamped with it. The span stack of :func:`evkit.emits` lives here too, so nested
operations know their parent.

Context is read on the caller's thread at emit time: evkit's loop thread does not
inherit the caller's context, so nothing here may be read later on that thread.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TypeVar, cast

from evkit.protocol import validate_correlation_id

__all__ = [
    "correlation",
    "current_correlation_id",
    "current_span_id",
    "enter_span",
    "exit_span",
    "new_span_id",
    "span",
]

F = TypeVar("F", bound=Callable[..., Any])

_correlation_id: ContextVar[str | None] = ContextVar("evkit_correlation_id", default=None)
_span_id: ContextVar[str | None] = ContextVar("evkit_span_id", default=None)


def current_correlation_id() -> str | None:
    """The correlation ID set by the innermost enclosing :func:`correlation`, or None."""
    return _correlation_id.get()


def current_span_id() -> str | None:
    """The span ID of the innermost running ``@emits`` operation, or None."""
    return _span_id.get()


def new_span_id() -> str:
    """A fresh random span ID (16 hex characters)."""
    return os.urandom(8).hex()


@contextmanager
def span(span_id: str) -> Iterator[str | None]:
    """Make ``span_id`` the current span; yields the parent span ID (or None)."""
    parent = _span_id.get()
    token = _span_id.set(span_id)
    try:
        yield parent
    finally:
        _span_id.reset(token)


def enter_span(span_id: str) -> Token[str | None]:
    """Make ``span_id`` the current span until :func:`exit_span` is given the token.

    For code that cannot hold a ``with`` block open (a span's ``__enter__`` and
    ``__exit__``, one step of a generator). The caller must pass the token back in the
    same context, innermost first.
    """
    return _span_id.set(span_id)


def exit_span(token: Token[str | None]) -> None:
    """Restore the span that was current before :func:`enter_span` returned ``token``.

    Raises:
        ValueError: the token was made in another context.
        RuntimeError: the token was already used.
    """
    _span_id.reset(token)


class correlation:
    """Set the correlation ID for a block, or for every call of a decorated function.

    ::

        with evkit.correlation("req-7"):
            evkit.emit("github.api.started", {"endpoint": "/repos"})

        @evkit.correlation("nightly-scan")
        async def scan(): ...

    ``correlation(None)`` clears it for the block. Blocks nest; leaving one restores
    the outer ID.

    Raises:
        ProtocolError: the ID is not a non-empty string of at most 256 characters.
    """

    def __init__(self, correlation_id: str | None) -> None:
        self.correlation_id = validate_correlation_id(correlation_id)
        self._tokens: list[Token[str | None]] = []

    def __enter__(self) -> str | None:
        self._tokens.append(_correlation_id.set(self.correlation_id))
        return self.correlation_id

    def __exit__(self, *exc_info: object) -> None:
        _correlation_id.reset(self._tokens.pop())

    def __call__(self, function: F) -> F:
        correlation_id = self.correlation_id
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = _correlation_id.set(correlation_id)
                try:
                    return await function(*args, **kwargs)
                finally:
                    _correlation_id.reset(token)

            return cast(F, async_wrapper)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _correlation_id.set(correlation_id)
            try:
                return function(*args, **kwargs)
            finally:
                _correlation_id.reset(token)

        return cast(F, wrapper)
