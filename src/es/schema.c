/* schema.c - the event store's tables, created and migrated by version.
 *
 * The schema's version lives in SQLite's user_version. keel__es_migrate
 * runs, in one IMMEDIATE transaction, every migration above the file's
 * version, then sets it: running it again does nothing, two stores opening
 * one file at once serialise on the write lock, and a file written by a
 * newer keel (a version this one does not know) is refused rather than
 * guessed at.
 *
 * Version 1:
 *   events   one row per event. position is the global order: an
 *            AUTOINCREMENT rowid, so a position is never reused, even after a
 *            hard delete of the newest events. UNIQUE(id) makes appends
 *            idempotent by event id; UNIQUE(stream, version) serves stream
 *            reads and refuses a second writer's lost race.
 *   streams  one row per stream: its version (kept across a soft delete),
 *            deleted, truncated_before (versions below it are not read) and
 *            metadata. A partial index finds the streams with hidden events,
 *            so that read_all pays for hiding only when something is hidden.
 *   es_control  one row; hard_delete is set and cleared inside the hard
 *            delete's own transaction, so no other connection ever sees it
 *            set.
 *   triggers refuse every UPDATE of events, and every DELETE unless the
 *            hard-delete flag is set: the table is append-only for anyone
 *            holding the file, not only for this code.
 *
 * Version 2:
 *   snapshots  one row per stream: its newest snapshot (version, the state's
 *            schema_version, the state as JSON text, taken_at in Unix ms).
 *            Written by keel_es_snapshot_save only when newer than the row
 *            (snapshot.c); removed with the stream by soft and hard delete.
 *
 * Version 3:
 *   events.stream_hash  FNV-1a of the stream id (keel__es_stream_hash),
 *            written by every append, so that read_all's partition filter
 *            (a subscription group's partition) is matched in SQL instead of
 *            reading every row into C. Existing rows are filled by the
 *            migration through keel_stream_hash(), a SQL function this file
 *            registers on the migrating connection (the append-only trigger
 *            is dropped around that one UPDATE and made again). A row left
 *            NULL (written by an older keel still running beside this one)
 *            matches every partition in SQL and is sorted out in C. No index:
 *            the filter rides on the position order's scan, and an index
 *            would cost every append (docs/decisions/0034).
 */
#include "es/es_internal.h"

#include <stdio.h>

#include "keel/error.h"

static const char *const migrations[] = {
    /* 1 */
    "CREATE TABLE events ("
    "  position INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  stream TEXT NOT NULL,"
    "  version INTEGER NOT NULL,"
    "  id TEXT NOT NULL UNIQUE,"
    "  type TEXT NOT NULL,"
    "  schema_version INTEGER NOT NULL,"
    "  payload TEXT NOT NULL,"
    "  metadata TEXT,"
    "  occurred_at INTEGER NOT NULL,"
    "  stored_at INTEGER NOT NULL,"
    "  UNIQUE (stream, version));"
    "CREATE TABLE streams ("
    "  stream TEXT PRIMARY KEY,"
    "  version INTEGER NOT NULL DEFAULT 0,"
    "  deleted INTEGER NOT NULL DEFAULT 0,"
    "  truncated_before INTEGER NOT NULL DEFAULT 0,"
    "  metadata TEXT) WITHOUT ROWID;"
    "CREATE INDEX streams_hidden ON streams (stream)"
    "  WHERE deleted <> 0 OR truncated_before > 1;"
    "CREATE TABLE es_control ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  hard_delete INTEGER NOT NULL);"
    "INSERT INTO es_control VALUES (1, 0);"
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN"
    "  SELECT RAISE(ABORT, 'events are append-only');"
    "END;"
    "CREATE TRIGGER events_no_delete BEFORE DELETE ON events"
    "  WHEN (SELECT hard_delete FROM es_control WHERE id = 1) = 0 BEGIN"
    "  SELECT RAISE(ABORT, 'events are append-only (keel_es_hard_delete removes a stream)');"
    "END;",
    /* 2 */
    "CREATE TABLE snapshots ("
    "  stream TEXT PRIMARY KEY,"
    "  version INTEGER NOT NULL,"
    "  schema_version INTEGER NOT NULL,"
    "  state TEXT NOT NULL,"
    "  taken_at INTEGER NOT NULL) WITHOUT ROWID;",
    /* 3 */
    "ALTER TABLE events ADD COLUMN stream_hash INTEGER;"
    "DROP TRIGGER events_no_update;"
    "UPDATE events SET stream_hash = keel_stream_hash(stream);"
    "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN"
    "  SELECT RAISE(ABORT, 'events are append-only');"
    "END;",
};

const int keel__es_schema_version = (int)(sizeof migrations / sizeof migrations[0]);

static int user_version(sqlite3 *db, int *v) {
  sqlite3_stmt *st;
  int src = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
  if (src != SQLITE_OK) return keel__es_sqlite_error(db, src, "reading the schema version");
  src = sqlite3_step(st);
  *v = src == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
  sqlite3_finalize(st);
  return src == SQLITE_ROW ? 0 : keel__es_sqlite_error(db, src, "reading the schema version");
}

/* keel_stream_hash(text): the migration's way to fill stream_hash. */
static void stream_hash_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  (void)argc;
  const char *s = (const char *)sqlite3_value_text(argv[0]);
  if (!s) {
    sqlite3_result_null(ctx);
    return;
  }
  sqlite3_result_int64(ctx, (sqlite3_int64)keel__es_stream_hash(s));
}

int keel__es_migrate(sqlite3 *db, int *version) {
  int src = sqlite3_create_function(db, "keel_stream_hash", 1, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
                                    NULL, stream_hash_fn, NULL, NULL);
  if (src != SQLITE_OK) return keel__es_sqlite_error(db, src, "registering keel_stream_hash");
  src = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
  if (src != SQLITE_OK) return keel__es_sqlite_error(db, src, "locking the schema");
  int v = 0, rc = user_version(db, &v);
  if (rc == 0 && v > keel__es_schema_version) {
    keel__es_sqlite_error(db, SQLITE_ERROR, "the file's schema is newer than this keel's");
    rc = KEEL_EIO;
  }
  for (int i = v; rc == 0 && i < keel__es_schema_version; i++) {
    src = sqlite3_exec(db, migrations[i], NULL, NULL, NULL);
    if (src != SQLITE_OK) rc = keel__es_sqlite_error(db, src, "migrating the schema");
  }
  if (rc == 0 && v < keel__es_schema_version) {
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", keel__es_schema_version);
    src = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (src != SQLITE_OK) rc = keel__es_sqlite_error(db, src, "setting the schema version");
  }
  if (rc == 0) {
    src = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (src != SQLITE_OK) rc = keel__es_sqlite_error(db, src, "committing the schema");
  }
  if (rc != 0) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  if (rc == 0) *version = keel__es_schema_version;
  return rc;
}
