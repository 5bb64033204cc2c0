"""Who a connection is and what it may do: static tokens and JWTs.

:class:`Authenticator` turns a credential (a bearer token) into a :class:`Principal`
or raises :class:`~evkit.exceptions.ProtocolError` with code ``unauthorized``. A static
token grants every scope; a JWT (PyJWT; HS256 with a shared secret or RS256 with a
public key; ``exp`` and ``nbf`` checked) grants the scopes in its ``scope`` claim (a
space-separated string or a list; ``subscribe`` when absent) and limits subscriptions
to the globs in its ``patterns`` claim (any pattern when absent).

Pure apart from PyJWT, which is imported only when a JWT key is configured.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from evkit.exceptions import ProtocolError
from evkit.patterns import Matcher, compile_glob, validate_patterns

__all__ = ["ANONYMOUS", "SCOPES", "Authenticator", "Principal"]

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


class Authenticator:
    """Checks bearer credentials against a static token and/or a JWT key.

    Raises:
        ValueError: both a JWT secret and a public key were given.
        ImportError: a JWT key was given but PyJWT is not installed (``pip install
            'evkit[auth]'``).
    """

    def __init__(
        self,
        token: str | None = None,
        jwt_secret: str | None = None,
        jwt_public_key: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        if jwt_secret and jwt_public_key:
            raise ValueError("give jwt_secret (HS256) or jwt_public_key (RS256), not both")
        self.token = token or None
        self.leeway = leeway
        self._key: Any = jwt_secret or jwt_public_key
        self._algorithm = "HS256" if jwt_secret else "RS256"
        if self._key:
            import jwt  # noqa: F401 - fail at configuration time, not at the first client

    @property
    def enabled(self) -> bool:
        """Whether any credential is required."""
        return bool(self.token or self._key)

    def authenticate(self, credential: str | None) -> Principal:
        """The principal a credential stands for.

        Raises:
            ProtocolError: ``unauthorized``: missing, malformed, expired, not yet valid,
                wrongly signed, or carrying invalid claims (the message says which).
        """
        if not self.enabled:
            return ANONYMOUS
        if not credential:
            raise _unauthorized("credentials required: send 'Authorization: Bearer <token>'")
        if self.token is not None and hmac.compare_digest(credential.encode(), self.token.encode()):
            return Principal("token", frozenset(SCOPES))
        if not self._key:
            raise _unauthorized("invalid token")
        import jwt

        try:
            claims = jwt.decode(
                credential,
                self._key,
                algorithms=[self._algorithm],
                leeway=self.leeway,
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
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"malformed token: {exc}") from None
        return Principal(claims.get("sub"), _scopes(claims), _patterns(claims))


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
