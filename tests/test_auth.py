"""evkit.auth with plain values: Principal's pattern rules and the Authenticator's checks."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from evkit.auth import ANONYMOUS, SCOPES, Authenticator, Principal
from evkit.exceptions import ProtocolError

SECRET = "test-secret-for-hs256-0123456789abcdef"  # >= 32 bytes: PyJWT warns on shorter keys
OTHER_SECRET = "another-secret-for-hs256-0123456789abcdef"
TOKEN = "static-token-0123456789abcdef0123456789"


def hs256(secret: str = SECRET, **claims: Any) -> str:
    claims.setdefault("exp", int(time.time()) + 3600)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret, "HS256")


def tampered(token: str) -> str:
    """``token`` with its claims swapped for an admin's, and its signature kept."""
    header, _, signature = token.split(".")
    claims = json.dumps({"exp": int(time.time()) + 3600, "scope": "admin"}).encode()
    return f"{header}.{base64.urlsafe_b64encode(claims).rstrip(b'=').decode()}.{signature}"


def restricted(*patterns: str) -> Principal:
    return Principal("user", frozenset({"subscribe"}), patterns)


def unauthorized(authenticator: Authenticator, credential: str | None) -> str:
    """The ``unauthorized`` message ``credential`` is refused with."""
    with pytest.raises(ProtocolError) as info:
        authenticator.authenticate(credential)
    assert info.value.code == "unauthorized"
    return info.value.error


# -- Principal ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "requested", "admitted"),
    [
        ("repo.*", "repo.*", True),
        ("repo.*", "repo.commit.*", True),
        ("repo.*", "repo.commit.created", True),
        ("repo.*", "repo.?ommit.*", True),
        ("repo.*", "*", False),
        ("repo.*", "repo*", False),
        ("repo.*", "repo", False),
        ("repo.*", "*.commit.created", False),
        ("repo.*", "claude.*", False),
        ("a?c", "abc", True),
        ("a?c", "a?c", True),
        ("a?c", "a*c", False),
        ("a?c", "a.c.c", False),
        ("a?c", "ac", False),
        ("*.completed", "github.api.completed", True),
        ("*.completed", "*.completed", True),
        ("*.completed", "*", False),
        ("*.completed", "*.completed.*", False),
        ("repo.commit.created", "repo.commit.created", True),
        ("repo.commit.created", "repo.commit.*", False),
        ("*", "*", True),
        ("*", "anything.at.all", True),
    ],
)
def test_allows_only_patterns_within_the_allowed_globs(
    allowed: str, requested: str, admitted: bool
) -> None:
    assert restricted(allowed).allows(requested) is admitted


def test_allows_is_checked_against_each_allowed_pattern() -> None:
    principal = restricted("repo.*", "github.api.*")
    assert principal.forbidden(["repo.commit.*", "github.api.completed", "claude.*", "*"]) == [
        "claude.*",
        "*",
    ]


def test_no_patterns_claim_allows_everything_and_empty_allows_nothing() -> None:
    assert Principal("user", frozenset({"subscribe"})).allows("*")
    nothing = restricted()
    assert nothing.forbidden(["*", "repo.*"]) == ["*", "repo.*"]


def test_scopes_admin_holds_every_scope() -> None:
    subscriber = Principal("s", frozenset({"subscribe"}))
    assert subscriber.may("subscribe")
    assert not subscriber.may("publish")
    admin = Principal("a", frozenset({"admin"}))
    assert all(admin.may(scope) for scope in SCOPES)
    assert all(ANONYMOUS.may(scope) for scope in SCOPES)
    assert ANONYMOUS.patterns is None


# -- Authenticator: static token -------------------------------------------------------------


def test_without_credentials_configured_everyone_is_anonymous() -> None:
    authenticator = Authenticator()
    assert not authenticator.enabled
    assert authenticator.authenticate(None) is ANONYMOUS
    assert authenticator.authenticate("anything") is ANONYMOUS


def test_static_token_grants_every_scope_and_any_pattern() -> None:
    authenticator = Authenticator(token=TOKEN)
    assert authenticator.enabled
    principal = authenticator.authenticate(TOKEN)
    assert principal.scopes == frozenset(SCOPES)
    assert principal.patterns is None


@pytest.mark.parametrize("credential", [None, "", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "é"])
def test_wrong_static_token_is_unauthorized(credential: str | None) -> None:
    unauthorized(Authenticator(token=TOKEN), credential)


def test_empty_static_token_means_no_auth() -> None:
    assert not Authenticator(token="").enabled


# -- Authenticator: JWT ---------------------------------------------------------------------


def test_hs256_claims_become_scopes_and_patterns() -> None:
    authenticator = Authenticator(jwt_secret=SECRET)
    principal = authenticator.authenticate(
        hs256(sub="alice", scope="subscribe publish", patterns=["repo.*", "repo.*"])
    )
    assert principal == Principal("alice", frozenset({"subscribe", "publish"}), ("repo.*",))
    as_list = authenticator.authenticate(hs256(scope=["publish"]))
    assert as_list.scopes == frozenset({"publish"})
    default = authenticator.authenticate(hs256())
    assert default.scopes == frozenset({"subscribe"})
    assert default.patterns is None


def test_static_token_and_jwt_can_be_configured_together() -> None:
    authenticator = Authenticator(token=TOKEN, jwt_secret=SECRET)
    assert authenticator.authenticate(TOKEN).subject == "token"
    assert authenticator.authenticate(hs256(sub="bob")).subject == "bob"


@pytest.mark.parametrize(
    ("credential", "message"),
    [
        (lambda: hs256(exp=int(time.time()) - 60), "token expired"),
        (lambda: hs256(nbf=int(time.time()) + 3600), "token not yet valid"),
        (lambda: hs256(OTHER_SECRET), "token signature is invalid"),
        (lambda: hs256(exp=None), "token lacks a required claim: exp"),
        (lambda: "garbage", "malformed token"),
        (lambda: "a.b.c", "malformed token"),
        (lambda: tampered(hs256(scope="subscribe")), "token signature is invalid"),
        (lambda: hs256(scope="subscribe root"), "unknown scopes ['root']"),
        (lambda: hs256(scope=7), "claim 'scope' must be"),
        (lambda: hs256(scope=["subscribe", 1]), "claim 'scope' must be"),
        (lambda: hs256(patterns=["bad pattern!"]), "claim 'patterns' is invalid"),
        (lambda: hs256(patterns="repo.*"), "claim 'patterns' is invalid"),
    ],
    ids=[
        "expired",
        "nbf-future",
        "wrong-key",
        "no-exp",
        "garbage",
        "three-dots",
        "tampered-claims",
        "unknown-scope",
        "scope-not-text",
        "scope-list-not-text",
        "bad-pattern",
        "patterns-not-a-list",
    ],
)
def test_bad_jwts_are_unauthorized_with_the_reason(credential: Any, message: str) -> None:
    assert message in unauthorized(Authenticator(jwt_secret=SECRET), credential())


def test_unsigned_jwt_is_refused() -> None:
    unsigned = jwt.encode({"exp": int(time.time()) + 60, "scope": "admin"}, None, "none")
    message = unauthorized(Authenticator(jwt_secret=SECRET), unsigned)
    assert message == "token algorithm is not accepted (accepted: HS256)"


def test_leeway_admits_a_token_just_expired() -> None:
    token = hs256(exp=int(time.time()) - 5)
    assert Authenticator(jwt_secret=SECRET, leeway=60).authenticate(token).scopes
    unauthorized(Authenticator(jwt_secret=SECRET), token)


def test_secret_and_public_key_together_are_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="give one of jwt_secret"):
        Authenticator(jwt_secret=SECRET, jwt_public_key="key")
    with pytest.raises(ValueError, match="give one of jwt_secret"):
        Authenticator(jwt_public_key="key", jwks_url="https://idp.example/jwks")


# -- RS256 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[Any, str]:
    """A private key object and its public key in PEM."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public_pem


def test_rs256_verifies_with_the_public_key(rsa_keys: tuple[Any, str]) -> None:
    private, public_pem = rsa_keys
    authenticator = Authenticator(jwt_public_key=public_pem)
    token = jwt.encode(
        {"sub": "svc", "exp": int(time.time()) + 60, "scope": "publish subscribe"},
        private,
        "RS256",
    )
    assert authenticator.authenticate(token) == Principal(
        "svc", frozenset({"publish", "subscribe"}), None
    )


def test_rs256_refuses_other_keys_and_algorithm_confusion(rsa_keys: tuple[Any, str]) -> None:
    _, public_pem = rsa_keys
    authenticator = Authenticator(jwt_public_key=public_pem)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"exp": int(time.time()) + 60}, stranger, "RS256")
    assert "signature is invalid" in unauthorized(authenticator, forged)
    # An HS256 token is not accepted by an RS256 server, whatever key signed it.
    assert "algorithm is not accepted (accepted: RS256)" in unauthorized(authenticator, hs256())
