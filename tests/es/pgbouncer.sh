#!/usr/bin/env bash
# pgbouncer.sh - a PgBouncer in transaction mode in front of the es_pg
# fixture's throwaway cluster, for the es.bouncer.* suites.
#
#   pgbouncer.sh start STATE_DIR   reads STATE_DIR/pg.url (pg_cluster.sh's),
#                                  starts pgbouncer; writes STATE_DIR/bouncer.port
#   pgbouncer.sh stop STATE_DIR    stops it and removes its folder
#
# Every database name is forwarded to the cluster ("* =" entry), so a suite
# creates a database of its own on the server and connects to it through
# PgBouncer (PgBouncer refuses the options=-csearch_path startup parameter
# that the es.pg suites use for a schema each). pool_mode = transaction, and
# fewer server connections per database (default_pool_size = 4) than keel's
# pool opens (10): client connections really are multiplexed, so any state a
# keel connection kept between transactions would show. Runs as the postgres
# user when root (PgBouncer refuses to run as root), listens on a free
# loopback port only; stop runs even when the suites fail (a CTest fixture).
set -euo pipefail

cmd=${1:?usage: pgbouncer.sh start|stop STATE_DIR}
state=${2:?usage: pgbouncer.sh start|stop STATE_DIR}

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

stop() {
  [[ -f $state/bouncer.dir ]] || return 0
  local dir pid
  dir=$(cat "$state/bouncer.dir")
  if [[ -f $dir/pgbouncer.pid ]]; then
    # what went through it, for the log: every es.bouncer suite's traffic
    if [[ -f $state/bouncer.port ]] && command -v psql >/dev/null; then
      psql -X "postgresql://postgres@127.0.0.1:$(cat "$state/bouncer.port")/pgbouncer" \
        -c "SHOW TOTALS" 2>/dev/null || true
    fi
    pid=$(cat "$dir/pgbouncer.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
  rm -f "$state/bouncer.dir" "$state/bouncer.port"
}

case "$cmd" in
stop)
  stop
  ;;
start)
  stop
  command -v pgbouncer >/dev/null || {
    echo "pgbouncer.sh: pgbouncer missing (scripts/install-deps.sh installs it)" >&2
    exit 1
  }
  url=$(cat "$state/pg.url")
  pgport=$(sed -n 's/.*[?&]port=\([0-9]*\).*/\1/p' <<<"$url")
  [[ -n $pgport ]] || {
    echo "pgbouncer.sh: no port in $url" >&2
    exit 1
  }
  dir=$(mktemp -d "${TMPDIR:-/tmp}/keel-bouncer-XXXXXX")
  [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir"
  echo "$dir" >"$state/bouncer.dir"
  echo '"postgres" ""' >"$dir/users.txt"
  started=0
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
    cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pgport

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = 4
reserve_pool_size = 0
max_client_conn = 500
server_reset_query =
admin_users = postgres
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
    [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir"/*
    if as_pg pgbouncer -d "$dir/pgbouncer.ini"; then
      for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
          started=1
          break
        fi
        sleep 0.1
      done
    fi
    [[ $started -eq 1 ]] && break
    [[ -f $dir/pgbouncer.pid ]] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    sleep 0.2
  done
  [[ $started -eq 1 ]] || {
    cat "$dir/pgbouncer.log" >&2 || true
    exit 1
  }
  echo "$port" >"$state/bouncer.port"
  echo "pgbouncer: 127.0.0.1:$port -> 127.0.0.1:$pgport (transaction mode)"
  ;;
*)
  echo "usage: pgbouncer.sh start|stop STATE_DIR" >&2
  exit 2
  ;;
esac
