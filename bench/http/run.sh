#!/usr/bin/env bash
# run.sh - the HTTP benchmark (issue 5): the same endpoint, GET /api/hello ->
# {"hello":"world"}, served in turn by
#   keel     build/bin/bench-http: the whole default middleware chain, one
#            scheduler (KEEL_SCHEDULERS=1), access log to a file
#   fastify  bench/node/http_fastify.js: Fastify 5 with pino access logs to a
#            file, request ids, helmet, cors, rate-limit, prom-client metrics
#   nginx    bench/http/nginx.conf: a fixed body, no logging, one worker (the
#            ceiling)
# each loaded by wrk on loopback. Per server: start it on a free loopback port,
# wait until it answers, warm up (WARMUP, 2 s), measure with
#   wrk -t1 -c50 -d${DURATION:-10s} --latency
# and stop it. With ROUNDS > 1 the three take turns ROUNDS times (so all see
# the same machine conditions) and each figure is the median over the rounds.
#
# Output, one JSON line per figure (stdout; progress goes to stderr):
#   {"bench":"http_keel_rps","unit":"req/s","value":N}
#   {"bench":"http_keel_p50","unit":"ms","value":N}     (also _p90, _p99)
#   ... the same for fastify and nginx, then the ratios of req/s:
#   {"bench":"http_keel_over_fastify","unit":"x","value":N}   target >= 4
#   {"bench":"http_keel_over_nginx","unit":"x","value":N}     target >= 0.6
#
# Builds nothing: it expects BUILD_DIR/bin/bench-http (make build) and skips
# keel with a message when it is missing. The Node.js packages are installed
# from bench/node/package-lock.json into BUILD_DIR/node-http (npm ci), never
# into the repository.
#
# Usage: bench/http/run.sh [BUILD_DIR]   (default: build)
# Environment: DURATION (10s), WARMUP (2s), CONNECTIONS (50), THREADS (1),
#   ROUNDS (1), SERVERS ("keel fastify nginx": which ones, in this order),
#   PIN=1 to pin each server to CPU 0 and wrk to CPU 1 (taskset), KEEP=1 to
#   keep the scratch directory (logs, wrk output).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
[[ $build = /* ]] || build=$PWD/$build
duration=${DURATION:-10s}
warmup=${WARMUP:-2s}
connections=${CONNECTIONS:-50}
threads=${THREADS:-1}
rounds=${ROUNDS:-1}
servers=${SERVERS:-keel fastify nginx}

say() { echo "bench-http: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in wrk curl; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-http.XXXXXX")
server_pid=
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"

stop_server() { # 5 s to exit in order, then killed
  bench_stop "$server_pid" 50
  server_pid=
}

cleanup() {
  stop_server
  bench_end ""
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pin_server=()
pin_wrk=()
if [[ ${PIN:-0} = 1 ]]; then
  command -v taskset >/dev/null || die "PIN=1 needs taskset"
  pin_server=(taskset -c 0)
  pin_wrk=(taskset -c 1)
fi

# Waits up to 20 s for 200 on /api/hello; fails if the server died.
wait_ready() {
  local port=$1 name=$2
  for _ in $(seq 200); do
    kill -0 "$server_pid" 2>/dev/null || die "$name exited before answering (see its log in $scratch)"
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/api/hello" || true) = 200 ]]; then
      return 0
    fi
    sleep 0.1
  done
  die "$name did not answer on port $port within 20 s"
}

# The Fastify stack's packages, as locked, in BUILD_DIR/node-http.
node_modules_ready=0
install_node_modules() {
  ((node_modules_ready)) && return 0
  command -v node >/dev/null || die "node is not installed"
  local dir=$build/node-http
  mkdir -p "$dir"
  if [[ ! -d $dir/node_modules/fastify ]] || ! cmp -s "$root/bench/node/package-lock.json" "$dir/package-lock.json"; then
    say "installing the Fastify stack into $dir (npm ci)"
    cp "$root/bench/node/package.json" "$root/bench/node/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --silent >&2)
  fi
  node_modules_ready=1
}

# Starts server $1 in the background on port $2; sets server_pid.
start_server() {
  local name=$1 port=$2 r=$3
  case $name in
  keel)
    PORT=$port HOST=127.0.0.1 LOG_FILE=$scratch/keel-$r-access.log KEEL_SCHEDULERS=1 \
      "${pin_server[@]}" "$build/bin/bench-http" >"$scratch/keel-$r.out" 2>&1 &
    ;;
  fastify)
    PORT=$port HOST=127.0.0.1 LOG_FILE=$scratch/fastify-$r-access.log \
      NODE_PATH=$build/node-http/node_modules NODE_ENV=production \
      "${pin_server[@]}" node "$root/bench/node/http_fastify.js" >"$scratch/fastify-$r.out" 2>&1 &
    ;;
  nginx)
    local prefix=$scratch/nginx-$r user_line=
    mkdir -p "$prefix"
    if [[ $(id -u) = 0 ]]; then user_line="user $(id -un) $(id -gn);"; fi
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" -e "s|@USER@|$user_line|g" \
      "$here/nginx.conf" >"$prefix/nginx.conf"
    "${pin_server[@]}" nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" \
      >"$scratch/nginx-$r.out" 2>&1 &
    ;;
  esac
  server_pid=$!
}

# wrk's duration ("1.23ms", "456.78us", "1.02s", "2.00m") in milliseconds.
to_ms() {
  awk -v t="$1" 'BEGIN {
    v = t + 0; u = t; sub(/^[0-9.]+/, "", u)
    if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000
    printf "%.3f\n", v }'
}

# Parses one wrk --latency output into $scratch/fig-NAME-R: "rps p50 p90 p99".
parse_wrk() {
  local out=$1 dest=$2 name=$3
  local rps p50 p90 p99
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p50=$(awk '$1 == "50%" { print $2 }' "$out")
  p90=$(awk '$1 == "90%" { print $2 }' "$out")
  p99=$(awk '$1 == "99%" { print $2 }' "$out")
  [[ -n $rps && -n $p50 && -n $p90 && -n $p99 ]] || die "could not parse wrk's output for $name: $out"
  echo "$rps $(to_ms "$p50") $(to_ms "$p90") $(to_ms "$p99")" >"$dest"
  if grep -q -e '^  Non-2xx' -e '^  Socket errors' "$out"; then
    say "WARNING: $name: $(grep -e '^  Non-2xx' -e '^  Socket errors' "$out" | tr -s ' ' | tr '\n' ';')"
  fi
}

run_one() {
  local name=$1 r=$2 port
  if [[ $name = keel && ! -x $build/bin/bench-http ]]; then
    ((r == 1)) && say "skipping keel: $build/bin/bench-http is missing (make build)"
    return 0
  fi
  [[ $name = nginx ]] && { command -v nginx >/dev/null || die "nginx is not installed"; }
  [[ $name = fastify ]] && install_node_modules
  port=$(bench_free_port)
  say "round $r: $name on 127.0.0.1:$port"
  start_server "$name" "$port" "$r"
  wait_ready "$port" "$name"
  "${pin_wrk[@]}" wrk -t"$threads" -c"$connections" -d"$warmup" "http://127.0.0.1:$port/api/hello" >/dev/null
  "${pin_wrk[@]}" wrk -t"$threads" -c"$connections" -d"$duration" --latency \
    "http://127.0.0.1:$port/api/hello" >"$scratch/wrk-$name-$r.txt"
  stop_server
  parse_wrk "$scratch/wrk-$name-$r.txt" "$scratch/fig-$name-$r" "$name"
  say "round $r: $name: $(awk '{ printf "%s req/s, p50 %s ms, p90 %s ms, p99 %s ms", $1, $2, $3, $4 }' "$scratch/fig-$name-$r")"
}

for ((r = 1; r <= rounds; r++)); do
  for name in $servers; do
    run_one "$name" "$r"
  done
done

# The median of column $2 over the rounds of server $1 (empty if it never ran).
median() {
  local name=$1 col=$2
  compgen -G "$scratch/fig-$name-*" >/dev/null || return 0
  cat "$scratch"/fig-"$name"-* | awk -v c="$col" '{ print $c }' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'
}

emit() { printf '{"bench":"%s","unit":"%s","value":%s}\n' "$1" "$2" "$3"; }

declare -A rps
for name in $servers; do
  v=$(median "$name" 1)
  [[ -n $v ]] || continue
  rps[$name]=$v
  emit "http_${name}_rps" "req/s" "$v"
  emit "http_${name}_p50" "ms" "$(median "$name" 2)"
  emit "http_${name}_p90" "ms" "$(median "$name" 3)"
  emit "http_${name}_p99" "ms" "$(median "$name" 4)"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a / b }'; }
if [[ -n ${rps[keel]:-} ]]; then
  if [[ -n ${rps[fastify]:-} ]]; then
    v=$(ratio "${rps[keel]}" "${rps[fastify]}")
    emit http_keel_over_fastify x "$v"
    say "keel / fastify req/s: $v (target >= 4)"
  fi
  if [[ -n ${rps[nginx]:-} ]]; then
    v=$(ratio "${rps[keel]}" "${rps[nginx]}")
    emit http_keel_over_nginx x "$v"
    say "keel / nginx req/s: $v (target >= 0.6)"
  fi
fi
