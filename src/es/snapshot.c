/* snapshot.c - snapshots: a stream's state saved at a version, one per stream.
 *
 * The aggregate layer (aggregate.c) folds a stream's events into a state;
 * every so often it saves that state here so that the next load reads the
 * snapshot and only the events after it. This file is the storage: the
 * public save and load, the SQLite side of both, and the rules that keep a
 * snapshot from saying something the events do not.
 *
 * Newest wins. A save writes only when the stream has no snapshot or an
 * older one (an upsert whose UPDATE is guarded by version <): two processes
 * saving at once, or a slow one saving late, never put an older state over a
 * newer one. Equal versions keep the row that is there.
 *
 * No snapshot of hidden history. A save is checked against the stream's row
 * in the same transaction: the stream must exist with events, not be
 * soft-deleted, and hold the version (KEEL_ENOENT, KEEL_ERANGE otherwise);
 * and the version must be at or above truncated_before, else nothing is
 * stored. The last rule is what keeps a slow save of the state before a soft
 * delete from landing after the stream was deleted and recreated: the delete
 * set truncated_before past the old version (and removed the snapshot). A
 * load returns a snapshot only when the stream is not soft-deleted and the
 * snapshot's version is at least truncated_before - 1, so that the snapshot
 * and the readable events after it leave no gap; truncate_before(v + 1)
 * after a snapshot at v (dropping the history the snapshot covers) keeps it
 * usable. Soft and hard delete remove the stream's snapshot in their own
 * transaction (writer.c, pg_write.c).
 *
 * On SQLite a save is a writer request (ES_REQ_SNAPSHOT, run by
 * keel__es_snapshot_write inside the writer's group transaction) and a load
 * runs on a read connection; on PostgreSQL both are pg_snapshot.c's. The
 * state travels as JSON text, serialised in the calling process.
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

/* ---- saving (the writer thread) ------------------------------------------------- */

static int step_stmt(sqlite3 *db, sqlite3_stmt *st, const char *what) {
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW || src == SQLITE_DONE) return 0;
  return keel__es_sqlite_error(db, src, what);
}

int keel__es_snapshot_write(keel_es *es, const es_req *r, es_reply *rep) {
  sqlite3 *db = es->wdb;
  const char *stream = r->streams[0].stream;
  sqlite3_stmt *st;
  int src = sqlite3_prepare_v2(
      db, "SELECT version, deleted, truncated_before FROM streams WHERE stream = ?", -1, &st, NULL);
  if (src != SQLITE_OK) return keel__es_sqlite_error(db, src, "reading a stream for a snapshot");
  sqlite3_bind_text(st, 1, stream, -1, SQLITE_STATIC);
  src = sqlite3_step(st);
  bool found = src == SQLITE_ROW;
  int64_t version = found ? sqlite3_column_int64(st, 0) : 0;
  bool deleted = found && sqlite3_column_int(st, 1) != 0;
  int64_t truncated = found ? sqlite3_column_int64(st, 2) : 0;
  sqlite3_finalize(st);
  if (src != SQLITE_ROW && src != SQLITE_DONE)
    return keel__es_sqlite_error(db, src, "reading a stream for a snapshot");
  if (version == 0 || deleted) return KEEL_ENOENT;
  if (r->arg > version) return KEEL_ERANGE;
  if (r->arg < truncated) return 0; /* its history is hidden: never used */
  src =
      sqlite3_prepare_v2(db,
                         "INSERT INTO snapshots (stream, version, schema_version, state, "
                         "taken_at) VALUES (?1, ?2, ?3, ?4, ?5) "
                         "ON CONFLICT (stream) DO UPDATE SET version = excluded.version, "
                         "schema_version = excluded.schema_version, state = excluded.state, "
                         "taken_at = excluded.taken_at WHERE snapshots.version < excluded.version",
                         -1, &st, NULL);
  if (src != SQLITE_OK) return keel__es_sqlite_error(db, src, "saving a snapshot");
  sqlite3_bind_text(st, 1, stream, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, r->arg);
  sqlite3_bind_int64(st, 3, r->arg2);
  sqlite3_bind_text(st, 4, r->text, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 5, keel__es_unix_ms());
  int rc = step_stmt(db, st, "saving a snapshot");
  sqlite3_finalize(st);
  if (rc == 0) rep->stored = sqlite3_changes(db) > 0;
  return rc;
}

int keel_es_snapshot_save(keel_es *es, const char *stream, int64_t version, int schema_version,
                          json_t *state, bool *stored) {
  if (stored) *stored = false;
  if (!es || !keel__es_stream_ok(stream) || version < 1 || schema_version < 0 || !state)
    return KEEL_EINVAL;
  if (schema_version == 0) schema_version = 1;
  char *text = json_dumps(state, JSON_COMPACT | JSON_ENCODE_ANY);
  if (!text) return KEEL_EINVAL; /* not serialisable (or no memory) */
  if (es->kind == ES_PG) {
    int rc = keel__es_pg_snapshot_save(es, stream, version, schema_version, text, stored);
    free(text);
    return rc;
  }
  es_req *r = keel__es_req_new(ES_REQ_SNAPSHOT, stream);
  if (!r) {
    free(text);
    return KEEL_ENOMEM;
  }
  r->arg = version;
  r->arg2 = schema_version;
  r->text = text; /* the request's now */
  keel_msg_t *m = NULL;
  int rc = keel__es_submit(es, r, &m);
  if (rc) return rc;
  const es_reply *rep = keel_msg_data(m);
  rc = rep->rc;
  if (rc == 0 && stored) *stored = rep->stored;
  keel_msg_free(m);
  return rc;
}

/* ---- loading ------------------------------------------------------------------------ */

typedef struct load_call {
  const char *stream;
  keel_es_snapshot *out;
  int rc;
} load_call;

int keel__es_snapshot_parse(const char *stream, const char *text, keel_es_snapshot *out) {
  json_error_t jerr;
  jerr.text[0] = 0;
  out->state = json_loads(text ? text : "", JSON_DECODE_ANY, &jerr);
  if (out->state) return 0;
  keel_log_error(NULL, "event store: a stored snapshot does not parse", KEEL_STR("stream", stream),
                 KEEL_INT("version", out->version), KEEL_STR("error", jerr.text));
  return KEEL_EIO;
}

static void load_on_reader(sqlite3 *db, void *arg) {
  load_call *c = arg;
  sqlite3_stmt *st;
  /* the usable snapshot, as the header says, in one statement: the stream
   * not soft-deleted, the snapshot within its version and not separated
   * from its readable events by a truncation */
  int src = sqlite3_prepare_v2(db,
                               "SELECT n.version, n.schema_version, n.state, n.taken_at "
                               "FROM snapshots n JOIN streams s ON s.stream = n.stream "
                               "WHERE n.stream = ?1 AND s.deleted = 0 AND n.version <= s.version "
                               "AND n.version >= s.truncated_before - 1",
                               -1, &st, NULL);
  if (src != SQLITE_OK) {
    c->rc = keel__es_sqlite_error(db, src, "loading a snapshot");
    return;
  }
  sqlite3_bind_text(st, 1, c->stream, -1, SQLITE_STATIC);
  src = sqlite3_step(st);
  if (src == SQLITE_ROW) {
    c->out->version = sqlite3_column_int64(st, 0);
    c->out->schema_version = sqlite3_column_int(st, 1);
    c->out->taken_at_ms = sqlite3_column_int64(st, 3);
    c->rc = keel__es_snapshot_parse(c->stream, (const char *)sqlite3_column_text(st, 2), c->out);
  } else if (src == SQLITE_DONE) {
    c->rc = KEEL_ENOENT;
  } else {
    c->rc = keel__es_sqlite_error(db, src, "loading a snapshot");
  }
  sqlite3_finalize(st);
}

int keel_es_snapshot_load(keel_es *es, const char *stream, keel_es_snapshot *out) {
  if (out) memset(out, 0, sizeof *out);
  if (!es || !out || !keel__es_stream_ok(stream)) return KEEL_EINVAL;
  int rc;
  if (es->kind == ES_PG) {
    rc = keel__es_pg_snapshot_load(es, stream, out);
  } else {
    load_call c = {.stream = stream, .out = out};
    rc = keel__es_with_reader(es, load_on_reader, &c);
    if (rc == 0) rc = c.rc;
  }
  if (rc) keel_es_snapshot_free(out);
  return rc;
}

void keel_es_snapshot_free(keel_es_snapshot *s) {
  if (!s) return;
  json_decref(s->state);
  memset(s, 0, sizeof *s);
}
