/* kt_beside.h - writes to a store beside keel, as another instance (or a
 * slower writer) would, for the subscription tests: what this instance's
 * live tail never holds, so a reader must take it from the database.
 *
 *   kt_append_beside(s, stream, n)  n events of a new stream in one committed
 *                                   transaction (ids ...000000000001 up on
 *                                   SQLite; random uuids on PostgreSQL)
 *   kt_pg_open_writer(c, stream)    PostgreSQL: a transaction left open on c
 *                                   holding one event of a new stream at a
 *                                   reserved position (returned): an append
 *                                   slower than this instance's */
#ifndef KT_BESIDE_H
#define KT_BESIDE_H

#include <sqlite3.h>

#include "es/es_internal.h"
#include "es/kt_es.h"

static inline void kt_append_beside(const kt_store *s, const char *stream, int n) {
  char sql[2048];
  if (kt_es_pg_url()) {
    snprintf(sql, sizeof sql,
             "BEGIN; WITH r AS (SELECT keel_es_reserve(%d) AS first) INSERT INTO events "
             "(position, stream, version, id, type, schema_version, payload, occurred_at, "
             "stored_at, stream_hash) SELECT first + g - 1, '%s', g, gen_random_uuid(), 'Beside', "
             "1, '{}', 1, 1, keel_es_stream_hash('%s') FROM r, generate_series(1, %d) g; "
             "INSERT INTO streams (stream, version) VALUES ('%s', %d); COMMIT",
             n, stream, stream, n, stream, n);
    char err[512];
    if (kt_pg_exec(s->admin_url, sql, err, sizeof err)) {
      fprintf(stderr, "%s\n", err);
      CHECK(!"the append beside keel");
    }
    return;
  }
  char path[600];
  snprintf(path, sizeof path, "%s/es.db", s->dir);
  sqlite3 *db;
  CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 10000);
  snprintf(sql, sizeof sql,
           "BEGIN IMMEDIATE; WITH RECURSIVE g(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM g "
           "WHERE v < %d) INSERT INTO events (stream, version, id, type, schema_version, "
           "payload, occurred_at, stored_at, stream_hash) SELECT '%s', v, "
           "printf('00000000-0000-4000-8000-%%012d', v), 'Beside', 1, '{}', 1, 1, %lld FROM g; "
           "INSERT INTO streams (stream, version) VALUES ('%s', %d); COMMIT",
           n, stream, (long long)keel__es_stream_hash(stream), stream, n);
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "%s\n", err ? err : "?");
    CHECK(!"the append beside keel");
  }
  sqlite3_free(err);
  sqlite3_close(db);
}

static inline int64_t kt_pg_open_writer(PGconn *c, const char *stream) {
  PQclear(kt_pg_run(c, "BEGIN"));
  PGresult *r = kt_pg_run(c, "SELECT keel_es_reserve(1)");
  int64_t pos = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  char sql[512];
  snprintf(sql, sizeof sql,
           "INSERT INTO events (position, stream, version, id, type, schema_version, payload, "
           "occurred_at, stored_at, stream_hash) VALUES (%lld, '%s', 1, gen_random_uuid(), "
           "'Late', 1, '{}', 0, 0, keel_es_stream_hash('%s'))",
           (long long)pos, stream, stream);
  PQclear(kt_pg_run(c, sql));
  return pos;
}

#endif
