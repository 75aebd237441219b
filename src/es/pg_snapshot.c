/* pg_snapshot.c - snapshot save and load on PostgreSQL.
 *
 * The rules are snapshot.c's (newest wins; no snapshot of hidden history);
 * this file states them in SQL. A save is one transaction: the stream's row
 * read FOR KEY SHARE (so a concurrent soft or hard delete, which locks the
 * row FOR UPDATE, either commits before the check, which then sees it, or
 * waits for the save; an append's row lock waits for it too, for the few
 * statements it lasts), the checks, then an INSERT ... ON CONFLICT DO UPDATE whose
 * update is guarded by snapshots.version < excluded.version, so the newer of
 * two racing saves stays whichever commits last. A load is one statement.
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

static void i64s(char out[24], int64_t v) {
  snprintf(out, 24, "%lld", (long long)v);
}

static int save_tx(es_pg *pg, es_pgconn *c, const char *stream, int64_t version, int schema_version,
                   const char *state, bool *stored) {
  const char *p1[1] = {stream};
  PGresult *res;
  int rc;
  if ((rc = keel__es_pg_query(pg, c, "saving a snapshot",
                              "SELECT version, deleted, truncated_before FROM streams "
                              "WHERE stream = $1 FOR KEY SHARE",
                              1, p1, &res)))
    return rc;
  bool found = PQntuples(res) > 0;
  int64_t have = found ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
  bool deleted = found && PQgetvalue(res, 0, 1)[0] == 't';
  int64_t truncated = found ? strtoll(PQgetvalue(res, 0, 2), NULL, 10) : 0;
  PQclear(res);
  if (have == 0 || deleted) return KEEL_ENOENT;
  if (version > have) return KEEL_ERANGE;
  if (version >= truncated) { /* below it: its history is hidden, never used */
    char v[24], sv[24], now[24];
    i64s(v, version);
    i64s(sv, schema_version);
    i64s(now, keel__es_unix_ms());
    const char *p5[5] = {stream, v, sv, state, now};
    if ((rc = keel__es_pg_query(
             pg, c, "saving a snapshot",
             "INSERT INTO snapshots AS n (stream, version, schema_version, state, taken_at) "
             "VALUES ($1, $2::bigint, $3::integer, $4::json, $5::bigint) "
             "ON CONFLICT (stream) DO UPDATE SET version = excluded.version, "
             "schema_version = excluded.schema_version, state = excluded.state, "
             "taken_at = excluded.taken_at WHERE n.version < excluded.version RETURNING 1",
             5, p5, &res)))
      return rc;
    *stored = PQntuples(res) > 0;
    PQclear(res);
  }
  return keel__es_pg_query(pg, c, "saving a snapshot", "COMMIT", -1, NULL, NULL);
}

int keel__es_pg_snapshot_save(keel_es *es, const char *stream, int64_t version, int schema_version,
                              const char *state, bool *stored) {
  bool wrote = false;
  /* exits wait until the connection is back in the pool */
  int held = keel_hold_exits(true);
  es_pgconn *c = NULL;
  int rc = keel__es_pg_acquire_begin(es, &c, "saving a snapshot", NULL);
  if (rc == 0) {
    rc = save_tx(es->pg, c, stream, version, schema_version, state, &wrote);
    if (rc != 0 && PQtransactionStatus(c->conn) != PQTRANS_IDLE)
      keel__es_pg_query(es->pg, c, "rolling back", "ROLLBACK", -1, NULL, NULL);
    keel__es_pg_release(es, c);
  }
  if (held == 0) keel_hold_exits(false);
  if (stored) *stored = rc == 0 && wrote;
  return rc;
}

int keel__es_pg_snapshot_load(keel_es *es, const char *stream, keel_es_snapshot *out) {
  int held = keel_hold_exits(true);
  es_pgconn *c = NULL;
  int rc = keel__es_pg_acquire(es, &c);
  if (rc == 0) {
    const char *p1[1] = {stream};
    PGresult *res = NULL;
    /* the usable snapshot (snapshot.c), in one statement */
    rc = keel__es_pg_query(es->pg, c, "loading a snapshot",
                           "SELECT n.version, n.schema_version, n.state::text, n.taken_at "
                           "FROM snapshots n JOIN streams s ON s.stream = n.stream "
                           "WHERE n.stream = $1 AND NOT s.deleted AND n.version <= s.version "
                           "AND n.version >= s.truncated_before - 1",
                           1, p1, &res);
    if (rc == 0 && PQntuples(res) == 0) rc = KEEL_ENOENT;
    if (rc == 0) {
      out->version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
      out->schema_version = atoi(PQgetvalue(res, 0, 1));
      out->taken_at_ms = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
      rc = keel__es_snapshot_parse(stream, PQgetvalue(res, 0, 2), out);
    }
    PQclear(res);
    keel__es_pg_release(es, c);
  }
  if (held == 0) keel_hold_exits(false);
  return rc;
}
