# ms_lib.sh - waits shared by the scripts that run build/bin/microservice
# (test_microservice.sh, test_fd_exhaustion.sh). Sourced, not run. Expects
# $tmp, with each instance NAME logging to $tmp/NAME/log; needs curl and jq.

# wait_log NAME JQ_FILTER [SECONDS]: waits until a line of NAME's log matches
# (20 s by default).
wait_log() {
  local f=$tmp/$1/log end=$((SECONDS + ${3:-20}))
  while :; do
    if [ -f "$f" ] && jq -ec "select($2)" "$f" 2>/dev/null | grep -q .; then return 0; fi
    [ $SECONDS -lt $end ] || return 1
    sleep 0.1
  done
}

# wait_startup HEALTH_PORT NAME: /health/startup answers 200 (20 s at most,
# each try at most 2 s: a flooded node may be slow) and NAME logged
# "service started" (so a second instance on shared ports is known to
# be up, not only the first).
wait_startup() {
  local end=$((SECONDS + 20))
  while [ $SECONDS -lt $end ]; do
    if [ "$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://127.0.0.1:$1/health/startup")" = 200 ] &&
      wait_log "$2" '.msg == "service started"' 0; then return 0; fi
    sleep 0.1
  done
  return 1
}
