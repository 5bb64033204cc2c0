// A Node service instrumented with OpenTelemetry, exporting OTLP/HTTP to evkit unchanged:
// the endpoint comes from OTEL_EXPORTER_OTLP_ENDPOINT, as for any OTLP backend.
// It makes one trace of nested spans, one failing, exports it, and prints on its last
// line (JSON) what it exported, so the test can compare what evkit received.
"use strict";

const { trace, SpanStatusCode } = require("@opentelemetry/api");
const { NodeTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require("@opentelemetry/sdk-trace-node");
const { OTLPTraceExporter } = require("@opentelemetry/exporter-trace-otlp-http");
const { resourceFromAttributes } = require("@opentelemetry/resources");

const memory = new InMemorySpanExporter();
const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ "service.name": "node-checkout" }),
  spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter()), new SimpleSpanProcessor(memory)],
});
provider.register();
const tracer = trace.getTracer("evkit-tests");

function busy(ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) { /* the work a span measures */ }
}

async function main() {
  await tracer.startActiveSpan("handle request", async (root) => {
    await tracer.startActiveSpan("load cart", async (span) => { busy(15); span.end(); });
    await tracer.startActiveSpan("charge card", async (span) => {
      busy(25);
      span.recordException(new Error("card declined"));
      span.setStatus({ code: SpanStatusCode.ERROR, message: "declined" });
      span.end();
    });
    root.end();
  });
  await provider.forceFlush();
  const spans = {};
  let traceId = null;
  for (const span of memory.getFinishedSpans()) {
    const context = span.spanContext();
    traceId = context.traceId;
    const toMs = ([seconds, nanos]) => seconds * 1e3 + nanos / 1e6;
    spans[context.spanId] = {
      name: span.name.replace(/ /g, "_"),
      parent: span.parentSpanContext ? span.parentSpanContext.spanId : null,
      durationMs: toMs(span.duration),
      endMs: Math.floor(toMs(span.endTime)),
    };
  }
  await provider.shutdown();
  console.log(JSON.stringify({ traceId, spans }));
}

main().catch((error) => { console.error(error); process.exit(1); });
