# bench/lib.sh - what the benchmark scripts share, sourced after they set
# `scratch` (their scratch directory) and define `say`:
#   bench_free_port         a loopback port nobody listens on now (the
#                           kernel's pick for port 0)
#   bench_stop PID [TENTHS] SIGTERM, up to TENTHS tenths of a second (50) to
#                           exit in order, then SIGKILL; reaps it
#   bench_end PG_STATE      stops the throwaway PostgreSQL cluster in
#                           PG_STATE (if any) and removes the scratch
#                           directory, or keeps it with KEEP=1
# shellcheck shell=bash

bench_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
    node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

bench_stop() {
  local pid=$1 tenths=${2:-50}
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq "$tenths"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench_end() {
  local pg_state=${1:-}
  if [[ -n $pg_state ]]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/../tests/es/pg_cluster.sh" stop "$pg_state" >/dev/null 2>&1 || true
  fi
  if [[ ${KEEP:-0} = 1 ]]; then
    say "scratch directory kept: $scratch"
  else
    rm -rf "$scratch"
  fi
}
