# pg_lib.sh - sourced by pg_cluster.sh and pgbouncer.sh.

# Runs a command as the postgres user when root (PostgreSQL and PgBouncer
# refuse to run as root; CI runs as root), as is otherwise.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
