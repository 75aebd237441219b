#!/usr/bin/env bash
# run.sh - the orders service (examples/orders, docs/orders.md) under wrk
# (issue 10): commands/s and latency on SQLite and on PostgreSQL.
#
# Per round and backend: start build/bin/orders on a fresh database (SQLite:
# a new data folder; PostgreSQL: a new schema on a throwaway cluster with
# production durability, tests/es/pg_cluster.sh with KEEL_PG_DURABLE=1), wait
# until it is ready, warm up (WARMUP, 2 s), then measure with
#   wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency -s bench/orders/mix.lua
# and stop it (SIGTERM). mix.lua sends, per connection in turn: create, pay,
# ship, GET /orders/:id, the list query (three commands in five requests; the
# pay and ship act on ids the creates returned). The backends take turns
# (sqlite, pg, sqlite, pg, ...) ROUNDS times, so both see the same machine,
# and each figure is the median over the rounds. The service runs as a user
# would run it: its defaults (schedulers = cores, access log line per
# request, here to a file), RATE_LIMIT raised out of the way.
#
# No anchor: the figures are absolute, with the machine (cores, load before
# each round) on stderr, and the ratio PostgreSQL / SQLite.
#
# Output, one JSON line per figure (stdout; progress goes to stderr):
#   {"bench":"orders_sqlite_commands","unit":"commands/s","value":N}
#   {"bench":"orders_sqlite_requests","unit":"req/s","value":N}   (commands and queries)
#   {"bench":"orders_sqlite_p50","unit":"ms","value":N}           (also _p90, _p99; every request)
#   ... the same for pg, then
#   {"bench":"orders_pg_over_sqlite","unit":"x","value":N}        commands/s
#
# Builds nothing: it expects BUILD_DIR/bin/orders (make build).
#
# Usage: bench/orders/run.sh [BUILD_DIR]   (default: build)
# Environment: DURATION (10s), WARMUP (2s), CONNECTIONS (32), THREADS (1),
#   ROUNDS (3), BACKENDS ("sqlite pg": which, in this order), KEEP=1 to keep
#   the scratch directory (service logs, wrk output), PG_URL to use a running
#   PostgreSQL (a database the bench may create schemas in) instead of a
#   throwaway cluster, PERF=SECONDS to record a CPU profile (perf record -g)
#   of the service for that long during each measurement (perf-<backend>-<round>.data
#   in the kept scratch directory).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
[[ $build = /* ]] || build=$PWD/$build
duration=${DURATION:-10s}
warmup=${WARMUP:-2s}
connections=${CONNECTIONS:-32}
threads=${THREADS:-1}
rounds=${ROUNDS:-3}
backends=${BACKENDS:-sqlite pg}
perf_s=${PERF:-0}

say() { echo "bench-orders: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/install-deps.sh --bench)"
done
[[ -x $build/bin/orders ]] || die "$build/bin/orders is missing (make build)"
((perf_s == 0)) || command -v perf >/dev/null || die "PERF needs perf (linux-perf)"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-orders.XXXXXX")
chmod 755 "$scratch"
server_pid=
pg_state=
pg_url=${PG_URL:-}

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

stop_server() { # 10 s to drain and exit, then killed
  bench_stop "$server_pid" 100
  server_pid=
}

cleanup() {
  stop_server
  bench_end "$pg_state"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ " $backends " = *" pg "* && -z $pg_url ]]; then
  command -v psql >/dev/null || die "psql is not installed (postgresql-15)"
  pg_state=$scratch/pg
  KEEL_PG_DURABLE=1 bash "$root/tests/es/pg_cluster.sh" start "$pg_state" >&2
  pg_url=$(cat "$pg_state/pg.url")
fi

# Starts the service for backend $1, round $2; sets server_pid.
start_server() {
  local backend=$1 r=$2 port=$3 hport=$4 url
  case $backend in
  sqlite)
    mkdir -p "$scratch/sqlite-$r"
    url=sqlite:$scratch/sqlite-$r/orders.db
    ;;
  pg)
    local schema=bench_orders_$r sep='?'
    PGOPTIONS=-cclient_min_messages=warning psql -q "$pg_url" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >&2
    [[ $pg_url = *\?* ]] && sep='&'
    url="$pg_url${sep}options=-csearch_path%3D$schema"
    ;;
  esac
  DATABASE_URL=$url PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 RATE_LIMIT=100000000 \
    LOG_FILE=$scratch/$backend-$r.log "$build/bin/orders" >"$scratch/$backend-$r.out" 2>&1 &
  server_pid=$!
  for _ in $(seq 300); do
    kill -0 "$server_pid" 2>/dev/null || die "orders ($backend) exited (see $scratch/$backend-$r.*; KEEP=1)"
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/health/ready" || true) = 200 ]] && return 0
    sleep 0.1
  done
  die "orders ($backend) was not ready within 30 s"
}

# wrk's "latency_us p50=N p90=N p99=N" and "commands=N ... seconds=S" lines
# into $scratch/fig-BACKEND-R: "commands/s req/s p50 p90 p99" (ms).
parse_wrk() {
  local out=$1 dest=$2
  awk '
    /^ORDERS commands=/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    /^ORDERS latency_us/ { for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END {
      if (v["seconds"] == "" || v["p99"] == "") exit 1
      s = v["seconds"]
      printf "%.1f %.1f %.3f %.3f %.3f %d\n", v["commands"] / s, (v["commands"] + v["queries"]) / s,
        v["p50"] / 1000, v["p90"] / 1000, v["p99"] / 1000, v["errors"]
    }' "$out" >"$dest" || die "could not parse wrk's output: $out"
}

# CPU time (clock ticks) of process $1, with its exited children's.
ticks() {
  awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# CPU ticks of the throwaway cluster: the postmaster, its exited children
# and its live ones (0 when PostgreSQL is not ours).
pg_ticks() {
  local pm sum=0 c
  [[ -n $pg_state && -f $pg_state/pg.dir ]] || { echo 0; return; }
  pm=$(head -1 "$(cat "$pg_state/pg.dir")/data/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  sum=$(ticks "$pm")
  for c in $(cat "/proc/$pm/task/$pm/children" 2>/dev/null); do
    sum=$((sum + $(ticks "$c")))
  done
  echo "$sum"
}

run_one() {
  local backend=$1 r=$2 port hport perf_pid= t0 t1 s0 s1 p0 p1
  read -r port hport <<<"$(bench_free_port 2)"
  say "round $r: $backend (load $(cut -d' ' -f1-3 /proc/loadavg))"
  start_server "$backend" "$r" "$port" "$hport"
  wrk -t"$threads" -c"$connections" -d"$warmup" -s "$here/mix.lua" "http://127.0.0.1:$port" >/dev/null
  if ((perf_s > 0)); then
    perf record -g -o "$scratch/perf-$backend-$r.data" -p "$server_pid" -- sleep "$perf_s" \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  t0=$(date +%s.%N) s0=$(ticks "$server_pid") p0=$(pg_ticks)
  wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$here/mix.lua" \
    "http://127.0.0.1:$port" >"$scratch/wrk-$backend-$r.txt"
  t1=$(date +%s.%N) s1=$(ticks "$server_pid") p1=$(pg_ticks)
  [[ -n $perf_pid ]] && wait "$perf_pid" || true
  # where the cores went: the service's CPU and, on our cluster, PostgreSQL's
  awk -v t="$t1 - $t0" -v s=$((s1 - s0)) -v p=$((p1 - p0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { split(t, a, " - "); w = a[1] - a[2]; printf "%.0f %.0f\n", 100 * s / hz / w, 100 * p / hz / w }' \
    >"$scratch/cpu-$backend-$r"
  stop_server
  parse_wrk "$scratch/wrk-$backend-$r.txt" "$scratch/fig-$backend-$r"
  say "round $r: $backend: $(awk '{ printf "%s commands/s, %s req/s, p50 %s ms, p90 %s ms, p99 %s ms, %d errors", $1, $2, $3, $4, $5, $6 }' "$scratch/fig-$backend-$r")$(awk -v pg="$backend$pg_state" '{ printf "; CPU: service %s%%", $1; if (pg ~ /^pg./) printf ", postgres %s%%", $2 }' "$scratch/cpu-$backend-$r")"
  if grep -q -e '^  Non-2xx' -e '^  Socket errors' "$scratch/wrk-$backend-$r.txt"; then
    say "WARNING: $backend: $(grep -e '^  Non-2xx' -e '^  Socket errors' "$scratch/wrk-$backend-$r.txt" | tr -s ' ' | tr '\n' ';')"
  fi
}

say "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$threads -c$connections -d$duration, $rounds rounds"
for ((r = 1; r <= rounds; r++)); do
  for backend in $backends; do
    run_one "$backend" "$r"
  done
done

# The median of column $2 over the rounds of backend $1.
median() {
  cat "$scratch"/fig-"$1"-* | awk -v c="$2" '{ print $c }' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'
}

emit() { printf '{"bench":"%s","unit":"%s","value":%s}\n' "$1" "$2" "$3"; }

declare -A cmds
for backend in $backends; do
  cmds[$backend]=$(median "$backend" 1)
  emit "orders_${backend}_commands" "commands/s" "${cmds[$backend]}"
  emit "orders_${backend}_requests" "req/s" "$(median "$backend" 2)"
  emit "orders_${backend}_p50" "ms" "$(median "$backend" 3)"
  emit "orders_${backend}_p90" "ms" "$(median "$backend" 4)"
  emit "orders_${backend}_p99" "ms" "$(median "$backend" 5)"
done
if [[ -n ${cmds[sqlite]:-} && -n ${cmds[pg]:-} ]]; then
  v=$(awk -v a="${cmds[pg]}" -v b="${cmds[sqlite]}" 'BEGIN { printf "%.3f\n", a / b }')
  emit orders_pg_over_sqlite x "$v"
  say "PostgreSQL / SQLite commands/s: $v"
fi
say "machine after: load $(cut -d' ' -f1-3 /proc/loadavg)"
