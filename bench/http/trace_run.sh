#!/usr/bin/env bash
# trace_run.sh - the HTTP benchmark with tracing off and on, in alternating
# rounds (issue 13: at 100% sampling keel keeps at least 0.85x of its req/s).
#
# build/bin/bench-http (the whole default middleware chain) under
# wrk -t1 -c50 on loopback, ROUNDS times (default 3) each way, alternating:
# off, on, off, on... "On" is OTEL_TRACES_SAMPLER=always_on with the OTLP
# exporter posting to a sink on loopback, so spans are recorded, encoded and
# sent for real. The sink (SINK) is nginx by default (otlp_sink.conf: reads
# each POST and answers 200, about what a collector's network receive costs),
# or python3's http.server doing the same (SINK=python: a few ms of CPU per
# batch taken from the same two cores).
# Prints JSON lines: each round's req/s, then the medians and their ratio.
# Usage: bench/http/trace_run.sh [BUILD_DIR]; DURATION (default 5s), ROUNDS,
# SINK (nginx or python).
set -euo pipefail
build=${1:-build}
bin=$build/bin/bench-http
[[ -x $bin ]] || { echo "trace_run: no $bin (make build)" >&2; exit 1; }
scratch=$(mktemp -d "${TMPDIR:-/tmp}/keel-trace-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$scratch"; }
trap cleanup EXIT

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
. "$here/../lib.sh" # bench_free_port
sink_port=$(bench_free_port)
case ${SINK:-nginx} in
nginx)
  user_line=
  if [[ $(id -u) = 0 ]]; then user_line="user $(id -un) $(id -gn);"; fi
  sed -e "s|@PREFIX@|$scratch|g" -e "s|@PORT@|$sink_port|g" -e "s|@USER@|$user_line|g" \
    "$here/otlp_sink.conf" >"$scratch/nginx.conf"
  nginx -p "$scratch" -c "$scratch/nginx.conf" -e "$scratch/error.log" >/dev/null 2>&1 &
  ;;
python)
python3 - "$sink_port" >/dev/null 2>&1 <<'PY' &
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  ;;
*) echo "trace_run: SINK must be nginx or python" >&2; exit 2 ;;
esac
pids+=($!)
for _ in $(seq 50); do curl -fs -o /dev/null -X POST --data x "http://127.0.0.1:$sink_port/v1/traces" && break; sleep 0.1; done

round() { # $1: off|on -> req/s
  local port; port=$(bench_free_port)
  local env=(PORT=$port HOST=127.0.0.1 LOG_FILE=$scratch/log KEEL_SCHEDULERS=1)
  [[ $1 == on ]] && env+=(OTEL_TRACES_SAMPLER=always_on
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$sink_port OTEL_BSP_SCHEDULE_DELAY=1000)
  env "${env[@]}" "$bin" & local p=$!
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/api/hello" >/dev/null && break; sleep 0.1; done
  local rps
  rps=$(wrk -t1 -c50 -d"${DURATION:-5s}" "http://127.0.0.1:$port/api/hello" | awk '/Requests\/sec/ {print $2}')
  kill -TERM $p; wait $p || true
  if [[ $1 == on ]]; then # the exporter's own count: spans dropped or failed were not paid for in full
    grep '"tracing stopped"' "$scratch/log" | tail -1 |
      sed -E 's/.*"exported":([0-9]+).*"dropped":([0-9]+).*"failed":([0-9]+).*/{"bench": "http_trace_on_spans", "exported": \1, "dropped": \2, "failed": \3}/' >&2
  fi
  echo "$rps"
}

off=() on=()
for r in $(seq "${ROUNDS:-3}"); do
  a=$(round off); off+=("$a"); echo "{\"bench\": \"http_trace_off_round\", \"unit\": \"req/s\", \"value\": $a}"
  b=$(round on); on+=("$b"); echo "{\"bench\": \"http_trace_on_round\", \"unit\": \"req/s\", \"value\": $b}"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
mo=$(median "${off[@]}"); mn=$(median "${on[@]}")
echo "{\"bench\": \"http_trace_off\", \"unit\": \"req/s\", \"value\": $mo}"
echo "{\"bench\": \"http_trace_on\", \"unit\": \"req/s\", \"value\": $mn}"
echo "{\"bench\": \"http_trace_on_ratio\", \"unit\": \"x\", \"value\": $(awk -v a="$mn" -v b="$mo" 'BEGIN {printf "%.3f", a / b}')}"
