#!/usr/bin/env bash
# pg_cluster.sh - a throwaway PostgreSQL cluster for the event store's tests.
#
#   pg_cluster.sh start STATE_DIR   initdb + pg_ctl start; writes STATE_DIR/pg.url
#   pg_cluster.sh stop STATE_DIR    pg_ctl stop (immediate) and removes the cluster
#
# STATE_DIR is the build's (each build dir runs its own cluster, so the normal,
# ASan and TSan builds never share one). The cluster lives in a fresh temporary
# folder owned by the postgres user when run as root (PostgreSQL refuses to run
# as root; CI runs as root), listens on a private unix socket in that folder and
# on a free loopback port, trusts local connections, and keeps nothing: stop
# removes it. CTest runs start as a FIXTURES_SETUP test and stop as a
# FIXTURES_CLEANUP test, which runs even when tests fail; start also stops a
# cluster a previous, interrupted run left behind.
set -euo pipefail

cmd=${1:?usage: pg_cluster.sh start|stop STATE_DIR}
state=${2:?usage: pg_cluster.sh start|stop STATE_DIR}
mkdir -p "$state"
bindir=${KEEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}

# shellcheck source=pg_lib.sh
source "$(dirname "$0")/pg_lib.sh"

stop() {
  [[ -f $state/pg.dir ]] || return 0
  local dir
  dir=$(cat "$state/pg.dir")
  if [[ -d $dir/data ]]; then
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  rm -f "$state/pg.dir" "$state/pg.url"
}

case "$cmd" in
stop)
  stop
  ;;
start)
  stop
  [[ -x $bindir/initdb ]] || {
    echo "pg_cluster: $bindir/initdb missing (scripts/install-deps.sh installs postgresql-15)" >&2
    exit 1
  }
  dir=$(mktemp -d "${TMPDIR:-/tmp}/keel-pg-XXXXXX")
  chmod 700 "$dir"
  [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir"
  echo "$dir" >"$state/pg.dir"
  as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
  }
  # A free loopback port: a random one nothing answers on; if the server
  # still cannot bind it (a race with another program), try another.
  # KEEL_PG_DURABLE=1 (the benchmarks): fsync, synchronous_commit and
  # full_page_writes on, as a production server runs, so that a commit costs
  # what it costs there. The tests turn them off.
  if [[ ${KEEL_PG_DURABLE:-0} == 1 ]]; then
    durability="-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
  else
    durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  started=0
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
    # fsync off: the tests kill clients, never the server, so the server's own
    # durability is not what they measure, and it saves seconds. autovacuum
    # off: its ANALYZE takes a transaction id, and read_all's horizon is
    # cluster-wide (docs/eventstore.md): a test's read right after its append
    # must not wait on a transaction the test did not start.
    if as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
          $durability -c autovacuum=off \
          -c max_connections=300 -c shared_buffers=32MB" start >/dev/null; then
      started=1
      break
    fi
  done
  [[ $started -eq 1 ]] || {
    cat "$dir/server.log" >&2
    exit 1
  }
  as_pg "$bindir/psql" -h "$dir" -p "$port" -U postgres -q -c "CREATE DATABASE keel" postgres
  echo "postgresql://postgres@/keel?host=$dir&port=$port" >"$state/pg.url"
  echo "pg_cluster: $(cat "$state/pg.url")"
  ;;
*)
  echo "usage: pg_cluster.sh start|stop STATE_DIR" >&2
  exit 2
  ;;
esac
