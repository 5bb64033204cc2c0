"""JWTs as identity providers issue them: keys from a JWKS document served by a real
local HTTP server, key rotation, ``aud`` and ``iss``, and the accepted algorithms."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import evkit
from evkit.auth import Authenticator
from evkit.exceptions import ProtocolError
from evkit.testing import open_client, recv_json, send_json, wait_until

ISSUER = "https://idp.example/"
AUDIENCE = "evkit-events"


class IdentityProvider:
    """Signing keys, and their JWKS document served at ``url`` (the document can change)."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.fetches = 0
        self.up = True
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                if not provider.up:
                    self.send_error(503)
                    return
                body = json.dumps(provider.document()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_key(self, kid: str, kind: str = "rsa") -> None:
        private: Any = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.keys[kid] = private
        self.published.append(kid)

    def document(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            private = self.keys[kid]
            if isinstance(private, rsa.RSAPrivateKey):
                jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
                jwk["alg"] = "RS256"
            else:
                jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
                jwk["alg"] = "ES256"
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def token(self, kid: str, **claims: Any) -> str:
        claims = {"exp": int(time.time()) + 600, "iss": ISSUER, "aud": AUDIENCE, **claims}
        claims = {k: v for k, v in claims.items() if v is not None}
        algorithm = "RS256" if isinstance(self.keys[kid], rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(claims, self.keys[kid], algorithm, headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.add_key("key-1")
    try:
        yield provider
    finally:
        provider.close()


def checker(idp: IdentityProvider, **options: Any) -> Authenticator:
    options.setdefault("audience", [AUDIENCE])
    options.setdefault("issuer", ISSUER)
    return Authenticator(jwks_url=idp.url, **options)


def verdict(authenticator: Authenticator, token: str) -> Any:
    """What checking ``token`` gives, after letting the authenticator fetch what it needs."""
    asyncio.run(authenticator.ready(token))
    try:
        return authenticator.authenticate(token)
    except ProtocolError as exc:
        refused = exc
    assert refused.code == "unauthorized"
    return refused.error


def test_a_token_signed_by_a_key_of_the_set_is_accepted_and_the_set_is_cached(
    idp: IdentityProvider,
) -> None:
    authenticator = checker(idp)
    principal = verdict(authenticator, idp.token("key-1", sub="alice", scope="subscribe publish"))
    assert principal.subject == "alice"
    assert principal.scopes == frozenset({"subscribe", "publish"})
    verdict(authenticator, idp.token("key-1", sub="bob"))
    assert idp.fetches == 1


def test_a_rotated_key_is_fetched_and_a_removed_one_stops_working(idp: IdentityProvider) -> None:
    authenticator = checker(idp, jwks_cooldown=0.0)
    old = idp.token("key-1")
    assert verdict(authenticator, old).subject is None
    idp.add_key("key-2")
    idp.published.remove("key-1")
    assert verdict(authenticator, idp.token("key-2", sub="new")).subject == "new"
    assert idp.fetches == 2
    assert verdict(authenticator, old) == (
        "token signed with unknown key 'key-1' (not in the key set)"
    )


def test_unknown_keys_fetch_the_set_at_most_once_per_cooldown(idp: IdentityProvider) -> None:
    authenticator = checker(idp, jwks_cooldown=600.0)
    verdict(authenticator, idp.token("key-1"))
    idp.add_key("key-2")
    for _ in range(5):  # a client sending tokens of made-up keys cannot flood the provider
        assert "unknown key 'key-2'" in verdict(authenticator, idp.token("key-2"))
    assert idp.fetches == 1


def test_the_set_is_fetched_again_when_its_lifespan_ends(idp: IdentityProvider) -> None:
    authenticator = checker(idp, jwks_lifespan=0.2)
    token = idp.token("key-1")
    verdict(authenticator, token)
    keys = authenticator.keys
    assert keys is not None
    wait_until(lambda: not keys.fresh("key-1"), "the cached set to expire", 10)
    assert verdict(authenticator, token).scopes == frozenset({"subscribe"})
    assert idp.fetches == 2


@pytest.mark.parametrize(
    ("claims", "options", "message"),
    [
        ({"aud": "someone-else"}, {}, "token audience is not one of ['evkit-events']"),
        ({"aud": None}, {}, "token lacks a required claim: aud"),
        ({"iss": "https://evil.example/"}, {}, "token issuer is not 'https://idp.example/'"),
        ({}, {"audience": None}, "token names an audience (aud) and this server accepts none"),
        ({"exp": int(time.time()) - 60}, {}, "token expired"),
    ],
)
def test_audience_issuer_and_expiry_are_checked(
    idp: IdentityProvider, claims: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    assert message in verdict(checker(idp, **options), idp.token("key-1", **claims))


def test_only_the_listed_algorithms_are_accepted(idp: IdentityProvider) -> None:
    idp.add_key("ec-1", kind="ec")
    token = idp.token("ec-1")
    assert "algorithm is not accepted (accepted: RS256)" in verdict(checker(idp), token)
    both = checker(idp, algorithms=["RS256", "ES256"])
    assert verdict(both, token).scopes == frozenset({"subscribe"})
    # A token signed with HS256 and the public key as its secret: algorithm confusion.
    forged = jwt.encode(
        {"exp": int(time.time()) + 60, "aud": AUDIENCE, "iss": ISSUER},
        "a-secret-of-the-attacker-0123456789abcdef",
        "HS256",
        headers={"kid": "key-1"},
    )
    assert "algorithm is not accepted" in verdict(checker(idp), forged)


def test_a_provider_that_cannot_be_reached_is_said_so(idp: IdentityProvider) -> None:
    idp.up = False
    message = verdict(checker(idp), idp.token("key-1"))
    assert message.startswith("token signed with unknown key 'key-1' (cannot fetch it:")
    no_kid = jwt.encode({"exp": int(time.time()) + 60}, idp.keys["key-1"], "RS256")
    assert verdict(checker(idp), no_kid) == (
        "malformed token: no 'kid' header to pick a key of the JWKS"
    )


# -- a broadcaster with a JWKS URL --------------------------------------------------------------


@pytest.fixture
def jwks_server(idp: IdentityProvider) -> Iterator[evkit.Server]:
    srv = evkit.serve(port=0, jwt_jwks_url=idp.url, jwt_audience=(AUDIENCE,), jwt_issuer=ISSUER)
    try:
        yield srv
    finally:
        srv.stop()


def test_the_handshake_first_message_and_post_take_provider_tokens(
    jwks_server: evkit.Server, idp: IdentityProvider
) -> None:
    token = idp.token("key-1", scope="subscribe publish metrics")

    async def scenario() -> None:
        ws, welcome = await open_client(jwks_server.url, {"Authorization": f"Bearer {token}"})
        assert welcome["type"] == "websocket.connected"
        await ws.close()
        async with connect(jwks_server.url) as ws:
            await send_json(ws, {"type": "auth", "payload": {"token": token}})
            assert (await recv_json(ws))["type"] == "websocket.connected"
        wrong = idp.token("key-1", iss="https://evil.example/")
        with pytest.raises(InvalidStatus) as info:
            await open_client(jwks_server.url, {"Authorization": f"Bearer {wrong}"})
        assert info.value.response.status_code == 401
        async with connect(jwks_server.url) as ws:
            await send_json(ws, {"type": "auth", "payload": {"token": wrong}})
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.reason == "token issuer is not 'https://idp.example/'"

    asyncio.run(scenario())
    connection = http.client.HTTPConnection("127.0.0.1", jwks_server.port, timeout=10)
    try:
        body = b'{"type": "repo.commit.created", "payload": {}}'
        connection.request("POST", "/events", body, {"Authorization": f"Bearer {token}"})
        assert connection.getresponse().status == 202
        connection.close()
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert connection.getresponse().status == 200
    finally:
        connection.close()
    assert idp.fetches == 1
