"""Who a connection is and what it may do: static tokens and JWTs.

:class:`Authenticator` turns a credential (a bearer token) into a :class:`Principal`
or raises :class:`~evkit.exceptions.ProtocolError` with code ``unauthorized``. A static
token grants every scope; a JWT grants the scopes in its ``scope`` claim (a
space-separated string or a list; ``subscribe`` when absent) and limits subscriptions
to the globs in its ``patterns`` claim (any pattern when absent).

JWTs are checked with PyJWT against one key source: a shared secret (HS256), a PEM
public key (RS256), or an identity provider's JWKS document (:class:`SigningKeys`, on
PyJWT's ``PyJWKClient``: the key set is cached, fetched again when a token names a key
it does not hold, at most once per cooldown, and when the cache expires, so rotated
keys are picked up and removed ones stop working). ``exp`` is required, ``nbf``,
``aud`` and ``iss`` are checked, and only the configured algorithms are accepted (never
``none``, never a symmetric one with public keys).

:meth:`Authenticator.authenticate` never does I/O: it runs on the event loop. Fetching
a JWKS document is :meth:`Authenticator.ready`'s job (awaited before, in a worker
thread). PyJWT is imported only when a JWT key is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evkit.exceptions import ProtocolError
from evkit.patterns import Matcher, compile_glob, validate_patterns

__all__ = ["ANONYMOUS", "SCOPES", "Authenticator", "Principal", "SigningKeys"]

logger = logging.getLogger("evkit.auth")

SCOPES = ("subscribe", "publish", "metrics", "admin")


def _permission_matcher(allowed: str) -> Matcher:
    # The allowed glob's "*" may cover anything the requested pattern holds, wildcards
    # included; its "?" only one literal character, so "a?c" never admits "a*c".
    # Non-backtracking: the requested pattern is the client's, up to 256 characters.
    return compile_glob(allowed, one="[^*?]")


@dataclass(frozen=True)
class Principal:
    """An authenticated (or anonymous) client: its scopes and the patterns it may hold."""

    subject: str | None
    scopes: frozenset[str]
    patterns: tuple[str, ...] | None = None

    def may(self, scope: str) -> bool:
        """Whether this principal holds ``scope`` (admin holds every scope)."""
        return scope in self.scopes or "admin" in self.scopes

    def allows(self, pattern: str) -> bool:
        """Whether subscribing to ``pattern`` stays within the allowed patterns."""
        if self.patterns is None:
            return True
        return any(
            pattern == allowed or _permission_matcher(allowed)(pattern) for allowed in self.patterns
        )

    def forbidden(self, patterns: list[str]) -> list[str]:
        """The patterns of ``patterns`` this principal may not subscribe to."""
        return [p for p in patterns if not self.allows(p)]


ANONYMOUS = Principal(None, frozenset(SCOPES))


def _unauthorized(reason: str) -> ProtocolError:
    return ProtocolError("unauthorized", reason)


class SigningKeys:
    """The signing keys of a JWKS document, fetched with PyJWT's ``PyJWKClient``.

    :meth:`key` reads what was fetched (no I/O); :meth:`refresh` (blocking: run it in a
    worker thread) fetches the set when a token names a key it does not hold (at most
    once per ``cooldown`` seconds) or when the cached set is older than ``lifespan``.
    """

    def __init__(
        self, url: str, *, lifespan: float = 300.0, cooldown: float = 30.0, timeout: float = 5.0
    ) -> None:
        import jwt

        self.url = url
        self.lifespan = lifespan
        self._client = jwt.PyJWKClient(
            url,
            cache_jwk_set=True,
            lifespan=lifespan,
            timeout=timeout,
            cooldown_duration=cooldown,
            headers={"User-Agent": "evkit"},
        )
        self._keys: dict[str, Any] = {}  # kid -> PyJWK; replaced whole, never changed
        self._fetched_at: float | None = None
        self.last_error: str | None = None

    def key(self, kid: str) -> Any:
        """The key ``kid`` names (a ``PyJWK``) in the set last fetched, or None."""
        return self._keys.get(kid)

    def fresh(self, kid: str) -> bool:
        """Whether ``kid`` is known and the set is younger than its lifespan."""
        fetched = self._fetched_at
        return (
            kid in self._keys and fetched is not None and time.monotonic() - fetched < self.lifespan
        )

    def refresh(self, kid: str) -> None:
        """Fetch the set if ``kid`` is unknown (cooldown permitting) or the cache expired.

        Blocking; never raises: a failure is logged and kept in ``last_error``, and the
        keys fetched before stay in use.
        """
        import jwt

        client = self._client
        try:
            try:
                client.get_signing_key(kid)
            except jwt.PyJWKClientConnectionError:
                raise
            except jwt.PyJWKClientError:
                pass  # not in the set (or cooling down): said by authenticate()
            keys = {key.key_id: key for key in client.get_signing_keys() if key.key_id}
        except (jwt.PyJWKClientError, jwt.PyJWKError) as exc:
            self.last_error = str(exc)
            logger.warning("cannot fetch the JWT signing keys from %s: %s", self.url, exc)
            return
        self._keys = keys
        self._fetched_at = time.monotonic()
        self.last_error = None


class Authenticator:
    """Checks bearer credentials against a static token and/or one JWT key source.

    Args:
        token: a static token (every scope), or None.
        jwt_secret / jwt_public_key / jwks_url: the JWT key source (one at most).
        leeway: seconds of clock skew allowed for ``exp`` and ``nbf``.
        audience: the ``aud`` values accepted (a token must name one); None: tokens
            must carry no ``aud``.
        issuer: the ``iss`` a token must carry, or None.
        algorithms: the signature algorithms accepted; None: HS256 with a secret,
            RS256 with a public key or JWKS.
        jwks_lifespan, jwks_cooldown: how long a fetched JWKS is used before it is fetched
            again, and the least time between two fetches for unknown keys (seconds).

    Raises:
        ValueError: more than one JWT key source.
        ImportError: a JWT key was given but PyJWT is not installed (``pip install
            'evkit[auth]'``).
    """

    def __init__(
        self,
        token: str | None = None,
        jwt_secret: str | None = None,
        jwt_public_key: str | None = None,
        leeway: float = 0.0,
        *,
        jwks_url: str | None = None,
        audience: Sequence[str] | None = None,
        issuer: str | None = None,
        algorithms: Sequence[str] | None = None,
        jwks_lifespan: float = 300.0,
        jwks_cooldown: float = 30.0,
    ) -> None:
        given = [k for k in (jwt_secret, jwt_public_key, jwks_url) if k]
        if len(given) > 1:
            raise ValueError("give one of jwt_secret (HS256), jwt_public_key or a JWKS URL")
        self.token = token or None
        self.leeway = leeway
        self.audience = list(audience) if audience else None
        self.issuer = issuer or None
        self._key: Any = jwt_secret or jwt_public_key
        default = "HS256" if jwt_secret else "RS256"
        self.algorithms = list(algorithms) if algorithms else [default]
        self.keys: SigningKeys | None = None
        if jwks_url:
            self.keys = SigningKeys(jwks_url, lifespan=jwks_lifespan, cooldown=jwks_cooldown)
        elif self._key:
            import jwt  # noqa: F401 - fail at configuration time, not at the first client

    @property
    def enabled(self) -> bool:
        """Whether any credential is required."""
        return bool(self.token or self._key or self.keys)

    async def ready(self, credential: str | None) -> None:
        """Fetch what checking ``credential`` needs (the JWKS, when its key is not known).

        Await it before :meth:`authenticate`; it returns at once unless a fetch is due,
        which runs in a worker thread. Never raises: what is wrong is said by
        :meth:`authenticate`.
        """
        keys = self.keys
        if keys is None or not credential or self._is_static(credential):
            return
        kid = _key_id(credential)
        if kid is not None and not keys.fresh(kid):
            await asyncio.to_thread(keys.refresh, kid)

    def _is_static(self, credential: str) -> bool:
        return self.token is not None and hmac.compare_digest(
            credential.encode(), self.token.encode()
        )

    def authenticate(self, credential: str | None) -> Principal:
        """The principal a credential stands for. No I/O (see :meth:`ready`).

        Raises:
            ProtocolError: ``unauthorized``: missing, malformed, expired, not yet valid,
                wrongly signed, for another audience or issuer, or carrying invalid
                claims (the message says which).
        """
        if not self.enabled:
            return ANONYMOUS
        if not credential:
            raise _unauthorized("credentials required: send 'Authorization: Bearer <token>'")
        if self._is_static(credential):
            return Principal("token", frozenset(SCOPES))
        key = self._verifying_key(credential)
        claims = self._decode(credential, key)
        return Principal(claims.get("sub"), _scopes(claims), _patterns(claims))

    def _verifying_key(self, credential: str) -> Any:
        if self.keys is None:
            if not self._key:
                raise _unauthorized("invalid token")
            return self._key
        kid = _key_id(credential)
        if kid is None:
            raise _unauthorized("malformed token: no 'kid' header to pick a key of the JWKS")
        found = self.keys.key(kid)
        if found is None:
            problem = self.keys.last_error
            reason = f"cannot fetch it: {problem}" if problem else "not in the key set"
            raise _unauthorized(f"token signed with unknown key {kid!r} ({reason})")
        return found.key

    def _decode(self, credential: str, key: Any) -> dict[str, Any]:
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                credential,
                key,
                algorithms=self.algorithms,
                leeway=self.leeway,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("token not yet valid (nbf)") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"token lacks a required claim: {exc.claim}") from None
        except jwt.InvalidAudienceError:
            if self.audience is None:
                raise _unauthorized(
                    "token names an audience (aud) and this server accepts none: set jwt_audience"
                ) from None
            raise _unauthorized(f"token audience is not one of {self.audience}") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized(f"token issuer is not {self.issuer!r}") from None
        except jwt.InvalidAlgorithmError:
            raise _unauthorized(
                f"token algorithm is not accepted (accepted: {', '.join(self.algorithms)})"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"malformed token: {exc}") from None
        return claims


def _key_id(credential: str) -> str | None:
    """The ``kid`` of a JWT's header, or None (not a JWT, or no ``kid``)."""
    import jwt

    try:
        kid = jwt.get_unverified_header(credential).get("kid")
    except jwt.InvalidTokenError:
        return None
    return kid if isinstance(kid, str) else None


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", "subscribe")
    values = raw.split() if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _unauthorized("claim 'scope' must be a space-separated string or a list")
    unknown = sorted(set(values) - set(SCOPES))
    if unknown:
        raise _unauthorized(f"claim 'scope' holds unknown scopes {unknown}; known: {SCOPES}")
    return frozenset(values)


def _patterns(claims: dict[str, Any]) -> tuple[str, ...] | None:
    raw = claims.get("patterns")
    if raw is None:
        return None
    try:
        return tuple(validate_patterns(raw))
    except ProtocolError as exc:
        raise _unauthorized(f"claim 'patterns' is invalid: {exc.error}") from None
