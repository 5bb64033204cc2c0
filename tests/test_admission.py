"""evkit.server.admission with plain values: hosts, origins, credentials, scopes, capacity."""

from __future__ import annotations

import http
from typing import Any

import pytest

from evkit.auth import ANONYMOUS, Principal
from evkit.exceptions import ProtocolError
from evkit.protocol import ConnectRequest
from evkit.server.admission import Admission, Admitted, Refusal, host_name, is_loopback_name
from evkit.server.counters import Counters
from evkit.server.settings import ServerSettings

TOKEN = "static-token-0123456789abcdef0123456789"


def admission(**settings: Any) -> tuple[Admission, Counters]:
    counters = Counters()
    return Admission(ServerSettings(**settings), counters), counters


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:3000", "127.0.0.1"),
        ("LOCALHOST.:1", "localhost"),
        ("[::1]:3000", "::1"),
        ("[::1]", "::1"),
        ("events.example.com", "events.example.com"),
        ("[::1]x", None),
        ("a:b", None),
        ("", None),
    ],
)
def test_host_name_drops_the_port(header: str, name: str | None) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("name", "loopback"),
    [
        ("localhost", True),
        ("app.localhost", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("localhost.example", False),
        ("attacker.example", False),
    ],
)
def test_loopback_names(name: str, loopback: bool) -> None:
    assert is_loopback_name(name) is loopback


def test_a_loopback_server_answers_loopback_names_and_listed_ones_only() -> None:
    policy, counters = admission(allowed_hosts=("events.example.com",))
    assert policy.check_host("127.0.0.1:3000") is None
    assert policy.check_host("events.example.com") is None
    refusal = policy.check_host("attacker.example:3000")
    assert isinstance(refusal, Refusal)
    assert refusal.status == http.HTTPStatus.FORBIDDEN
    assert refusal.body["code"] == "forbidden"
    assert policy.check_host(None) is not None
    assert counters.rejected == {"host": 2}


def test_a_server_bound_elsewhere_answers_any_host_unless_told() -> None:
    policy, _ = admission(host="0.0.0.0", token=TOKEN)
    assert policy.check_host("anything.example") is None


def test_same_origin_is_scheme_host_and_port() -> None:
    policy, _ = admission(loopback_origins=False)
    assert policy.check_origin("http://127.0.0.1:3000", "127.0.0.1:3000") is None
    assert policy.check_origin("https://127.0.0.1:3000", "127.0.0.1:3000") is not None
    assert policy.check_origin("http://127.0.0.1:3001", "127.0.0.1:3000") is not None
    assert policy.check_origin(None, "127.0.0.1:3000") is None  # not a browser
    closed, _ = admission(allow_missing_origin=False)
    assert closed.check_origin(None, "127.0.0.1:3000") is not None


def test_same_origin_of_a_tls_server_is_https() -> None:
    policy, _ = admission(loopback_origins=False, ssl_certfile="cert.pem")
    assert policy.check_origin("https://127.0.0.1:3000", "127.0.0.1:3000") is None
    assert policy.check_origin("http://127.0.0.1:3000", "127.0.0.1:3000") is not None


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:8000", True),
        ("http://127.0.0.1:5173", True),
        ("http://[::1]:8888", True),
        ("https://localhost", True),
        ("http://app.localhost:3001", True),
        ("http://127.0.0.2:80", True),
        ("null", False),
        ("file://", False),
        ("http://evil.example:3000", False),
        ("http://localhost.evil.example", False),
        ("ftp://localhost:21", False),
        ("http://localhost:port", False),
    ],
)
def test_a_loopback_server_lets_in_loopback_origins_of_any_port(origin: str, allowed: bool) -> None:
    policy, _ = admission()
    assert policy.origin_allowed(origin, "127.0.0.1:3000") is allowed
    public, _ = admission(host="0.0.0.0", token=TOKEN)
    assert not public.origin_allowed(origin, "events.example:3000")
    closed, _ = admission(loopback_origins=False)
    assert not closed.origin_allowed(origin, "127.0.0.1:3000")


def test_null_is_let_in_only_when_listed_and_the_refusal_names_the_setting() -> None:
    policy, counters = admission()
    refusal = policy.check_origin("null", "127.0.0.1:3000")
    assert refusal is not None
    assert refusal.status == http.HTTPStatus.FORBIDDEN
    assert refusal.body["error"] == (
        "origin 'null' (a page opened from a file) is not allowed: add it to allowed_origins "
        "(evkit serve --allowed-origins null, or EVKIT_ALLOWED_ORIGINS=null)"
    )
    assert dict(counters.rejected) == {"origin": 1}
    listed, _ = admission(allowed_origins=("null", "https://app.example"))
    assert listed.check_origin("null", "127.0.0.1:3000") is None
    assert listed.check_origin("https://app.example", "127.0.0.1:3000") is None
    # Listing origins adds to the defaults: loopback pages still come in.
    assert listed.check_origin("http://localhost:8888", "127.0.0.1:3000") is None


def admit(policy: Admission, query: str = "", **headers: str) -> Admitted | Refusal:
    return policy.admit("127.0.0.1", {"Host": "127.0.0.1:3000", **headers}, query, int)


def test_credentials_come_from_the_header_or_the_query() -> None:
    policy, _ = admission(token=TOKEN)
    for admitted in (
        admit(policy, Authorization=f"Bearer {TOKEN}"),
        admit(policy, f"token={TOKEN}"),
    ):
        assert isinstance(admitted, Admitted)
        assert admitted.principal is not None
    waiting = admit(policy)  # no credentials yet: a first message will bring them
    assert isinstance(waiting, Admitted)
    assert waiting.principal is None
    refused = admit(policy, "token=wrong")
    assert isinstance(refused, Refusal)
    assert refused.status == http.HTTPStatus.UNAUTHORIZED


def test_capacity_has_one_budget_for_clients_and_one_for_those_authenticating() -> None:
    policy, counters = admission(token=TOKEN, max_connections=1, max_authenticating=1)
    policy.opened("127.0.0.1", waiting_for_auth=True)
    refused = admit(policy)
    assert isinstance(refused, Refusal)
    assert refused.status == http.HTTPStatus.SERVICE_UNAVAILABLE
    assert "waiting to authenticate" in refused.body["error"]
    assert isinstance(admit(policy, f"token={TOKEN}"), Admitted)  # not locked out
    policy.opened("127.0.0.1", waiting_for_auth=False)
    assert isinstance(admit(policy, f"token={TOKEN}"), Refusal)
    policy.authenticated()  # the one waiting is now a client too: one too many
    assert policy.over_capacity()
    assert counters.rejected == {"max_authenticating": 1, "max_connections": 1}


def test_authorize_applies_scopes_and_patterns_with_one_wording() -> None:
    policy, _ = admission()
    publisher = Principal("p", frozenset({"publish"}))
    restricted = Principal("r", frozenset({"subscribe"}), ("repo.*",))
    with pytest.raises(ProtocolError, match="subscribe scope"):
        policy.authorize(ConnectRequest(["*"]), publisher)
    quiet = policy.authorize(ConnectRequest([], explicit_patterns=True), publisher)
    assert quiet.patterns == []
    with pytest.raises(ProtocolError, match="subscribe scope"):
        policy.authorize(ConnectRequest([], since="0", explicit_patterns=True), publisher)
    assert policy.authorize(ConnectRequest(["*"]), restricted).patterns == ["repo.*"]
    with pytest.raises(ProtocolError) as info:
        policy.authorize(ConnectRequest(["claude.*"], explicit_patterns=True), restricted)
    with pytest.raises(ProtocolError) as again:
        policy.check_subscribe(restricted, ["claude.*"])
    assert info.value.error == again.value.error
    assert info.value.error.startswith("not allowed to subscribe to ['claude.*']")
    policy.check_subscribe(ANONYMOUS, ["*"])


def test_publish_needs_the_scope_and_the_setting() -> None:
    policy, _ = admission()
    policy.check_publish(ANONYMOUS)
    with pytest.raises(ProtocolError, match="publish scope"):
        policy.check_publish(Principal("s", frozenset({"subscribe"})))
    closed, _ = admission(allow_publish=False)
    with pytest.raises(ProtocolError, match="disabled"):
        closed.check_publish(ANONYMOUS)
