#!/usr/bin/env bash
# test_keelctl.sh - keelctl (tools/, docs/keelctl.md) against a running
# build/bin/microservice with ADMIN_TOKEN set: every command, --json read by
# jq (real fields), a worker killed and its restart seen in tree and ps, the
# log level changed and seen in the overview, `logs -f` following the event
# stream, `top` under tmux (the process list on the screen, a resize, q
# quits), and the exit codes: 3 for an unreachable node, 1 and the 401
# message for a wrong token, 2 for usage errors. Each check prints ok or
# FAIL; waits are liveness bounds, never verdicts.
#
# Usage: test_keelctl.sh PATH/TO/microservice PATH/TO/keelctl PATH/TO/ms_load
set -u
ms=${1:?usage: test_keelctl.sh PATH/TO/microservice PATH/TO/keelctl PATH/TO/ms_load}
kc=${2:?usage: test_keelctl.sh PATH/TO/microservice PATH/TO/keelctl PATH/TO/ms_load}
load=${3:?usage: test_keelctl.sh PATH/TO/microservice PATH/TO/keelctl PATH/TO/ms_load}
for tool in curl jq tmux timeout; do
  command -v "$tool" >/dev/null || { echo "$tool not installed (scripts/install-deps.sh)"; exit 1; }
done
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
ms=$(abs "$ms") kc=$(abs "$kc") load=$(abs "$load")
tmp=$(mktemp -d)
session=keelctl-test-$$
cleanup() {
  tmux kill-session -t "$session" 2>/dev/null
  for p in $(jobs -p); do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../kt_check.sh" # ok, bad, expect
# has NAME FILE PATTERN: the file holds a line matching the (grep -E) pattern
has() { if grep -Eq -- "$3" "$2"; then ok "$1"; else bad "$1" "(no /$3/ in: $(head -c 600 "$2"))"; fi; }
# until_ok SECONDS COMMAND...: retries the command until it succeeds
until_ok() {
  local end=$((SECONDS + $1))
  shift
  while ! "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}

read -r port hport dead <<<"$("$load" freeport 3)"
mkdir -p "$tmp/ms"
# ALERT_WEBHOOK_URL points at a closed port: alert-test then has one sink to queue on.
(cd "$tmp/ms" && exec env PORT="$port" HEALTH_PORT="$hport" HOST=127.0.0.1 LOG_FILE="$tmp/ms/log" \
  LOG_LEVEL=info SERVICE_NAME=kc-it ADMIN_TOKEN=s3cret ALERT_WEBHOOK_URL="http://127.0.0.1:$dead/hook" \
  WORKER_COUNT=3 "$ms") &
until_ok 20 curl -sf "http://127.0.0.1:$hport/health/startup" || { echo "microservice did not start"; exit 1; }

export KEEL_URL=http://127.0.0.1:$hport ADMIN_TOKEN=s3cret
unset NO_COLOR
k() { "$kc" "$@"; }

# ---- usage ----
k --help >"$tmp/help"
expect "--help exits 0" 0 $?
has "--help lists the commands" "$tmp/help" '^  alert-test'
k ps --help >"$tmp/o"
has "a command's --help" "$tmp/o" '^usage: keelctl ps \[--sort'
k >/dev/null 2>&1
expect "no command: exit 2" 2 $?
k frobnicate 2>"$tmp/e"
expect "an unknown command: exit 2" 2 $?
has "an unknown command is named" "$tmp/e" "unknown command 'frobnicate'"
k ps --sort colour 2>"$tmp/e"
expect "a bad sort: exit 2" 2 $?
has "a bad sort shows the usage" "$tmp/e" '^usage: keelctl ps'
k ps --limit 0 2>/dev/null
expect "a bad limit: exit 2" 2 $?
k loglevel loud 2>/dev/null
expect "an unknown level: exit 2" 2 $?
k proc 2>/dev/null
expect "proc without a pid: exit 2" 2 $?
k restart only-one 2>/dev/null
expect "restart without a child: exit 2" 2 $?

# ---- reads ----
k status >"$tmp/o"
expect "status exits 0" 0 $?
has "status names the service" "$tmp/o" '^service +kc-it'
has "status shows health" "$tmp/o" '^health +healthy'
if grep -q $'\033' "$tmp/o"; then bad "piped output has no colour"; else ok "piped output has no colour"; fi
expect "status --json: the overview" "kc-it true true true" \
  "$(k --json status | jq -r '"\(.service) \(.actions) \(.schedulers | length > 0) \(.processes > 5)"')"
k health >"$tmp/o"
expect "health passing: exit 0" 0 $?
has "health lists the checks" "$tmp/o" '^processes +ok +yes'
expect "health --json" "healthy ok" "$(k health --json | jq -r '"\(.status) \(.checks.processes.status)"')"

k tree >"$tmp/o"
has "tree shows the supervisor and its strategy" "$tmp/o" 'kc-it_sup.*one_for_one'
has "tree shows the router" "$tmp/o" '─ router <'
has "tree shows the workers" "$tmp/o" '└─ worker-3 <'
expect "tree --json: the workers under the root" "router worker-1 worker-2 worker-3" \
  "$(k --json tree | jq -r '[.tree[0].children[].id] | join(" ")')"

k ps --name worker --sort age >"$tmp/o"
has "ps: a table with its heads" "$tmp/o" '^PID +NAME +STATUS +MAILBOX +MESSAGES +MEMORY +AGE +SUPERVISOR'
expect "ps --name: only the workers" 3 "$(grep -c ' worker-[0-9] ' "$tmp/o")"
has "ps says what matched" "$tmp/o" '^3 of [0-9]+ processes matched, sorted by age'
expect "ps --json: sort, limit, fields" "memory 2 true" \
  "$(k ps --json --sort memory --limit 2 | jq -r '"\(.sort) \(.processes | length) \(.processes[0].pid | test("^<"))"')"
k proc worker-1 >"$tmp/o"
has "proc by registered name" "$tmp/o" '^supervisor +<'
has "proc shows the child id" "$tmp/o" '^child id +worker-1'
sup=$(k --json proc worker-1 | jq -r .supervisor)
expect "proc --json of the supervisor: its children" "one_for_one 4" \
  "$(k --json proc "$sup" | jq -r '"\(.strategy) \(.children | length)"')"
# links and monitors: worker-1 is linked to its supervisor, which monitors
# nothing of it (a supervisor links); the supervisor's page lists its
# children among its links, by name
has "proc lists the links, with names" "$tmp/o" "^links +$sup"
expect "proc --json: links with pid, name and registered" "true true" \
  "$(k --json proc worker-1 | jq -r --arg s "$sup" '"\(.links_total >= 1) \(any(.links[]; .pid == $s))"')"
expect "proc --json of the supervisor: its workers among its links" "3" \
  "$(k --json proc "$sup" | jq -r '[.links[] | select(.registered != null and (.registered | startswith("worker-")))] | length')"
k proc "$sup" >"$tmp/o"
has "proc of the supervisor: a child in its links by registered name" "$tmp/o" '^ +<[0-9.]+> worker-[0-9]'
has "proc shows who monitors it" "$tmp/o" '^monitored by '
# panels: the microservice registers "workers" (keel_admin_panel_register)
k panel >"$tmp/o"
has "panel: the registered panels" "$tmp/o" '^workers +Workers'
k panel workers >"$tmp/o"
has "panel NAME: its title" "$tmp/o" '^Workers'
has "panel NAME: a table, a column per member" "$tmp/o" '^worker +pid +requests'
expect "panel NAME: a row per worker" 3 "$(grep -c '^worker-[0-9] ' "$tmp/o")"
expect "panel --json" "workers 3" "$(k --json panel workers | jq -r '"\(.name) \(.data | length)"')"
k panel nope 2>"$tmp/e"
expect "panel of an unknown name: exit 1" 1 $?
k panel a b 2>/dev/null
expect "panel with two names: exit 2" 2 $?
k proc '<9.9.9>' 2>"$tmp/e"
expect "proc of a pid that does not live: exit 1" 1 $?
has "... with the 404 message" "$tmp/e" '404 NOT_FOUND from http://127.0.0.1:[0-9]+/admin/processes/.*: no such process'

k metrics http_requests_in_flight >"$tmp/o"
has "metrics PATTERN: the matching series" "$tmp/o" '^http_requests_in_flight [0-9]'
if grep -v http_requests_in_flight "$tmp/o" | grep -q .; then bad "metrics PATTERN: only matching lines"; else ok "metrics PATTERN: only matching lines"; fi
expect "metrics --json: parsed series" "keel_processes_alive true" \
  "$(k --json metrics keel_processes_alive | jq -r '.[0] | "\(.name) \(.value > 0)"')"
k alerts >"$tmp/o"
has "alerts: the manager's counters" "$tmp/o" '^alerts running: [0-9]+ active'
expect "alerts --json" "true" "$(k --json alerts | jq -r '.stats.running and (.active | type == "array")')"

# ---- actions ----
old=$(k --json proc worker-2 | jq -r .pid)
k kill worker-2 >"$tmp/o"
expect "kill: exit 0" 0 $?
has "kill says what it did" "$tmp/o" "^killed $old \(reason: kill"
restarted() { [ "$(k --json proc worker-2 | jq -r .pid)" != "$old" ]; }
if until_ok 10 restarted; then ok "the supervisor restarted worker-2"; else bad "the supervisor restarted worker-2"; fi
k tree >"$tmp/o"
has "tree shows the restart count" "$tmp/o" 'worker-2 <[0-9.]+> worker +restarts 1'
has "tree lists the recent restart" "$tmp/o" 'worker-2 under kc-it_sup -> <.*killed'
expect "ps shows the new pid" "$(k --json proc worker-2 | jq -r .pid)" \
  "$(k ps --name worker-2 | awk '$2 == "worker-2" {print $1}')"
old=$(k --json proc worker-2 | jq -r .pid)
k kill worker-2 "stuck, see INC-42" >"$tmp/o"
expect "kill with a text reason: exit 0" 0 $?
if until_ok 10 restarted; then ok "killed with a text: restarted"; else bad "killed with a text: restarted"; fi
k tree >"$tmp/o"
has "tree's recent restarts show the operator's text" "$tmp/o" 'worker-2 under kc-it_sup -> <.*stuck, see INC-42'
k kill worker-2 normal 2>"$tmp/e"
expect "kill with reason normal is refused: exit 1" 1 $?
has "... with the node's reason" "$tmp/e" '400 VALIDATION_ERROR .*normal'
k kill '<9.9.9>' 2>/dev/null
expect "kill of a pid that does not live: exit 1" 1 $?

new=$(k --json restart "$sup" worker-1 | jq -r '"\(.action) \(.pid | test("^<"))"')
expect "restart --json: a fresh pid" "restarted true" "$new"
k terminate kc-it_sup worker-3 >"$tmp/o"
has "terminate" "$tmp/o" '^terminated worker-3 under <'
expect "terminated: not running in the tree" "null" \
  "$(k --json tree | jq -r '.tree[0].children[] | select(.id == "worker-3") | .pid')"
k restart kc-it_sup worker-3 >"$tmp/o"
has "restart brings it back" "$tmp/o" '^restarted worker-3 under <.*new pid <'
# the router is a required health check: without it the node is unhealthy
k terminate kc-it_sup router >/dev/null
k health >"$tmp/o"
expect "health with the router stopped: exit 1" 1 $?
has "health says unhealthy (503)" "$tmp/o" '^unhealthy \(503\)'
has "... and which check" "$tmp/o" '^router +critical +yes .*router is not running'
k status >/dev/null
expect "status of an unhealthy node: exit 1" 1 $?
expect "health --json of an unhealthy node: the body, exit 1" "unhealthy 1" \
  "$(k --json health | jq -r .status) $(k --json health >/dev/null; echo $?)"
k restart kc-it_sup router >/dev/null
k health >/dev/null
expect "router back: health exit 0" 0 $?
k restart kc-it_sup nosuch 2>"$tmp/e"
expect "restart of an unknown child: exit 1" 1 $?

k loglevel debug >"$tmp/o"
has "loglevel says the change" "$tmp/o" '^log level debug \(was info\)'
expect "the overview has the new level" debug "$(k --json status | jq -r .log_level)"
k status | grep -q '^log level *debug'
expect "status shows it" 0 $?
k loglevel info >/dev/null

expect "alert-test: one sink" 1 "$(k --json alert-test | jq -r .sinks)"
k alert-test >"$tmp/o"
has "alert-test says where it went" "$tmp/o" '^test alert sent to 1 sink'

# ---- logs ----
k logs --level warn >"$tmp/o"
has "logs: the admin actions (at warn)" "$tmp/o" '"msg":"admin action".*"action":"kill"'
expect "logs --level warn: only warn and above" true \
  "$(k --json logs --level warn | jq -r '[.lines[].level] | all(. == "warn" or . == "error" or . == "fatal")')"
expect "logs --json: lines and next" "true true" \
  "$(k --json logs --limit 5 | jq -r '"\(.lines | length <= 5) \(.next > 0)"')"
if grep -q s3cret "$tmp/o" "$tmp/help"; then bad "the token is never printed"; else ok "the token is never printed"; fi
k logs -f --level warn >"$tmp/follow" 2>&1 &
fpid=$!
followed() { grep -q '"action":"kill".*"pid":"'"$cur"'"' "$tmp/follow"; }
sleep 0.5 # the stream is open or opening: the kill below comes after the tail
cur=$(k --json proc worker-1 | jq -r .pid)
k kill worker-1 >/dev/null
if until_ok 10 followed; then ok "logs -f follows the stream (the new kill appears)"; else bad "logs -f follows the stream" "($(tail -c 400 "$tmp/follow"))"; fi
kill "$fpid" 2>/dev/null
wait "$fpid" 2>/dev/null

# ---- top under tmux ----
tmux new-session -d -s "$session" -x 120 -y 30 \
  "env KEEL_URL=$KEEL_URL TERM=xterm-256color '$kc' top; echo TOP-EXITED \$?; sleep 60"
screen() { tmux capture-pane -p -t "$session" >"$tmp/screen"; }
top_shows() { screen && grep -q "$1" "$tmp/screen"; }
if until_ok 15 top_shows 'kc-it_sup'; then ok "top shows a known process"; else bad "top shows a known process" "($(cat "$tmp/screen"))"; fi
has "top shows the process list header" "$tmp/screen" 'PID +NAME +STATUS +MAILBOX +MESSAGES +MEMORY +AGE'
has "top shows the overview" "$tmp/screen" 'keelctl top +kc-it'
tmux send-keys -t "$session" e
if until_ok 5 top_shows 'sort: m mailbox'; then ok "top: a sort key keeps it running"; else bad "top: a sort key"; fi
tmux resize-window -t "$session" -x 100 -y 20 2>/dev/null
footer_at_20() { screen && sed -n 20p "$tmp/screen" | grep -q 'q quit'; }
if until_ok 5 footer_at_20; then ok "top redraws on a resize"; else bad "top redraws on a resize" "($(cat "$tmp/screen"))"; fi
tmux send-keys -t "$session" q
if until_ok 5 top_shows 'TOP-EXITED 0'; then ok "top quits on q"; else bad "top quits on q" "($(cat "$tmp/screen"))"; fi

# ---- colour on a terminal, NO_COLOR ----
tmux kill-session -t "$session" 2>/dev/null
tmux new-session -d -s "$session" -x 120 -y 30 \
  "env KEEL_URL=$KEEL_URL TERM=xterm-256color '$kc' health; echo HEALTH-DONE; env NO_COLOR=1 KEEL_URL=$KEEL_URL TERM=xterm-256color '$kc' health; echo PLAIN-DONE; sleep 60"
colored() { tmux capture-pane -e -p -t "$session" >"$tmp/screen" && grep -q PLAIN-DONE "$tmp/screen"; }
until_ok 10 colored
sed -n '1,/HEALTH-DONE/p' "$tmp/screen" >"$tmp/tty"
sed -n '/HEALTH-DONE/,/PLAIN-DONE/p' "$tmp/screen" >"$tmp/nocolor"
if grep -q $'\033\[' "$tmp/tty"; then ok "colour on a terminal"; else bad "colour on a terminal" "($(head -3 "$tmp/tty"))"; fi
has "... the table is there" "$tmp/nocolor" 'processes +ok +yes'
if grep -q $'\033\[' "$tmp/nocolor"; then bad "NO_COLOR: no colour" "($(head -3 "$tmp/nocolor"))"; else ok "NO_COLOR: no colour"; fi

# ---- refusals and an unreachable node ----
k --token wrong ps 2>"$tmp/e" >/dev/null
expect "a wrong token: exit 1" 1 $?
has "... with the 401 message" "$tmp/e" "^keelctl: 401 UNAUTHORIZED from http://127.0.0.1:$hport/admin/processes.*: a valid ADMIN_TOKEN is required"
if grep -q wrong "$tmp/e"; then bad "the wrong token is not printed"; else ok "the wrong token is not printed"; fi
ADMIN_TOKEN= k kill worker-1 2>"$tmp/e"
expect "no token: exit 1" 1 $?
k --url "http://127.0.0.1:$dead" status 2>"$tmp/e"
expect "an unreachable node: exit 3" 3 $?
has "... and what was tried" "$tmp/e" "^keelctl: cannot reach http://127.0.0.1:$dead: connection refused"
KEEL_URL=http://127.0.0.1:$dead k top 2>"$tmp/e"
expect "top on an unreachable node: exit 3" 3 $?
k --url "http://127.0.0.1:$dead" logs -f 2>/dev/null
expect "logs -f on an unreachable node: exit 3" 3 $?

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
