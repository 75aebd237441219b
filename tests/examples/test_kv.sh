#!/usr/bin/env bash
# test_kv.sh - the tutorial's key-value service (examples/kv), end to end
# over loopback: what docs/tutorial.md says it does, and what
# keel_service_main gives it (configuration errors, the admin port, the
# drain, a port in use).
#
# Usage: test_kv.sh PATH/TO/kv PATH/TO/ms_load
set -u
kv=${1:?usage: test_kv.sh PATH/TO/kv PATH/TO/ms_load}
load=${2:?usage: test_kv.sh PATH/TO/kv PATH/TO/ms_load}
for tool in curl jq timeout; do
  command -v "$tool" >/dev/null || { echo "$tool not installed (scripts/install-deps.sh)"; exit 1; }
done
kv=$(cd "$(dirname "$kv")" && pwd)/$(basename "$kv")
tmp=$(mktemp -d)
cleanup() {
  for p in $(jobs -p); do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../kt_check.sh" # ok, bad, expect

read -r port hport <<<"$("$load" freeport 2)"
api=http://127.0.0.1:$port
cd "$tmp" || exit 1
PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 KV_MAX_KEYS=3 KV_SWEEP=50ms LOG_FILE=$tmp/log "$kv" &
pid=$!
for _ in $(seq 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/health/startup")" = 200 ] && break
  sleep 0.05
done

# status BODY: "code body" of one request
req() { curl -s -w ' %{http_code}' "$@"; }

expect "put a new key: 201" '{"key":"a"} 201' "$(req -X PUT "$api/kv/a" -d '{"value":{"n":1}}')"
expect "put it again: 200" '{"key":"a"} 200' "$(req -X PUT "$api/kv/a" -d '{"value":[1,2]}')"
expect "get it" '[1,2] null 200' "$(req "$api/kv/a" | sed -E 's/^(.*) ([0-9]+)$/\1\n\2/' | { read -r b; read -r c; echo "$(jq -c .value <<<"$b") $(jq -c .expiresIn <<<"$b") $c"; })"
expect "a key holding a slash, percent-encoded" '{"key":"x/y"} 201' "$(req -X PUT "$api/kv/x%2Fy" -d '{"value":"s"}')"
expect "read back by the same encoded path" '"s"' "$(curl -s "$api/kv/x%2Fy" | jq -c .value)"
expect "a body without value: 400 VALIDATION_ERROR" 'VALIDATION_ERROR 400' \
  "$(curl -s -w ' %{http_code}' -X PUT "$api/kv/b" -d '{"v":1}' | sed -E 's/^(.*) ([0-9]+)$/\1\n\2/' | { read -r b; read -r c; echo "$(jq -r .error.code <<<"$b") $c"; })"
expect "malformed JSON: 400" 400 "$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$api/kv/b" -d '{"value":')"
expect "a negative ttl: 400" 400 "$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$api/kv/b" -d '{"value":1,"ttl":-5}')"
expect "a ttl key: 201" 201 "$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$api/kv/t" -d '{"value":1,"ttl":1500}')"
expect "full past KV_MAX_KEYS: 507 INSUFFICIENT_STORAGE" 'INSUFFICIENT_STORAGE 507' \
  "$(curl -s -w ' %{http_code}' -X PUT "$api/kv/c" -d '{"value":1}' | sed -E 's/^(.*) ([0-9]+)$/\1\n\2/' | { read -r b; read -r c; echo "$(jq -r .error.code <<<"$b") $c"; })"
expect "three keys" 3 "$(curl -s "$api/kv" | jq .keys)"
# the janitor, not a read, drops the expired key
for _ in $(seq 200); do [ "$(curl -s "$api/kv" | jq .keys)" = 2 ] && break; sleep 0.05; done
expect "the janitor drops an expired key nobody read" 2 "$(curl -s "$api/kv" | jq .keys)"
expect "an expired key is 404" 404 "$(curl -s -o /dev/null -w '%{http_code}' "$api/kv/t")"
expect "delete: 204" 204 "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$api/kv/a")"
expect "delete again: 404 NOT_FOUND" NOT_FOUND "$(curl -s -X DELETE "$api/kv/a" | jq -r .error.code)"
expect "a method the route lacks: 405" 405 "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$api/kv/a")"
expect "readiness includes the store's check" ok "$(curl -s "http://127.0.0.1:$hport/health/ready" | jq -r .checks.kv.status)"
expect "metrics label the route" 1 "$(curl -s "http://127.0.0.1:$hport/metrics" | grep -c '^http_requests_total{.*route="/kv/:key".*status="507"')"
expect "rate limiting is on in a service" 100 "$(curl -s -D - -o /dev/null "$api/kv" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-ratelimit-limit"{print $2}')"
expect "one config_loaded line, first" config_loaded "$(head -1 "$tmp/log" | jq -r .msg)"
expect "the service's fields in it" 3 "$(head -1 "$tmp/log" | jq -r .config.KV_MAX_KEYS)"

# a port in use (held without SO_REUSEPORT): the cause is logged and the exit is 1
busy=$("$load" freeport)
"$load" hold "$busy" 30 >"$tmp/hold" &
holder=$!
for _ in $(seq 100); do grep -q holding "$tmp/hold" && break; sleep 0.05; done
PORT=$busy HEALTH_PORT=$("$load" freeport) HOST=127.0.0.1 LOG_FILE=$tmp/log2 timeout 20 "$kv"
expect "a port in use: exit 1" 1 $?
kill $holder
expect "... with the cause logged" "address already in use" "$(jq -r 'select(.msg == "service failed to start") | .error' "$tmp/log2")"

kill -TERM $pid
wait $pid
expect "SIGTERM: exit 0 after the drain" 0 $?
expect "the drain is logged" ok "$(jq -r 'select(.msg == "http drained") | .result' "$tmp/log")"

# invalid configuration names the variable and exits 78
out=$(KV_MAX_KEYS=0 PORT=$port HEALTH_PORT=$hport timeout 20 "$kv" 2>&1)
expect "bad KV_MAX_KEYS: exit 78" 78 $?
case $out in *KV_MAX_KEYS*) ok "... naming KV_MAX_KEYS" ;; *) bad "... naming KV_MAX_KEYS" "($out)" ;; esac
out=$(PORT=$port HEALTH_PORT=$port timeout 20 "$kv" 2>&1)
expect "HEALTH_PORT equal to PORT: exit 78" 78 $?

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
