#!/usr/bin/env bash
# test_trace_service.sh - tracing as keel_service_main sets it up from the
# OTEL_* variables, on the reference microservice over loopback.
#
# Usage: test_trace_service.sh PATH/TO/microservice PATH/TO/ms_load
#
# An invalid OTEL_TRACES_SAMPLER stops the service with exit code 78 and a
# line naming the variable. With OTEL_TRACES_EXPORTER=console the server span
# of a request that came with a traceparent is written as a trace_span log
# line that continues the caller's trace (same trace id, the caller's span as
# parent) and carries the HTTP attributes; the response's traceparent names
# that span; the admin port's probes make none; SIGTERM flushes and logs
# "tracing stopped". Waits are liveness bounds only.
set -u
ms=${1:?usage: test_trace_service.sh PATH/TO/microservice PATH/TO/ms_load}
load=${2:?usage}
for tool in curl jq timeout; do
  command -v "$tool" >/dev/null || { echo "$tool not installed (scripts/install-deps.sh)"; exit 1; }
done
ms=$(cd "$(dirname "$ms")" && pwd)/$(basename "$ms")
load=$(cd "$(dirname "$load")" && pwd)/$(basename "$load")
tmp=$(mktemp -d)
cleanup() {
  for p in $(jobs -p); do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../kt_check.sh" # ok, bad, expect
. "$(dirname "$0")/ms_lib.sh"

# ---- configuration errors -------------------------------------------------------------------
mkdir -p "$tmp/cfg"
(cd "$tmp/cfg" && OTEL_TRACES_SAMPLER=sometimes timeout 20 "$ms") >/dev/null 2>"$tmp/cfg/err"
code=$?
if [ $code -eq 78 ] && grep -q '^Invalid configuration: OTEL_TRACES_SAMPLER: .*got sometimes' "$tmp/cfg/err"; then
  ok "an invalid OTEL_TRACES_SAMPLER exits 78 naming the variable"
else bad "an invalid OTEL_TRACES_SAMPLER exits 78" "exit $code, stderr: $(cat "$tmp/cfg/err")"; fi

# ---- spans as log lines ---------------------------------------------------------------------
mkdir -p "$tmp/a"
read -r port hport <<<"$("$load" freeport 2)"
(cd "$tmp/a" && PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 LOG_FILE=$tmp/a/log LOG_LEVEL=info \
  OTEL_TRACES_EXPORTER=console OTEL_BSP_SCHEDULE_DELAY=100 exec "$ms") &
pid=$!
if wait_startup "$hport" a && wait_log a '.msg == "tracing started"' 0; then ok "tracing starts"
else bad "tracing starts" "$(tail -5 "$tmp/a/log")"; fi
trace=4bf92f3577b34da6a3ce929d0e0e4736
parent=00f067aa0ba902b7
tp=$(curl -s -D - -o /dev/null -H "traceparent: 00-$trace-$parent-01" -H 'tracestate: k=v' \
  -X POST "http://127.0.0.1:$port/api/process" -d '{"delayMs":1}' | tr -d '\r' |
  awk -F': ' 'tolower($1) == "traceparent" {print $2}')
span=${tp:36:16}
if [ "${tp:0:36}" = "00-$trace-" ] && [ "${tp:53:2}" = 01 ]; then ok "the response's traceparent continues the trace"
else bad "the response's traceparent continues the trace" "got '$tp'"; fi
filter=".msg == \"trace_span\" and .kind == \"server\" and .traceId == \"$trace\" and .spanId == \"$span\""
if wait_log a "$filter and .parentSpanId == \"$parent\" and .attributes[\"http.route\"] == \"/api/process\" and .attributes[\"http.request.method\"] == \"POST\" and .attributes[\"http.response.status_code\"] == 200 and .attributes[\"server.port\"] == $port"; then
  ok "the server span is exported with its parent and HTTP attributes"
else bad "the server span is exported" "$(grep trace_span "$tmp/a/log" | tail -3)"; fi
if wait_log a ".msg == \"request completed\" and .path == \"/api/process\" and .trace_id == \"$trace\" and .span_id == \"$span\""; then
  ok "the access line names the request's trace and span"
else bad "the access line names the request's trace and span" "$(grep 'request completed' "$tmp/a/log" | tail -2)"; fi
kill -TERM $pid
wait $pid
code=$?
if [ $code -eq 0 ] && wait_log a '.msg == "tracing stopped" and .result == "ok" and .failed == 0' 0; then
  ok "SIGTERM flushes the exporter and exits 0"
else bad "SIGTERM flushes the exporter" "exit $code, $(tail -3 "$tmp/a/log")"; fi

# the admin port (probes, scrapes) makes no spans: wait_startup polled /health/startup
n=$(jq -c 'select(.msg == "trace_span" and (.attributes["url.path"] // "" | startswith("/health")))' "$tmp/a/log" | wc -l)
if [ "$n" -eq 0 ]; then ok "the admin port's probes make no spans"
else bad "the admin port's probes make no spans" "$n trace_span lines for /health"; fi

echo "# $passed passed, $failed failed"
[ $failed -eq 0 ]
