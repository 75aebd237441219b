#!/usr/bin/env bash
# test_alert_sink_am.sh - alert delivery to a real Prometheus Alertmanager
# (Debian's prometheus-alertmanager) started here on loopback with a config
# that routes everything to a receiver that does nothing. Runs the C case
# alertmanager_lists_then_resolves of test_alert_sink with its URL in the
# environment; Alertmanager is stopped on every exit, failure included.
#
# Usage: test_alert_sink_am.sh TEST_ALERT_SINK_BINARY
set -euo pipefail
bin=$1
am=$(command -v prometheus-alertmanager || command -v alertmanager || true)
[[ -n $am ]] || { echo "test_alert_sink_am: prometheus-alertmanager is not installed" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/keel-am.XXXXXX")
am_pid=
cleanup() {
  if [[ -n $am_pid ]]; then
    kill -TERM "$am_pid" 2>/dev/null || true
    wait "$am_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/am.yml" <<'CONF'
route:
  receiver: "null"
receivers:
  - name: "null"
CONF
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$am" --config.file="$dir/am.yml" --storage.path="$dir/data" \
  --web.listen-address="127.0.0.1:$port" --cluster.listen-address="" >"$dir/am.log" 2>&1 &
am_pid=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/-/ready" && break
  kill -0 "$am_pid" 2>/dev/null || { cat "$dir/am.log" >&2; exit 1; }
  sleep 0.1
done

KEEL_TEST_AM_URL="http://127.0.0.1:$port" "$bin" alertmanager_lists_then_resolves
