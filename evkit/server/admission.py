"""Who may do what, in one place: hosts, origins, credentials, scopes, limits.

Every refusal of the broadcaster is decided here, worded once, counted once (in
``rejected``, by reason) and mapped to its HTTP status once:

- any HTTP request: a server bound to loopback answers loopback ``Host`` names only
  (and ``allowed_hosts``): the DNS-rebinding defence;
- browser origins (the handshake, ``POST`` and its CORS preflight): the server's own
  origin, loopback origins on any port for a server bound to loopback
  (``loopback_origins``), and ``allowed_origins``;
- the WebSocket handshake: origin, per-address limits, connect parameters,
  credentials (``Authorization: Bearer`` or ``?token=``), the ``subscribe`` scope and
  the JWT's patterns, and capacity (``max_connections``, and ``max_authenticating`` for
  connections whose credentials are still to come as a first message);
- ``/metrics`` and the full ``/healthz``: the ``metrics`` scope;
- ``POST /events`` and ``publish``: ``allow_publish`` and the ``publish`` scope;
- ``subscribe``: the ``subscribe`` scope and the allowed patterns.

Pure policy over plain values: no sockets, no websockets objects. The one wait is
:meth:`Admission.ready`, which lets the authenticator fetch a JWKS document before a
credential is checked.
"""

from __future__ import annotations

import fnmatch
import http
import ipaddress
import logging
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from evkit.auth import ANONYMOUS, Authenticator, Principal
from evkit.exceptions import ProtocolError
from evkit.limits import AddressLimits
from evkit.protocol import ConnectRequest, credential, parse_connect
from evkit.server.counters import Counters
from evkit.server.settings import ServerSettings

__all__ = ["Admission", "Admitted", "Refusal", "is_loopback"]

logger = logging.getLogger("evkit.server")


@dataclass(frozen=True)
class Admitted:
    """A handshake let in: what it asked for, and who it is (None: to authenticate first)."""

    request: ConnectRequest
    principal: Principal | None


@dataclass(frozen=True)
class Refusal:
    """An HTTP answer refusing a request: status, and the JSON body (``error``, ``code``)."""

    status: http.HTTPStatus
    body: dict[str, Any]


# One HTTP status per error code.
_STATUS = {
    "unauthorized": http.HTTPStatus.UNAUTHORIZED,
    "forbidden": http.HTTPStatus.FORBIDDEN,
    "rate_limited": http.HTTPStatus.TOO_MANY_REQUESTS,
}


class Admission:
    """The broadcaster's policy; see the module docstring.

    It also accounts for connections (``handling``: every connection past the
    handshake; ``authenticating``: those still to send credentials), which the limits
    are checked against.
    """

    def __init__(self, settings: ServerSettings, counters: Counters) -> None:
        self.settings = settings
        self.auth = Authenticator(
            settings.token,
            settings.jwt_secret,
            settings.jwt_public_key,
            settings.jwt_leeway,
            jwks_url=settings.jwt_jwks_url,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            algorithms=settings.jwt_algorithms,
        )
        self._counters = counters
        self._loopback = is_loopback(settings.host)
        self._addresses = AddressLimits(
            settings.max_connections_per_ip, settings.connections_per_second_per_ip
        )
        self.handling = 0
        self.authenticating = 0

    def refuse(self, status: http.HTTPStatus, reason: str, error: str, code: str | None) -> Refusal:
        """A refusal, counted under ``reason``."""
        self._counters.reject(reason)
        body: dict[str, Any] = {"error": error}
        if code is not None:
            body["code"] = code
        return Refusal(status, body)

    def refuse_error(self, exc: ProtocolError) -> Refusal:
        """The refusal of a request whose parameters or credentials were rejected."""
        reason = exc.code if exc.code in ("unauthorized", "forbidden") else "bad_request"
        status = _STATUS.get(exc.code, http.HTTPStatus.BAD_REQUEST)
        return self.refuse(status, reason, exc.error, exc.code)

    # -- any request --------------------------------------------------------------------------

    def check_host(self, host: str | None) -> Refusal | None:
        """Whether a request's ``Host`` names this server (DNS rebinding defence).

        A page of ``attacker.example`` whose name was rebound to 127.0.0.1 sends
        ``Host: attacker.example:PORT`` and an Origin to match: on a server bound to
        loopback only loopback names (and ``allowed_hosts``) are answered.
        """
        allowed = self.settings.allowed_hosts
        if allowed is None and not self._loopback:
            return None
        name = host_name(host) if host is not None else None
        if name is not None and (
            is_loopback_name(name)
            or (allowed is not None and any(fnmatch.fnmatchcase(name, p) for p in allowed))
        ):
            return None
        return self.refuse(
            http.HTTPStatus.FORBIDDEN,
            "host",
            f"host {host!r} is not allowed: this server answers loopback names "
            "(localhost, 127.0.0.1, [::1]) only; list other names in allowed_hosts",
            "forbidden",
        )

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Whether a browser page of ``origin`` may connect or post (None: no Origin)."""
        settings = self.settings
        if origin is None:
            return settings.allow_missing_origin
        scheme = "https" if settings.tls else "http"
        if host is not None and origin == f"{scheme}://{host}":
            return True  # the page this server itself served (the Host was checked)
        if settings.loopback_origins and self._loopback and _is_loopback_origin(origin):
            return True
        patterns = settings.allowed_origins or ()
        return any(fnmatch.fnmatchcase(origin, p) for p in patterns)

    def check_origin(self, origin: str | None, host: str | None) -> Refusal | None:
        """Whether a browser page of ``origin`` may connect or post; the refusal says
        which setting would let it in."""
        if self.origin_allowed(origin, host):
            return None
        if origin is None:
            error = (
                "requests without an Origin header are not allowed "
                "(allow_missing_origin, EVKIT_ALLOW_MISSING_ORIGIN=true)"
            )
        else:
            what = " (a page opened from a file)" if origin == "null" else ""
            error = (
                f"origin {origin!r}{what} is not allowed: add it to allowed_origins "
                f"(evkit serve --allowed-origins {shlex.quote(origin)}, or "
                f"EVKIT_ALLOWED_ORIGINS={shlex.quote(origin)})"
            )
        return self.refuse(http.HTTPStatus.FORBIDDEN, "origin", error, "forbidden")

    async def ready(self, headers: Mapping[str, str], query: str) -> None:
        """Fetch what checking the request's credential needs (a JWKS); never raises."""
        await self.auth.ready(credential(headers, query))

    def check_metrics(self, headers: Mapping[str, str], query: str) -> Refusal | None:
        """Whether a request may read the counters (``/metrics``, the full ``/healthz``).

        With auth on it needs a credential with the ``metrics`` scope, unless
        ``public_metrics``. Not counted: a bare ``/healthz`` is a liveness probe.
        """
        if not self.auth.enabled or self.settings.public_metrics:
            return None
        try:
            principal = self.auth.authenticate(credential(headers, query))
        except ProtocolError as exc:
            return Refusal(http.HTTPStatus.UNAUTHORIZED, {"error": exc.error, "code": exc.code})
        if not principal.may("metrics"):
            return Refusal(
                http.HTTPStatus.FORBIDDEN,
                {"error": "this token does not grant the metrics scope", "code": "forbidden"},
            )
        return None

    # -- the handshake --------------------------------------------------------------------------

    def admit(
        self,
        address: str,
        headers: Mapping[str, str],
        query: str,
        check_since: Callable[[str], Any],
    ) -> Admitted | Refusal:
        """Decide at the handshake whether a WebSocket client may connect."""
        refusal = self.check_origin(headers.get("Origin"), headers.get("Host"))
        if refusal is not None:
            return refusal
        limited = self._addresses.admit(address)
        if limited is not None:
            return self.refuse(
                http.HTTPStatus.TOO_MANY_REQUESTS,
                limited,
                f"too many connections from {address} ({limited})",
                "rate_limited",
            )
        try:
            request = parse_connect(query, headers, self.settings.max_subscriptions, check_since)
            principal = None
            if not self.auth.enabled:
                principal = ANONYMOUS
            else:
                token = credential(headers, query)
                if token:
                    principal = self.auth.authenticate(token)
            if principal is not None:
                request = self.authorize(request, principal)
        except ProtocolError as exc:
            return self.refuse_error(exc)
        full = self._capacity(waiting_for_auth=principal is None)
        if full is not None:
            return self.refuse(http.HTTPStatus.SERVICE_UNAVAILABLE, full[0], full[1], None)
        return Admitted(request, principal)

    def _capacity(self, waiting_for_auth: bool) -> tuple[str, str] | None:
        """Why one more connection cannot be taken (reason, sentence), or None."""
        settings = self.settings
        if waiting_for_auth:
            if self.authenticating >= settings.max_authenticating:
                return "max_authenticating", (
                    f"{self.authenticating} connections are already waiting to authenticate "
                    f"(the limit is {settings.max_authenticating}); send credentials in the "
                    "handshake (Authorization: Bearer ...) or retry later"
                )
        elif self.handling - self.authenticating >= settings.max_connections:
            return "max_connections", self.full_sentence()
        return None

    def full_sentence(self) -> str:
        return f"the server holds its maximum of {self.settings.max_connections} clients"

    def over_capacity(self) -> bool:
        """Whether more clients are authenticated than ``max_connections`` allows."""
        return self.handling - self.authenticating > self.settings.max_connections

    def authorize(self, request: ConnectRequest, principal: Principal) -> ConnectRequest:
        """The connect request as this principal may have it.

        Raises:
            ProtocolError: ``forbidden`` (no subscribe scope, or patterns it may not hold).
        """
        wants_events = (
            bool(request.patterns) or not request.explicit_patterns or request.since is not None
        )
        if wants_events and not principal.may("subscribe"):
            # A publish-only client connects with ?eventTypes= (nothing) and is let in.
            raise ProtocolError(
                "forbidden",
                "this token does not grant the subscribe scope (a publisher may connect "
                "with ?eventTypes= to receive nothing)",
            )
        patterns = request.patterns
        if principal.patterns is not None and not request.explicit_patterns:
            patterns = list(principal.patterns)  # a restricted client starts with what it may see
        self.check_patterns(principal, patterns)
        return replace(request, patterns=patterns)

    def opened(self, address: str, waiting_for_auth: bool) -> None:
        self._addresses.opened(address)
        self.handling += 1
        self.authenticating += waiting_for_auth

    def authenticated(self) -> None:
        self.authenticating -= 1

    def closed(self, address: str, waiting_for_auth: bool) -> None:
        self._addresses.closed(address)
        self.handling -= 1
        self.authenticating -= waiting_for_auth

    # -- messages -----------------------------------------------------------------------------

    def check_subscribe(self, principal: Principal, patterns: list[str]) -> None:
        """Raise ``forbidden`` unless ``principal`` may subscribe to ``patterns``."""
        if not principal.may("subscribe"):
            raise ProtocolError(
                "forbidden",
                "this token does not grant the subscribe scope: it may not subscribe, change "
                "its filter or replay history",
            )
        self.check_patterns(principal, patterns)

    @staticmethod
    def check_patterns(principal: Principal, patterns: list[str]) -> None:
        forbidden = principal.forbidden(patterns)
        if forbidden:
            raise ProtocolError(
                "forbidden",
                f"not allowed to subscribe to {forbidden}; this token allows "
                f"{list(principal.patterns or ())}",
                {"patterns": forbidden},
            )

    def check_publish(self, principal: Principal) -> None:
        """Raise ``forbidden`` unless ``principal`` may publish on this server."""
        if not self.settings.allow_publish:
            raise ProtocolError("forbidden", "publishing is disabled on this server")
        if not principal.may("publish"):
            raise ProtocolError("forbidden", "this token does not grant the publish scope")

    def check_post(self, headers: Mapping[str, str], query: str) -> Refusal | None:
        """Whether a ``POST /events`` may publish: host, origin, credentials, scope."""
        host = headers.get("host")
        refusal = self.check_host(host) or self.check_origin(headers.get("origin"), host)
        if refusal is not None:
            return refusal
        try:
            self.check_publish(self.auth.authenticate(credential(headers, query)))
        except ProtocolError as exc:
            return self.refuse_error(exc)
        return None


def host_name(host: str) -> str | None:
    """The name of a ``Host`` header without its port (brackets kept off IPv6), or None."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:3000
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
        if rest and rest == port:
            return None
    else:
        name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def is_loopback_name(name: str) -> bool:
    """Whether a host name can only mean this machine (a rebinding page cannot claim it)."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_loopback_origin(origin: str) -> bool:
    """Whether ``origin`` is a page of this machine: http(s) on a loopback name, any port."""
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    name = parts.hostname
    return parts.scheme in ("http", "https") and name is not None and is_loopback_name(name)


def is_loopback(host: str) -> bool:
    """Whether a bind address serves this machine only."""
    return host == "localhost" or is_loopback_name(host)
