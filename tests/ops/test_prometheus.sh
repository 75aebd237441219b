#!/bin/sh
# test_prometheus.sh - a real Prometheus server (Debian package prometheus)
# scrapes a keel program and its query API returns keel's metrics.
#
# Usage: test_prometheus.sh PATH/TO/prom_target
# Starts the fixture (tests/ops/prom_target.c) on a free loopback port, writes
# a prometheus.yml that scrapes it every second, starts prometheus on another
# loopback port with its storage in a temporary directory, waits (at most
# 60 s, a liveness bound only) until up{job="keel"} is 1, then asks the query
# API for keel metrics and checks the answers with jq: the target is healthy
# with no scrape error, it was scraped in OpenMetrics (Prometheus' preferred
# format, so the gaugehistogram type was accepted), and process, runtime,
# mailbox, scheduler, log and the fixture's own counter came back with
# plausible values. Everything started is killed on exit.
set -u

bin=${1:?usage: test_prometheus.sh PATH/TO/prom_target}
for tool in prometheus curl jq; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "test_prometheus.sh: $tool not found (apt-get install -y prometheus curl jq," \
         "or scripts/install-deps.sh)" >&2
    exit 1
  fi
done

tmp=$(mktemp -d)
target_pid=
prom_pid=
cleanup() {
  for p in $prom_pid $target_pid; do
    kill "$p" 2>/dev/null
  done
  for p in $prom_pid $target_pid; do
    wait "$p" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' HUP INT PIPE TERM

fail() {
  echo "FAIL: $*" >&2
  for f in target.err prometheus.log; do
    if [ -s "$tmp/$f" ]; then
      echo "--- $f (last 20 lines):" >&2
      tail -n 20 "$tmp/$f" >&2
    fi
  done
  exit 1
}

# 1. the fixture, on a port the kernel picks; it writes the port when listening.
"$bin" 0 "$tmp/target.port" 2>"$tmp/target.err" &
target_pid=$!
i=0
while [ ! -s "$tmp/target.port" ]; do
  kill -0 "$target_pid" 2>/dev/null || fail "prom_target exited before listening"
  i=$((i + 1))
  [ "$i" -le 300 ] || fail "prom_target did not listen within 30 s"
  sleep 0.1
done
tport=$(cat "$tmp/target.port")
curl -sf "http://127.0.0.1:$tport/metrics" >/dev/null || fail "prom_target does not serve /metrics"

cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: keel
    static_configs:
      - targets: ['127.0.0.1:$tport']
EOF

# 2. prometheus, on a free port: try a few random ones (a taken port makes it
# exit at once).
pport=
for attempt in 1 2 3 4 5 6 7 8; do
  p=$(( (($$ * 31 + $(date +%N | sed 's/^0*//;s/^$/0/') / 1000) + attempt * 7919) % 30000 + 20000 ))
  prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$p" >"$tmp/prometheus.log" 2>&1 &
  prom_pid=$!
  up=0
  for i in $(seq 1 100); do # up to 10 s for its web server
    if ! kill -0 "$prom_pid" 2>/dev/null; then break; fi
    if curl -sf "http://127.0.0.1:$p/-/ready" >/dev/null 2>&1; then
      up=1
      break
    fi
    sleep 0.1
  done
  if [ "$up" = 1 ]; then
    pport=$p
    break
  fi
  kill "$prom_pid" 2>/dev/null
  wait "$prom_pid" 2>/dev/null
  prom_pid=
done
[ -n "$pport" ] || fail "prometheus did not start (tried 8 ports)"
api="http://127.0.0.1:$pport/api/v1"

# query PROMQL: prints the JSON answer of an instant query.
query() {
  curl -sf --get "$api/query" --data-urlencode "query=$1"
}

# 3. wait until the target has been scraped and is up (liveness bound: 60 s).
i=0
until query 'up{job="keel"}' | jq -e '.data.result[0].value[1] == "1"' >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -le 120 ] || fail "up{job=\"keel\"} never became 1 in 60 s: $(query 'up{job="keel"}')"
  sleep 0.5
done

pass=0
# check NAME PROMQL JQ_FILTER: the filter over the query's JSON answer must be true.
check() {
  ans=$(query "$2") || fail "$1: query $2 failed"
  if echo "$ans" | jq -e "$3" >/dev/null 2>&1; then
    pass=$((pass + 1))
  else
    fail "$1: $2 answered $ans"
  fi
}
# a one-sample result with a numeric value satisfying COND (jq, on the number)
one() {
  echo ".status == \"success\" and (.data.result | length) == 1 and
        (.data.result[0].value[1] | tonumber | $1)"
}

targets=$(curl -sf "$api/targets") || fail "GET /api/v1/targets failed"
if echo "$targets" | jq -e '.data.activeTargets | length == 1 and .[0].health == "up" and
                            .[0].lastError == ""' >/dev/null; then
  pass=$((pass + 1))
else
  fail "target not healthy: $targets"
fi

# Scraped at least once in OpenMetrics (Prometheus asks for it first), so its
# parser accepted the whole exposition, the gaugehistogram included.
check scraped_in_openmetrics 'prom_target_scrapes_total{format="openmetrics"}' "$(one '. >= 1')"
check processes_alive 'keel_processes_alive' "$(one '. >= 3')"
check resident_memory 'process_resident_memory_bytes' "$(one '. > 100000')"
check cpu_seconds 'process_cpu_seconds_total' "$(one '. >= 0')"
check open_fds 'process_open_fds' "$(one '. >= 3')"
check messages_sent 'keel_messages_sent_total' "$(one '. >= 7')"
check mailbox_depth_max 'keel_mailbox_depth_max' "$(one '. >= 7')"
check mailbox_depth_histogram_count 'keel_mailbox_depth_gcount' "$(one '. >= 3')"
check mailbox_depth_histogram_sum 'keel_mailbox_depth_gsum' "$(one '. >= 7')"
check mailbox_depth_buckets 'count(keel_mailbox_depth_bucket)' "$(one '. == 10')"
check scheduler_utilization_per_scheduler 'keel_scheduler_utilization' \
  '.status == "success" and (.data.result | length) >= 1 and
   all(.data.result[]; (.metric.scheduler | test("^[0-9]+$")) and
                       (.value[1] | tonumber | . >= 0 and . <= 1))'
check scheduler_run_queue 'keel_scheduler_run_queue' \
  '(.data.result | length) >= 1 and all(.data.result[]; .value[1] | tonumber | . >= 0)'
check log_lines_info 'keel_log_lines_total{level="info"}' "$(one '. >= 1')"
check log_dropped 'keel_log_dropped_lines_total' "$(one '. == 0')"

echo "ok - prometheus $(prometheus --version 2>&1 | head -n 1 | cut -d' ' -f3) scraped keel:" \
     "$pass checks passed"
