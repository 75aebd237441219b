/* test_partition.c - partitions matched in SQL: read_all's partition filter
 * returns exactly its streams' events (the stored stream_hash, checked
 * against FNV-1a computed here), and says how far it scanned, so that a
 * reader whose filter matches nothing in a long run moves past it in one
 * page; a store written by the previous schema (version 2, no stream_hash)
 * is migrated and its old events partitioned like new ones; a group's
 * partition and a filtered subscription move their checkpoints past events
 * that are not theirs, in few reads of the database; a projection's
 * partition is not taken for lost when its own checkpoint saves race.
 * Both backends. */
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "es/es_internal.h"
#include "es/kt_beside.h"
#include "es/kt_es.h"
#include "keel/subscription.h"

/* The documented partition function, written again here: FNV-1a (32-bit)
 * of the stream id's bytes, modulo the partition count. */
static uint32_t fnv1a(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 16777619u;
  }
  return h;
}

/* The first stream "<prefix>-<k>" in partition `part` of `count`. */
static void stream_in(char out[32], const char *prefix, uint32_t part, uint32_t count) {
  for (int k = 0;; k++) {
    snprintf(out, 32, "%s-%d", prefix, k);
    if (fnv1a(out) % count == part) return;
  }
}

static int64_t head_of(keel_es *es) {
  int64_t h;
  CHECK_OK(keel_es_head(es, &h));
  return h;
}

/* Every row's stored stream_hash equals FNV-1a of its stream (and on
 * PostgreSQL, keel_es_stream_hash() agrees). Returns the rows checked. */
static size_t check_hashes(keel_es *es) {
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es,
                         kt_es_pg_url() ? "SELECT stream, stream_hash, keel_es_stream_hash(stream) "
                                          "FROM events ORDER BY position"
                                        : "SELECT stream, stream_hash, stream_hash FROM events "
                                          "ORDER BY position",
                         NULL, 0, &rows));
  for (size_t r = 0; r < rows.nrows; r++) {
    const char *stream = keel_es_rows_get(&rows, r, 0);
    CHECK(keel_es_rows_get(&rows, r, 1) != NULL);
    CHECK_EQ(strtoll(keel_es_rows_get(&rows, r, 1), NULL, 10), (long long)fnv1a(stream));
    CHECK_EQ(strtoll(keel_es_rows_get(&rows, r, 2), NULL, 10), (long long)fnv1a(stream));
  }
  size_t n = rows.nrows;
  keel_es_rows_free(&rows);
  return n;
}

/* Pages through partition `part` of `count` with `limit` per page,
 * following scanned; checks every event is its partition's and in order;
 * returns how many. */
static int64_t read_partition(keel_es *es, uint32_t part, uint32_t count, size_t limit,
                              int64_t *pages) {
  keel_es_filter f = {.partitions = count, .partition = part};
  int64_t after = 0, n = 0, last = 0;
  *pages = 0;
  for (;;) {
    keel_es_events evs;
    CHECK_OK(keel_es_read_all(es, after, limit, &f, &evs));
    (*pages)++;
    CHECK(evs.n <= limit);
    CHECK(evs.scanned >= after);
    for (size_t i = 0; i < evs.n; i++) {
      CHECK_EQ(fnv1a(evs.v[i].stream) % count, part);
      CHECK(evs.v[i].position > last);
      CHECK(evs.v[i].position <= evs.scanned);
      last = evs.v[i].position;
      n++;
    }
    bool done = evs.scanned == after;
    after = evs.scanned;
    keel_es_events_free(&evs);
    if (done) return n;
  }
}

KT_CASE(read_all_returns_only_its_partition_and_scans_past_the_others) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  int64_t per[4] = {0};
  for (int i = 0; i < 60; i++) {
    char stream[32];
    snprintf(stream, sizeof stream, "s-%d", i % 17);
    size_t n = 1 + (size_t)(i % 3);
    CHECK_OK(kt_append_n(es, stream, KEEL_ES_ANY, "T", n, i, NULL));
    per[fnv1a(stream) % 4] += (int64_t)n;
  }
  int64_t head = head_of(es);
  CHECK_EQ((int64_t)check_hashes(es), head);
  int64_t sum = 0, pages;
  for (uint32_t p = 0; p < 4; p++) {
    int64_t got = read_partition(es, p, 4, 3, &pages);
    CHECK_EQ(got, per[p]);
    sum += got;
  }
  CHECK_EQ(sum, head); /* each event in exactly one partition */

  /* a long run of other partitions' events: one page moves past it */
  char mine[32], other[32];
  stream_in(mine, "mine", 0, 4);
  stream_in(other, "other", 1, 4);
  CHECK_OK(kt_append_n(es, mine, KEEL_ES_ANY, "T", 1, 0, NULL));
  int64_t at = head_of(es);
  for (int i = 0; i < 3; i++)
    CHECK_OK(kt_append_n(es, other, KEEL_ES_ANY, "T", 100, i, NULL));
  keel_es_filter f0 = {.partitions = 4, .partition = 0};
  keel_es_events evs;
  CHECK_OK(keel_es_read_all(es, at - 1, 10, &f0, &evs));
  CHECK_EQ(evs.n, 1);
  CHECK_EQ(evs.v[0].position, at);
  CHECK_EQ(evs.scanned, head_of(es)); /* short: it looked to the head */
  keel_es_events_free(&evs);
  CHECK_OK(keel_es_read_all(es, at, 10, &f0, &evs));
  CHECK_EQ(evs.n, 0);
  CHECK_EQ(evs.scanned, head_of(es));
  int64_t scanned = evs.scanned;
  keel_es_events_free(&evs);
  CHECK_OK(kt_append_n(es, mine, KEEL_ES_ANY, "T", 1, 1, NULL));
  CHECK_OK(keel_es_read_all(es, scanned, 10, &f0, &evs));
  CHECK_EQ(evs.n, 1);
  CHECK_EQ(evs.v[0].position, head_of(es));
  keel_es_events_free(&evs);

  /* the other partition's run, paged: a full page's scanned is its last event */
  keel_es_filter f1 = {.partitions = 4, .partition = 1};
  CHECK_OK(keel_es_read_all(es, at, 10, &f1, &evs));
  CHECK_EQ(evs.n, 10);
  CHECK_EQ(evs.scanned, evs.v[9].position);
  keel_es_events_free(&evs);
  /* other filters scan too: a category with nothing left, and none at all */
  CHECK_OK(keel_es_read_all(es, 0, 10, &(keel_es_filter){.category = "nothing"}, &evs));
  CHECK_EQ(evs.n, 0);
  CHECK_EQ(evs.scanned, head_of(es));
  keel_es_events_free(&evs);
  CHECK_OK(keel_es_read_all(es, head_of(es), 10, NULL, &evs));
  CHECK_EQ(evs.n, 0);
  CHECK_EQ(evs.scanned, head_of(es));
  keel_es_events_free(&evs);
  CHECK_EQ(keel_es_read_all(es, 0, 10, &(keel_es_filter){.partitions = 4, .partition = 4}, &evs),
           KEEL_EINVAL);
  kt_store_close(&s);
}

/* ---- the migration from schema version 2 ------------------------------------------------ */

/* Version 1 and 2 of schema.c, as they were (the events table without
 * stream_hash), for a file written by the previous keel. */
static const char *const sqlite_v2 =
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
    "END;"
    "CREATE TABLE snapshots ("
    "  stream TEXT PRIMARY KEY,"
    "  version INTEGER NOT NULL,"
    "  schema_version INTEGER NOT NULL,"
    "  state TEXT NOT NULL,"
    "  taken_at INTEGER NOT NULL) WITHOUT ROWID;"
    "PRAGMA user_version = 2;";

/* A SQLite file of schema version 2 holding n events over 7 streams, as the
 * previous keel wrote them. */
static void write_sqlite_v2(const kt_store *s, int n) {
  char path[600];
  snprintf(path, sizeof path, "%s/es.db", s->dir);
  sqlite3 *db;
  CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
  CHECK_EQ(sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL), SQLITE_OK);
  CHECK_EQ(sqlite3_exec(db, sqlite_v2, NULL, NULL, NULL), SQLITE_OK);
  int version[7] = {0};
  for (int i = 0; i < n; i++) {
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO events (stream, version, id, type, schema_version, payload, "
             "occurred_at, stored_at) VALUES ('old-%d', %d, "
             "'00000000-0000-4000-8000-%012d', 'Old', 1, '{\"i\": %d}', 1, 1);"
             "INSERT INTO streams (stream, version) VALUES ('old-%d', %d) "
             "ON CONFLICT (stream) DO UPDATE SET version = excluded.version",
             i % 7, version[i % 7] + 1, i, i, i % 7, version[i % 7] + 1);
    version[i % 7]++;
    CHECK_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  }
  sqlite3_close(db);
}

KT_CASE(a_store_of_the_previous_schema_is_migrated_and_partitioned) {
  kt_store s;
  enum { N = 50 };
  if (kt_es_pg_url()) {
    /* PostgreSQL: a store made by this keel, then taken back to version 2
     * (the column and the function dropped, as version 2 had neither) */
    keel_es *es = kt_store_open(&s, NULL);
    for (int i = 0; i < N; i++) {
      char stream[16];
      snprintf(stream, sizeof stream, "old-%d", i % 7);
      CHECK_OK(kt_append_n(es, stream, KEEL_ES_ANY, "Old", 1, i, NULL));
    }
    keel_es_close(es);
    char sql[512];
    snprintf(sql, sizeof sql,
             "ALTER TABLE %s.events DROP COLUMN stream_hash; "
             "DROP FUNCTION %s.keel_es_stream_hash(text); "
             "UPDATE %s.keel_es_schema SET version = 2",
             s.schema, s.schema, s.schema);
    char err[512];
    if (kt_pg_exec(s.admin_url, sql, err, sizeof err)) {
      fprintf(stderr, "%s\n", err);
      CHECK(!"taking the store back to version 2");
    }
    CHECK(kt_pg_exec(s.admin_url, "SELECT stream_hash FROM events", NULL, 0) != 0); /* gone */
  } else {
    kt_store_mkdir(&s);
    write_sqlite_v2(&s, N);
  }
  CHECK_OK(keel_es_open(
      &(keel_es_opts){.url = s.url, .session_url = s.database[0] ? s.admin_url : NULL}, &s.es));
  keel_es *es = s.es;
  CHECK_EQ((int64_t)check_hashes(es), N); /* every old row filled */
  int64_t per[4] = {0};
  for (int i = 0; i < N; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "old-%d", i % 7);
    per[fnv1a(stream) % 4]++;
  }
  int64_t pages;
  for (uint32_t p = 0; p < 4; p++)
    CHECK_EQ(read_partition(es, p, 4, 5, &pages), per[p]);
  /* appends go on after it, hashed, and the table is still append-only */
  CHECK_OK(kt_append_n(es, "old-1", KEEL_ES_ANY, "New", 2, 0, NULL));
  CHECK_EQ((int64_t)check_hashes(es), N + 2);
  if (kt_es_pg_url()) {
    CHECK(kt_pg_exec(s.admin_url, "UPDATE events SET type = 'x'", NULL, 0) != 0);
  } else {
    char path[600];
    snprintf(path, sizeof path, "%s/es.db", s.dir);
    sqlite3 *db;
    CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
    CHECK(sqlite3_exec(db, "UPDATE events SET type = 'x'", NULL, NULL, NULL) != SQLITE_OK);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    CHECK_EQ(sqlite3_step(st), SQLITE_ROW);
    CHECK_EQ(sqlite3_column_int(st, 0), 3);
    sqlite3_finalize(st);
    /* a row an older keel writes beside this one has no hash: still
     * answered by its partition only */
    CHECK_EQ(sqlite3_exec(db,
                          "INSERT INTO events (stream, version, id, type, schema_version, "
                          "payload, occurred_at, stored_at) VALUES ('old-2', 100, "
                          "'00000000-0000-4000-8000-999999999999', 'Old', 1, '{}', 1, 1)",
                          NULL, NULL, NULL),
             SQLITE_OK);
    sqlite3_close(db);
    per[fnv1a("old-1") % 4] += 2;
    per[fnv1a("old-2") % 4] += 1;
    for (uint32_t p = 0; p < 4; p++)
      CHECK_EQ(read_partition(es, p, 4, 5, &pages), per[p]);
  }
  kt_store_close(&s);
}

/* ---- subscriptions ------------------------------------------------------------------------ */

typedef struct counted {
  atomic_int n;
} counted;

static int count_one(const keel_es_event *ev, void *ud) {
  (void)ev;
  atomic_fetch_add(&((counted *)ud)->n, 1);
  return 0;
}

/* Waits (20 s at most) until `name` is live with its checkpoint at pos. */
static keel_sub_status wait_at(const char *name, int64_t pos) {
  keel_sub_status st = {0};
  for (int i = 0; i < 2000; i++) {
    if (keel_sub_status_get(name, &st) == 0 && st.checkpoint >= pos && st.state == KEEL_SUB_LIVE)
      return st;
    keel_sleep(10);
  }
  fprintf(stderr, "%s: checkpoint %lld, wanted %lld\n", name, (long long)st.checkpoint,
          (long long)pos);
  CHECK(!"the subscription did not reach the position");
  return st;
}

static double reads(keel_metrics *m) {
  keel_metric_family *f = keel_metrics_find(m, "es_reads_total");
  CHECK(f != NULL);
  keel_counter *c;
  CHECK_OK(keel_counter_get(f, NULL, &c));
  return keel_counter_value(c);
}

/* A group's partitions move past a run of 500 events of partition 2,
 * appended beside keel (not in the live tail: read from the database), in
 * a read or two each: the partition is matched in SQL and the read says how
 * far it scanned. Matched in C after the read (before partitions in SQL),
 * each of the three other members read the run a page of `batch` at a
 * time: 25 reads each, 100 in all with partition 2's own. */
KT_CASE(a_partition_moves_past_a_long_run_of_other_partitions_events) {
  keel_metrics *m;
  CHECK_OK(keel_metrics_new(&m, 0));
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.metrics = m});
  char mine[32], other[32], wake[32];
  stream_in(mine, "mine", 0, 4);
  stream_in(other, "other", 2, 4);
  stream_in(wake, "wake", 1, 4);
  counted c = {0};
  keel_sub_opts o = {.name = "pg",
                     .es = es,
                     .handle = count_one,
                     .ud = &c,
                     .partitions = 4,
                     .batch = 20,
                     .poll_ms = 1000, /* polls would add reads: the append below wakes them */
                     .rebalance_ms = 50};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  CHECK_OK(kt_append_n(es, mine, KEEL_ES_ANY, "T", 1, 0, NULL));
  for (int p = 0; p < 4; p++) {
    char name[16];
    snprintf(name, sizeof name, "pg.p%d", p);
    wait_at(name, head_of(es));
  }
  double before = reads(m);
  kt_append_beside(&s, other, 500); /* five batches of p0's reads, 25 pages of p2's */
  /* an append through keel wakes the members (the run beside keel does
   * not): it is in the tail, but after a hole, so they read the database */
  CHECK_OK(kt_append_n(es, wake, KEEL_ES_ANY, "T", 1, 0, NULL));
  int64_t head = head_of(es);
  CHECK_EQ(head, 502);
  keel_sub_status st = wait_at("pg.p0", head);
  CHECK_EQ(st.handled, 1);
  CHECK_EQ(st.lag, 0);
  keel_sub_status p2 = wait_at("pg.p2", head);
  CHECK_EQ(p2.handled, 500);
  wait_at("pg.p1", head);
  wait_at("pg.p3", head);
  double used = reads(m) - before - 1; /* head_of's */
  fprintf(stderr, "   %.0f reads for the four partitions past 500 events\n", used);
  /* p2's 25 pages, a few for each other partition (30 to 40 seen, 63 once
   * under ThreadSanitizer with a poll every 50 ms); about 110 in C */
  CHECK(used < 75);
  /* stored too: a restart does not read the run again */
  for (int i = 0; i < 500 && st.stored < head; i++) {
    keel_sleep(10);
    CHECK_OK(keel_sub_status_get("pg.p0", &st));
  }
  CHECK_EQ(st.stored, head);
  CHECK_OK(kt_append_n(es, mine, KEEL_ES_ANY, "T", 1, 1, NULL));
  st = wait_at("pg.p0", head_of(es));
  CHECK_EQ(st.handled, 2);
  CHECK_EQ(atomic_load(&c.n), 503);
  CHECK_OK(keel_sub_stop("pg", 0));
  kt_store_close(&s);
  keel_metrics_free(m);
}

/* A filtered subscription whose filter matches none of the latest events:
 * its checkpoint moves to the head (lag 0) instead of staying at the last
 * event it wanted, and it waits for new appends instead of reading the
 * same unwanted run again. */
KT_CASE(a_filtered_subscription_moves_past_events_it_does_not_want) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "keep-1", KEEL_ES_ANY, "T", 1, 0, NULL));
  counted c = {0};
  keel_sub_opts o = {.name = "kept",
                     .es = es,
                     .handle = count_one,
                     .ud = &c,
                     .filter = {.category = "keep"},
                     .poll_ms = 20};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  wait_at("kept", 1);
  CHECK_OK(kt_append_n(es, "drop-1", KEEL_ES_ANY, "T", 50, 0, NULL));
  keel_sub_status st = wait_at("kept", head_of(es));
  CHECK_EQ(st.handled, 1);
  CHECK_EQ(st.checkpoint, head_of(es));
  CHECK_OK(kt_append_n(es, "keep-1", KEEL_ES_ANY, "T", 1, 1, NULL));
  st = wait_at("kept", head_of(es));
  CHECK_EQ(st.handled, 2);
  CHECK_OK(keel_sub_stop("kept", 0));
  kt_store_close(&s);
}

/* A projection's partition, live, while the other partitions' appends go
 * on: after a page, its checkpoint moves past the page's last event to
 * `scanned`, stored behind it (the saver); the next page's projection
 * transaction stores a later position. Whichever commits first, the
 * member keeps its partition: a behind save refused because a newer
 * checkpoint is already stored is stale, not a takeover (once it was
 * taken for one: the member stopped, "partition taken over by another
 * instance", and its restart's count began again). */
static int project_one(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  (void)tx;
  (void)ev;
  atomic_fetch_add(&((counted *)ud)->n, 1);
  return 0;
}

enum { TAG_DONE = 7, NWRITERS = 3, PER_WRITER = 200 };

typedef struct writer {
  keel_es *es;
  keel_pid_t parent;
  int id;
} writer;

/* PER_WRITER appends of one event, over 8 streams (all four partitions) */
static void write_loop(void *arg) {
  writer *w = arg;
  for (int i = 0; i < PER_WRITER; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "w-%d", (i + w->id) % 8);
    CHECK_OK(kt_append_n(w->es, stream, KEEL_ES_ANY, "T", 1, i, NULL));
  }
  kt_send_u64(w->parent, TAG_DONE, 0);
}

KT_CASE(a_projections_partition_is_not_lost_to_its_own_behind_save) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  counted c = {0};
  keel_sub_opts o = {.name = "pj",
                     .es = es,
                     .project = project_one,
                     .ud = &c,
                     .partitions = 4,
                     .batch = 2,
                     .poll_ms = 20,
                     .rebalance_ms = 50};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  char p0[32];
  stream_in(p0, "a", 0, 4);
  CHECK_OK(kt_append_n(es, p0, KEEL_ES_ANY, "T", 1, 0, NULL));
  for (int p = 0; p < 4; p++) {
    char name[16];
    snprintf(name, sizeof name, "pj.p%d", p);
    wait_at(name, head_of(es));
  }
  int64_t per[4] = {0};
  per[0] = 1;
  writer w[NWRITERS];
  for (int i = 0; i < NWRITERS; i++) {
    w[i] = (writer){.es = es, .parent = keel_self(), .id = i};
    CHECK_OK(keel_spawn(write_loop, &w[i], NULL, NULL));
    for (int k = 0; k < PER_WRITER; k++) {
      char stream[16];
      snprintf(stream, sizeof stream, "w-%d", (k + i) % 8);
      per[fnv1a(stream) % 4]++;
    }
  }
  for (int i = 0; i < NWRITERS; i++)
    keel_msg_free(kt_recv(120000));
  int64_t head = head_of(es);
  CHECK_EQ(head, 1 + NWRITERS * PER_WRITER);
  for (int p = 0; p < 4; p++) {
    char name[16];
    snprintf(name, sizeof name, "pj.p%d", p);
    keel_sub_status st = wait_at(name, head);
    /* handled counts since the member started: a member lost and started
     * again counts less */
    if ((int64_t)st.handled != per[p])
      fprintf(stderr, "%s: handled %llu of %lld\n", name, (unsigned long long)st.handled,
              (long long)per[p]);
    CHECK_EQ((int64_t)st.handled, per[p]);
  }
  CHECK_EQ(atomic_load(&c.n), head);
  CHECK_OK(keel_sub_stop("pj", 0));
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(read_all_returns_only_its_partition_and_scans_past_the_others),
        KT_ENTRY(a_store_of_the_previous_schema_is_migrated_and_partitioned),
        KT_ENTRY(a_partition_moves_past_a_long_run_of_other_partitions_events),
        KT_ENTRY(a_filtered_subscription_moves_past_events_it_does_not_want),
        KT_ENTRY_SCHED(a_projections_partition_is_not_lost_to_its_own_behind_save, 4))
