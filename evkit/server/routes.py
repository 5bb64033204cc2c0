"""HTTP on the event stream's port: the handshake's answer, health, metrics, the page, POST.

- ``GET /ws/events``: the WebSocket handshake, let in or refused by admission (a
  refusal is an HTTP status with a JSON reason); without ``Upgrade``: 426;
- ``GET /healthz``: ``{"status", "clients", "events", "store"}`` (``{"status"}`` only
  without the ``metrics`` scope when auth is on);
- ``GET /metrics``: Prometheus text (prometheus_client, imported here only);
- ``GET /`` and ``/dashboard``: the browser page, one self-contained file;
- the POST routes (``_post_routes``: ``/events``, one event or a list, emitted on the
  broadcaster's bus; OTLP's ``/v1/traces``), with CORS for the browser origins
  admission lets in: ``OPTIONS`` answers a preflight, and answers carry
  ``Access-Control-Allow-Origin``;
- ``HEAD`` on every GET route: its headers without the body; ``OPTIONS`` on any route:
  ``Allow``; another method on a known path: 405 with ``Allow``; an unknown path: 404
  with where the stream is.

Plain requests come from :mod:`evkit.server.wire` (keep-alive there); WebSocket
handshakes from websockets' ``process_request``.

Must not hold state of its own: it answers from the broadcaster's parts.
"""

from __future__ import annotations

import functools
import http
import logging
from collections.abc import Awaitable, Callable, Mapping
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
from evkit.server.wire import HttpAnswer, HttpRequest, PostAnswer

if TYPE_CHECKING:
    from evkit.server.broadcaster import Broadcaster

__all__ = ["Routes"]

logger = logging.getLogger("evkit.server")

_POST_WAIT = 2.0  # seconds a POST waits for its events' ids (a store that cannot keep up)
_GET_ROUTES = frozenset({EVENTS_PATH, "/healthz", "/metrics", "/", "/dashboard"})
_GET_METHODS = ("GET", "HEAD", "OPTIONS")
_POST_METHODS = ("OPTIONS", "POST")
# What a browser page may send with a cross-origin POST (OTLP's and evkit's headers).
_CORS_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Correlation-Id, Traceparent"
_CORS_MAX_AGE = "600"


class Routes:
    """The HTTP side of one broadcaster; see the module docstring."""

    def __init__(self, server: Broadcaster) -> None:
        self.server = server
        #: POST routes by path: ``route(query, headers, body)``, after admission said yes.
        self._post_routes: dict[str, Callable[[str, dict[str, str], bytes], Awaitable[PostAnswer]]]
        self.traces = TraceReceiver(server)
        self._post_routes = {"/events": self.post_events, TRACES_PATH: self.traces.post_traces}

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """websockets' ``process_request`` for a handshake: None lets it through."""
        server = self.server
        admission = server.admission
        url = urlsplit(request.path)
        remote = connection.remote_address
        address = str(remote[0]) if remote else "?"
        refusal = admission.check_host(request.headers.get("Host"))
        if refusal is not None:
            return _response(_refused(address, refusal))
        if url.path != EVENTS_PATH:
            # A handshake for another route: answered as its GET would be, then closed.
            if url.path not in _GET_ROUTES:
                return _response(_not_found(url.path))
            return _response(await self._get(url.path, url.query, request.headers, address))
        await admission.ready(request.headers, url.query)
        admitted = admission.admit(address, request.headers, url.query, server.history.parse_id)
        if isinstance(admitted, Refusal):
            return _response(_refused(address, admitted))
        server.admitted[connection] = admitted
        return None

    async def handle_http(self, request: HttpRequest) -> HttpAnswer:
        """Answer a plain HTTP request (read by :mod:`evkit.server.wire`); see the module
        docstring for the routes and methods."""
        url = urlsplit(request.target)
        headers = request.headers
        refusal = self.server.admission.check_host(headers.get("host"))
        if refusal is not None:
            return _refused(request.remote, refusal, "a request")
        methods: tuple[str, ...]
        if url.path in _GET_ROUTES:
            methods = _GET_METHODS
        elif url.path in self._post_routes:
            methods = _POST_METHODS
        else:
            return _not_found(url.path)
        if request.method == "OPTIONS":
            return self._options(url.path, methods, request)
        if request.method not in methods:
            allowed = ", ".join(methods)
            return HttpAnswer.json(
                405,
                {"error": f"{request.method} is not allowed on {url.path}; allowed: {allowed}"},
                ("Allow", allowed),
            )
        if request.method == "POST":
            return await self._post(url.path, url.query, request)
        return await self._get(url.path, url.query, headers, request.remote)

    async def _get(
        self, path: str, query: str, headers: Mapping[str, str], remote: str
    ) -> HttpAnswer:
        """The answer to ``GET path`` (``HEAD`` sends its headers only)."""
        server = self.server
        admission = server.admission
        if path == EVENTS_PATH:
            return HttpAnswer.json(
                426,
                {"error": f"{EVENTS_PATH} is a WebSocket endpoint: connect with ws:// or wss://"},
                ("Upgrade", "websocket"),
            )
        if path == "/healthz":
            await admission.ready(headers, query)
            if admission.check_metrics(headers, query) is not None:
                # Liveness stays open; counts, epoch and positions need the metrics scope.
                return HttpAnswer.json(200, {"status": server.health()["status"]})
            return HttpAnswer.json(200, server.health())
        if path == "/metrics":
            await admission.ready(headers, query)
            refusal = admission.check_metrics(headers, query)
            if refusal is not None:
                server.counters.reject(refusal.body["code"])
                return _refused(remote, refusal, "a metrics scrape")
            return _metrics(server.metrics_snapshot())
        return _page(_dashboard_page())

    async def _post(self, path: str, query: str, request: HttpRequest) -> HttpAnswer:
        """A POST route's answer, after admission said yes; CORS headers for a page."""
        admission = self.server.admission
        await admission.ready(request.headers, query)
        refusal = admission.check_post(request.headers, query)
        if refusal is not None:
            answer = _refused(request.remote, refusal, f"POST {path}")
        else:
            answer = await self._post_routes[path](query, request.headers, request.body)
        return answer.with_headers(*self._cors(request.headers))

    def _cors(self, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The CORS headers of an answer to a page of an origin admission lets in."""
        origin = headers.get("origin")
        if origin is None:
            return ()
        if not self.server.admission.origin_allowed(origin, headers.get("host")):
            return (("Vary", "Origin"),)
        return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))

    def _options(self, path: str, methods: tuple[str, ...], request: HttpRequest) -> HttpAnswer:
        """``OPTIONS``: the methods of ``path``; for a POST route, a CORS preflight."""
        headers = request.headers
        allow = ("Allow", ", ".join(methods))
        origin = headers.get("origin")
        preflight = origin is not None and "access-control-request-method" in headers
        if not preflight or methods is not _POST_METHODS:
            return HttpAnswer(204, headers=(allow,))
        refusal = self.server.admission.check_origin(origin, headers.get("host"))
        if refusal is not None:
            answer = _refused(request.remote, refusal, f"a CORS preflight for {path}")
            return answer.with_headers(allow, ("Vary", "Origin"))
        requested = headers.get("access-control-request-headers")
        return HttpAnswer(
            204,
            headers=(
                allow,
                ("Access-Control-Allow-Origin", str(origin)),
                ("Access-Control-Allow-Methods", "POST, OPTIONS"),
                ("Access-Control-Allow-Headers", requested or _CORS_HEADERS),
                ("Access-Control-Max-Age", _CORS_MAX_AGE),
                ("Vary", "Origin"),
            ),
        )

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


def _refused(remote: str, refusal: Refusal, what: str = "a connection") -> HttpAnswer:
    logger.info("refused %s from %s: %s", what, remote, refusal.body["error"])
    return HttpAnswer.json(refusal.status.value, refusal.body)


def _metrics(snapshot: dict[str, Any]) -> HttpAnswer:
    from evkit.metrics import render

    try:
        body, content_type = render(snapshot)
    except ImportError:
        return HttpAnswer.json(
            http.HTTPStatus.NOT_IMPLEMENTED.value,
            {"error": "metrics need prometheus_client: pip install 'evkit[metrics]'"},
        )
    return HttpAnswer(200, body, content_type)


def _response(answer: HttpAnswer) -> Response:
    """``answer`` as websockets sends it (a handshake refused, or not for the stream)."""
    status = http.HTTPStatus(answer.status)
    headers = Headers(
        [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))]
    )
    headers.update(answer.headers)
    return Response(status.value, status.phrase, headers, answer.body)


@functools.cache
def _dashboard_page() -> bytes:
    # One self-contained file (no CDN, no build step), read once per process.
    return resources.files("evkit").joinpath("static/dashboard.html").read_bytes()


def _page(body: bytes) -> HttpAnswer:
    return HttpAnswer(
        200,
        body,
        "text/html; charset=utf-8",
        (("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")),
    )


def _not_found(path: str) -> HttpAnswer:
    return HttpAnswer.json(
        404, {"error": f"no route for {path}; the event stream is at {EVENTS_PATH}"}
    )
