"""The wire protocol, both directions: pure, no I/O.

- :mod:`~evkit.protocol.vocabulary`: message types, error, gap and close codes, the path.
- :mod:`~evkit.protocol.client_messages`: what clients send, decoded and validated.
- :mod:`~evkit.protocol.server_messages`: what clients read, refused handshakes.
- :mod:`~evkit.protocol.connect`: connect parameters (URL and headers), both ways.
- :mod:`~evkit.protocol.encoding`: messages, event frames, batches, client messages,
  the server's text frames.

The server, the clients, the forwarder and the command line all speak through this
package; no message type is spelt anywhere else in evkit. ``docs/protocol.md`` is the
contract this implements.
"""

from __future__ import annotations

from evkit.protocol.client_messages import (
    MAX_CORRELATION_ID_LENGTH,
    MAX_EVENT_TYPE_LENGTH,
    MAX_PAYLOAD_DEPTH,
    UNSET,
    Auth,
    BatchOptions,
    ClientMessage,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    decode_client_message,
    validate_batch,
    validate_correlation_id,
    validate_event,
    validate_event_type,
    validate_timestamp,
)
from evkit.protocol.connect import (
    ConnectRequest,
    bearer_token,
    connect_query,
    credential,
    parse_connect,
    with_query,
)
from evkit.protocol.encoding import (
    PUBLISH_ENVELOPE,
    auth_message,
    batch_message,
    encode,
    encode_event,
    encode_message,
    error_message,
    event_body,
    now_ms,
    ping_message,
    publish_message,
    subscribe_message,
    text_frame,
    unsubscribe_message,
)
from evkit.protocol.server_messages import Refusal, decode_server_message, error_from, refusal
from evkit.protocol.vocabulary import (
    AUTH,
    BATCH,
    CLIENT_TYPES,
    CONNECTED,
    ERROR,
    EVENTS_PATH,
    GAP,
    PING,
    PONG,
    PUBLISH,
    REPLAYED,
    SERVER_TYPES,
    SUBSCRIBE,
    SUBSCRIBED,
    UNSUBSCRIBE,
    UNSUBSCRIBED,
)

__all__ = [
    "AUTH",
    "BATCH",
    "CLIENT_TYPES",
    "CONNECTED",
    "ERROR",
    "EVENTS_PATH",
    "GAP",
    "MAX_CORRELATION_ID_LENGTH",
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_PAYLOAD_DEPTH",
    "PING",
    "PONG",
    "PUBLISH",
    "PUBLISH_ENVELOPE",
    "REPLAYED",
    "SERVER_TYPES",
    "SUBSCRIBE",
    "SUBSCRIBED",
    "UNSET",
    "UNSUBSCRIBE",
    "UNSUBSCRIBED",
    "Auth",
    "BatchOptions",
    "ClientMessage",
    "ConnectRequest",
    "Ping",
    "Publish",
    "Refusal",
    "Subscribe",
    "Unsubscribe",
    "auth_message",
    "batch_message",
    "bearer_token",
    "connect_query",
    "credential",
    "decode_client_message",
    "decode_server_message",
    "encode",
    "encode_event",
    "encode_message",
    "error_from",
    "error_message",
    "event_body",
    "now_ms",
    "parse_connect",
    "ping_message",
    "publish_message",
    "refusal",
    "subscribe_message",
    "text_frame",
    "unsubscribe_message",
    "validate_batch",
    "validate_correlation_id",
    "validate_event",
    "validate_event_type",
    "validate_timestamp",
    "with_query",
]
