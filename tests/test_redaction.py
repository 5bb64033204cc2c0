"""evkit.redaction with plain values: which keys, at what depth, and never in place."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from evkit.protocol import encode
from evkit.redaction import DEFAULT_REDACT_KEYS, REDACTED, Redactor, normalise_key

NESTED = {
    "user": {"Password": "p", "profile": {"api_key": "k", "name": "ada"}},
    "items": [{"token": "t"}, {"id": 2}],
    "ok": 1,
}
NESTED_REDACTED = {
    "user": {"Password": REDACTED, "profile": {"api_key": REDACTED, "name": "ada"}},
    "items": [{"token": REDACTED}, {"id": 2}],
    "ok": 1,
}


def test_the_old_default_keys_are_all_covered_by_the_default_patterns() -> None:
    payload = {key: "x" for key in DEFAULT_REDACT_KEYS} | {"path": "/src"}
    assert Redactor()(payload) == {key: REDACTED for key in DEFAULT_REDACT_KEYS} | {"path": "/src"}


LEAKED_BEFORE = [
    "apiKey",
    "access_token",
    "clientSecret",
    "refresh_token",
    "x-api-key",
    "passwd",
    "set-cookie",
    "private_key",
    "X-Auth-Token",
]


@pytest.mark.parametrize(
    "key",
    [
        *LEAKED_BEFORE,
        "Authorization",
        "password_hint",
        "db.password",
        "PASSPHRASE",
        "userPwd",
        "bearer",
        "oauth_code",
        "authToken",
        "credentials",
        "aws_secret_access_key",
        "AWS_ACCESS_KEY",
        "signature",
        "session",
        "userSession",
        "sessionKey",
        "encryption_key",
        "id_token",
        "csrfToken",
    ],
)
def test_sensitive_keys_match_by_normalised_pattern(key: str) -> None:
    assert Redactor()({key: "s3cr3t", "path": "/src"}) == {key: REDACTED, "path": "/src"}


@pytest.mark.parametrize(
    "key",
    [
        "sessionId",  # claude.session.* events carry it: an identifier, not a credential
        "author",
        "commitAuthor",
        "authority",
        "tokens",
        "inputTokens",
        "tokens_used",
        "TokenCount",
        "token_usage",
        "maxTokenLimit",
        "tokenizer",
        "path",
        "commitHash",
        "workingDirectory",
        "duration",
    ],
)
def test_identifiers_and_counts_are_not_mistaken_for_secrets(key: str) -> None:
    payload = {key: "value"}
    assert Redactor()(payload) is payload


def test_normalise_key_ignores_case_and_separators() -> None:
    assert normalise_key("X-Auth_Token.v2 x") == "xauthtokenv2x"


def test_nested_dicts_and_lists_at_any_depth() -> None:
    original = copy.deepcopy(NESTED)
    assert Redactor()(NESTED) == NESTED_REDACTED
    assert original == NESTED  # the caller's payload is untouched


def test_deep_nesting_and_lists_of_lists() -> None:
    payload: dict[str, Any] = {"level": 0}
    inner = payload
    for level in range(1, 50):
        inner["next"] = {"level": level}
        inner = inner["next"]
    inner["secret"] = "s"
    inner["grid"] = [[{"cookie": "c"}, 1], [[{"Authorization": "a"}]]]
    redacted = Redactor()(payload)
    inner = redacted
    for _ in range(49):
        inner = inner["next"]
    assert inner["secret"] == REDACTED
    assert inner["grid"] == [[{"cookie": REDACTED}, 1], [[{"Authorization": REDACTED}]]]
    assert payload["next"] is not redacted["next"]


@pytest.mark.parametrize("key", ["password", "PASSWORD", "Password", "pAsSwOrD"])
def test_keys_match_whatever_their_case(key: str) -> None:
    assert Redactor()({key: "p"}) == {key: REDACTED}


def test_whole_values_are_replaced_whatever_their_type() -> None:
    payload = {"token": {"value": "t", "kind": "bearer"}, "secret": ["a", "b"], "cookie": None}
    assert Redactor()(payload) == {"token": REDACTED, "secret": REDACTED, "cookie": REDACTED}


def test_nothing_to_redact_returns_the_payload_itself() -> None:
    redactor = Redactor()
    payload = {"path": "/src", "nested": {"list": [{"a": 1}, [2, 3]], "n": None}, "t": (1, 2)}
    assert redactor(payload) is payload
    assert redactor(payload) is payload  # also once the keys are known to be safe
    empty: dict[str, Any] = {}
    assert redactor(empty) is empty


def test_values_that_look_like_keys_are_not_redacted() -> None:
    payload = {"field": "password", "list": ["token", "secret"]}
    assert Redactor()(payload) is payload


def test_custom_keys_add_to_the_defaults() -> None:
    redactor = Redactor(("ssn", "Card_Number"))
    payload = {"ssn": "1", "person": {"SSN": "2", "card-number": "3"}, "password": "p"}
    assert redactor(payload) == {
        "ssn": REDACTED,
        "person": {"SSN": REDACTED, "card-number": REDACTED},
        "password": REDACTED,
    }
    # Exact names, not substrings: "classname" holds "ssn" and is left alone.
    assert redactor({"classname": "A"}) == {"classname": "A"}


def test_a_custom_key_with_a_star_is_a_glob_over_the_normalised_key() -> None:
    redactor = Redactor(("*ssn",))
    assert redactor({"user_ssn": "1", "SSN": "2", "ssn_kind": "3"}) == {
        "user_ssn": REDACTED,
        "SSN": REDACTED,
        "ssn_kind": "3",
    }


def test_defaults_off_redacts_only_the_custom_keys() -> None:
    redactor = Redactor(("ssn",), defaults=False)
    assert redactor({"ssn": "1", "password": "p"}) == {"ssn": REDACTED, "password": "p"}
    payload = {"password": "p"}
    assert Redactor((), defaults=False)(payload) is payload


def test_non_string_keys_are_not_sensitive() -> None:
    payload = {1: "one", None: "none", ("token",): "tuple"}
    assert Redactor()(payload) is payload


def test_tuples_are_searched_like_lists() -> None:
    # JSON encodes a tuple as an array: a dict inside one leaves the process too.
    payload = {"items": ({"token": "t"}, 2)}
    redacted = Redactor()(payload)
    assert orjson.loads(encode(redacted)) == {"items": [{"token": REDACTED}, 2]}
    assert payload == {"items": ({"token": "t"}, 2)}


@dataclass
class Credentials:
    user: str
    password: str


def test_dataclass_fields_are_searched() -> None:
    # orjson encodes a dataclass as an object of its fields.
    payload = {"login": Credentials("ada", "hunter2")}
    assert orjson.loads(encode(payload)) == {"login": {"user": "ada", "password": "hunter2"}}
    redacted = Redactor()(payload)
    assert orjson.loads(encode(redacted)) == {"login": {"user": "ada", "password": REDACTED}}
    assert payload["login"].password == "hunter2"
    harmless = {"login": Credentials.__name__, "cls": Credentials}
    assert Redactor()(harmless) is harmless


def test_the_known_safe_key_cache_never_hides_a_sensitive_key() -> None:
    redactor = Redactor()
    for n in range(20_000):  # past the cache's bound
        payload = {f"key{n}": n}
        assert redactor(payload) is payload
    assert redactor({"key1": 1, "token": "t"}) == {"key1": 1, "token": REDACTED}
