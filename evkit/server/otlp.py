"""OTLP/HTTP trace ingest: ``POST /v1/traces`` on the broadcaster's own port.

An OpenTelemetry SDK or Collector pointed at ``http://HOST:PORT`` (``OTEL_EXPORTER_
OTLP_ENDPOINT``, or the Collector's ``otlphttp`` exporter) sends its spans here:
protobuf (``application/x-protobuf``) or JSON (``application/json``), optionally
gzip-compressed. Each span becomes an evkit span event (:mod:`evkit.otel.convert`),
published as a ``POST /events`` event is (same credentials and ``publish`` scope,
same size limit on the body, redaction). The answer is OTLP's: an
``ExportTraceServiceResponse``, with a partial success counting the spans refused; a
malformed request is a 400 with a ``google.rpc.Status`` (code 3, INVALID_ARGUMENT)
saying why, in the request's encoding.

Protobuf needs ``opentelemetry-proto`` (the ``otel`` extra); JSON does not.
"""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Any

import orjson

from evkit.otel.convert import OTLPError, events_from_json, events_from_request
from evkit.protocol import now_ms
from evkit.server.wire import PostAnswer

if TYPE_CHECKING:
    from evkit.server.broadcaster import Broadcaster

__all__ = ["TRACES_PATH", "TraceReceiver"]

logger = logging.getLogger("evkit.server")

#: The OTLP/HTTP path of traces.
TRACES_PATH = "/v1/traces"
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_INVALID_ARGUMENT = 3  # google.rpc.Code
# A compressed body may expand to this many times max_post_size, no more.
_EXPANSION = 10


class TraceReceiver:
    """Answers ``POST /v1/traces`` for one broadcaster (after admission let it in)."""

    def __init__(self, server: Broadcaster) -> None:
        self.server = server
        self.spans = 0  # spans turned into events
        self.refused = 0  # spans refused (partial success)

    async def post_traces(self, query: str, headers: dict[str, str], body: bytes) -> PostAnswer:
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type not in (_PROTOBUF, _JSON):
            return _failure(
                _JSON, 415, f"content type must be {_PROTOBUF} or {_JSON}, got {content_type!r}"
            )
        try:
            data = self._decompress(headers.get("content-encoding", "identity"), body)
            events, refused = self._events(content_type, data)
        except OTLPError as exc:
            return _failure(content_type, 400, str(exc))
        except ImportError:
            return _failure(
                _JSON,
                501,
                "protobuf OTLP needs opentelemetry-proto: pip install 'evkit[otel]' "
                "(or send application/json)",
            )
        self.server.ingest(events)
        self.spans += len(events)
        self.refused += len(refused)
        if refused:
            logger.info(
                "OTLP: %d of %d spans refused: %s",
                len(refused),
                len(refused) + len(events),
                refused[0],
            )
        return _success(content_type, refused)

    def _decompress(self, encoding: str, body: bytes) -> bytes:
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding != "gzip":
            raise OTLPError(f"content encoding must be gzip or identity, got {encoding!r}")
        limit = self.server.settings.max_post_size * _EXPANSION
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, limit)
        except zlib.error as exc:
            raise OTLPError(f"body is not valid gzip: {exc}") from None
        if inflater.unconsumed_tail:
            raise OTLPError(
                f"body expands past {limit} bytes ({_EXPANSION} times max_post_size) when "
                "decompressed"
            )
        if not inflater.eof:
            raise OTLPError("body is a truncated gzip stream")
        return data

    def _events(self, content_type: str, data: bytes) -> tuple[list[Any], list[str]]:
        now = now_ms()
        if content_type == _JSON:
            try:
                document = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise OTLPError(f"body is not valid JSON: {exc}") from None
            try:
                return events_from_json(document, now)
            except (TypeError, ValueError) as exc:
                raise OTLPError(f"not an OTLP trace request: {exc}") from None
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(data)
        except DecodeError as exc:
            raise OTLPError(f"body is not an ExportTraceServiceRequest: {exc}") from None
        return events_from_request(request, now)


def _success(content_type: str, refused: list[str]) -> PostAnswer:
    message = f"{len(refused)} spans refused; the first: {refused[0]}" if refused else ""
    if content_type == _JSON:
        document: dict[str, Any] = {}
        if refused:
            document["partialSuccess"] = {"rejectedSpans": len(refused), "errorMessage": message}
        return PostAnswer(200, orjson.dumps(document), _JSON)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    response = ExportTraceServiceResponse()
    if refused:
        response.partial_success.rejected_spans = len(refused)
        response.partial_success.error_message = message
    return PostAnswer(200, response.SerializeToString(), _PROTOBUF)


def _failure(content_type: str, status: int, message: str) -> PostAnswer:
    """A ``google.rpc.Status`` (INVALID_ARGUMENT) in the request's encoding."""
    if content_type == _JSON:
        return PostAnswer(
            status, orjson.dumps({"code": _INVALID_ARGUMENT, "message": message}), _JSON
        )
    text = message.encode()
    # Status { int32 code = 1; string message = 2; }, encoded by hand: it is two fields.
    body = bytes((0x08, _INVALID_ARGUMENT, 0x12)) + _varint(len(text)) + text
    return PostAnswer(status, body, _PROTOBUF)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
