"""Glob patterns over event types, and the index that routes an event to its subscribers.

A pattern is a glob over the whole dotted type (DESIGN 1.3): ``*`` matches any run of
characters, dots included, and ``?`` exactly one character. ``*`` alone matches
everything, ``claude.*`` every Claude event at any depth, ``*.completed`` every
completion, ``repo.*.created`` a creation in any repo entity.

:class:`SubscriptionIndex` answers "who wants an event of this type and this
correlation ID?" without looping a matcher over every subscriber for every event: the
answer is computed once per event type over the distinct patterns, cached, and the
cache is dropped whenever a subscription or a correlation filter changes.

Pure: no I/O, no clocks, no threads. The index is not thread-safe; its owner (the
broadcaster's loop) serialises access.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

from evkit.exceptions import InvalidPatternError

__all__ = [
    "MAX_PATTERN_LENGTH",
    "Matcher",
    "SubscriptionIndex",
    "compile_glob",
    "compile_pattern",
    "matches",
    "validate_pattern",
    "validate_patterns",
]

MAX_PATTERN_LENGTH = 256
_ALLOWED = re.compile(r"[A-Za-z0-9_.\-*?]+")

Matcher = Callable[[str], bool]


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern.

    Raises:
        InvalidPatternError: it is not a string, is empty, longer than
            :data:`MAX_PATTERN_LENGTH`, or holds a character other than letters,
            digits, ``_``, ``-``, ``.``, ``*`` and ``?``.
    """
    if not isinstance(pattern, str):
        raise InvalidPatternError(
            f"pattern must be a string, got {type(pattern).__name__} {pattern!r}",
            {"pattern": pattern},
        )
    if not pattern:
        raise InvalidPatternError(
            "pattern must not be empty; use '*' to receive every event", {"pattern": pattern}
        )
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidPatternError(
            f"pattern is {len(pattern)} characters long; the limit is {MAX_PATTERN_LENGTH}",
            {"pattern": pattern[:64] + "..."},
        )
    if not _ALLOWED.fullmatch(pattern):
        bad = sorted({c for c in pattern if not _ALLOWED.fullmatch(c)})
        raise InvalidPatternError(
            f"pattern {pattern!r} contains {''.join(bad)!r}; allowed are letters, digits, "
            f"'_', '-', '.', and the wildcards '*' (any run) and '?' (one character)",
            {"pattern": pattern, "invalid": bad},
        )
    return pattern


def validate_patterns(patterns: object) -> list[str]:
    """Validate a list of patterns as a whole; duplicates are removed, order is kept.

    Raises:
        InvalidPatternError: ``patterns`` is not a list of strings, or any one
            pattern is invalid (the error names it and its position).
    """
    if isinstance(patterns, str) or not isinstance(patterns, list | tuple):
        raise InvalidPatternError(
            f"eventTypes must be a list of patterns, got {type(patterns).__name__}",
            {"eventTypes": patterns if isinstance(patterns, str) else None},
        )
    seen: dict[str, None] = {}
    for position, pattern in enumerate(patterns):
        try:
            seen[validate_pattern(pattern)] = None
        except InvalidPatternError as exc:
            raise InvalidPatternError(
                f"eventTypes[{position}]: {exc.error}", {"index": position, **(exc.detail or {})}
            ) from None
    return list(seen)


def compile_pattern(pattern: str) -> Matcher:
    """Return a predicate telling whether an event type matches ``pattern``.

    The pattern must already be valid (see :func:`validate_pattern`). Matching never
    backtracks: its cost grows linearly with the type's length, at most by a factor of
    the pattern's length (:data:`MAX_PATTERN_LENGTH`), whatever the pattern.
    """
    return compile_glob(pattern)


def compile_glob(pattern: str, one: str = ".") -> Matcher:
    """A non-backtracking matcher of a glob whose ``*`` matches any run of characters.

    ``one`` is the regular expression of one character that ``?`` matches (``.``: any).
    The pattern is cut at its ``*``; the first piece must start the text, the last end
    it, and each piece between is found at its leftmost place after the one before.
    Taking the leftmost place always leaves the most room to the pieces after it, so
    nothing is ever tried twice: a fixed-length search per piece, once over the text.
    """
    pieces = _STARS.split(pattern)
    if len(pieces) == 1:
        if "?" not in pattern:
            return pattern.__eq__
        whole = _piece_regex(pattern, one)
        return lambda text: whole.fullmatch(text) is not None
    first, *middle, last = pieces
    if not middle and "?" not in pattern:
        if not first and not last:
            return _any
        if not last:
            return lambda text: text.startswith(first)
        if not first:
            return lambda text: text.endswith(last)
        shortest = len(first) + len(last)
        return lambda text: len(text) >= shortest and text.startswith(first) and text.endswith(last)
    return _PieceMatcher(first, middle, last, one)


_STARS = re.compile(r"\*+")


def _any(text: str) -> bool:
    return True


def _piece_regex(piece: str, one: str) -> re.Pattern[str]:
    # Literals and single-character wildcards only: a fixed-length regex cannot backtrack.
    return re.compile("".join(one if c == "?" else re.escape(c) for c in piece), re.DOTALL)


class _PieceMatcher:
    """A glob with ``*`` in the middle, or ``?`` anywhere: see :func:`compile_glob`."""

    __slots__ = ("_first", "_head", "_last", "_middle", "_shortest", "_tail")

    def __init__(self, first: str, middle: list[str], last: str, one: str) -> None:
        self._first = first
        self._last = last
        self._head = _piece_regex(first, one) if "?" in first else None
        self._tail = _piece_regex(last, one) if "?" in last else None
        self._shortest = len(first) + len(last) + sum(map(len, middle))
        self._middle = [
            (piece, _piece_regex(piece, one) if "?" in piece else None, len(piece))
            for piece in middle
        ]

    def __call__(self, text: str) -> bool:
        if len(text) < self._shortest:
            return False
        head, tail = self._head, self._tail
        if head is None:
            if not text.startswith(self._first):
                return False
        elif head.match(text) is None:
            return False
        end = len(text) - len(self._last)
        if tail is None:
            if not text.endswith(self._last):
                return False
        elif tail.fullmatch(text, end) is None:
            return False
        position = len(self._first)
        for piece, regex, length in self._middle:
            if regex is None:
                found = text.find(piece, position, end)
                if found < 0:
                    return False
                position = found + length
            else:
                match = regex.search(text, position, end)
                if match is None:
                    return False
                position = match.end()
        return True


def matches(pattern: str, event_type: str) -> bool:
    """Tell whether ``event_type`` matches ``pattern`` (convenience; compiles each call)."""
    return compile_pattern(validate_pattern(pattern))(event_type)


K = TypeVar("K", bound=Hashable)

# (subscribers without a correlation filter, {correlation id: subscribers filtered on it})
_Route = tuple[list[K], dict[str, list[K]]]


class SubscriptionIndex(Generic[K]):
    """Subscribers (any hashable key) with their patterns and correlation filters.

    :meth:`route` gives the subscribers of one event. Its answer is cached per event
    type (at most ``cache_size`` types; past that the cache starts again, so memory
    stays bounded however many distinct types flow) and rebuilt after any change.
    """

    def __init__(self, cache_size: int = 10_000) -> None:
        self._subscriptions: dict[K, dict[str, None]] = {}
        self._filters: dict[K, str] = {}
        self._subscribers_by_pattern: dict[str, dict[K, None]] = {}
        self._matchers: dict[str, Matcher] = {}
        self._cache: dict[str, _Route[K]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._subscriptions)

    def __contains__(self, key: object) -> bool:
        return key in self._subscriptions

    def add_subscriber(
        self, key: K, patterns: Iterable[str] = (), correlation_id: str | None = None
    ) -> None:
        """Register ``key`` with its patterns and filter (replacing any earlier registration)."""
        self.remove_subscriber(key)
        self._subscriptions[key] = {}
        self.add(key, patterns)
        self.set_filter(key, correlation_id)

    def remove_subscriber(self, key: K) -> None:
        """Forget ``key`` entirely; unknown keys are ignored."""
        patterns = self._subscriptions.pop(key, None)
        self._filters.pop(key, None)
        if patterns is not None:
            self._drop(key, patterns)
            self._cache.clear()

    def subscriptions(self, key: K) -> list[str]:
        """The patterns ``key`` holds, in the order they were added."""
        return list(self._subscriptions[key])

    def filter_of(self, key: K) -> str | None:
        """The correlation ID ``key`` is restricted to, or None."""
        return self._filters.get(key)

    def add(self, key: K, patterns: Iterable[str]) -> list[str]:
        """Add patterns to ``key``; returns the ones that were not already held."""
        held = self._subscriptions[key]
        added = [p for p in dict.fromkeys(patterns) if p not in held]
        for pattern in added:
            held[pattern] = None
            subscribers = self._subscribers_by_pattern.get(pattern)
            if subscribers is None:
                subscribers = self._subscribers_by_pattern[pattern] = {}
                self._matchers[pattern] = compile_pattern(pattern)
            subscribers[key] = None
        if added:
            self._cache.clear()
        return added

    def remove(self, key: K, patterns: Iterable[str]) -> list[str]:
        """Remove patterns from ``key``; returns the ones it actually held."""
        held = self._subscriptions[key]
        removed = [p for p in dict.fromkeys(patterns) if p in held]
        for pattern in removed:
            del held[pattern]
        if removed:
            self._drop(key, removed)
            self._cache.clear()
        return removed

    def replace(self, key: K, patterns: Sequence[str]) -> None:
        """Make ``patterns`` the whole subscription set of ``key``."""
        self.remove(key, list(self._subscriptions[key]))
        self.add(key, patterns)

    def set_filter(self, key: K, correlation_id: str | None) -> None:
        """Restrict ``key`` to events of one correlation ID (None: no restriction)."""
        if self._filters.get(key) == correlation_id:
            return
        if correlation_id is None:
            self._filters.pop(key, None)
        else:
            self._filters[key] = correlation_id
        self._cache.clear()

    def route(self, event_type: str, correlation_id: str | None) -> list[K]:
        """The subscribers of an event of this type and correlation ID, each once.

        Unfiltered subscribers come first, then the filtered ones; each group in the
        order the subscribers were registered.

        The returned list may be shared with the cache: do not mutate it.
        """
        entry = self._cache.get(event_type)
        if entry is None:
            entry = self._build(event_type)
        unfiltered, by_correlation = entry
        if correlation_id is None or not by_correlation:
            return unfiltered
        filtered = by_correlation.get(correlation_id)
        if filtered is None:
            return unfiltered
        return unfiltered + filtered if unfiltered else filtered

    def _build(self, event_type: str) -> _Route[K]:
        wanted: dict[K, None] = {}
        for pattern, subscribers in self._subscribers_by_pattern.items():
            if self._matchers[pattern](event_type):
                wanted.update(subscribers)
        if len(wanted) > 1:
            # registration order, whichever patterns matched first (the bus promises it)
            wanted = {key: None for key in self._subscriptions if key in wanted}
        unfiltered: list[K] = []
        by_correlation: dict[str, list[K]] = {}
        filters = self._filters
        for key in wanted:
            correlation_id = filters.get(key)
            if correlation_id is None:
                unfiltered.append(key)
            else:
                by_correlation.setdefault(correlation_id, []).append(key)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        entry = (unfiltered, by_correlation)
        self._cache[event_type] = entry
        return entry

    def _drop(self, key: K, patterns: Iterable[str]) -> None:
        for pattern in patterns:
            subscribers = self._subscribers_by_pattern.get(pattern)
            if subscribers is None:
                continue
            subscribers.pop(key, None)
            if not subscribers:
                del self._subscribers_by_pattern[pattern]
                del self._matchers[pattern]
