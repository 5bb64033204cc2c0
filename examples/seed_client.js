// The seed's JavaScript client (DESIGN 1.5), unchanged in how it talks to the server,
// made drivable by a test: evkit must serve this as is.
//
//   node examples/seed_client.js [URL] [CORRELATION_ID] [EVENTS] [TIMEOUT_MS]
//
//   URL             default ws://localhost:3000/ws/events
//   CORRELATION_ID  sent as the x-correlation-id header and in the subscribe message
//                   (default optional-correlation-id)
//   EVENTS          exit 0 once this many events arrived (default: never)
//   TIMEOUT_MS      exit 1 when they have not arrived by then (default: no limit)
//
// Every message received is printed to stdout as one JSON line; diagnostics go to stderr.
// Events are the messages that are neither `pong` nor `websocket.*`.
//
// `ws` is resolved the ordinary way, so point Node at the test dependencies:
//
//   npm install --prefix tests/node --no-audit --no-fund
//   NODE_PATH=tests/node/node_modules node examples/seed_client.js
//
// (tests/test_examples.py sets NODE_PATH the same way.)
'use strict';

const WebSocket = require('ws');

const url = process.argv[2] || 'ws://localhost:3000/ws/events';
const correlationId = process.argv[3] || 'optional-correlation-id';
const wanted = process.argv[4] ? Number(process.argv[4]) : Infinity;
const timeoutMs = process.argv[5] ? Number(process.argv[5]) : 0;

let events = 0;

const ws = new WebSocket(url, {
  headers: { 'x-correlation-id': correlationId }
});

ws.on('open', () => {
  ws.send(JSON.stringify({
    type: 'subscribe',
    payload: { eventTypes: ['claude.*', 'repo.commit.created', 'performance.*'], correlationId }
  }));
  // Sent after the subscribe, so the pong also says the subscription is in place.
  ws.send(JSON.stringify({ type: 'ping', payload: { timestamp: Date.now() } }));
});

ws.on('message', (data) => {
  const message = JSON.parse(data.toString());
  process.stdout.write(JSON.stringify(message) + '\n');
  if (message.type !== 'pong' && !message.type.startsWith('websocket.')) {
    events += 1;
    if (events >= wanted) {
      finish(0);
    }
  }
});

ws.on('error', (error) => {
  process.stderr.write(`cannot use the event stream at ${url}: ${error.message}\n`);
  finish(1);
});

ws.on('close', (code, reason) => {
  if (events < wanted) {
    process.stderr.write(`connection closed (${code} ${reason}) after ${events} events\n`);
    finish(1);
  }
});

const timer = timeoutMs > 0
  ? setTimeout(() => {
    process.stderr.write(`timed out after ${timeoutMs} ms with ${events} of ${wanted} events\n`);
    finish(1);
  }, timeoutMs)
  : null;

let finished = false;

function finish(status) {
  if (finished) return;
  finished = true;
  if (timer) clearTimeout(timer);
  process.exitCode = status;
  ws.removeAllListeners('message');
  ws.removeAllListeners('close');
  ws.close(1000);
  // Do not wait on a server that never answers the close.
  setTimeout(() => process.exit(status), 2000).unref();
}
