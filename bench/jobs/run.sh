#!/usr/bin/env bash
# run.sh - durable jobs (issue 15): keel's against BullMQ on a real Redis,
# the same no-op workloads, alternating rounds on the same machine.
#
# Sides, each round in this order (ROUNDS, default 3):
#   keel_sqlite   bench_jobs --one sqlite   (WAL, synchronous=FULL: an fsync per group commit)
#   bullmq        bench/node/bullmq.js on redis-server with its default
#                 persistence (RDB snapshots, no AOF: an acknowledged job may be
#                 lost on a crash)
#   keel_pg       bench_jobs --one pg       (a throwaway cluster with production
#                 durability: fsync, synchronous_commit on; tests/es/pg_cluster.sh)
#   bullmq_aof    redis-server --appendonly yes --appendfsync everysec (at most
#                 a second of acknowledged jobs lost)
#   bullmq_always redis-server --appendonly yes --appendfsync always (an fsync
#                 per write, as durable as keel)
# Each Redis is a fresh redis-server on a free loopback port and a scratch
# folder, started per round and stopped after. The workloads (bench_jobs.c,
# bullmq.js): throughput, 8 enqueuers x 500 no-op jobs into a queue of
# concurrency 20 that runs them meanwhile; steady, 500 jobs enqueued one at a
# time 2 ms apart, with the pickup latency p50/p99 (just before the enqueue
# call to the processor's start).
#
# Output, JSON lines on stdout (progress on stderr): the median over the rounds
# of every side's figures ({"bench":"jobs_sqlite_throughput",...},
# {"bench":"bullmq_throughput",...}, _steady, _pickup_p50, _pickup_p99), then
# the ratios against the anchor (bullmq, default persistence):
#   jobs_<backend>_throughput_vs_bullmq   keel / BullMQ, jobs/s (> 1: keel faster)
#   jobs_<backend>_p99_vs_bullmq          keel / BullMQ, pickup p99 (< 1: keel lower)
# and the same against bullmq_aof and bullmq_always (_vs_bullmq_aof, ...).
#
# Builds nothing: it expects BUILD_DIR/bench/bench_jobs (make build). BullMQ
# is installed from bench/node/package-lock.json into BUILD_DIR/node-jobs
# (npm ci), never into the repository.
#
# Usage: bench/jobs/run.sh [BUILD_DIR]   (default: build)
# Environment: ROUNDS (3), SIDES (the five above, in order; also
#   keel_sqlite_base and keel_pg_base: the same rounds run by BASE, another
#   build's bench_jobs, its figures named jobs_<backend>_base_*, to set a
#   change against its base in alternating rounds), KEEP=1 to keep
#   the scratch directory, PG_URL to use a running PostgreSQL instead of a
#   throwaway cluster.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
[[ $build = /* ]] || build=$PWD/$build
rounds=${ROUNDS:-3}
sides=${SIDES:-keel_sqlite bullmq keel_pg bullmq_aof bullmq_always}

say() { echo "bench-jobs: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in redis-server redis-cli node npm python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/install-deps.sh --bench)"
done
[[ -x $build/bench/bench_jobs ]] || die "$build/bench/bench_jobs is missing (make build)"
base_bin=${BASE:-}
if [[ " $sides " = *_base* ]]; then
  [[ -x $base_bin ]] || die "SIDES names a _base side: BASE must be another build's bench_jobs"
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-jobs.XXXXXX")
chmod 755 "$scratch"
redis_pid=
redis_port=
pg_state=
pg_url=${PG_URL:-}

# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

stop_redis() {
  if [[ -n $redis_pid ]]; then
    # SHUTDOWN NOSAVE, not SIGTERM: on SIGTERM Redis first saves its RDB and
    # stays up when that fails (its folder removed), leaking the server.
    # bench_stop's SIGTERM after it reaches a Redis already on its way out;
    # one still up 5 s later is killed.
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    bench_stop "$redis_pid" 50
    redis_pid=
  fi
}

cleanup() {
  stop_redis
  bench_end "$pg_state"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# BullMQ as locked, in BUILD_DIR/node-jobs.
node_dir=$build/node-jobs
if [[ ! -d $node_dir/node_modules/bullmq ]] || ! cmp -s "$root/bench/node/package-lock.json" "$node_dir/package-lock.json"; then
  say "installing BullMQ into $node_dir (npm ci)"
  mkdir -p "$node_dir"
  cp "$root/bench/node/package.json" "$root/bench/node/package-lock.json" "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --silent >&2)
fi

if [[ " $sides " = *" keel_pg"* && -z $pg_url ]]; then
  command -v psql >/dev/null || die "psql is not installed (postgresql-15)"
  pg_state=$scratch/pg
  KEEL_PG_DURABLE=1 bash "$root/tests/es/pg_cluster.sh" start "$pg_state" >&2
  pg_url=$(cat "$pg_state/pg.url")
fi

# Starts a fresh redis-server with the persistence flags given; sets
# redis_pid and redis_port (in this shell: not to be called in $(...), or
# stop_redis would not know the server).
start_redis() {
  local dir=$1
  shift
  redis_port=$(bench_free_port)
  mkdir -p "$dir"
  # Debian's binary without a config file: the built-in defaults (RDB
  # snapshots after 3600 s/1, 300 s/100 or 60 s/10000 changes; no AOF).
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --daemonize no \
    --logfile "$dir/redis.log" "$@" >/dev/null 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "redis-server did not answer within 10 s (see $dir/redis.log; KEEP=1)"
}

run_side() {
  local side=$1 r=$2 out=$scratch/$1-$2.jsonl
  say "round $r: $side (load $(cut -d' ' -f1-3 /proc/loadavg))"
  case $side in
  keel_sqlite)
    TMPDIR=$scratch "$build/bench/bench_jobs" --one sqlite >"$out"
    ;;
  keel_pg)
    TMPDIR=$scratch BENCH_ES_PG_URL=$pg_url "$build/bench/bench_jobs" --one pg >"$out"
    ;;
  keel_sqlite_base | keel_pg_base)
    local be=${side#keel_}
    be=${be%_base}
    TMPDIR=$scratch BENCH_ES_PG_URL=$pg_url "$base_bin" --one "$be" |
      sed "s/\"jobs_${be}_/\"jobs_${be}_base_/" >"$out"
    ;;
  bullmq | bullmq_aof | bullmq_always)
    local flags=()
    [[ $side = bullmq_aof ]] && flags=(--appendonly yes --appendfsync everysec)
    [[ $side = bullmq_always ]] && flags=(--appendonly yes --appendfsync always)
    start_redis "$scratch/redis-$side-$r" "${flags[@]}"
    NODE_PATH=$node_dir/node_modules node "$root/bench/node/bullmq.js" "$redis_port" "$side" 20 >"$out"
    stop_redis
    ;;
  *) die "unknown side $side" ;;
  esac
  say "round $r: $side: $(tr '\n' ' ' <"$out")"
}

say "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds; redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), bullmq $(node -p "require('$node_dir/node_modules/bullmq/package.json').version")"
for ((r = 1; r <= rounds; r++)); do
  for side in $sides; do
    run_side "$side" "$r"
  done
done

# Medians of every figure over the rounds, then the ratios.
cat "$scratch"/*-[0-9]*.jsonl | python3 -c '
import json, statistics, sys
vals, units, order = {}, {}, []
for line in sys.stdin:
    d = json.loads(line)
    if d["bench"] not in vals:
        order.append(d["bench"])
        vals[d["bench"]] = []
    vals[d["bench"]].append(d["value"])
    units[d["bench"]] = d["unit"]
med = {b: statistics.median(vals[b]) for b in order}
def emit(b, u, v):
    print(json.dumps({"bench": b, "unit": u, "value": round(v, 3)}))
for b in sorted(order):
    emit(b, units[b], med[b])
for backend in ("sqlite", "pg", "sqlite_base", "pg_base"):
    for anchor in ("bullmq", "bullmq_aof", "bullmq_always"):
        k, a = "jobs_" + backend, anchor
        sfx = "" if anchor == "bullmq" else anchor[len("bullmq"):]
        if k + "_throughput" in med and a + "_throughput" in med:
            emit(k + "_throughput_vs_bullmq" + sfx, "x", med[k + "_throughput"] / med[a + "_throughput"])
            emit(k + "_p99_vs_bullmq" + sfx, "x", med[k + "_pickup_p99"] / med[a + "_pickup_p99"])
'
say "machine after: load $(cut -d' ' -f1-3 /proc/loadavg)"
