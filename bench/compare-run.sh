#!/usr/bin/env bash
# Runs keel's and the BEAM's benchmarks alternately, ROUNDS times (default 3),
# so that both sides see the same machine conditions (this machine is shared
# and noisy), takes each side's median per workload over the rounds, and
# prints the side-by-side table (bench/compare.sh). Used by make bench-compare.
#   bench/compare-run.sh BUILD_DIR [ROUNDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
out="$build/bench-compare"
mkdir -p "$out"
rm -f "$out"/keel-*.jsonl "$out"/beam-*.jsonl

for ((r = 1; r <= rounds; r++)); do
  echo "bench-compare: round $r of $rounds" >&2
  "$build/bench/bench_rt" --runs 3 >"$out/keel-$r.jsonl"
  "$build/bench/bench_otp" --runs 3 >>"$out/keel-$r.jsonl"
  BUILD_DIR="$build" "$here/erlang/run.sh" >"$out/beam-$r.jsonl"
done

# The median of each workload's values over the rounds, as JSON lines.
median() {
  cat "$@" | awk '
    match($0, /"bench": *"[^"]*"/) {
      b = substr($0, RSTART, RLENGTH); sub(/.*: *"/, "", b); sub(/"$/, "", b)
      match($0, /"unit": *"[^"]*"/); u = substr($0, RSTART, RLENGTH); sub(/.*: *"/, "", u); sub(/"$/, "", u)
      match($0, /"value": *[-0-9.eE+]+/); v = substr($0, RSTART, RLENGTH); sub(/.*: */, "", v)
      if (!(b in n)) order[++k] = b
      unit[b] = u; vals[b, ++n[b]] = v + 0
    }
    END {
      for (i = 1; i <= k; i++) {
        b = order[i]; m = n[b]
        for (x = 1; x <= m; x++) for (y = x + 1; y <= m; y++)
          if (vals[b, y] < vals[b, x]) { t = vals[b, x]; vals[b, x] = vals[b, y]; vals[b, y] = t }
        med = (m % 2) ? vals[b, (m + 1) / 2] : (vals[b, m / 2] + vals[b, m / 2 + 1]) / 2
        printf "{\"bench\": \"%s\", \"unit\": \"%s\", \"value\": %.1f}\n", b, unit[b], med
      }
    }'
}
median "$out"/keel-*.jsonl >"$build/bench-keel.jsonl"
median "$out"/beam-*.jsonl >"$build/bench-beam.jsonl"
"$here/compare.sh" "$build/bench-keel.jsonl" "$build/bench-beam.jsonl"

# Logging against pino (Node.js), when node is installed: the issue's anchor
# for log throughput. Same alternating rounds.
if command -v node >/dev/null && command -v npm >/dev/null; then
  rm -f "$out"/log-keel-*.jsonl "$out"/log-pino-*.jsonl
  for ((r = 1; r <= rounds; r++)); do
    echo "bench-compare: logs, round $r of $rounds" >&2
    "$build/bench/bench_log" --runs 3 >"$out/log-keel-$r.jsonl"
    "$here/node/run.sh" "$build" 2000000 3 | sed 's/"pino_/"/' >"$out/log-pino-$r.jsonl"
  done
  median "$out"/log-keel-*.jsonl >"$build/bench-log-keel.jsonl"
  median "$out"/log-pino-*.jsonl >"$build/bench-log-pino.jsonl"
  echo
  ANCHOR=pino "$here/compare.sh" "$build/bench-log-keel.jsonl" "$build/bench-log-pino.jsonl"
else
  echo "bench-compare: node/npm not installed: skipping the pino comparison" >&2
fi

# The HTTP client against Node's fetch (and node:http), both on one nginx
# on loopback, alternating rounds (bench/http/client_run.sh).
if command -v node >/dev/null && command -v nginx >/dev/null; then
  echo "bench-compare: HTTP client against Node's fetch" >&2
  ROUNDS=$rounds "$here/http/client_run.sh" "$build" >"$build/bench-http-client.jsonl" ||
    echo "bench-compare: the HTTP client benchmark failed" >&2
  cat "$build/bench-http-client.jsonl"
else
  echo "bench-compare: node or nginx not installed: skipping the HTTP client comparison" >&2
fi
# Shared tables (bench_table) against ETS (bench/erlang/ets_bench.erl):
# lookup, insert, update_counter on one and two schedulers, same alternating
# rounds, medians, the ETS column as the anchor.
rm -f "$out"/table-keel-*.jsonl "$out"/table-ets-*.jsonl
for ((r = 1; r <= rounds; r++)); do
  echo "bench-compare: shared tables, round $r of $rounds" >&2
  "$build/bench/bench_table" --runs 3 >"$out/table-keel-$r.jsonl"
  BUILD_DIR="$build" "$here/erlang/run_ets.sh" >"$out/table-ets-$r.jsonl"
done
median "$out"/table-keel-*.jsonl >"$build/bench-table-keel.jsonl"
median "$out"/table-ets-*.jsonl >"$build/bench-table-ets.jsonl"
echo
ANCHOR=ETS "$here/compare.sh" "$build/bench-table-keel.jsonl" "$build/bench-table-ets.jsonl"

# Event store reads against raw SQLite and raw libpq (bench_es alternates its
# own rounds, BENCH_ES_ROUNDS, default 5): es_read_all, es_read_all_parsed, and
# on PostgreSQL es_pg_read_all and es_pg_horizon, on a throwaway cluster
# (tests/es/pg_cluster.sh, as the tests' fixture does) that is stopped at the
# end even when a run fails. Without postgresql-15 the PostgreSQL pairs are
# skipped and said so.
es_reads() {
  local state="$out/es-reads-pg" cluster="$here/../tests/es/pg_cluster.sh" pg_url=""
  trap 'bash "$cluster" stop "$state" >/dev/null 2>&1 || true' EXIT
  if bash "$cluster" start "$state" >"$out/es-reads-pg.log" 2>&1; then
    pg_url=$(cat "$state/pg.url")
  else
    echo "bench-compare: no PostgreSQL cluster (see $out/es-reads-pg.log): SQLite reads only" >&2
  fi
  echo "bench-compare: event store reads" >&2
  BENCH_ES_ROUNDS=${BENCH_ES_ROUNDS:-5} BENCH_ES_PG_URL="$pg_url" LOG_LEVEL=warn \
    "$build/bench/bench_es" es_read_all es_read_all_parsed es_pg_read_all es_pg_horizon \
    >"$build/bench-es-reads.jsonl"
  bash "$cluster" stop "$state" >/dev/null 2>&1 || true
  trap - EXIT
  echo
  echo "event store reads (medians of alternating rounds; ratio = keel / raw, or with / without the horizon)"
  awk 'match($0, /"bench": *"[^"]*"/) {
         b = substr($0, RSTART, RLENGTH); sub(/.*: *"/, "", b); sub(/"$/, "", b)
         match($0, /"unit": *"[^"]*"/); u = substr($0, RSTART, RLENGTH); sub(/.*: *"/, "", u); sub(/"$/, "", u)
         match($0, /"value": *[-0-9.eE+]+/); v = substr($0, RSTART, RLENGTH); sub(/.*: */, "", v)
         printf "  %-32s %14s %s\n", b, v, u
       }' "$build/bench-es-reads.jsonl"
}
es_reads
# The event store's PostgreSQL write pairs (bench_es: es_pg_batch100x16,
# es_pg_single64) against raw libpq inserts of the same rows, on a throwaway
# cluster with production durability (tests/es/pg_cluster.sh with
# KEEL_PG_DURABLE=1), stopped on exit even when a benchmark fails.
es_pg_writes() {
  local pgstate
  pgstate=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-pg-XXXXXX")
  trap 'bash "'"$here"'/../tests/es/pg_cluster.sh" stop "'"$pgstate"'" >/dev/null 2>&1; rm -rf "'"$pgstate"'"' EXIT
  KEEL_PG_DURABLE=1 bash "$here/../tests/es/pg_cluster.sh" start "$pgstate" >&2
  echo
  echo "event store on PostgreSQL, keel vs raw libpq inserts (medians of $rounds rounds):"
  BENCH_ES_ROUNDS=$rounds BENCH_ES_PG_URL=$(cat "$pgstate/pg.url") \
    "$build/bench/bench_es" es_pg_batch100x16 es_pg_single64 | tee "$build/bench-es-pg.jsonl"
}
if [[ -x ${KEEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}/initdb ]]; then
  es_pg_writes
else
  echo "bench-compare: postgresql-15 not installed: skipping the event store's PostgreSQL pairs" >&2
fi

# Subscriptions (bench_sub): catch-up against the raw paged SELECT, a
# transactional projection against the same work by hand, live latency from
# an append's return to the handler's call; SQLite, then PostgreSQL on a
# throwaway cluster with production durability (fsync, synchronous_commit:
# the appends and the checkpoints pay what a deployment pays), stopped on
# exit even when a run fails. Without postgresql-15, SQLite only. A subshell:
# its EXIT trap leaves the one es_pg_writes set (its cluster) alone.
subscriptions() (
  local substate="" url=""
  if [[ -x ${KEEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}/initdb ]]; then
    substate=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-sub-pg-XXXXXX")
    trap 'bash "'"$here"'/../tests/es/pg_cluster.sh" stop "'"$substate"'" >/dev/null 2>&1; rm -rf "'"$substate"'"' EXIT
    if KEEL_PG_DURABLE=1 bash "$here/../tests/es/pg_cluster.sh" start "$substate" >"$out/sub-pg.log" 2>&1; then
      url=$(cat "$substate/pg.url")
    else
      echo "bench-compare: no PostgreSQL cluster (see $out/sub-pg.log): subscriptions on SQLite only" >&2
    fi
  else
    echo "bench-compare: postgresql-15 not installed: subscriptions on SQLite only" >&2
  fi
  echo "bench-compare: subscriptions" >&2
  BENCH_SUB_ROUNDS=${BENCH_SUB_ROUNDS:-5} BENCH_ES_PG_URL="$url" LOG_LEVEL=warn \
    "$build/bench/bench_sub" >"$build/bench-sub.jsonl"
  if [[ -n $substate ]]; then
    bash "$here/../tests/es/pg_cluster.sh" stop "$substate" >/dev/null 2>&1 || true
    rm -rf "$substate"
    trap - EXIT
  fi
  echo
  echo "subscriptions (medians of alternating rounds; ratio = keel / raw; latencies in ms)"
  awk 'match($0, /"bench": *"[^"]*"/) {
         b = substr($0, RSTART, RLENGTH); sub(/.*: *"/, "", b); sub(/"$/, "", b)
         match($0, /"unit": *"[^"]*"/); u = substr($0, RSTART, RLENGTH); sub(/.*: *"/, "", u); sub(/"$/, "", u)
         match($0, /"value": *[-0-9.eE+]+/); v = substr($0, RSTART, RLENGTH); sub(/.*: */, "", v)
         printf "  %-32s %14s %s\n", b, v, u
       }' "$build/bench-sub.jsonl"
)
subscriptions
