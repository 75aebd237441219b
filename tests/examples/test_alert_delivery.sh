#!/usr/bin/env bash
# test_alert_delivery.sh - alert delivery as keel_service_main sets it up
# from the environment, on the tutorial's kv service: a webhook receiver
# (a few lines of Python's http.server on loopback) gets the test alert of
# POST /admin/alerts/test, which needs ADMIN_TOKEN; an unknown
# ALERT_WEBHOOK_FORMAT stops the service at start.
#
# Usage: test_alert_delivery.sh PATH/TO/kv PATH/TO/ms_load
set -u
kv=${1:?usage: test_alert_delivery.sh PATH/TO/kv PATH/TO/ms_load}
load=${2:?usage: test_alert_delivery.sh PATH/TO/kv PATH/TO/ms_load}
for tool in curl jq python3 timeout; do
  command -v "$tool" >/dev/null || { echo "$tool not installed (scripts/install-deps.sh)"; exit 1; }
done
kv=$(cd "$(dirname "$kv")" && pwd)/$(basename "$kv")
load=$(cd "$(dirname "$load")" && pwd)/$(basename "$load")
tmp=$(mktemp -d)
cleanup() {
  for p in $(jobs -p); do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../kt_check.sh" # ok, bad, expect

read -r rport port hport <<<"$("$load" freeport 3)"
cat >"$tmp/recv.py" <<'PY'
import http.server, sys
out = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "ab") as f:
            f.write(body + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$tmp/recv.py" "$rport" "$tmp/received" &
for _ in $(seq 100); do curl -s -o /dev/null -X POST "http://127.0.0.1:$rport/" && break; sleep 0.05; done
rm -f "$tmp/received"

cd "$tmp" || exit 1
PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 LOG_FILE=$tmp/log ADMIN_TOKEN=t0k \
  ALERT_WEBHOOK_URL="http://127.0.0.1:$rport/hook" ALERT_WEBHOOK_FORMAT=json SERVICE_NAME=kvtest \
  ALERT_WEBHOOK_MIN_SEVERITY=critical "$kv" &
pid=$!
for _ in $(seq 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/health/startup")" = 200 ] && break
  sleep 0.05
done
admin=http://127.0.0.1:$hport
expect "the test alert needs the token" 401 \
  "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$admin/admin/alerts/test")"
expect "a wrong token is refused" 401 \
  "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer t0x' "$admin/admin/alerts/test")"
expect "with the token: queued on the one sink" '1 [0]' \
  "$(curl -s -X POST -H 'Authorization: Bearer t0k' "$admin/admin/alerts/test" | jq -c '"\(.sinks) \(.queued)"' -r)"
for _ in $(seq 200); do [ -s "$tmp/received" ] && break; sleep 0.05; done
expect "the receiver got it (the test alert passes any minimum severity)" 'triggered test_alert info kvtest' \
  "$(head -1 "$tmp/received" 2>/dev/null | jq -r '"\(.event) \(.alert.type) \(.alert.severity) \(.service)"')"
kill -TERM "$pid"
wait "$pid" 2>/dev/null

PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 LOG_FILE=$tmp/log2 \
  ALERT_WEBHOOK_URL="http://127.0.0.1:$rport/hook" ALERT_WEBHOOK_FORMAT=teams timeout 20 "$kv"
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then ok "an unknown format stops the service ($rc)"; else bad "an unknown format stops the service" "(exit $rc)"; fi

PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 LOG_FILE=$tmp/log3 \
  ALERT_WEBHOOK_URL="http://127.0.0.1:$rport/hook" ALERTMANAGER_MIN_SEVERITY=page timeout 20 "$kv" 2>"$tmp/err3"
rc=$?
if [ "$rc" -eq 78 ] && grep -q 'ALERTMANAGER_MIN_SEVERITY' "$tmp/err3"; then
  ok "an unknown severity exits 78 naming ALERTMANAGER_MIN_SEVERITY"
else
  bad "an unknown severity exits 78 naming ALERTMANAGER_MIN_SEVERITY" "(exit $rc: $(head -c 300 "$tmp/err3"))"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
