/* pg_schema.c - the event store's tables on PostgreSQL, created and migrated
 * by version.
 *
 * The version lives in a one-row table, keel_es_schema, in the connection's
 * current schema (the first of its search_path: several stores may share a
 * database in different schemas). keel__es_pg_migrate runs, in one
 * transaction that first takes a transaction-level advisory lock on that
 * schema's name, every migration above the stored version, then records it:
 * running it again does nothing, several instances starting at once take
 * turns on the lock (the second finds the work done), and a database written
 * by a newer keel is refused rather than guessed at.
 *
 * Version 1:
 *   events   one row per event. position comes from events_position_seq
 *            (never reused, gaps allowed) through keel_es_reserve (below).
 *            id is a UUID, UNIQUE: appends are idempotent by event id;
 *            UNIQUE(stream, version) serves stream reads. payload and
 *            metadata are json (the text as given: jsonb would refuse \u0000
 *            and reorder keys). tx is the writing transaction's id (xid8),
 *            the key of read_all's horizon (pg_read.c).
 *   streams  one row per stream, as on SQLite: version, deleted,
 *            truncated_before, metadata; a partial index finds the streams
 *            with hidden events.
 *   keel_es_reserve(n)  assigns the calling transaction its id and its n
 *            positions together, under a session advisory lock held for the
 *            length of the function only (microseconds, not the
 *            transaction): among appending transactions, a higher
 *            transaction id always means higher positions, which is what
 *            makes "tx below the oldest running transaction" a gap-free
 *            prefix of the position order.
 *   keel_es_events_guard  a trigger refusing every UPDATE, DELETE and
 *            TRUNCATE of events, unless the transaction-local setting
 *            keel.hard_delete is 'on' (set by keel_es_hard_delete, for
 *            DELETE only): append-only for every client of the database.
 *
 * Version 2:
 *   snapshots  one row per stream, as on SQLite: its newest snapshot
 *            (version, schema_version, state as json, taken_at in Unix ms).
 *
 * Version 3:
 *   events.stream_hash  FNV-1a of the stream id, as on SQLite (schema.c):
 *            written by every append, matched by read_all's partition
 *            filter in SQL. keel_es_stream_hash(text) computes it in
 *            plpgsql, for the migration's UPDATE of existing rows (with the
 *            append-only trigger disabled for that statement, inside the
 *            migration's transaction) and for an operator's queries; appends
 *            send the value computed in C.
 */
#include <stdio.h>
#include <stdlib.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

static const char *const migrations[] = {
    /* 1 */
    "CREATE SEQUENCE events_position_seq;"
    "CREATE TABLE events ("
    "  position BIGINT PRIMARY KEY,"
    "  stream TEXT NOT NULL,"
    "  version BIGINT NOT NULL,"
    "  id UUID NOT NULL UNIQUE,"
    "  type TEXT NOT NULL,"
    "  schema_version INTEGER NOT NULL,"
    "  payload JSON NOT NULL,"
    "  metadata JSON,"
    "  occurred_at BIGINT NOT NULL,"
    "  stored_at BIGINT NOT NULL,"
    "  tx XID8 NOT NULL DEFAULT pg_current_xact_id(),"
    "  UNIQUE (stream, version));"
    "CREATE TABLE streams ("
    "  stream TEXT PRIMARY KEY,"
    "  version BIGINT NOT NULL DEFAULT 0,"
    "  deleted BOOLEAN NOT NULL DEFAULT false,"
    "  truncated_before BIGINT NOT NULL DEFAULT 0,"
    "  metadata JSON);"
    "CREATE INDEX streams_hidden ON streams (stream) WHERE deleted OR truncated_before > 1;"
    "CREATE FUNCTION keel_es_reserve(n integer) RETURNS bigint LANGUAGE plpgsql AS $$\n"
    "DECLARE\n"
    "  k integer := 'events_position_seq'::regclass::oid::integer;\n"
    "  first bigint;\n"
    "BEGIN\n"
    "  PERFORM pg_advisory_lock(1801808236, k);\n"
    "  BEGIN\n"
    "    PERFORM pg_current_xact_id();\n"
    "    first := nextval('events_position_seq');\n"
    "    IF n > 1 THEN PERFORM setval('events_position_seq', first + n - 1); END IF;\n"
    "  EXCEPTION WHEN OTHERS THEN\n"
    "    PERFORM pg_advisory_unlock(1801808236, k);\n"
    "    RAISE;\n"
    "  END;\n"
    "  PERFORM pg_advisory_unlock(1801808236, k);\n"
    "  RETURN first;\n"
    "END $$;"
    "CREATE FUNCTION keel_es_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  IF TG_OP = 'DELETE' AND current_setting('keel.hard_delete', true) = 'on' THEN\n"
    "    RETURN OLD;\n"
    "  END IF;\n"
    "  RAISE EXCEPTION 'events are append-only (keel_es_hard_delete removes a stream)';\n"
    "END $$;"
    "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events"
    "  FOR EACH ROW EXECUTE FUNCTION keel_es_events_guard();"
    "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events"
    "  FOR EACH STATEMENT EXECUTE FUNCTION keel_es_events_guard();",
    /* 2 */
    "CREATE TABLE snapshots ("
    "  stream TEXT PRIMARY KEY,"
    "  version BIGINT NOT NULL,"
    "  schema_version INTEGER NOT NULL,"
    "  state JSON NOT NULL,"
    "  taken_at BIGINT NOT NULL);",
    /* 3: in the migration's one transaction, ADD COLUMN holds ACCESS
     * EXCLUSIVE on events until the commit (every instance's appends and
     * reads wait for the whole-table UPDATE), and the UPDATE leaves a dead
     * tuple per row until vacuum (decision 0034, Limits) */
    "CREATE FUNCTION keel_es_stream_hash(s text) RETURNS bigint LANGUAGE plpgsql IMMUTABLE STRICT "
    "AS $$\n"
    "DECLARE\n"
    "  b bytea := convert_to(s, 'UTF8');\n"
    "  h bigint := 2166136261;\n"
    "BEGIN\n"
    "  FOR i IN 0 .. length(b) - 1 LOOP\n"
    "    h := ((h # get_byte(b, i)::bigint) * 16777619) % 4294967296;\n"
    "  END LOOP;\n"
    "  RETURN h;\n"
    "END $$;"
    "ALTER TABLE events ADD COLUMN stream_hash BIGINT;"
    "ALTER TABLE events DISABLE TRIGGER events_append_only;"
    "UPDATE events SET stream_hash = keel_es_stream_hash(stream);"
    "ALTER TABLE events ENABLE TRIGGER events_append_only;",
};

static const int pg_schema_version = (int)(sizeof migrations / sizeof migrations[0]);

int keel__es_pg_migrate(es_pg *pg, es_pgconn *c, int *version) {
  PGresult *res = NULL;
  int rc = keel__es_pg_query(pg, c, "locking the schema",
                             "BEGIN;"
                             "SELECT pg_advisory_xact_lock(1801808235, hashtext(current_schema()));"
                             "CREATE TABLE IF NOT EXISTS keel_es_schema (version integer NOT NULL);"
                             "SELECT coalesce(max(version), 0) FROM keel_es_schema",
                             -1, NULL, &res);
  int v = 0;
  if (rc == 0) {
    v = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (v > pg_schema_version) {
      keel_log_error(NULL, "event store: the database's schema is newer than this keel's",
                     KEEL_INT("schema_version", v));
      rc = KEEL_EIO;
    }
  }
  for (int i = v; rc == 0 && i < pg_schema_version; i++)
    rc = keel__es_pg_query(pg, c, "migrating the schema", migrations[i], -1, NULL, NULL);
  if (rc == 0 && v < pg_schema_version) {
    char sql[128];
    snprintf(sql, sizeof sql, "DELETE FROM keel_es_schema; INSERT INTO keel_es_schema VALUES (%d)",
             pg_schema_version);
    rc = keel__es_pg_query(pg, c, "setting the schema version", sql, -1, NULL, NULL);
  }
  if (rc == 0) rc = keel__es_pg_query(pg, c, "committing the schema", "COMMIT", -1, NULL, NULL);
  if (rc != 0) keel__es_pg_query(pg, c, "rolling back", "ROLLBACK", -1, NULL, NULL);
  if (rc == 0) *version = pg_schema_version;
  return rc;
}
