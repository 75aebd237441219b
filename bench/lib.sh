# bench/lib.sh - what the benchmark scripts share, sourced after they set
# `scratch` (their scratch directory) and define `say`:
#   bench_free_port [N]     N (1) distinct loopback ports nobody listens on
#                           now, on one line (the kernel's picks for port 0,
#                           all N sockets bound at once so no port comes twice)
#   bench_stop PID [TENTHS] SIGTERM, up to TENTHS tenths of a second (50) to
#                           exit in order, then SIGKILL; reaps it
#   bench_end PG_STATE      stops the throwaway PostgreSQL cluster in
#                           PG_STATE (if any) and removes the scratch
#                           directory, or keeps it with KEEP=1
# shellcheck shell=bash

bench_free_port() {
  local n=${1:-1}
  python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$n" 2>/dev/null ||
    node -e '
const net = require("net");
const one = () => new Promise((ok) => { const s = net.createServer().listen(0, "127.0.0.1", () => ok(s)); });
Promise.all(Array.from({ length: +process.argv[1] }, one)).then((ss) => {
  console.log(ss.map((s) => s.address().port).join(" "));
  ss.forEach((s) => s.close());
});' "$n"
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
