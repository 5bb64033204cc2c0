"""OpenTelemetry in and out, end to end: real SDK exporters, real sockets, real analyses.

- The Python SDK's own ``OTLPSpanExporter`` (protobuf over HTTP) exports nested spans,
  one failing, to a running broadcaster; a collector gets them; ``analysis.spans()``
  and ``critical_path()`` read them with their ids, parents, durations and times.
- A Node program with ``@opentelemetry/sdk-trace-node`` and
  ``@opentelemetry/exporter-trace-otlp-http`` (installed in tests/node) does the same.
- OTLP/JSON, gzip, partial success, bad bodies and credentials over a raw socket.
- In-process: ``EvkitSpanProcessor`` and ``SpanBridge``.
- Source times: ``publish``, ``POST /events`` and ``evkit.connect()`` keep them.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

import evkit
from evkit import analysis
from evkit.otel import EvkitSpanProcessor, SpanBridge, new_trace_id
from evkit.testing import capture_events, open_client, recv_events, send_json
from tests.conftest import require_service

NODE_DIR = Path(__file__).parent / "node"
TOKEN = "otlp-token-0123456789abcdef0123456789"


def post(url: str, body: bytes, content_type: str, **headers: str) -> tuple[int, bytes, str]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers["Content-Type"]


def provider_exporting_to(url: str, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return provider


@pytest.fixture
def server() -> Iterator[evkit.Server]:
    srv = evkit.serve(port=0)
    try:
        yield srv
    finally:
        srv.stop()


def test_the_python_sdk_exports_nested_spans_that_analyses_read(server: evkit.Server) -> None:
    provider = provider_exporting_to(f"{server.http_url}/v1/traces", "checkout")
    tracer = provider.get_tracer("tests")
    with evkit.collect(server, ["checkout.*"]) as collector:
        with tracer.start_as_current_span("handle request") as root:
            trace_id = f"{root.get_span_context().trace_id:032x}"
            with tracer.start_as_current_span("load cart"):
                time.sleep(0.02)  # the work a span measures
            with tracer.start_as_current_span("charge card") as charge:
                charge.set_attribute("payment.amount", 42)
                charge.record_exception(ValueError("card declined"))
                charge.set_status(Status(StatusCode.ERROR, "declined"))
                time.sleep(0.03)
        provider.shutdown()
        collector.wait(count=3, timeout=10)
        frame = collector.df
    spans = analysis.spans(frame).set_index("span_id")
    assert set(spans["correlation_id"]) == {trace_id}
    root_id = spans.index[spans["operation"] == "checkout.handle_request"][0]
    children = spans[spans["parent_span_id"] == root_id]
    assert sorted(children["operation"]) == ["checkout.charge_card", "checkout.load_cart"]
    charge_row = spans[spans["operation"] == "checkout.charge_card"].iloc[0]
    assert charge_row["status"] == "failed"
    assert charge_row["duration_ms"] >= 30
    failed = frame[frame["type"] == "checkout.charge_card.failed"].iloc[0]
    assert failed["payment.amount"] == 42
    assert failed["errorType"] == "ValueError"
    assert failed["events"][0]["name"] == "exception"
    path = analysis.critical_path(frame, trace_id)
    assert set(path["operation"]) == set(spans["operation"])  # sequential: all on it


def test_span_times_and_durations_are_the_spans_own(server: evkit.Server) -> None:
    provider = provider_exporting_to(f"{server.http_url}/v1/traces", "timing")
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    with evkit.collect(server, ["timing.*"]) as collector:
        with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner"):
            time.sleep(0.01)
        time.sleep(0.2)  # the export arrives well after the spans ended
        provider.shutdown()
        collector.wait(count=2, timeout=10)
        events = {e["type"]: e for e in collector.df.to_dict("records")}
    for span in memory.get_finished_spans():
        event = events[f"timing.{span.name}.completed"]
        assert event["duration_ms"] == pytest.approx(
            (span.end_time - span.start_time) / 1e6, abs=1e-6
        )
        assert event["timestamp"].value // 1_000_000 == span.end_time // 1_000_000
        assert event["spanId"] == f"{span.context.span_id:016x}"


def test_the_node_sdk_exports_to_evkit_unchanged(server: evkit.Server) -> None:
    node = shutil.which("node")
    require_service(node is not None, "node (Node.js) is not installed")
    require_service(
        (NODE_DIR / "node_modules" / "@opentelemetry" / "sdk-trace-node").is_dir(),
        "the @opentelemetry packages are not installed in tests/node (make node-deps)",
    )
    with evkit.collect(server, ["node-checkout.*"]) as collector:
        result = subprocess.run(
            [str(node), str(NODE_DIR / "otel_service.js")],
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": server.http_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        collector.wait(count=3, timeout=10)
        frame = collector.df
    report = orjson.loads(result.stdout.strip().splitlines()[-1])
    spans = analysis.spans(frame).set_index("span_id")
    assert set(spans["correlation_id"]) == {report["traceId"]}
    assert set(spans.index) == set(report["spans"])
    for span_id, expected in report["spans"].items():
        row = spans.loc[span_id]
        assert row["operation"] == f"node-checkout.{expected['name']}"
        assert (
            row["parent_span_id"] if isinstance(row["parent_span_id"], str) else None
        ) == expected["parent"]
        assert row["duration_ms"] == pytest.approx(expected["durationMs"], abs=1.0)
        assert row["end"].value // 1_000_000 == pytest.approx(expected["endMs"], abs=1)
    assert set(spans.loc[spans["status"] == "failed", "operation"]) == {"node-checkout.charge_card"}
    # Sequential steps are all on the path (its order is the spans' start, known to 1 ms).
    path = analysis.critical_path(frame, report["traceId"])
    assert set(path["operation"]) == {
        "node-checkout.handle_request",
        "node-checkout.load_cart",
        "node-checkout.charge_card",
    }


def json_request(trace_id: str, *spans: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "json-svc"}}
                        ]
                    },
                    "scopeSpans": [{"scope": {"name": "raw"}, "spans": list(spans)}],
                }
            ]
        }
    )


def json_span(trace_id: str, span_id: str, name: str) -> dict[str, Any]:
    end = time.time_ns()
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "startTimeUnixNano": str(end - 5_000_000),
        "endTimeUnixNano": str(end),
    }


def test_json_with_gzip_and_partial_success(server: evkit.Server) -> None:
    trace = new_trace_id()
    body = json_request(
        trace,
        json_span(trace, "1" * 16, "first"),
        json_span(trace, "2" * 16, "second"),
        {"name": "bad"},
    )
    with capture_events("json-svc.*") as events:
        status, answer, content_type = post(
            f"{server.http_url}/v1/traces",
            gzip.compress(body),
            "application/json",
            **{"Content-Encoding": "gzip"},
        )
        evkit.flush()
    assert (status, content_type) == (200, "application/json")
    partial = orjson.loads(answer)["partialSuccess"]
    assert partial["rejectedSpans"] == 1
    assert "trace id" in partial["errorMessage"]
    assert sorted(e.type for e in events) == [
        "json-svc.first.completed",
        "json-svc.second.completed",
    ]


def test_a_protobuf_partial_success_is_a_protobuf_answer(server: evkit.Server) -> None:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add().name = "no ids"
    status, answer, content_type = post(
        f"{server.http_url}/v1/traces", request.SerializeToString(), "application/x-protobuf"
    )
    assert (status, content_type) == (200, "application/x-protobuf")
    response = ExportTraceServiceResponse()
    response.ParseFromString(answer)
    assert response.partial_success.rejected_spans == 1


@pytest.mark.parametrize(
    ("body", "content_type", "extra", "status", "message"),
    [
        (b"\xff\xfe not protobuf", "application/x-protobuf", {}, 400, "ExportTraceServiceRequest"),
        (b"{not json", "application/json", {}, 400, "not valid JSON"),
        (b'{"resourceSpans": 3}', "application/json", {}, 400, "must be a list"),
        (b"gibberish", "application/json", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
        (b"{}", "application/json", {"Content-Encoding": "br"}, 400, "gzip or identity"),
        (b"{}", "text/plain", {}, 415, "content type"),
    ],
)
def test_bad_bodies_get_an_otlp_error_and_the_server_lives_on(
    server: evkit.Server,
    body: bytes,
    content_type: str,
    extra: dict[str, str],
    status: int,
    message: str,
) -> None:
    got, answer, answer_type = post(f"{server.http_url}/v1/traces", body, content_type, **extra)
    assert got == status
    if answer_type == "application/json":
        error = orjson.loads(answer)
        assert error["code"] == 3
        assert message in error["message"]
    else:
        assert message.encode() in answer  # google.rpc.Status: code 3, then the message
        assert answer[:2] == b"\x08\x03"
    assert post(f"{server.http_url}/v1/traces", b"{}", "application/json")[0] == 200


def test_a_gzip_bomb_is_refused() -> None:
    srv = evkit.serve(port=0, max_post_size=1024)
    try:
        bomb = gzip.compress(b"{" + b" " * 200_000 + b"}")
        assert len(bomb) < 1024
        status, answer, _ = post(
            f"{srv.http_url}/v1/traces", bomb, "application/json", **{"Content-Encoding": "gzip"}
        )
        assert status == 400
        assert "times max_post_size" in orjson.loads(answer)["message"]
    finally:
        srv.stop()


def test_otlp_needs_the_publish_scope_as_post_events_does() -> None:
    srv = evkit.serve(port=0, token=TOKEN)
    try:
        trace = new_trace_id()
        body = json_request(trace, json_span(trace, "3" * 16, "authorised"))
        assert post(f"{srv.http_url}/v1/traces", body, "application/json")[0] == 401
        status, _, _ = post(
            f"{srv.http_url}/v1/traces", body, "application/json", Authorization=f"Bearer {TOKEN}"
        )
        assert status == 200
        exporter = OTLPSpanExporter(
            endpoint=f"{srv.http_url}/v1/traces", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with capture_events("unknown_service*") as events:
            with provider.get_tracer("t").start_as_current_span("via sdk"):
                pass
            provider.shutdown()
            evkit.flush()
        assert [e.type for e in events] == ["unknown_service-python.via_sdk.completed"]
    finally:
        srv.stop()


# -- in-process ---------------------------------------------------------------------------------


def test_the_span_processor_puts_a_process_spans_on_evkits_bus() -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "notebook"}))
    provider.add_span_processor(EvkitSpanProcessor())
    tracer = provider.get_tracer("tests")
    with (
        capture_events("notebook.*") as captured,
        evkit.capture(["notebook.*"]) as collector,
        tracer.start_as_current_span("load"),
        tracer.start_as_current_span("parse"),
    ):
        time.sleep(0.005)
    assert [e.type for e in captured] == ["notebook.parse.completed", "notebook.load.completed"]
    spans = analysis.spans(collector.df).set_index("operation")
    assert spans.loc["notebook.parse", "parent_span_id"] == captured[1].payload["spanId"]
    assert spans.loc["notebook.parse", "duration_ms"] >= 5


def test_evkits_own_spans_go_out_through_an_otel_processor() -> None:
    memory = InMemorySpanExporter()
    bridge = SpanBridge(SimpleSpanProcessor(memory), service="evkit-tests")
    trace = new_trace_id()

    @evkit.emits("pipeline.step")
    def step() -> None:
        time.sleep(0.002)

    @evkit.emits("pipeline.run")
    def run() -> None:
        step()
        step()

    try:
        with evkit.correlation(trace):
            run()
        with evkit.correlation("req-7"):
            step()
    finally:
        bridge.close()
    spans = memory.get_finished_spans()
    assert [s.name for s in spans] == [
        "pipeline.step",
        "pipeline.step",
        "pipeline.run",
        "pipeline.step",
    ]
    run_span = spans[2]
    assert {f"{s.context.trace_id:032x}" for s in spans[:3]} == {trace}
    assert all(
        s.parent is not None and s.parent.span_id == run_span.context.span_id for s in spans[:2]
    )
    assert spans[0].end_time - spans[0].start_time >= 2_000_000
    assert spans[3].context.trace_id != run_span.context.trace_id
    assert spans[0].resource.attributes["service.name"] == "evkit-tests"


def test_spans_that_came_from_otel_are_not_sent_back() -> None:
    memory = InMemorySpanExporter()
    bridge = SpanBridge(SimpleSpanProcessor(memory))
    provider = TracerProvider()
    provider.add_span_processor(EvkitSpanProcessor())
    try:
        with provider.get_tracer("t").start_as_current_span("from otel"):
            pass
    finally:
        bridge.close()
    assert memory.get_finished_spans() == ()


# -- source times -------------------------------------------------------------------------------


def test_publish_and_post_keep_an_events_source_time(server: evkit.Server) -> None:
    then = int(time.time() * 1000) - 60_000

    async def scenario() -> None:
        listener, _ = await open_client(server.url, eventTypes="timed.*")
        publisher, _ = await open_client(server.url, eventTypes="")
        await send_json(
            publisher,
            {
                "type": "publish",
                "payload": [{"type": "timed.ws.sent", "timestamp": then, "payload": {}}],
            },
        )
        [event] = await recv_events(listener, 1)
        assert event["timestamp"] == then
        status, _, _ = post(
            f"{server.http_url}/events",
            orjson.dumps(
                [{"type": "timed.http.sent", "timestamp": then + 1.4}, {"type": "timed.http.now"}]
            ),
            "application/json",
        )
        assert status == 202
        sent, now = await recv_events(listener, 2)
        assert sent["timestamp"] == then + 1
        assert now["timestamp"] > then + 50_000
        assert int(now["id"]) > int(sent["id"]) > int(event["id"])  # ids in arrival order
        await listener.close()
        await publisher.close()

    asyncio.run(scenario())


def test_a_time_more_than_a_day_ahead_is_refused(server: evkit.Server) -> None:
    ahead = int(time.time() * 1000) + 2 * 86_400_000
    status, answer, _ = post(
        f"{server.http_url}/events",
        orjson.dumps({"type": "a.b", "timestamp": ahead}),
        "application/json",
    )
    assert status == 400
    assert "a day ahead" in orjson.loads(answer)["errors"][0]["error"]


def test_connect_sends_the_time_of_emit(server: evkit.Server) -> None:
    bus = evkit.EventBus()
    forwarder = evkit.connect(server.url, bus=bus)
    try:
        with evkit.collect(server, ["forwarded.*"]) as collector:
            # Emitted five seconds ago, forwarded now: the time it carries is the emit's.
            event = evkit.Event("forwarded.event.sent", int(time.time() * 1000) - 5_000, {})
            bus.dispatch(event)
            forwarder.flush(timeout=10)
            collector.wait(count=1, timeout=10)
            stamp = collector.df["timestamp"].iloc[0].value // 1_000_000
        assert stamp == event.timestamp
    finally:
        forwarder.stop()
