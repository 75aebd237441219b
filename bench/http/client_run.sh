#!/usr/bin/env bash
# client_run.sh - the HTTP client benchmark (issue 12): requests per second
# over keep-alive against nginx on loopback (bench/http/nginx.conf: the fixed
# {"hello":"world"} at /api/hello, one worker), made by
#   keel   build/bin/bench-http-client: keel_http_client_request from
#          CONNECTIONS processes on one scheduler (KEEL_SCHEDULERS=1)
#   fetch  bench/node/http_client_fetch.js: Node's built-in fetch (undici),
#          CONNECTIONS concurrent loops on Node's one thread: the anchor
#   node_http  the same script with CLIENT=http: node:http's get with a
#          keep-alive Agent, Node's faster older client (a second anchor)
# the same nginx for all, in alternating rounds (keel, fetch, node_http, keel,
# ...) so all see the same machine; each figure is the median over ROUNDS.
#
# Output, one JSON line per figure (stdout; progress on stderr):
#   {"bench":"http_client_keel_rps","unit":"req/s","value":N}
#   {"bench":"http_client_fetch_rps","unit":"req/s","value":N}
#   {"bench":"http_client_node_http_rps","unit":"req/s","value":N}
#   {"bench":"http_client_keel_over_fetch","unit":"x","value":N}   goal >= 2
#   {"bench":"http_client_keel_over_node_http","unit":"x","value":N}
#
# Usage: bench/http/client_run.sh [BUILD_DIR]   (default: build)
# Environment: ROUNDS (3), DURATION_MS (10000), CONNECTIONS (50).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
[[ $build = /* ]] || build=$PWD/$build
rounds=${ROUNDS:-3}
export DURATION_MS=${DURATION_MS:-10000} CONNECTIONS=${CONNECTIONS:-50}

say() { echo "bench-http-client: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in nginx node curl; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[[ -x $build/bin/bench-http-client ]] || die "$build/bin/bench-http-client is missing (make build)"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench-httpc.XXXXXX")
nginx_pid=
cleanup() {
  if [[ -n $nginx_pid ]]; then
    kill -TERM "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user_line=
if [[ $(id -u) = 0 ]]; then user_line="user $(id -un) $(id -gn);"; fi
sed -e "s|@PREFIX@|$scratch|g" -e "s|@PORT@|$port|g" -e "s|@USER@|$user_line|g" \
  "$here/nginx.conf" >"$scratch/nginx.conf"
nginx -p "$scratch" -c "$scratch/nginx.conf" -e "$scratch/error.log" >"$scratch/nginx.out" 2>&1 &
nginx_pid=$!
url=http://127.0.0.1:$port/api/hello
for _ in $(seq 100); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" || true) = 200 ]] && break
  kill -0 "$nginx_pid" 2>/dev/null || die "nginx exited (see $scratch/error.log)"
  sleep 0.1
done

value() { sed -n 's/.*"value":\([0-9.e+-]*\).*/\1/p' | tail -1; }
for ((r = 1; r <= rounds; r++)); do
  v=$(KEEL_SCHEDULERS=1 "$build/bin/bench-http-client" "$url" | value)
  echo "$v" >>"$scratch/keel"
  say "round $r: keel $v req/s"
  v=$(node "$root/bench/node/http_client_fetch.js" "$url" | value)
  echo "$v" >>"$scratch/fetch"
  say "round $r: fetch $v req/s"
  v=$(CLIENT=http node "$root/bench/node/http_client_fetch.js" "$url" | value)
  echo "$v" >>"$scratch/node_http"
  say "round $r: node_http $v req/s"
done

median() {
  sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }'
}
emit() { printf '{"bench":"%s","unit":"%s","value":%s}\n' "$1" "$2" "$3"; }
k=$(median "$scratch/keel")
f=$(median "$scratch/fetch")
h=$(median "$scratch/node_http")
emit http_client_keel_rps req/s "$k"
emit http_client_fetch_rps req/s "$f"
emit http_client_node_http_rps req/s "$h"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a / b }'; }
emit http_client_keel_over_fetch x "$(ratio "$k" "$f")"
emit http_client_keel_over_node_http x "$(ratio "$k" "$h")"
say "keel / fetch req/s: $(ratio "$k" "$f") (goal >= 2); keel / node:http: $(ratio "$k" "$h")"
