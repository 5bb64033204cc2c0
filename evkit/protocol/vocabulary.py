"""The wire protocol's names: message types both ways, error, close and gap codes.

Every string the protocol puts on the wire as a message type, and every close code
evkit uses, is named here once; the rest of evkit speaks through these names (the
browser page, in JavaScript, is the one other place that spells them). See
``docs/protocol.md`` for what each message carries.

Pure: constants only.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AUTH",
    "BATCH",
    "CLIENT_TYPES",
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_REASONS",
    "CLOSE_SERVER_ERROR",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_TRY_AGAIN_LATER",
    "CONNECTED",
    "ERROR",
    "ERROR_CODES",
    "EVENTS_PATH",
    "GAP",
    "GAP_REASONS",
    "PING",
    "PONG",
    "PUBLISH",
    "REPLAYED",
    "REPLY_TYPES",
    "SERVER_TYPES",
    "SUBSCRIBE",
    "SUBSCRIBED",
    "UNSUBSCRIBE",
    "UNSUBSCRIBED",
]

#: Where the event stream is served; the HTTP routes share the port.
EVENTS_PATH: Final = "/ws/events"

# -- server -> client ---------------------------------------------------------------------

CONNECTED: Final = "websocket.connected"
SUBSCRIBED: Final = "websocket.subscribed"
UNSUBSCRIBED: Final = "websocket.unsubscribed"
ERROR: Final = "websocket.error"
REPLAYED: Final = "websocket.replayed"
GAP: Final = "websocket.gap"
BATCH: Final = "websocket.batch"
PONG: Final = "pong"

SERVER_TYPES: Final = (CONNECTED, SUBSCRIBED, UNSUBSCRIBED, ERROR, REPLAYED, GAP, BATCH, PONG)
#: The server messages that answer one client message (the rest come with the stream).
REPLY_TYPES: Final = (SUBSCRIBED, UNSUBSCRIBED, ERROR)

# -- client -> server ---------------------------------------------------------------------

SUBSCRIBE: Final = "subscribe"
UNSUBSCRIBE: Final = "unsubscribe"
PING: Final = "ping"
PUBLISH: Final = "publish"
AUTH: Final = "auth"

CLIENT_TYPES: Final = (SUBSCRIBE, UNSUBSCRIBE, PING, PUBLISH, AUTH)

#: Every ``code`` a ``websocket.error`` (or a refused handshake's JSON body) carries.
ERROR_CODES: Final = (
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "invalid_pattern",
    "too_many_subscriptions",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "invalid_event",
)

#: Why a replay cannot be complete (``websocket.gap`` ``reason``).
GAP_REASONS: Final = ("trimmed", "epoch", "lost", "unknown_position", "unavailable")

# -- close codes --------------------------------------------------------------------------

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # the server is shutting down
CLOSE_ABNORMAL: Final = 1006  # no close frame: the peer vanished
CLOSE_POLICY: Final = 1008  # authentication failed, or rate limited past the strikes
CLOSE_MESSAGE_TOO_BIG: Final = 1009  # a frame over max_message_size
CLOSE_SERVER_ERROR: Final = 1011
CLOSE_SERVICE_RESTART: Final = 1012  # disconnect(), or the shared stream was lost
CLOSE_TRY_AGAIN_LATER: Final = 1013  # slow consumer, or the server filled up

#: How a close code is counted in the disconnect statistics.
CLOSE_REASONS: Final = {
    CLOSE_NORMAL: "normal",
    CLOSE_GOING_AWAY: "going_away",
    CLOSE_ABNORMAL: "abnormal",
    CLOSE_POLICY: "policy",
    CLOSE_MESSAGE_TOO_BIG: "message_too_big",
    CLOSE_SERVER_ERROR: "server_error",
    CLOSE_SERVICE_RESTART: "service_restart",
    CLOSE_TRY_AGAIN_LATER: "slow_consumer",
}
