"""The broadcaster's settings: one frozen dataclass, validated at construction.

Equal settings mean the same server: :func:`evkit.serve` gives a running server back
when it is asked for again with equal settings (a re-run notebook cell).

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    """Everything that configures a broadcaster; equal settings mean the same server.

    Attributes:
        host: interface to bind (loopback by default).
        port: TCP port; 0 picks a free one.
        max_message_size: largest client frame accepted, in bytes (closed with 1009 past it).
        max_subscriptions: most patterns one client may hold.
        queue_size: most events waiting between ``emit()`` and the loop; past it they are
            dropped and counted.
        history_size: events kept in memory for replay (``since``).
        history_bytes: most bytes of encoded events kept in memory for replay: past it
            (or past ``history_size``) the oldest are dropped.
        store: where history lives: ``memory://`` (a ring of ``history_size``),
            ``sqlite:///path/events.db`` (durable) or ``redis://host:6379/0`` (a Redis
            stream shared by several broadcasters; see :func:`evkit.store.open_store`).
        stream: the Redis stream key (``store="redis://..."`` only).
        maxlen: events the Redis stream keeps, trimmed approximately (Redis only).
        client_buffer_limit: bytes a client may have waiting to be sent before it is
            disconnected as a slow consumer (1013).
        compression: permessage-deflate; off by default (it costs CPU per client).
        ping_interval: seconds between keep-alive pings (None: never).
        token: a static bearer token every client must present (all scopes).
        jwt_secret / jwt_public_key: accept JWTs signed HS256 / RS256 (``exp`` and
            ``nbf`` checked; claims ``scope`` and ``patterns``).
        auth_timeout: seconds a client without credentials in the handshake has to send
            ``{"type": "auth"}`` as its first message before it is closed with 1008.
        allowed_origins: globs of the browser origins allowed to connect (``("*",)``
            for any); None allows the server's own origin only. Requests without an
            Origin header (non-browser clients) are allowed when
            ``allow_missing_origin``.
        allowed_hosts: globs of the host names (the ``Host`` header, port left out) the
            server answers to, besides loopback names. None: a server bound to loopback
            answers loopback names only (``localhost``, ``*.localhost``, ``127.0.0.1``,
            ``[::1]``), which defeats DNS rebinding; one bound elsewhere answers any.
            Behind a proxy that passes its public name (``Host: events.example.com``)
            to a server on loopback, list that name.
        allow_publish: whether clients may publish (with auth on: those with the
            ``publish`` scope).
        max_connections, max_connections_per_ip, connections_per_second_per_ip: limits
            on clients (refused at the handshake with 503 / 429).
        max_authenticating: most connections waiting to send their credentials as a first
            message (refused with 503 past it); they do not count towards
            ``max_connections`` until they have authenticated.
        messages_per_second, message_burst: a token bucket per client; excess messages
            get ``rate_limited`` and change nothing; after ``rate_limit_strikes`` of them
            the client is closed with 1008.
        redact_keys: payload keys (any depth; case and separators ignored; ``*`` globs)
            whose values are replaced before an event leaves the process or reaches the
            store, besides the default patterns (see :mod:`evkit.redaction`).
        redact_defaults: whether the default patterns apply (password, token, secret,
            api key, auth, cookie, session, credential, private key...).
        max_post_size: largest ``POST /events`` body, in bytes.
        public_metrics: with auth on, ``/metrics`` and the full ``/healthz`` need a
            credential with the ``metrics`` scope (``/healthz`` answers only its status
            without one); True opens them to anyone who can reach the port.
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
    auth_timeout: float = 5.0
    allowed_origins: tuple[str, ...] | None = None
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

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer from 0 to 65535, got {self.port!r}")
        for name in ("allowed_origins", "allowed_hosts", "redact_keys"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        for name in (
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
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
