"""The broadcaster's settings: one frozen dataclass, validated at construction.

Equal settings mean the same server: :func:`evkit.serve` gives a running server back
when it is asked for again with equal settings (a re-run notebook cell). The
``Attributes`` section of :class:`ServerSettings` is also the help of ``evkit serve``'s
flags (:mod:`evkit.config` reads it): one line of it per field, or per group of fields.

Pure: no I/O (certificate and key files are read when the server starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SECRET_SETTINGS", "ServerSettings", "check_setting"]

#: Settings whose values are credentials: never shown (``--print-config`` masks them).
SECRET_SETTINGS = frozenset({"token", "jwt_secret"})

_POSITIVE_INTS = frozenset(
    {
        "max_message_size",
        "max_subscriptions",
        "queue_size",
        "history_size",
        "history_bytes",
        "maxlen",
        "client_buffer_limit",
        "max_connections",
        "max_authenticating",
        "max_connections_per_ip",
        "message_burst",
        "rate_limit_strikes",
        "max_post_size",
    }
)
_POSITIVE_NUMBERS = frozenset(
    {"auth_timeout", "connections_per_second_per_ip", "messages_per_second", "ping_interval"}
)
_LISTS = frozenset(
    {"allowed_origins", "allowed_hosts", "redact_keys", "jwt_audience", "jwt_algorithms"}
)
#: The algorithms a JWT may be signed with, by kind of key.
SYMMETRIC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def _positive(value: Any, nullable: bool) -> bool:
    if value is None:
        return nullable
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def check_setting(name: str, value: Any) -> Any:
    """``value`` as setting ``name`` holds it (a list made a tuple), or why it cannot be.

    Checks one value alone; :class:`ServerSettings` also checks how values combine.

    Raises:
        ValueError: out of range or of the wrong type; the message names the setting.
    """
    if name in _LISTS:
        if isinstance(value, str):
            value = (value,)
        if value is None:
            return None
        value = tuple(value)
        if not all(isinstance(item, str) for item in value):
            raise ValueError(f"{name} must be a list of strings, got {value!r}")
        return value
    if name == "port" and (
        not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535
    ):
        raise ValueError(f"port must be an integer from 0 to 65535, got {value!r}")
    if name in _POSITIVE_INTS and (
        not isinstance(value, int) or isinstance(value, bool) or value < 1
    ):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if name in _POSITIVE_NUMBERS and not _positive(value, nullable=name == "ping_interval"):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if name == "jwt_leeway" and (
        not isinstance(value, int | float) or isinstance(value, bool) or value < 0
    ):
        raise ValueError(f"jwt_leeway must be a number of seconds >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class ServerSettings:
    """Everything that configures a broadcaster; equal settings mean the same server.

    Attributes:
        host: interface to bind (loopback by default).
        port: TCP port; 0 picks a free one.
        max_message_size: largest client frame accepted, in bytes (closed with 1009 past it).
        max_subscriptions: most patterns one client may hold.
        queue_size: most events waiting between emit() and the loop; past it they are
            dropped and counted.
        history_size: events kept in memory for replay (since).
        history_bytes: most bytes of encoded events kept in memory for replay: past it
            (or past history_size) the oldest are dropped.
        store: where history lives: memory:// (a ring of history_size),
            sqlite:///path/events.db (durable) or redis://host:6379/0 (a Redis stream
            shared by several broadcasters).
        stream: the Redis stream key (store redis:// only).
        maxlen: events the Redis stream keeps, trimmed approximately (Redis only).
        client_buffer_limit: bytes a client may have waiting to be sent before it is
            disconnected as a slow consumer (1013).
        compression: permessage-deflate; off by default (it costs CPU per client).
        ping_interval: seconds between keep-alive pings (none: never).
        token: a static bearer token every client must present (all scopes).
        jwt_secret / jwt_public_key: accept JWTs signed with this shared secret (HS256)
            / this PEM public key (RS256); exp and nbf checked; claims scope and patterns.
        jwt_jwks_url: accept JWTs signed by the keys of this JWKS document (an identity
            provider's jwks_uri), fetched when a token names a key not yet known and
            cached (RS256 unless jwt_algorithms says otherwise).
        jwt_audience: the audiences (aud) a JWT must name one of; required when the
            identity provider puts aud in its tokens.
        jwt_issuer: the issuer (iss) a JWT must carry.
        jwt_algorithms: the signature algorithms accepted (default: HS256 with a secret,
            RS256 with a public key or a JWKS URL); none is never accepted.
        jwt_leeway: seconds of clock skew allowed when checking exp and nbf.
        auth_timeout: seconds a client without credentials in the handshake has to send
            an auth message as its first message before it is closed with 1008.
        allowed_origins: globs of the browser origins allowed to connect and post (* for
            any; null for a page opened from a file), besides the server's own origin.
        loopback_origins: a server bound to loopback also lets in pages of loopback
            origins on any port (http://localhost:*, http://127.0.0.1:*, http://[::1]:*).
        allow_missing_origin: let in requests without an Origin header (non-browser
            clients).
        allowed_hosts: globs of the host names (the Host header, port left out) the
            server answers to, besides loopback names. Unset: a server bound to loopback
            answers loopback names only, which defeats DNS rebinding; one bound
            elsewhere answers any. Behind a proxy that passes its public name to a
            server on loopback, list that name.
        allow_publish: whether clients may publish (with auth on: those with the
            publish scope).
        max_connections, max_connections_per_ip, connections_per_second_per_ip: limits
            on clients (refused at the handshake with 503 / 429).
        max_authenticating: most connections waiting to send their credentials as a first
            message (refused with 503 past it); they do not count towards
            max_connections until they have authenticated.
        messages_per_second, message_burst: a token bucket per client; excess messages
            get rate_limited and change nothing; after rate_limit_strikes of them the
            client is closed with 1008.
        rate_limit_strikes: rate_limited messages a client may send before it is closed.
        redact_keys: payload keys (any depth; case and separators ignored; * globs)
            whose values are replaced before an event leaves the process or reaches the
            store, besides the default patterns (see evkit.redaction).
        redact_defaults: whether the default redaction patterns apply (password, token,
            secret, api key, auth, cookie, session, credential, private key...).
        max_post_size: largest POST body, in bytes.
        public_metrics: with auth on, /metrics and the full /healthz need a credential
            with the metrics scope (/healthz answers only its status without one); true
            opens them to anyone who can reach the port.
        ssl_certfile: PEM certificate chain: serve wss:// and https:// on the port.
        ssl_keyfile: PEM private key of ssl_certfile (when not in the same file).
        ssl_ca_certs: PEM CA certificates: clients must present a certificate they
            signed (mutual TLS).
    """

    host: str = "127.0.0.1"
    port: int = 3000
    max_message_size: int = 64 * 1024
    max_subscriptions: int = 128
    queue_size: int = 100_000
    history_size: int = 10_000
    history_bytes: int = 16 * 1024 * 1024
    client_buffer_limit: int = 1024 * 1024
    compression: bool = False
    ping_interval: float | None = 20.0
    store: str = "memory://"
    stream: str = "evkit:events"
    maxlen: int = 1_000_000
    token: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: tuple[str, ...] | None = None
    jwt_issuer: str | None = None
    jwt_algorithms: tuple[str, ...] | None = None
    jwt_leeway: float = 0.0
    auth_timeout: float = 5.0
    allowed_origins: tuple[str, ...] | None = None
    loopback_origins: bool = True
    allow_missing_origin: bool = True
    allowed_hosts: tuple[str, ...] | None = None
    allow_publish: bool = True
    max_connections: int = 10_000
    max_authenticating: int = 100
    max_connections_per_ip: int = 1_000
    connections_per_second_per_ip: float = 100.0
    messages_per_second: float = 200.0
    message_burst: int = 400
    rate_limit_strikes: int = 100
    redact_keys: tuple[str, ...] = ()
    redact_defaults: bool = True
    max_post_size: int = 1024 * 1024
    public_metrics: bool = False
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_ca_certs: str | None = None

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = check_setting(name, getattr(self, name))
            if value is not getattr(self, name):
                object.__setattr__(self, name, value)
        if self.redact_keys is None:
            raise ValueError("redact_keys must be a list of strings (empty for none)")
        self._check_jwt()
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile (the certificate it belongs to)")
        if self.ssl_ca_certs and not self.ssl_certfile:
            raise ValueError(
                "ssl_ca_certs (client certificates) needs ssl_certfile: mutual TLS is TLS first"
            )

    @property
    def tls(self) -> bool:
        """Whether the port serves TLS (wss://, https://)."""
        return bool(self.ssl_certfile)

    def jwt_keys(self) -> list[str]:
        """The names of the JWT key settings given (at most one is allowed)."""
        return [
            name for name in ("jwt_secret", "jwt_public_key", "jwt_jwks_url") if getattr(self, name)
        ]

    def _check_jwt(self) -> None:
        keys = self.jwt_keys()
        if len(keys) > 1:
            raise ValueError(f"give one of jwt_secret, jwt_public_key, jwt_jwks_url; got {keys}")
        for name in ("jwt_audience", "jwt_issuer", "jwt_algorithms"):
            if getattr(self, name) and not keys:
                raise ValueError(
                    f"{name} has no effect without a JWT key: set jwt_secret, jwt_public_key "
                    "or jwt_jwks_url"
                )
        url = self.jwt_jwks_url
        if url and not url.startswith(("https://", "http://")):
            raise ValueError(f"jwt_jwks_url must be an https:// URL, got {url!r}")
        if self.jwt_algorithms is not None:
            allowed = SYMMETRIC_ALGORITHMS if self.jwt_secret else ASYMMETRIC_ALGORITHMS
            wrong = [a for a in self.jwt_algorithms if a not in allowed]
            if wrong or not self.jwt_algorithms:
                kind = "a shared secret" if self.jwt_secret else "public keys"
                raise ValueError(
                    f"jwt_algorithms {list(wrong or self.jwt_algorithms)} cannot be used "
                    f"with {kind}; choose from {', '.join(allowed)}"
                )
