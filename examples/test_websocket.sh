#!/usr/bin/env bash
# Check that an evkit broadcaster answers, then watch a few of its events.
#
#   examples/test_websocket.sh [websocket_client.py options...]
#
# EVKIT_URL      the server's base URL (default http://127.0.0.1:3000)
# EVKIT_COUNT    events to wait for (default 5)
# EVKIT_TIMEOUT  seconds to wait for them (default 30)
# PYTHON         interpreter with evkit's dependencies (default python3)
#
# Start a server that emits events with: python examples/instrumented_service.py
set -euo pipefail

base_url="${EVKIT_URL:-http://127.0.0.1:3000}"
base_url="${base_url%/}"
count="${EVKIT_COUNT:-5}"
timeout="${EVKIT_TIMEOUT:-30}"
python="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case "$base_url" in
  http://*) ws_url="ws://${base_url#http://}/ws/events" ;;
  https://*) ws_url="wss://${base_url#https://}/ws/events" ;;
  *)
    echo "error: EVKIT_URL must start with http:// or https://, got '$base_url'" >&2
    exit 2
    ;;
esac

if ! command -v curl >/dev/null; then
  echo "error: curl is needed to check the server's health; install it first" >&2
  exit 2
fi

echo "checking $base_url/healthz"
if ! health="$(curl --fail --silent --show-error --max-time 5 "$base_url/healthz" 2>&1)"; then
  echo "error: no evkit broadcaster answers at $base_url/healthz ($health)" >&2
  echo "start one (python examples/instrumented_service.py) or set EVKIT_URL" >&2
  exit 1
fi
echo "healthy: $health"

echo "waiting for $count events on $ws_url"
exec "$python" "$here/websocket_client.py" --url "$ws_url" --count "$count" --timeout "$timeout" "$@"
