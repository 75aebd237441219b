#!/usr/bin/env bash
# test_fd_exhaustion.sh - the microservice out of file descriptors, over loopback.
#
# Usage: test_fd_exhaustion.sh PATH/TO/microservice PATH/TO/fd_flood PATH/TO/ms_load
#
# The defect this guards against: with its open-file limit at 1,024 and 3,000
# connections opened at once, the node livelocked. accept4 failed with EMFILE
# and the listener, still readable, was retried at once, forever: the
# scheduler threads spun at 100%, the API and /health stopped answering and
# SIGTERM was ignored. What the server promises instead: on EMFILE/ENFILE a
# listener stops accepting for a back-off (and closes some idle keep-alive
# connections), logs "accept paused: out of file descriptors" (warn, once per
# interval) and counts it in http_accept_paused_total; at start the process
# raises its soft RLIMIT_NOFILE to the hard limit ("raised the open-file
# limit").
#
# The service runs under `ulimit -n 256` (soft and hard, so raising soft to
# hard changes nothing) with KEEL_SCHEDULERS=2, in its own directory with
# LOG_FILE there. fd_flood (tests/http/fd_flood.c, running with the test
# shell's limit raised to its hard limit) opens FD_FLOOD_CONNS (3,000)
# connections from 4 threads, sends a request on every second one and holds
# them (4 s at least). While it holds them: /health/live on the admin port
# must answer 200 (retried; a back-off may pass first), again at the end of
# the hold, and an API request on a fresh connection must be answered (tried
# again on a new connection when one is closed unanswered or waits 6 s; it
# may be answered once the flood is gone, the line says which). Then the
# flood closes and: the API answers, the server's open descriptors go back
# near where they were, the log has the warning (and not one line per failed
# accept), the metric is above zero, and SIGTERM ends the process with exit
# code 0 within SHUTDOWN_TIMEOUT plus slack. A separate short instance started with soft 256 under a higher hard
# limit checks the raise. Every wait is bounded (the whole run stays under
# about a minute even against a server that livelocks); CPU use is not
# judged. Each check prints ok or FAIL; the exit status is non-zero when any
# check failed. KEEP_TMP=1 keeps the logs.
set -u

ms=${1:?usage: test_fd_exhaustion.sh PATH/TO/microservice PATH/TO/fd_flood PATH/TO/ms_load}
flood=${2:?usage: test_fd_exhaustion.sh PATH/TO/microservice PATH/TO/fd_flood PATH/TO/ms_load}
load=${3:?usage: test_fd_exhaustion.sh PATH/TO/microservice PATH/TO/fd_flood PATH/TO/ms_load}
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "$tool not installed (scripts/install-deps.sh)"; exit 1; }
done
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
ms=$(abs "$ms")
flood=$(abs "$flood")
load=$(abs "$load")

SERVER_NOFILE=256                    # the service's open-file limit, soft and hard
CONNS=${FD_FLOOD_CONNS:-3000}        # connections the flood opens
SHUTDOWN_S=5                         # SHUTDOWN_TIMEOUT
ADMIN_WAIT=12                        # /health/live must answer within this, under the flood
API_WAIT=15                          # a fresh API request made under the flood: new tries until then (6 s each)
HOLD_MIN=4                           # the flood stays on at least this long (from its connect phase's end)
HOLD_FOR_API=10                      # and at most this long waiting for that answer

# the client side needs CONNS descriptors: the test shell's limit, raised to its hard limit
ulimit -n "$(ulimit -Hn)" 2>/dev/null

tmp=$(mktemp -d)
cleanup() {
  # only children not reaped yet (a pid already waited for may be reused)
  for p in $(jobs -p); do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../kt_check.sh" # ok, bad
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
}

now() { echo "${EPOCHREALTIME/[.,]/}"; }      # microseconds
since() { echo $((($(now) - $1) / 1000)); }   # milliseconds since a now()

freeport() { "$load" freeport "$@"; }

pid_raise=
pid_x= # set by start

# start NAME PORT HEALTH_PORT ULIMIT_CMD [VAR=VALUE...]: starts an instance in
# $tmp/NAME (log in $tmp/NAME/log) after running ULIMIT_CMD in its subshell;
# its pid goes in pid_NAME.
start() {
  local name=$1 port=$2 hport=$3 lim=$4
  shift 4
  mkdir -p "$tmp/$name"
  (cd "$tmp/$name" && eval "$lim" && exec env -u LISTEN_FDS -u LISTEN_PID PORT="$port" HEALTH_PORT="$hport" \
    HOST=127.0.0.1 LOG_FILE="$tmp/$name/log" LOG_LEVEL=info SERVICE_NAME=ms-fd RATE_LIMIT=0 "$@" "$ms") \
    >"$tmp/$name/stdout" 2>"$tmp/$name/stderr" &
  printf -v "pid_$name" '%s' "$!"
}

. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ms_lib.sh" # wait_log, wait_startup

# alive PID: the process exists and is not a zombie.
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}

# wait_exit PID SECONDS: waits for the process to end (SIGKILL past SECONDS)
# and sets `code` (its exit status; 137 when it had to be killed) and `took`
# (milliseconds).
wait_exit() {
  local pid=$1 t0
  t0=$(now)
  while alive "$pid" && [ "$(since "$t0")" -lt $(($2 * 1000)) ]; do sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null # nothing when it has exited (a zombie until waited for)
  wait "$pid" 2>/dev/null
  code=$?
  took=$(since "$t0")
}

# nofile PID: "SOFT HARD" from /proc/PID/limits.
nofile() { awk '/^Max open files/ {print $4, $5}' "/proc/$1/limits" 2>/dev/null; }
nfds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

# get_until SECONDS URL OUTFILE [CURL_MAX_TIME]: GETs URL until it answers 200
# or SECONDS pass; sets `status` (the last one), `tries`, `took` (ms).
get_until() {
  local t0
  t0=$(now)
  tries=0
  status=000
  while :; do
    tries=$((tries + 1))
    status=$(curl -s -o "$3" --max-time "${4:-3}" -w '%{http_code}' "$2")
    [ "$status" = 200 ] && break
    [ "$(since "$t0")" -lt $(($1 * 1000)) ] || break
    sleep 0.2
  done
  took=$(since "$t0")
}

echo "# file-descriptor exhaustion test ($ms)"
echo "# client open-file limit $(ulimit -n), $CONNS connections; service limit $SERVER_NOFILE"

# ---- the raise: soft 256 under a higher hard limit ---------------------------------------------
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt $((SERVER_NOFILE * 2)) ]; then
  want=$((SERVER_NOFILE * 4))
  [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ] && want=$hard
  read -r P H <<<"$(freeport 2)"
  start raise "$P" "$H" "ulimit -Sn $SERVER_NOFILE && ulimit -Hn $want"
  if wait_startup "$H" raise; then
    lim=$(nofile "$pid_raise")
    if [ "$lim" = "$want $want" ]; then ok "soft open-file limit raised to the hard limit at start ($lim)"; else
      bad "soft open-file limit raised to the hard limit at start" "started with soft $SERVER_NOFILE, hard $want; /proc limits now: $lim"; fi
    if wait_log raise '.msg == "raised the open-file limit"' 2; then ok "log: \"raised the open-file limit\""; else
      bad "log: \"raised the open-file limit\"" "log: $(head -c 600 "$tmp/raise/log")"; fi
  else
    bad "instance starts with soft limit $SERVER_NOFILE, hard $want" "$(tail -5 "$tmp/raise/stderr")"
  fi
  kill -TERM "$pid_raise" 2>/dev/null
  wait_exit "$pid_raise" $((SHUTDOWN_S + 10))
else
  echo "# note: hard open-file limit $hard: the raise from soft $SERVER_NOFILE is not checked"
fi

# ---- the service at 256 descriptors --------------------------------------------------------------
read -r P H <<<"$(freeport 2)"
api=http://127.0.0.1:$P
adm=http://127.0.0.1:$H
start x "$P" "$H" "ulimit -n $SERVER_NOFILE" KEEL_SCHEDULERS=2 WORKER_COUNT=2 SHUTDOWN_TIMEOUT=${SHUTDOWN_S}s
if ! wait_startup "$H" x; then
  bad "instance starts under ulimit -n $SERVER_NOFILE" "$(tail -5 "$tmp/x/stderr")"
  finish
fi
pid=$pid_x
lim=$(nofile "$pid")
if [ "$lim" = "$SERVER_NOFILE $SERVER_NOFILE" ]; then ok "instance up, KEEL_SCHEDULERS=2, open-file limit $lim (soft hard)"; else
  bad "instance runs with open-file limit $SERVER_NOFILE soft and hard" "/proc limits: $lim"; fi
s=$(curl -s -o "$tmp/pre.b" --max-time 5 -w '%{http_code}' "$api/api/stats")
if [ "$s" = 200 ]; then ok "before the flood: GET /api/stats 200"; else bad "before the flood: GET /api/stats 200" "status $s"; fi
base_fds=$(nfds "$pid")
echo "# server: $base_fds open descriptors before the flood"

# ---- the flood --------------------------------------------------------------------------------------
"$flood" "$P" "$CONNS" 4 60 2 >"$tmp/flood.out" 2>"$tmp/flood.err" &
flood_pid=$!
end=$((SECONDS + 15))
until grep -q '"phase":"connected"' "$tmp/flood.out" 2>/dev/null || [ $SECONDS -ge $end ] || ! alive "$flood_pid"; do
  sleep 0.05
done
t_flood=$(now)
conn_line=$(grep '"phase":"connected"' "$tmp/flood.out")
connected=$(jq -r '.connected' <<<"$conn_line" 2>/dev/null)
if [ -n "$connected" ] && [ "$connected" -gt $((SERVER_NOFILE + 64)) ] 2>/dev/null; then
  ok "flood: $connected connections established (accepted or queued), beyond the limit of $SERVER_NOFILE ($conn_line)"
else
  bad "flood: more connections established than the service's limit" "connect phase: ${conn_line:-none} $(head -c 300 "$tmp/flood.err")"
fi
sleep 0.5 # the server is at it: accepting, or paused
fds_flood=$(nfds "$pid")
echo "# server: $fds_flood open descriptors under the flood"

# the fresh API request, in the background; the liveness probe meanwhile
# (each try on a new connection, with time to wait its turn in the listen
# queue; one line "STATUS MS" per try in during.tries)
t_api=$(now)
(
  while :; do
    t0=$(now)
    s=$(curl -s -o "$tmp/during.b" --max-time 6 -w '%{http_code}' "$api/api/stats" 2>/dev/null)
    echo "$s $(since "$t0")" >>"$tmp/during.tries"
    [ "$s" = 200 ] && break
    [ "$(since "$t_api")" -lt $((API_WAIT * 1000)) ] || break
    sleep 0.2
  done
) &
api_pid=$!

get_until "$ADMIN_WAIT" "$adm/health/live" "$tmp/live.b" 3
if [ "$status" = 200 ]; then
  ok "under the flood: /health/live 200 on the admin port ($tries tries, $took ms)"
else
  bad "under the flood: /health/live 200 on the admin port within $ADMIN_WAIT s" "last status $status after $tries tries, $took ms"
fi

# the flood stays on HOLD_MIN s at least, and until the fresh API request is
# answered or HOLD_FOR_API s have passed
while [ "$(since "$t_flood")" -lt $((HOLD_MIN * 1000)) ] ||
  { alive "$api_pid" && [ "$(since "$t_flood")" -lt $((HOLD_FOR_API * 1000)) ]; }; do sleep 0.05; done
api_during_flood=no
alive "$api_pid" || api_during_flood=yes
echo "# server: $(nfds "$pid") open descriptors at the end of the hold"
if alive "$flood_pid"; then
  get_until 3 "$adm/health/live" "$tmp/live2.b" 2
  if [ "$status" = 200 ]; then ok "at the end of the hold: /health/live 200 again ($tries tries, $took ms)"; else
    bad "at the end of the hold: /health/live 200 again within 3 s" "last status $status after $tries tries"; fi
else
  bad "the flood held its connections to the end" "fd_flood ended early: $(cat "$tmp/flood.out" "$tmp/flood.err" | head -c 400)"
fi
held=$(since "$t_flood")
kill -USR1 "$flood_pid" 2>/dev/null
t_closed=$(now)
wait_exit "$flood_pid" 10
flood_code=$code
wait "$api_pid" 2>/dev/null
api_ms=$(since "$t_api")
s=$(tail -1 "$tmp/during.tries" 2>/dev/null | cut -d' ' -f1)
tries=$(grep -c . "$tmp/during.tries" 2>/dev/null)
earlier=$(head -n -1 "$tmp/during.tries" 2>/dev/null | awk '{printf "%s%s in %s ms", sep, $1, $2; sep = ", "}')
if [ "$s" = 200 ] && jq -e '.workerCount | type == "number"' "$tmp/during.b" >/dev/null 2>&1; then
  if [ $api_during_flood = yes ]; then when="during the flood"; else when="after the flood closed"; fi
  ok "a fresh API request made under the flood is answered: 200 after $api_ms ms, try $tries ($when)${earlier:+; tries before: $earlier}"
else
  bad "a fresh API request made under the flood is answered (200 within $API_WAIT s)" \
    "tries (status ms): $(tr '\n' ';' <"$tmp/during.tries" 2>/dev/null); the flood was held $held ms"
fi
done_line=$(grep '"phase":"done"' "$tmp/flood.out")
echo "# flood held $held ms, exit $flood_code: ${done_line:-no summary} $(head -c 200 "$tmp/flood.err")"
dropped=$(jq -r '.dropped_requests' <<<"$done_line" 2>/dev/null)
if [ "${dropped:-0}" -gt 0 ] 2>/dev/null; then
  echo "# note: $dropped of the flood's requests were closed by the server with no answer (load shed, not judged)"
fi

# ---- after the flood ----------------------------------------------------------------------------------
get_until 8 "$api/api/stats" "$tmp/after.b" 2
if [ "$status" = 200 ]; then ok "after the flood: GET /api/stats 200 ($tries tries, $took ms)"; else
  bad "after the flood: GET /api/stats 200 within 8 s" "last status $status after $tries tries"; fi

fds=$(nfds "$pid")
end=$((SECONDS + 5))
while [ "$fds" -gt $((base_fds + 32)) ] && [ $SECONDS -lt $end ] && alive "$pid"; do
  sleep 0.2
  fds=$(nfds "$pid")
done
if [ "$fds" -le $((base_fds + 32)) ]; then ok "server's open descriptors back near the start: $fds (was $base_fds)"; else
  bad "server's open descriptors back near the start (at most $base_fds + 32)" "$fds open $(($(since "$t_closed") / 1000)) s after the flood closed"; fi

log=$tmp/x/log
paused=$(jq -c 'select((.msg | type == "string") and (.msg | startswith("accept paused")))' "$log" 2>/dev/null)
npaused=$(grep -c . <<<"$paused")
if [ "$npaused" -gt 0 ] && jq -se 'all(.[]; .level == "warn" and .msg == "accept paused: out of file descriptors")' <<<"$paused" >/dev/null 2>&1; then
  ok "log: warn \"accept paused: out of file descriptors\" ($npaused lines; first: $(head -1 <<<"$paused" | head -c 300))"
else
  bad "log: warn \"accept paused: out of file descriptors\"" "$npaused lines: $(head -c 300 <<<"$paused")" \
    "the server had $fds_flood descriptors open under the flood (limit $SERVER_NOFILE)" \
    "log tail: $(tail -3 "$log" 2>/dev/null | head -c 600)"
fi
if [ "$npaused" -le 200 ]; then ok "log: the warning is not written per failed accept ($npaused lines)"; else
  bad "log: the warning is not written per failed accept (at most 200 lines)" "$npaused lines"; fi

get_until 4 "$adm/metrics" "$tmp/metrics.b" 2
total=$(grep -E '^http_accept_paused_total(\{[^}]*\})? ' "$tmp/metrics.b" 2>/dev/null | awk '{s += $NF} END {print s + 0}')
if [ "$status" = 200 ] && awk -v t="$total" 'BEGIN {exit !(t > 0)}'; then
  ok "metrics: http_accept_paused_total = $total"
else
  bad "metrics: http_accept_paused_total > 0" "status $status; $(grep -E '^(# [A-Z]+ )?http_accept_paused' "$tmp/metrics.b" 2>/dev/null | head -4 | tr '\n' ' ')" \
    "the server had $fds_flood descriptors open under the flood (limit $SERVER_NOFILE)"
fi

# ---- SIGTERM ------------------------------------------------------------------------------------------------
kill -TERM "$pid" 2>/dev/null
wait_exit "$pid" $((SHUTDOWN_S + 5))
if [ "$code" = 0 ]; then ok "SIGTERM: exit code 0 in $took ms (SHUTDOWN_TIMEOUT ${SHUTDOWN_S}s)"; else
  bad "SIGTERM: exit code 0 within SHUTDOWN_TIMEOUT ${SHUTDOWN_S}s + 5 s" \
    "exit $code after $took ms$([ "$code" = 137 ] && echo ' (still running: killed)')"
fi

reports=$(grep -l -E 'Sanitizer|runtime error:' "$tmp"/*/stderr 2>/dev/null | tr '\n' ' ')
if [ -z "$reports" ]; then ok "no sanitizer report on any instance's stderr"; else
  bad "no sanitizer report" "in: $reports" "$(grep -h -m3 -E 'ERROR|runtime error' $reports)"; fi

finish
