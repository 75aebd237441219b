#!/usr/bin/env bash
# test_orders.sh - the orders service (examples/orders, docs/orders.md) end
# to end over loopback: commands and their rules, conflicts, idempotency
# keys, the read models catching up, readiness, the notifier's
# deduplication, correlation ids in the logs, and the SIGTERM drain with the
# subscriptions' shutdown phases.
#
# Usage: test_orders.sh PATH/TO/orders PATH/TO/ms_load
# On SQLite (a fresh ./data in a temporary folder), or on PostgreSQL when
# KEEL_TEST_ES_URL_FILE names a file holding a server's URL (the es_pg
# fixture's): then in a schema of its own, dropped at the end.
set -u
orders=${1:?usage: test_orders.sh PATH/TO/orders PATH/TO/ms_load}
load=${2:?usage: test_orders.sh PATH/TO/orders PATH/TO/ms_load}
for tool in curl jq timeout; do
  command -v "$tool" >/dev/null || { echo "$tool not installed (scripts/install-deps.sh)"; exit 1; }
done
orders=$(cd "$(dirname "$orders")" && pwd)/$(basename "$orders")
tmp=$(mktemp -d)
chmod 755 "$tmp"
pg= schema=
if [ -n "${KEEL_TEST_ES_URL_FILE:-}" ]; then
  pg=$(cat "$KEEL_TEST_ES_URL_FILE")
  schema=orders_t$$
  psql -q "$pg" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" || exit 1
  sep='?'
  case $pg in *\?*) sep='&' ;; esac
  export DATABASE_URL="$pg${sep}options=-csearch_path%3D$schema"
fi
cleanup() {
  for p in $(jobs -p); do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  # the row lock's session (the readiness case) would hold the drop up
  [ -n "$pg" ] && psql -q "$pg" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'orders_locker'" >/dev/null
  [ -n "$schema" ] && psql -q "$pg" -c "DROP SCHEMA IF EXISTS $schema CASCADE"
  rm -rf "$tmp"
}
trap cleanup EXIT

# sql STATEMENT: run on the service's database (while it is stopped)
sql() {
  if [ -n "$pg" ]; then psql -q "$DATABASE_URL" -c "$1"; else sqlite3 "$tmp/data/orders.db" "$1"; fi
}

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../kt_check.sh" # ok, bad, expect

read -r port hport <<<"$("$load" freeport 2)"
api=http://127.0.0.1:$port admin=http://127.0.0.1:$hport
cd "$tmp" || exit 1

start() { # start LOGFILE
  PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 RATE_LIMIT=100000 CORS_ORIGINS=https://shop.example \
    LOG_FILE=$1 "$orders" &
  pid=$!
  for _ in $(seq 400); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/health/startup")" = 200 ] && return
    sleep 0.05
  done
  bad "the service started"
}
stop() { # SIGTERM and wait: the exit code
  kill -TERM "$pid"
  wait "$pid"
}
# req ARGS...: "body status" of one request
req() { curl -s -w ' %{http_code}' "$@"; }
# code_of ARGS...: "error.code status" of a failing request
code_of() { req "$@" | sed -E 's/^(.*) ([0-9]+)$/\1\n\2/' | { read -r b; read -r c; echo "$(jq -r .error.code <<<"$b") $c"; }; }
# poll NAME WANT COMMAND: retry COMMAND until it prints WANT (10 s)
poll() {
  local got
  for _ in $(seq 200); do
    got=$(eval "$3")
    [ "$got" = "$2" ] && break
    sleep 0.05
  done
  expect "$1" "$2" "$got"
}

start "$tmp/log"
expect "ready (the store and the read model's subscription are required)" "200 ok ok" \
  "$(curl -s -w ' %{http_code}' "$admin/health/ready" | sed -E 's/^(.*) ([0-9]+)$/\1\n\2/' | { read -r b; read -r c; echo "$c $(jq -r .checks.eventstore.status <<<"$b") $(jq -r '.checks["sub.orders_view"].status' <<<"$b")"; })"

body='{"customer":"ann","items":[{"sku":"A1","qty":2,"price_cents":500},{"sku":"B2","qty":1,"price_cents":250}]}'
out=$(curl -s -D "$tmp/h1" -X POST "$api/orders" -d "$body")
id=$(jq -r .id <<<"$out")
expect "create: 201, placed, total from the items" "201 placed 1250 1" \
  "$(awk 'NR==1{print $2}' "$tmp/h1") $(jq -r '"\(.status) \(.total_cents) \(.version)"' <<<"$out")"
create_rid=$(tr -d '\r' <"$tmp/h1" | awk -F': ' 'tolower($1)=="x-request-id"{print $2}')
expect "create: security headers" nosniff \
  "$(tr -d '\r' <"$tmp/h1" | awk -F': ' 'tolower($1)=="x-content-type-options"{print $2}')"
expect "rate limited per client (RATE_LIMIT)" 100000 \
  "$(curl -s -D - -o /dev/null "$api/orders/stats" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-ratelimit-limit"{print $2}')"
expect "CORS: a preflight from the allowed origin" "https://shop.example" \
  "$(curl -s -D - -o /dev/null -X OPTIONS "$api/orders" -H 'Origin: https://shop.example' -H 'Access-Control-Request-Method: POST' | tr -d '\r' | awk -F': ' 'tolower($1)=="access-control-allow-origin"{print $2}')"
expect "an order without items: 400 VALIDATION_ERROR" "VALIDATION_ERROR 400" \
  "$(code_of -X POST "$api/orders" -d '{"customer":"ann","items":[]}')"
expect "a qty of 0: 400" "VALIDATION_ERROR 400" \
  "$(code_of -X POST "$api/orders" -d '{"customer":"ann","items":[{"sku":"x","qty":0,"price_cents":1}]}')"
expect "malformed JSON: 400 BAD_REQUEST" "BAD_REQUEST 400" "$(code_of -X POST "$api/orders" -d '{"cust')"
expect "get it from the aggregate" "ann placed 2" \
  "$(curl -s "$api/orders/$id" | jq -r '"\(.customer) \(.status) \(.items | length)"')"
expect "an unknown order: 404 NOT_FOUND" "NOT_FOUND 404" "$(code_of "$api/orders/nope")"
expect "pay an unknown order: 404" "NOT_FOUND 404" "$(code_of -X POST "$api/orders/nope/pay")"

# the rules: 409 with keel's envelope
out=$(req -X POST "$api/orders/$id/ship")
expect "ship before pay: 409 CONFLICT in the envelope" "409 false CONFLICT cannot ship an order that is placed" \
  "${out##* } $(jq -r '"\(.success) \(.error.code) \(.error.message)"' <<<"${out% *}")"
etag=$(curl -s -D - -o /dev/null "$api/orders/$id" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
expect "GET gives the version as ETag" '"1"' "$etag"
expect "If-Match of another version: 409" "CONFLICT 409" \
  "$(code_of -X POST "$api/orders/$id/pay" -H 'If-Match: "7"')"
expect "pay with If-Match of the version: 200 paid" "200 paid 2" \
  "$(req -X POST "$api/orders/$id/pay" -H "If-Match: $etag" | sed -E 's/^(.*) ([0-9]+)$/\2 \1/' | { read -r c b; echo "$c $(jq -r '"\(.status) \(.version)"' <<<"$b")"; })"
expect "pay twice: 409" "CONFLICT 409" "$(code_of -X POST "$api/orders/$id/pay")"
expect "ship: 200 shipped" shipped "$(curl -s -X POST "$api/orders/$id/ship" | jq -r .status)"
expect "cancel after shipping: 409" "CONFLICT 409" "$(code_of -X POST "$api/orders/$id/cancel")"

# conflicts: eight payments of one order at once; the aggregate decides each
# on the state its events follow, so exactly one pays
id2=$(curl -s -X POST "$api/orders" -d '{"customer":"bob","items":[{"sku":"C3","qty":1,"price_cents":700}]}' | jq -r .id)
for i in $(seq 8); do curl -s -o /dev/null -w '%{http_code}\n' -X POST "$api/orders/$id2/pay" >"$tmp/pay$i" & done
wait $(jobs -p | grep -v "^$pid$")
expect "eight concurrent payments: one 200, seven 409" "1 7" \
  "$(cat "$tmp"/pay* | grep -c '^200$') $(cat "$tmp"/pay* | grep -c '^409$')"
expect "... and one OrderPaid (version 2)" 2 "$(curl -s "$api/orders/$id2" | jq .version)"

# idempotency keys: a retried command answers as the first time
first=$(req -X POST "$api/orders" -H 'Idempotency-Key: create-42' -d '{"customer":"cy","items":[{"sku":"D4","qty":3,"price_cents":100}]}')
again=$(curl -s -D "$tmp/h2" -w ' %{http_code}' -X POST "$api/orders" -H 'Idempotency-Key: create-42' -d '{"customer":"cy","items":[{"sku":"D4","qty":3,"price_cents":100}]}')
expect "a create retried with its key: the same body and status" "$first" "$again"
expect "... marked as a replay" true \
  "$(tr -d '\r' <"$tmp/h2" | awk -F': ' 'tolower($1)=="idempotent-replayed"{print $2}')"
id3=$(jq -r .id <<<"${first% *}")
p1=$(req -X POST "$api/orders/$id3/pay" -H 'Idempotency-Key: pay-1')
expect "... and a payment with a key" "200 paid" "${p1##* } $(jq -r .status <<<"${p1% *}")"
curl -s -o /dev/null -X POST "$api/orders/$id3/cancel"
expect "the payment retried after a cancel: the first answer (paid, version 2)" "$p1" \
  "$(req -X POST "$api/orders/$id3/pay" -H 'Idempotency-Key: pay-1')"
expect "... nothing appended by the retries (version 3: placed, paid, cancelled)" "3 cancelled" \
  "$(curl -s "$api/orders/$id3" | jq -r '"\(.version) \(.status)"')"

# the read models catch up
poll "the list by status shows the shipped order" "$id" \
  "curl -s '$api/orders?status=shipped' | jq -r '.orders[].id'"
poll "the list by customer" "cy cancelled" \
  "curl -s '$api/orders?customer=cy' | jq -r '.orders[] | \"\(.customer) \(.status)\"'"
expect "status and customer together" 0 \
  "$(curl -s "$api/orders?status=placed&customer=cy" | jq '.orders | length')"
# ann: shipped (1250 paid); bob: paid (700); cy: paid 300 then cancelled (refunded)
poll "stats: counts per status and revenue" '{"placed":0,"paid":1,"shipped":1,"cancelled":1} 1950' \
  "curl -s '$api/orders/stats' | jq -c '.by_status' | tr -d '\n'; echo \" \$(curl -s '$api/orders/stats' | jq .revenue_cents)\""

# the notifier mailed the placed, shipped and cancelled events, once each,
# logging with the request id of the request that caused them
poll "email lines: 3 placed, 1 shipped, 1 cancelled" "5" \
  "jq -r 'select(.msg == \"email sent\") | .event' '$tmp/log' | wc -l | tr -d ' '"
expect "the create's email carries its request id (correlation through the event metadata)" \
  "OrderPlaced" "$(jq -r --arg r "$create_rid" 'select(.msg == "email sent" and .requestId == $r) | .event' "$tmp/log")"
expect "metrics: the read model's lag, 0" 0 \
  "$(curl -s "$admin/metrics" | awk '/^sub_lag_events\{.*orders_view/ {print $2}')"
expect "metrics: the store's appends" 1 "$(curl -s "$admin/metrics" | grep -c '^es_events_appended_total')"
expect "metrics: requests by route" 1 \
  "$(curl -s "$admin/metrics" | grep -c '^http_requests_total{.*route="/orders/:id/pay".*status="409"')"

stop
expect "SIGTERM: exit 0" 0 $?
for s in orders_view order_stats notifier; do
  expect "$s: shutdown phases logged" \
    "subscription stopping: reading stopped, in-flight event finished|subscription stopped: checkpoint stored, closed" \
    "$(jq -r --arg s "$s" 'select(.subscription == $s and (.msg | startswith("subscription stop"))) | .msg' "$tmp/log" | paste -sd '|')"
done
expect "the subscriptions stop after the HTTP drain" "http drained" \
  "$(jq -r 'select(.msg == "http drained" or .msg == "subscription stopping: reading stopped, in-flight event finished") | .msg' "$tmp/log" | head -1)"

# at least once, deduplicated: the notifier's checkpoint lost, its events
# come again and are not mailed twice; the projections are not applied twice
sql "DELETE FROM keel_sub_checkpoints WHERE name = 'notifier'" >/dev/null
start "$tmp/log2"
poll "a restart with the notifier's checkpoint lost: 5 events skipped as already sent" 5 \
  "jq -r 'select(.msg == \"notification already sent, skipped\") | .eventId' '$tmp/log2' | wc -l | tr -d ' '"
expect "... and no email sent again" 0 "$(jq -r 'select(.msg == "email sent") | .msg' "$tmp/log2" | wc -l | tr -d ' ')"
expect "the stats after a restart: unchanged" '{"placed":0,"paid":1,"shipped":1,"cancelled":1} 1950' \
  "$(curl -s "$api/orders/stats" | jq -c '.by_status' | tr -d '\n') $(curl -s "$api/orders/stats" | jq .revenue_cents)"
expect "the order after a restart" "shipped 3" "$(curl -s "$api/orders/$id" | jq -r '"\(.status) \(.version)"')"

# the read model rebuilt: its rows and checkpoint dropped, the projection
# replays the events
stop >/dev/null
sql "DELETE FROM keel_sub_checkpoints WHERE name = 'orders_view'" >/dev/null
sql "DELETE FROM orders_view" >/dev/null
start "$tmp/log3"
poll "the read model rebuilt from the events" 3 "curl -s '$api/orders' | jq '.orders | length'"
expect "ready once caught up" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$admin/health/ready")"
expect "the admin port lists the subscriptions (keel_sub_admin_routes)" "notifier order_stats orders_view" \
  "$(curl -s "$admin/admin/subscriptions" | jq -r '[.subscriptions[].name | sub("\\.p[0-9]+$"; "")] | unique | join(" ")')"
expect "the admin port: no parked events" "0 200" \
  "$(curl -s -w ' %{http_code}' "$admin/admin/subscriptions/notifier/parked" | sed -E 's/^(.*) ([0-9]+)$/\1\n\2/' | { read -r b; read -r c; echo "$(jq '.parked | length' <<<"$b") $c"; })"
stop
expect "SIGTERM again: exit 0" 0 $?

# readiness holds while the read model replays (PostgreSQL: a row lock held
# by another session keeps the replaying projection from catching up; FOR
# UPDATE takes no table lock that would stop the start's CREATE INDEX). The
# lock is seen held before the start and let go only after the probes (its
# session ended): a fixed sleep let it go before a slow start was done.
if [ -n "$pg" ]; then
  sql "DELETE FROM keel_sub_checkpoints WHERE name = 'orders_view'" >/dev/null
  PGAPPNAME=orders_locker psql -q "$DATABASE_URL" \
    -c "BEGIN; SELECT 1 FROM orders_view WHERE id = '$id' FOR UPDATE; SELECT pg_sleep(120); COMMIT" >/dev/null 2>&1 &
  locker=$!
  poll "the row lock is held" 1 \
    "psql -qtA '$DATABASE_URL' -c \"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'orders_locker' AND wait_event = 'PgSleep'\""
  start "$tmp/log4"
  expect "catching up: not ready, the read model's check critical, not caught up" "503 critical false" \
    "$(curl -s -w ' %{http_code}' "$admin/health/ready" | sed -E 's/^(.*) ([0-9]+)$/\1\n\2/' | { read -r b; read -r c; echo "$c $(jq -r '.checks["sub.orders_view"] | "\(.status) \(.caught_up)"' <<<"$b")"; })"
  expect "... while live: 200" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$admin/health/live")"
  sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'orders_locker'" >/dev/null
  wait $locker
  poll "ready once the projection caught up" 200 "curl -s -o /dev/null -w '%{http_code}' '$admin/health/ready'"
  stop
  expect "SIGTERM: exit 0" 0 $?
fi

# two instances on one PostgreSQL, every subscription a group of 4
# partitions (a fresh schema: a group's checkpoints are its partitions'):
# each event reaches the read models and the mailer once; one instance
# killed with SIGKILL, its partitions move to the survivor
if [ -n "$pg" ]; then
  schema2=${schema}_two
  psql -q "$pg" -c "DROP SCHEMA IF EXISTS $schema2 CASCADE; CREATE SCHEMA $schema2" || exit 1
  export DATABASE_URL="$pg${sep}options=-csearch_path%3D$schema2" SUB_PARTITIONS=4
  start "$tmp/log5"
  pid1=$pid port1=$port hport1=$hport
  read -r port hport <<<"$("$load" freeport 2)"
  start "$tmp/log6"
  pid2=$pid
  api1=http://127.0.0.1:$port1 api2=http://127.0.0.1:$port
  for i in $(seq 10); do
    for a in "$api1" "$api2"; do
      oid=$(curl -s -X POST "$a/orders" -d "{\"customer\":\"c$i\",\"items\":[{\"sku\":\"s\",\"qty\":1,\"price_cents\":100}]}" | jq -r .id)
      curl -s -o /dev/null -w '%{http_code}\n' -X POST "$a/orders/$oid/pay" >>"$tmp/paid"
      echo "$oid" >>"$tmp/oids"
    done
  done
  expect "two instances: 20 orders placed and paid" 20 "$(grep -c '^200$' "$tmp/paid")"
  poll "two instances: the stats count each event once" '{"placed":0,"paid":20,"shipped":0,"cancelled":0} 2000' \
    "curl -s '$api2/orders/stats' | jq -c '.by_status' | tr -d '\n'; echo \" \$(curl -s '$api2/orders/stats' | jq .revenue_cents)\""
  poll "... and each order is mailed once, by one instance or the other" 20 \
    "cat '$tmp/log5' '$tmp/log6' | jq -r 'select(.msg == \"email sent\") | .eventId' | sort -u | wc -l | tr -d ' '"
  expect "... no email twice" 20 "$(cat "$tmp/log5" "$tmp/log6" | jq -r 'select(.msg == "email sent") | .eventId' | wc -l | tr -d ' ')"
  expect "... both instances took partitions" "yes yes" \
    "$(for l in log5 log6; do grep -q '"email sent"' "$tmp/$l" && echo -n yes || echo -n no; done | sed 's/yesyes/yes yes/')"
  kill -KILL "$pid1"
  wait "$pid1" 2>/dev/null
  for i in $(seq 5); do
    curl -s -o /dev/null -X POST "$api2/orders" -d '{"customer":"late","items":[{"sku":"s","qty":1,"price_cents":1}]}'
  done
  poll "one instance killed: the survivor takes its partitions (all placed counted)" 5 \
    "curl -s '$api2/orders/stats' | jq .by_status.placed"
  # (at least once: a mail the killed one sent but had not recorded may come twice)
  poll "... and every order placed is mailed" 25 \
    "cat '$tmp/log5' '$tmp/log6' | jq -r 'select(.msg == \"email sent\" and .event == \"OrderPlaced\") | .eventId' | sort -u | wc -l | tr -d ' '"
  pid=$pid2
  stop
  expect "the survivor: SIGTERM, exit 0" 0 $?
  psql -q "$pg" -c "DROP SCHEMA IF EXISTS $schema2 CASCADE"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
