"""HTTP on the event stream's port: the handshake's answer, health, metrics, the page, POST.

- ``GET /ws/events``: the WebSocket handshake, let in or refused by admission (a
  refusal is an HTTP status with a JSON reason);
- ``GET /healthz``: ``{"status", "clients", "events", "store"}`` (``{"status"}`` only
  without the ``metrics`` scope when auth is on);
- ``GET /metrics``: Prometheus text (prometheus_client, imported here only);
- ``GET /`` and ``/dashboard``: the browser page, one self-contained file;
- ``POST /events``: one event or a list, emitted on the broadcaster's bus;
- anything else: 404 with where the stream is.

Must not hold state of its own: it answers from the broadcaster's parts.
"""

from __future__ import annotations

import functools
import http
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from evkit.bus import Event
from evkit.exceptions import ProtocolError
from evkit.protocol import EVENTS_PATH, now_ms, validate_event, validate_timestamp
from evkit.server.admission import Refusal
from evkit.server.otlp import TRACES_PATH, TraceReceiver
from evkit.server.wire import PostAnswer

if TYPE_CHECKING:
    from evkit.server.broadcaster import Broadcaster

__all__ = ["Routes"]

logger = logging.getLogger("evkit.server")

_POST_WAIT = 2.0  # seconds a POST waits for its events' ids (a store that cannot keep up)


class Routes:
    """The HTTP side of one broadcaster; see the module docstring."""

    def __init__(self, server: Broadcaster) -> None:
        self.server = server
        #: POST routes by path: ``route(query, headers, body)``, after admission said yes.
        self._post_routes: dict[str, Callable[[str, dict[str, str], bytes], Awaitable[PostAnswer]]]
        self.traces = TraceReceiver(server)
        self._post_routes = {"/events": self.post_events, TRACES_PATH: self.traces.post_traces}

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """websockets' ``process_request``: None lets a WebSocket handshake through."""
        server = self.server
        admission = server.admission
        url = urlsplit(request.path)
        refusal = admission.check_host(request.headers.get("Host"))
        if refusal is not None:
            return _refused(connection, refusal)
        if url.path == EVENTS_PATH:
            remote = connection.remote_address
            address = str(remote[0]) if remote else "?"
            admitted = admission.admit(address, request.headers, url.query, server.history.parse_id)
            if isinstance(admitted, Refusal):
                return _refused(connection, admitted)
            server.admitted[connection] = admitted
            return None
        if url.path == "/healthz":
            if admission.check_metrics(request.headers, url.query) is not None:
                # Liveness stays open; counts, epoch and positions need the metrics scope.
                return _json(http.HTTPStatus.OK, {"status": server.health()["status"]})
            return _json(http.HTTPStatus.OK, server.health())
        if url.path == "/metrics":
            refusal = admission.check_metrics(request.headers, url.query)
            if refusal is not None:
                server.counters.reject(refusal.body["code"])
                return _refused(connection, refusal)
            return _metrics(server.metrics_snapshot())
        if url.path in ("/", "/dashboard"):
            return _page(_dashboard_page())
        return _json(
            http.HTTPStatus.NOT_FOUND,
            {"error": f"no route for {url.path}; the event stream is at {EVENTS_PATH}"},
        )

    async def handle_post(self, target: str, headers: dict[str, str], body: bytes) -> PostAnswer:
        """Answer a POST request (read by :mod:`evkit.server.wire`): the route its path names."""
        url = urlsplit(target)
        route = self._post_routes.get(url.path)
        if route is None:
            known = ", ".join(sorted(self._post_routes))
            return PostAnswer.json(
                404, {"error": f"no route for POST {url.path}; POST routes: {known}"}
            )
        refusal = self.server.admission.check_post(headers, url.query)
        if refusal is not None:
            return PostAnswer.json(refusal.status.value, refusal.body)
        return await route(url.query, headers, body)

    async def post_events(self, query: str, headers: dict[str, str], body: bytes) -> PostAnswer:
        """``POST /events``: one event or a list; 202 with their ids, or why not.

        Runs on the loop. The events are emitted on the broadcaster's bus (so local
        handlers see them too) and handed out before the answer, so the ids are known;
        with Redis the answer waits (up to 2 s) for Redis to assign them, and while Redis
        is unreachable the events stay queued and the ids are null.

        ``?wait=durable`` (the default with a durable store, SQLite) answers once the
        events are committed (``"durable": true``); ``?wait=delivered`` (the default
        otherwise) once they are written to the subscribers' connections. Events the
        full queue dropped have a null id and are counted in ``"dropped"``.
        """
        server = self.server
        history = server.history
        wait = parse_qs(query).get("wait", ["durable" if history.durable else "delivered"])[-1]
        if wait not in ("durable", "delivered"):
            return PostAnswer.json(
                400,
                {
                    "error": f"wait must be 'durable' or 'delivered', got {wait[:40]!r}",
                    "code": "invalid_message",
                },
            )
        emitted = _validated(body)
        if isinstance(emitted, tuple):
            return PostAnswer.json(*emitted)
        server.ingest(emitted)
        await server.backplane.settle(_POST_WAIT)
        ids = [event.id for event in emitted]
        durable = False
        if wait == "durable" and history.durable:
            try:
                await server.backplane.sync()
                durable = True
            except TimeoutError as exc:
                return PostAnswer.json(
                    503, {"error": f"the events were not committed: {exc}", "ids": ids}
                )
        answer: dict[str, Any] = {"ids": ids, "durable": durable}
        dropped = ids.count(None)
        if dropped:
            answer["dropped"] = dropped
        return PostAnswer.json(202, answer)


def _validated(body: bytes) -> list[Event] | tuple[int, dict[str, Any]]:
    """The events of a POST body, or the 400 answer saying why not (nothing published)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return 400, {"error": f"body is not valid JSON: {exc}", "code": "invalid_json"}
    items = document if isinstance(document, list) else [document]
    if not items:
        return 400, {
            "error": "no events: post an event or a non-empty list",
            "code": "invalid_event",
        }
    valid, errors = [], []
    now = now_ms()
    for position, item in enumerate(items):
        where = position if isinstance(document, list) else None
        try:
            type_, payload = validate_event(item, where)
            timestamp = validate_timestamp(item, where, now)
            valid.append(Event(type_, now if timestamp is None else timestamp, payload))
        except ProtocolError as exc:
            errors.append({"index": position, "error": exc.error})
    if errors:
        return 400, {
            "error": f"{len(errors)} of {len(items)} events are invalid; none was published",
            "code": "invalid_event",
            "errors": errors,
        }
    return valid


def _refused(connection: ServerConnection, refusal: Refusal) -> Response:
    remote = connection.remote_address
    logger.info(
        "refused a connection from %s: %s", remote[0] if remote else "?", refusal.body["error"]
    )
    return _json(refusal.status, refusal.body)


def _metrics(snapshot: dict[str, Any]) -> Response:
    from evkit.metrics import render

    try:
        body, content_type = render(snapshot)
    except ImportError:
        return _json(
            http.HTTPStatus.NOT_IMPLEMENTED,
            {"error": "metrics need prometheus_client: pip install 'evkit[metrics]'"},
        )
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(200, "OK", headers, body)


@functools.cache
def _dashboard_page() -> bytes:
    # One self-contained file (no CDN, no build step), read once per process.
    return resources.files("evkit").joinpath("static/dashboard.html").read_bytes()


def _page(body: bytes) -> Response:
    headers = Headers(
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
    )
    return Response(200, "OK", headers, body)


def _json(status: http.HTTPStatus, body: Any) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)
