"""Tests for evkit.patterns: validation, glob semantics and the subscription index."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evkit.exceptions import InvalidPatternError, ProtocolError
from evkit.patterns import (
    MAX_PATTERN_LENGTH,
    SubscriptionIndex,
    compile_pattern,
    matches,
    validate_pattern,
    validate_patterns,
)

ALLOWED_HINT = (
    "allowed are letters, digits, '_', '-', '.', and the wildcards '*' (any run) "
    "and '?' (one character)"
)

# validate_pattern


@pytest.mark.parametrize(
    "pattern",
    ["*", "?", "claude.*", "repo.*.created", "a-b_c.D9", "x" * MAX_PATTERN_LENGTH, "**", "..."],
)
def test_validate_pattern_returns_valid_patterns_unchanged(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


def test_invalid_pattern_error_is_a_protocol_error_and_a_value_error() -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_pattern("")
    assert isinstance(caught.value, ProtocolError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "invalid_pattern"


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        (5, "pattern must be a string, got int 5"),
        (None, "pattern must be a string, got NoneType None"),
        (["a"], "pattern must be a string, got list ['a']"),
        (b"a.b", "pattern must be a string, got bytes b'a.b'"),
    ],
)
def test_validate_pattern_rejects_non_strings(pattern: object, error: str) -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_pattern(pattern)
    assert caught.value.error == error
    assert str(caught.value) == error
    assert caught.value.detail == {"pattern": pattern}


def test_validate_pattern_rejects_empty_and_suggests_star() -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_pattern("")
    assert caught.value.error == "pattern must not be empty; use '*' to receive every event"
    assert caught.value.detail == {"pattern": ""}


def test_validate_pattern_rejects_257_characters_with_truncated_detail() -> None:
    pattern = "a" * 257
    with pytest.raises(InvalidPatternError) as caught:
        validate_pattern(pattern)
    assert caught.value.error == "pattern is 257 characters long; the limit is 256"
    assert caught.value.detail == {"pattern": "a" * 64 + "..."}


@pytest.mark.parametrize(
    ("pattern", "shown", "invalid"),
    [
        ("repo/commit pat", "' /'", [" ", "/"]),
        ("repo.[ab]", "'[]'", ["[", "]"]),
        ("claude.*\n", "'\\n'", ["\n"]),
        ("café.*", "'é'", ["é"]),
        ("a!b!c", "'!'", ["!"]),
    ],
)
def test_validate_pattern_rejects_bad_characters_naming_them(
    pattern: str, shown: str, invalid: list[str]
) -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_pattern(pattern)
    assert caught.value.error == f"pattern {pattern!r} contains {shown}; {ALLOWED_HINT}"
    assert caught.value.detail == {"pattern": pattern, "invalid": invalid}


# validate_patterns


@pytest.mark.parametrize(
    ("patterns", "type_name", "detail"),
    [
        ("claude.*", "str", {"eventTypes": "claude.*"}),
        ({"claude.*": True}, "dict", {"eventTypes": None}),
        (None, "NoneType", {"eventTypes": None}),
        (7, "int", {"eventTypes": None}),
    ],
)
def test_validate_patterns_needs_a_list(patterns: object, type_name: str, detail: object) -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_patterns(patterns)
    assert caught.value.error == f"eventTypes must be a list of patterns, got {type_name}"
    assert caught.value.detail == detail


def test_validate_patterns_names_position_of_a_non_string() -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_patterns(["a.*", "b", 7])
    assert caught.value.error == "eventTypes[2]: pattern must be a string, got int 7"
    assert caught.value.detail == {"index": 2, "pattern": 7}


def test_validate_patterns_names_position_of_an_empty_pattern() -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_patterns(["a", "", "b"])
    assert caught.value.error == (
        "eventTypes[1]: pattern must not be empty; use '*' to receive every event"
    )
    assert caught.value.detail == {"index": 1, "pattern": ""}


def test_validate_patterns_names_position_of_a_bad_character() -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_patterns(["ok.*", "bad pattern"])
    assert caught.value.error == (
        f"eventTypes[1]: pattern 'bad pattern' contains ' '; {ALLOWED_HINT}"
    )
    assert caught.value.detail == {"index": 1, "pattern": "bad pattern", "invalid": [" "]}


def test_validate_patterns_names_position_of_a_too_long_pattern() -> None:
    with pytest.raises(InvalidPatternError) as caught:
        validate_patterns(["*", "*", "b" * 257])
    assert caught.value.error == "eventTypes[2]: pattern is 257 characters long; the limit is 256"
    assert caught.value.detail == {"index": 2, "pattern": "b" * 64 + "..."}
    assert caught.value.code == "invalid_pattern"


def test_validate_patterns_dedupes_keeping_first_occurrence_order() -> None:
    assert validate_patterns(["b.*", "a", "b.*", "*", "a", "c"]) == ["b.*", "a", "*", "c"]


def test_validate_patterns_accepts_tuples_and_empty_lists() -> None:
    assert validate_patterns(("x.y", "x.*")) == ["x.y", "x.*"]
    assert validate_patterns([]) == []


# compile_pattern / matches

MATCH_CASES = [
    ("*", "claude.session.started", True),
    ("*", "a", True),
    ("*", "", True),
    ("claude.*", "claude.session.started", True),
    ("claude.*", "claude.command.executed", True),
    ("claude.*", "claude", False),
    ("claude.*", "claudex.a", False),
    ("claude.*", "xclaude.a", False),
    ("github.api.*", "github.api.completed", True),
    ("github.api.*", "github.api.started", True),
    ("github.api.*", "github.workflow.triggered", False),
    ("github.api.*", "github.apis.completed", False),
    ("*.completed", "github.api.completed", True),
    ("*.completed", "repo.push.completed", True),
    ("*.completed", "completed", False),
    ("*.completed", "github.api.completedx", False),
    ("*.completed", "github.api.started", False),
    ("repo.*.created", "repo.commit.created", True),
    ("repo.*.created", "repo.a.b.created", True),
    ("repo.*.created", "repo.created", False),
    ("repo.*.created", "repo.commit.deleted", False),
    ("repo.*.created", "github.commit.created", False),
    ("a.?", "a.b", True),
    ("a.?", "a.", False),
    ("a.?", "a.bc", False),
    ("?", "x", True),
    ("?", "", False),
    ("?", "xy", False),
    ("repo.?ush.completed", "repo.push.completed", True),
    ("repo.?ush.completed", "repo.pussh.completed", False),
    ("repo.commit.created", "repo.commit.created", True),
    ("repo.commit.created", "repo.commit.create", False),
    ("repo.commit.created", "repo.commit.createdx", False),
    ("repo.commit.created", "Repo.commit.created", False),
    ("a.b", "aXb", False),
    ("*.*", "a.b", True),
    ("*.*", "ab", False),
    ("*a*", "xyz", False),
    ("*a*", "xaz", True),
    ("graphql.*.started", "graphql.query.started", True),
]


@pytest.mark.parametrize(("pattern", "event_type", "expected"), MATCH_CASES)
def test_compile_pattern_semantics(pattern: str, event_type: str, expected: bool) -> None:
    assert compile_pattern(pattern)(event_type) is expected


@pytest.mark.parametrize(("pattern", "event_type", "expected"), MATCH_CASES)
def test_matches_agrees_with_compile_pattern(pattern: str, event_type: str, expected: bool) -> None:
    assert matches(pattern, event_type) is expected


def test_matches_validates_the_pattern() -> None:
    with pytest.raises(InvalidPatternError):
        matches("a b", "a b")


PATTERN_ALPHABET = "ab.-_*?"
TYPE_ALPHABET = "ab.-_"


@given(
    pattern=st.text(alphabet=PATTERN_ALPHABET, min_size=1, max_size=12),
    event_type=st.text(alphabet=TYPE_ALPHABET + "*?", max_size=12),
)
def test_compile_pattern_agrees_with_fnmatchcase(pattern: str, event_type: str) -> None:
    assert compile_pattern(pattern)(event_type) is fnmatch.fnmatchcase(event_type, pattern)


@st.composite
def pattern_and_matching_type(draw: st.DrawFn) -> tuple[str, str]:
    pattern = draw(st.text(alphabet=PATTERN_ALPHABET, min_size=1, max_size=10))
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(draw(st.text(alphabet=TYPE_ALPHABET, max_size=4)))
        elif char == "?":
            parts.append(draw(st.sampled_from(TYPE_ALPHABET)))
        else:
            parts.append(char)
    return pattern, "".join(parts)


@given(pattern_and_matching_type())
def test_compile_pattern_matches_every_expansion_of_the_pattern(case: tuple[str, str]) -> None:
    pattern, event_type = case
    assert fnmatch.fnmatchcase(event_type, pattern)
    assert compile_pattern(pattern)(event_type) is True


# SubscriptionIndex


def test_index_add_subscriber_registers_patterns_and_filter() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["x.*", "y.z", "x.*"], "req-1")
    index.add_subscriber("b")
    assert len(index) == 2
    assert "a" in index
    assert "b" in index
    assert "c" not in index
    assert index.subscriptions("a") == ["x.*", "y.z"]
    assert index.subscriptions("b") == []
    assert index.filter_of("a") == "req-1"
    assert index.filter_of("b") is None


def test_index_add_subscriber_again_replaces_the_earlier_registration() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["x.*"], "req-1")
    assert index.route("x.y", "req-1") == ["a"]
    index.add_subscriber("a", ["y.*"])
    assert len(index) == 1
    assert index.subscriptions("a") == ["y.*"]
    assert index.filter_of("a") is None
    assert index.route("x.y", "req-1") == []
    assert index.route("y.q", None) == ["a"]


def test_index_add_returns_only_newly_added_patterns_once_each() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["x.*"])
    assert index.add("a", ["x.*", "y.*", "z.z", "y.*"]) == ["y.*", "z.z"]
    assert index.add("a", ["x.*", "y.*"]) == []
    assert index.subscriptions("a") == ["x.*", "y.*", "z.z"]


def test_index_remove_returns_only_patterns_actually_held() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["x.*", "y.*", "z.z"])
    assert index.remove("a", ["y.*", "nope.*", "y.*"]) == ["y.*"]
    assert index.remove("a", ["nope.*"]) == []
    assert index.subscriptions("a") == ["x.*", "z.z"]
    assert index.route("y.q", None) == []
    assert index.route("z.z", None) == ["a"]


def test_index_replace_sets_the_whole_subscription_set() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["x.*", "y.*"])
    index.replace("a", ["y.*", "w.w"])
    assert index.subscriptions("a") == ["y.*", "w.w"]
    assert index.route("x.q", None) == []
    assert index.route("y.q", None) == ["a"]
    assert index.route("w.w", None) == ["a"]
    index.replace("a", [])
    assert index.subscriptions("a") == []
    assert index.route("y.q", None) == []


def test_index_remove_subscriber_forgets_the_key_and_ignores_unknown_keys() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["*"], "req-1")
    index.add_subscriber("b", ["*"])
    index.remove_subscriber("a")
    index.remove_subscriber("never-added")
    assert len(index) == 1
    assert "a" not in index
    assert index.filter_of("a") is None
    assert index.route("x.y", "req-1") == ["b"]
    with pytest.raises(KeyError):
        index.subscriptions("a")


def test_index_drops_patterns_nobody_holds() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["x.*", "y.*"])
    index.add_subscriber("b", ["x.*"])
    index.remove("a", ["x.*", "y.*"])
    assert set(index._subscribers_by_pattern) == {"x.*"}
    assert set(index._matchers) == {"x.*"}
    index.remove_subscriber("b")
    assert index._subscribers_by_pattern == {}
    assert index._matchers == {}


def test_index_route_without_match_is_empty() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    assert index.route("x.y", None) == []
    index.add_subscriber("a", ["claude.*"])
    assert index.route("repo.commit.created", None) == []
    assert index.route("repo.commit.created", "req-1") == []


def test_index_correlation_filter_semantics() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("open", ["*"])
    index.add_subscriber("r1", ["*"], "req-1")
    index.add_subscriber("r1-too", ["repo.*"], "req-1")
    index.add_subscriber("r2", ["*"], "req-2")
    assert index.route("repo.commit.created", None) == ["open"]
    assert index.route("repo.commit.created", "req-1") == ["open", "r1", "r1-too"]
    assert index.route("repo.commit.created", "req-2") == ["open", "r2"]
    assert index.route("repo.commit.created", "req-3") == ["open"]
    assert index.route("claude.session.started", "req-1") == ["open", "r1"]
    # the concatenation above must not have changed the cached unfiltered list
    assert index.route("repo.commit.created", None) == ["open"]


def test_index_route_with_only_filtered_subscribers() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("r1", ["*"], "req-1")
    assert index.route("a.b", "req-1") == ["r1"]
    assert index.route("a.b", "req-2") == []
    assert index.route("a.b", None) == []


def test_index_key_receives_an_event_once_when_several_patterns_match() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["*", "repo.*", "repo.commit.created", "*.created", "repo.?ommit.*"])
    index.add_subscriber("f", ["*", "repo.*"], "req-1")
    assert index.route("repo.commit.created", None) == ["a"]
    assert index.route("repo.commit.created", "req-1") == ["a", "f"]


def test_cache_invalidated_by_add() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["claude.*"])
    assert index.route("repo.push.completed", None) == []
    index.add("a", ["*.completed"])
    assert index.route("repo.push.completed", None) == ["a"]


def test_cache_invalidated_by_remove() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["repo.*"])
    assert index.route("repo.push.completed", None) == ["a"]
    index.remove("a", ["repo.*"])
    assert index.route("repo.push.completed", None) == []


def test_cache_invalidated_by_replace() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["repo.*"])
    assert index.route("repo.push.completed", None) == ["a"]
    assert index.route("claude.session.started", None) == []
    index.replace("a", ["claude.*"])
    assert index.route("repo.push.completed", None) == []
    assert index.route("claude.session.started", None) == ["a"]


def test_cache_invalidated_by_set_filter_and_clearing_it() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["*"])
    assert index.route("x.y", None) == ["a"]
    index.set_filter("a", "req-1")
    assert index.filter_of("a") == "req-1"
    assert index.route("x.y", None) == []
    assert index.route("x.y", "req-1") == ["a"]
    index.set_filter("a", "req-2")
    assert index.route("x.y", "req-1") == []
    assert index.route("x.y", "req-2") == ["a"]
    index.set_filter("a", None)
    assert index.filter_of("a") is None
    assert index.route("x.y", None) == ["a"]
    assert index.route("x.y", "req-2") == ["a"]


def test_cache_invalidated_by_add_subscriber() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["x.*"])
    assert index.route("x.y", None) == ["a"]
    index.add_subscriber("b", ["x.y"])
    assert index.route("x.y", None) == ["a", "b"]


def test_cache_invalidated_by_remove_subscriber() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("a", ["x.*"])
    index.add_subscriber("b", ["x.y"], "req-1")
    assert index.route("x.y", "req-1") == ["a", "b"]
    index.remove_subscriber("b")
    assert index.route("x.y", "req-1") == ["a"]
    index.remove_subscriber("a")
    assert index.route("x.y", None) == []


def test_cache_is_bounded_and_keeps_routing_correctly() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex(cache_size=3)
    index.add_subscriber("even", ["svc.*.even"])
    index.add_subscriber("all", ["svc.*"])
    for round_ in range(2):
        for number in range(40):
            parity = "even" if number % 2 == 0 else "odd"
            event_type = f"svc.n{number}.{parity}"
            expected = ["even", "all"] if parity == "even" else ["all"]
            assert sorted(index.route(event_type, None)) == sorted(expected), (round_, number)
            assert len(index._cache) <= 3


def test_fifty_keys_each_routed_exactly_their_events() -> None:
    index: SubscriptionIndex[int] = SubscriptionIndex()
    for key in range(50):
        patterns = [f"svc{key}.*", f"shared.k{key}"]
        if key % 5 == 0:
            patterns.append("*.broadcast")
        index.add_subscriber(key, patterns, f"req-{key}" if key % 7 == 0 else None)
    for key in range(50):
        for event_type in (f"svc{key}.thing.happened", f"shared.k{key}"):
            if key % 7 == 0:
                assert index.route(event_type, None) == []
                assert index.route(event_type, f"req-{key}") == [key]
                assert index.route(event_type, f"req-{key + 1}") == []
            else:
                assert index.route(event_type, None) == [key]
                assert index.route(event_type, "req-0") == [key]
    broadcast_unfiltered = [k for k in range(50) if k % 5 == 0 and k % 7 != 0]
    assert index.route("x.broadcast", None) == broadcast_unfiltered
    assert index.route("x.broadcast", "req-35") == [*broadcast_unfiltered, 35]
    assert index.route("svc1x.thing", None) == []


def test_route_gives_each_group_in_registration_order() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add_subscriber("first", ["x.*"])
    index.add_subscriber("second", ["*"])
    index.add_subscriber("filtered-a", ["*"], "req-1")
    index.add_subscriber("third", ["x.y"])
    index.add_subscriber("filtered-b", ["x.*"], "req-1")
    index.add("first", ["*"])
    assert index.route("x.y", None) == ["first", "second", "third"]
    assert index.route("x.y", "req-1") == [
        "first",
        "second",
        "third",
        "filtered-a",
        "filtered-b",
    ]
