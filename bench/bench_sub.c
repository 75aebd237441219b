/* bench_sub.c - subscriptions (keel/subscription.h): how fast one catches
 * up, against the raw paged SELECT of the same rows in the same run, how
 * fast a transactional projection goes, and how long a live event takes
 * from its append returning to its handler being called.
 *
 * Catch-up and projection pairs run in alternating rounds (keel, raw,
 * keel, raw...; ROUNDS of each, default 5, $BENCH_SUB_ROUNDS) on one store
 * of 50,000 events (50 streams of 1000, one small payload); the medians and
 * their ratios are printed as JSON lines {"bench": NAME, "unit": UNIT,
 * "value": N}. Each keel round is a fresh subscription (its own name) from
 * the beginning, in pages of 1000 ($BENCH_SUB_BATCH), checkpointed after
 * every page (the default), timed from keel_sub_start to the last event's
 * handler (catch-up) or to the status showing the last event's checkpoint
 * (projection):
 *   sub_catchup      a no-op handle, handler_timeout_ms = KEEL_INFINITY
 *                    (the handler runs in the subscription's process)
 *                    ("sub_catchup_keel"), and with the default timeout
 *                    (the handler runs in a worker process, one message
 *                    each way per event) ("sub_catchup_worker_keel"),
 *                    against the raw paged SELECT ... WHERE position > ?
 *                    ORDER BY position LIMIT 1000 reading every column
 *                    ("sub_catchup_raw"; raw sqlite3 on the blocking pool);
 *                    events/s
 *   sub_project      a transactional projection upserting one row per event
 *                    (keyed by stream: INSERT ... ON CONFLICT DO UPDATE),
 *                    its checkpoint in the same transaction, against raw
 *                    sqlite3 doing the same per page: BEGIN, the page's
 *                    SELECT, one upsert per row, the checkpoint's upsert,
 *                    COMMIT (WAL, synchronous=FULL as keel); events/s
 *   sub_live         a subscription at the head; one event appended every
 *                    ~1 ms, 2000 of them ($BENCH_SUB_LIVE); the handler
 *                    records the time since that event's append returned
 *                    (passed through an array indexed by position); p50
 *                    and p99 of each round, medians over rounds
 *                    ($BENCH_SUB_LIVE_ROUNDS, default 3), for the in-process
 *                    handler and the worker-process one; ms
 * PostgreSQL, only when $BENCH_ES_PG_URL is set (bench/compare-run.sh starts
 * a throwaway cluster for it), in a schema of its own: sub_pg_catchup,
 * sub_pg_project (raw libpq: one autocommit SELECT per page; the
 * projection's raw side BEGIN, SELECT, one upsert per row, the checkpoint,
 * COMMIT, each statement a round trip as keel's) and sub_pg_live, the same
 * workloads.
 *   bench_sub [workload...]   (sub_catchup sub_project sub_live sub_pg_catchup
 *                              sub_pg_project sub_pg_live; none: all)
 */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keel.h"
#include "keel/subscription.h"

enum { EVENTS = 50000, STREAMS = 50, TAG_DONE = 0x62730001 };

static int rounds = 5, live_rounds = 3, live_n = 2000;
static size_t batch = 1000;
static char dir[256];
static int serial; /* subscription and table names, unique in this run */
static const char *payload_text =
    "{\"order\":12345,\"total\":99.5,\"currency\":\"EUR\",\"lines\":3}";

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_sub: %s: %d (%s)\n", what, rc, rc < 0 ? keel_strerror(rc) : "");
  exit(2);
}

static keel_es *open_url(const char *url) {
  keel_es *es;
  int rc = keel_es_open(&(keel_es_opts){.url = url}, &es);
  if (rc) die("keel_es_open", rc);
  return es;
}

/* 50,000 events in 50 streams of 1000, appended through keel. */
static void fill(keel_es *es) {
  json_t *p = json_loads(payload_text, 0, NULL);
  static keel_es_event_in ev[EVENTS / STREAMS];
  for (int e = 0; e < EVENTS / STREAMS; e++)
    ev[e] = (keel_es_event_in){.type = "OrderPlaced", .payload = p};
  for (int b = 0; b < STREAMS; b++) {
    char stream[32];
    snprintf(stream, sizeof stream, "order-%d", b);
    int rc = keel_es_append(es, stream, KEEL_ES_NO_STREAM, ev, EVENTS / STREAMS, NULL);
    if (rc) die("fill", rc);
  }
  json_decref(p);
}

/* ---- statistics and reports ----------------------------------------------------------- */

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void line(const char *name, const char *unit, double v) {
  printf("{\"bench\": \"%s\", \"unit\": \"%s\", \"value\": %.*f}\n", name, unit, v < 100 ? 3 : 1,
         v);
  fflush(stdout);
}

static bool wanted(int argc, char **argv, const char *name) {
  if (argc < 2) return true;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return true;
  return false;
}

/* ---- raw anchors: SQLite ------------------------------------------------------------------ */

#define RAW_PAGE_SQL                                                                               \
  "SELECT position, stream, version, id, type, schema_version, payload, metadata, occurred_at, "   \
  "stored_at FROM events WHERE position > ? ORDER BY position LIMIT ?"

typedef struct raw_job {
  const char *path;  /* SQLite file, or PostgreSQL URL */
  const char *table; /* projection: the raw read model's table ("": read only) */
  long long rows;
  double secs;
} raw_job;

/* Every column of the current row, each as its type (what a reader pays). */
static size_t sqlite_touch(sqlite3_stmt *st) {
  size_t bytes = 0;
  for (int c = 1; c < 10; c++) {
    if (sqlite3_column_type(st, c) == SQLITE_INTEGER) {
      bytes += (size_t)(sqlite3_column_int64(st, c) & 1);
      continue;
    }
    if (sqlite3_column_text(st, c)) bytes += (size_t)sqlite3_column_bytes(st, c);
  }
  return bytes;
}

static void sqlite_exec(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "bench_sub: %s: %s\n", sql, err ? err : "?");
    exit(2);
  }
}

/* The whole feed in pages, as a user of sqlite3 would read it: one read
 * transaction per page (as keel's read_all). */
static void raw_sqlite_read(void *arg) {
  raw_job *j = arg;
  sqlite3 *db;
  if (sqlite3_open_v2(j->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
    die("sqlite3_open", 0);
  sqlite3_stmt *st;
  sqlite3_prepare_v2(db, RAW_PAGE_SQL, -1, &st, NULL);
  double t0 = now_s();
  long long n = 0, after = 0;
  size_t bytes = 0;
  for (;;) {
    sqlite_exec(db, "BEGIN");
    sqlite3_bind_int64(st, 1, after);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)batch);
    int got = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
      after = sqlite3_column_int64(st, 0);
      bytes += sqlite_touch(st);
      got++;
    }
    sqlite3_reset(st);
    sqlite_exec(db, "COMMIT");
    n += got;
    if (got == 0) break;
  }
  j->secs = now_s() - t0;
  j->rows = n;
  if (bytes == 0) die("raw read: nothing", 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

/* A transactional projection by hand: per page, BEGIN IMMEDIATE, the
 * page's SELECT, one upsert per row, the checkpoint's upsert, COMMIT. */
static void raw_sqlite_project(void *arg) {
  raw_job *j = arg;
  sqlite3 *db;
  if (sqlite3_open_v2(j->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
    die("sqlite3_open", 0);
  sqlite_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL");
  char sql[512];
  snprintf(sql, sizeof sql,
           "CREATE TABLE %s (id TEXT PRIMARY KEY, version BIGINT NOT NULL, n BIGINT NOT NULL); "
           "CREATE TABLE IF NOT EXISTS raw_checkpoints (name TEXT PRIMARY KEY, position BIGINT)",
           j->table);
  sqlite_exec(db, sql);
  sqlite3_stmt *page, *up, *ck;
  sqlite3_prepare_v2(db, RAW_PAGE_SQL, -1, &page, NULL);
  snprintf(sql, sizeof sql,
           "INSERT INTO %s (id, version, n) VALUES (?, ?, 1) ON CONFLICT (id) DO UPDATE SET "
           "version = excluded.version, n = %s.n + 1",
           j->table, j->table);
  sqlite3_prepare_v2(db, sql, -1, &up, NULL);
  sqlite3_prepare_v2(db,
                     "INSERT INTO raw_checkpoints (name, position) VALUES (?, ?) ON CONFLICT "
                     "(name) DO UPDATE SET position = excluded.position WHERE "
                     "raw_checkpoints.position <= excluded.position",
                     -1, &ck, NULL);
  double t0 = now_s();
  long long n = 0, after = 0;
  for (;;) {
    sqlite_exec(db, "BEGIN IMMEDIATE");
    sqlite3_bind_int64(page, 1, after);
    sqlite3_bind_int64(page, 2, (sqlite3_int64)batch);
    int got = 0;
    while (sqlite3_step(page) == SQLITE_ROW) {
      after = sqlite3_column_int64(page, 0);
      sqlite_touch(page);
      sqlite3_bind_text(up, 1, (const char *)sqlite3_column_text(page, 1), -1, SQLITE_TRANSIENT);
      sqlite3_bind_int64(up, 2, sqlite3_column_int64(page, 2));
      if (sqlite3_step(up) != SQLITE_DONE) die("raw upsert", sqlite3_errcode(db));
      sqlite3_reset(up);
      got++;
    }
    sqlite3_reset(page);
    if (got) {
      sqlite3_bind_text(ck, 1, j->table, -1, SQLITE_STATIC);
      sqlite3_bind_int64(ck, 2, after);
      if (sqlite3_step(ck) != SQLITE_DONE) die("raw checkpoint", sqlite3_errcode(db));
      sqlite3_reset(ck);
    }
    sqlite_exec(db, "COMMIT");
    n += got;
    if (got == 0) break;
  }
  j->secs = now_s() - t0;
  j->rows = n;
  sqlite3_finalize(page);
  sqlite3_finalize(up);
  sqlite3_finalize(ck);
  sqlite3_close(db);
}

/* ---- raw anchors: PostgreSQL ------------------------------------------------------------- */

#define PG_PAGE_SQL                                                                                \
  "SELECT position, stream, version, id::text, type, schema_version, payload::text, "              \
  "metadata::text, occurred_at, stored_at FROM events WHERE position > $1::bigint "                \
  "ORDER BY position LIMIT $2::bigint"

static PGconn *pg_connect(const char *url) {
  PGconn *c = PQconnectdb(url);
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "bench_sub: %s", PQerrorMessage(c));
    die("PostgreSQL: cannot connect", 0);
  }
  return c;
}

static PGresult *pg_check(PGresult *r, const char *what) {
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
    fprintf(stderr, "bench_sub: %s: %s", what, PQresultErrorMessage(r));
    die("PostgreSQL", 0);
  }
  return r;
}

static void pg_exec(PGconn *c, const char *sql) {
  PQclear(pg_check(PQexec(c, sql), sql));
}

/* One page after *after (every value touched); moves *after. */
static int pg_page(PGconn *c, long long *after, PGresult **keep) {
  char a[24], l[24];
  snprintf(a, sizeof a, "%lld", *after);
  snprintf(l, sizeof l, "%zu", batch);
  const char *params[2] = {a, l};
  PGresult *r = pg_check(PQexecParams(c, PG_PAGE_SQL, 2, NULL, params, NULL, NULL, 0), "page");
  int rows = PQntuples(r);
  size_t bytes = 0;
  for (int i = 0; i < rows; i++)
    for (int col = 0; col < 10; col++)
      bytes += PQgetisnull(r, i, col) ? 0 : (size_t)PQgetlength(r, i, col) + 1;
  if (rows) *after = strtoll(PQgetvalue(r, rows - 1, 0), NULL, 10);
  if (rows && bytes == 0) die("raw pg read: nothing", 0);
  if (keep)
    *keep = r;
  else
    PQclear(r);
  return rows;
}

static void raw_pg_read(void *arg) {
  raw_job *j = arg;
  PGconn *c = pg_connect(j->path);
  double t0 = now_s();
  long long n = 0, after = 0;
  int got;
  while ((got = pg_page(c, &after, NULL)) > 0)
    n += got;
  j->secs = now_s() - t0;
  j->rows = n;
  PQfinish(c);
}

static void raw_pg_project(void *arg) {
  raw_job *j = arg;
  PGconn *c = pg_connect(j->path);
  char sql[512];
  snprintf(sql, sizeof sql,
           "CREATE TABLE %s (id TEXT PRIMARY KEY, version BIGINT NOT NULL, n BIGINT NOT NULL); "
           "CREATE TABLE IF NOT EXISTS raw_checkpoints (name TEXT PRIMARY KEY, position BIGINT)",
           j->table);
  PQclear(PQexec(c, "SET client_min_messages = warning"));
  pg_exec(c, sql);
  char up[512];
  snprintf(up, sizeof up,
           "INSERT INTO %s (id, version, n) VALUES ($1, $2::bigint, 1) ON CONFLICT (id) DO "
           "UPDATE SET version = excluded.version, n = %s.n + 1",
           j->table, j->table);
  double t0 = now_s();
  long long n = 0, after = 0;
  for (;;) {
    pg_exec(c, "BEGIN");
    PGresult *r;
    int got = pg_page(c, &after, &r);
    for (int i = 0; i < got; i++) {
      const char *params[2] = {PQgetvalue(r, i, 1), PQgetvalue(r, i, 2)};
      PQclear(pg_check(PQexecParams(c, up, 2, NULL, params, NULL, NULL, 0), "raw upsert"));
    }
    PQclear(r);
    if (got) {
      char a[24];
      snprintf(a, sizeof a, "%lld", after);
      const char *params[2] = {j->table, a};
      PQclear(pg_check(PQexecParams(c,
                                    "INSERT INTO raw_checkpoints (name, position) VALUES ($1, "
                                    "$2::bigint) ON CONFLICT (name) DO UPDATE SET position = "
                                    "excluded.position WHERE raw_checkpoints.position <= "
                                    "excluded.position",
                                    2, NULL, params, NULL, NULL, 0),
                       "raw checkpoint"));
    }
    pg_exec(c, "COMMIT");
    n += got;
    if (got == 0) break;
  }
  j->secs = now_s() - t0;
  j->rows = n;
  PQfinish(c);
}

typedef struct pg_admin_job {
  const char *url, *sql;
} pg_admin_job;

static void pg_admin(void *arg) {
  pg_admin_job *j = arg;
  PGconn *c = pg_connect(j->url);
  PQclear(PQexec(c, "SET client_min_messages = warning")); /* no NOTICE of the DROP */
  pg_exec(c, j->sql);
  PQfinish(c);
}

/* ---- keel: catch-up --------------------------------------------------------------------- */

typedef struct catchup {
  keel_pid_t bench; /* told when the last event is handled */
  int64_t last;
} catchup;

static int noop_handle(const keel_es_event *ev, void *ud) {
  const catchup *c = ud;
  if (ev->position == c->last) keel_send(c->bench, keel_msg_new(TAG_DONE, 0));
  return 0;
}

/* A fresh subscription from the beginning; events/s until its handler has
 * seen the last event. */
static double keel_catchup(keel_es *es, int64_t head, int64_t timeout_ms) {
  catchup c = {.bench = keel_self(), .last = head};
  char name[48];
  snprintf(name, sizeof name, "bench-catchup-%d", ++serial);
  keel_sub_opts o = {.name = name,
                     .es = es,
                     .handle = noop_handle,
                     .ud = &c,
                     .from = KEEL_SUB_FROM_BEGINNING,
                     .batch = batch,
                     .handler_timeout_ms = timeout_ms};
  double t0 = now_s();
  int rc = keel_sub_start(&o, false, NULL);
  if (rc) die("keel_sub_start", rc);
  keel_msg_t *m;
  if ((rc = keel_receive(&m, 120000)) != 0) die("catch-up: the last event never came", rc);
  double secs = now_s() - t0;
  keel_msg_free(m);
  if ((rc = keel_sub_stop(name, 30000)) != 0) die("keel_sub_stop", rc);
  return (double)head / secs;
}

/* ---- keel: a transactional projection --------------------------------------------------- */

typedef struct proj {
  char table[48];
  char upsert[256];
} proj;

static int create_table(keel_es_tx *tx, void *arg) {
  const proj *p = arg;
  char sql[256];
  snprintf(sql, sizeof sql,
           "CREATE TABLE %s (id TEXT PRIMARY KEY, version BIGINT NOT NULL, n BIGINT NOT NULL)",
           p->table);
  return keel_es_tx_exec(tx, sql, NULL, 0, NULL);
}

static int project_upsert(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  const proj *p = ud;
  char v[24];
  snprintf(v, sizeof v, "%lld", (long long)ev->version);
  return keel_es_tx_exec(tx, p->upsert, (const char *[]){ev->stream, v}, 2, NULL);
}

/* A fresh projection (its own table) from the beginning; events/s until
 * its status shows the last event's checkpoint (polled every ms: the
 * projection runs where keel_es_transact's function runs, and may not send). */
static double keel_project(keel_es *es, int64_t head) {
  proj p;
  snprintf(p.table, sizeof p.table, "bench_proj_%d", ++serial);
  snprintf(p.upsert, sizeof p.upsert,
           "INSERT INTO %s (id, version, n) VALUES ($1, CAST($2 AS BIGINT), 1) ON CONFLICT (id) "
           "DO UPDATE SET version = excluded.version, n = %s.n + 1",
           p.table, p.table);
  int rc = keel_es_transact(es, NULL, 0, NULL, NULL, create_table, &p);
  if (rc) die("create the read model", rc);
  keel_sub_opts o = {.name = p.table,
                     .es = es,
                     .project = project_upsert,
                     .ud = &p,
                     .from = KEEL_SUB_FROM_BEGINNING,
                     .batch = batch};
  double t0 = now_s();
  if ((rc = keel_sub_start(&o, false, NULL)) != 0) die("keel_sub_start", rc);
  keel_sub_status st = {0};
  while (keel_sub_status_get(p.table, &st) == 0 && st.checkpoint < head)
    keel_sleep(1);
  double secs = now_s() - t0;
  if (st.checkpoint < head) die("projection: stopped early", (int)st.checkpoint);
  if ((rc = keel_sub_stop(p.table, 30000)) != 0) die("keel_sub_stop", rc);
  keel_es_rows rows;
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT sum(n) FROM %s", p.table);
  if ((rc = keel_es_query(es, sql, NULL, 0, &rows)) != 0) die("read the read model", rc);
  long long sum = rows.nrows ? atoll(keel_es_rows_get(&rows, 0, 0)) : 0;
  keel_es_rows_free(&rows);
  if (sum != head) die("projection: wrong row count", (int)sum);
  return (double)head / secs;
}

/* ---- keel: live latency ---------------------------------------------------------------- */

/* Each sample's append return and handler call, indexed by position - base.
 * Written by the appending process and the handler, read after the last
 * handler call's message (which orders them). */
static int64_t *t_appended, *t_handled;
static int64_t live_base;

typedef struct live {
  keel_pid_t bench;
} live;

static int live_handle(const keel_es_event *ev, void *ud) {
  const live *l = ud;
  int64_t i = ev->position - live_base;
  if (i < 0 || i >= live_n) return 0;
  t_handled[i] = now_ns();
  if (i == live_n - 1) keel_send(l->bench, keel_msg_new(TAG_DONE, 0));
  return 0;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* One round: a subscription at the head, live_n appends ~1 ms apart; *p50
 * and *p99 get the append-returned-to-handler-called latencies, ms. */
static void keel_live(keel_es *es, int64_t timeout_ms, double *p50, double *p99) {
  live l = {.bench = keel_self()};
  char name[48];
  snprintf(name, sizeof name, "bench-live-%d", ++serial);
  keel_sub_opts o = {.name = name,
                     .es = es,
                     .handle = live_handle,
                     .ud = &l,
                     .from = KEEL_SUB_FROM_END,
                     .handler_timeout_ms = timeout_ms};
  int rc = keel_sub_start(&o, false, NULL);
  if (rc) die("keel_sub_start", rc);
  keel_sub_status st = {0};
  while (keel_sub_status_get(name, &st) == 0 && st.state != KEEL_SUB_LIVE)
    keel_sleep(1);
  keel_sleep(20); /* its waker is in keel_es_wait */
  if ((rc = keel_es_head(es, &live_base)) != 0) die("keel_es_head", rc);
  live_base++;
  memset(t_handled, 0, sizeof *t_handled * (size_t)live_n);
  json_t *p = json_loads(payload_text, 0, NULL);
  keel_es_event_in ev = {.type = "OrderPlaced", .payload = p};
  for (int i = 0; i < live_n; i++) {
    char stream[32];
    snprintf(stream, sizeof stream, "live-%d", i % 16);
    keel_es_append_result r;
    if ((rc = keel_es_append(es, stream, KEEL_ES_ANY, &ev, 1, &r)) != 0) die("append", rc);
    t_appended[i] = now_ns();
    if (r.last_position != live_base + i)
      die("live: an append from elsewhere", (int)r.last_position);
    keel_sleep(1);
  }
  json_decref(p);
  keel_msg_t *m;
  if ((rc = keel_receive(&m, 60000)) != 0) die("live: the last event never came", rc);
  keel_msg_free(m);
  if ((rc = keel_sub_stop(name, 30000)) != 0) die("keel_sub_stop", rc);
  int64_t *lat = malloc(sizeof *lat * (size_t)live_n);
  int early = 0;
  for (int i = 0; i < live_n; i++) {
    if (!t_handled[i]) die("live: an event was not handled", i);
    lat[i] = t_handled[i] - t_appended[i];
    if (lat[i] < 0) { /* handled before the appender ran again: 0 from its view */
      lat[i] = 0;
      early++;
    }
  }
  qsort(lat, (size_t)live_n, sizeof *lat, cmp_i64);
  *p50 = (double)lat[live_n / 2] / 1e6;
  *p99 = (double)lat[live_n * 99 / 100] / 1e6;
  fprintf(stderr, "    %d samples, max %.3f ms, %d handled before the append returned\n", live_n,
          (double)lat[live_n - 1] / 1e6, early);
  free(lat);
}

/* ---- the pairs, on a store at url (raw: the SQLite path or PostgreSQL URL) --------------- */

typedef void (*raw_fn)(void *);

static void catchup_pairs(const char *prefix, keel_es *es, int64_t head, const char *raw_target,
                          raw_fn raw_read) {
  double in[32], wk[32], raw[32];
  for (int i = 0; i < rounds; i++) {
    in[i] = keel_catchup(es, head, KEEL_INFINITY);
    raw_job j = {.path = raw_target};
    keel_blocking(raw_read, &j);
    if (j.rows != head) die("raw read: wrong row count", (int)j.rows);
    raw[i] = (double)j.rows / j.secs;
    wk[i] = keel_catchup(es, head, 0);
    fprintf(stderr, "  %s_catchup round %d: keel %.0f, worker %.0f, raw %.0f events/s\n", prefix,
            i + 1, in[i], wk[i], raw[i]);
  }
  char name[64];
  double mi = median(in, rounds), mw = median(wk, rounds), mr = median(raw, rounds);
  snprintf(name, sizeof name, "%s_catchup_keel", prefix);
  line(name, "events/s", mi);
  snprintf(name, sizeof name, "%s_catchup_worker_keel", prefix);
  line(name, "events/s", mw);
  snprintf(name, sizeof name, "%s_catchup_raw", prefix);
  line(name, "events/s", mr);
  snprintf(name, sizeof name, "%s_catchup_ratio", prefix);
  line(name, "keel/raw", mi / mr);
  snprintf(name, sizeof name, "%s_catchup_worker_ratio", prefix);
  line(name, "keel/raw", mw / mr);
}

static void project_pairs(const char *prefix, keel_es *es, int64_t head, const char *raw_target,
                          raw_fn raw_project) {
  double k[32], raw[32];
  for (int i = 0; i < rounds; i++) {
    k[i] = keel_project(es, head);
    char table[48];
    snprintf(table, sizeof table, "bench_raw_%d", ++serial);
    raw_job j = {.path = raw_target, .table = table};
    keel_blocking(raw_project, &j);
    if (j.rows != head) die("raw projection: wrong row count", (int)j.rows);
    raw[i] = (double)j.rows / j.secs;
    fprintf(stderr, "  %s_project round %d: keel %.0f, raw %.0f events/s\n", prefix, i + 1, k[i],
            raw[i]);
  }
  char name[64];
  double mk = median(k, rounds), mr = median(raw, rounds);
  snprintf(name, sizeof name, "%s_project_keel", prefix);
  line(name, "events/s", mk);
  snprintf(name, sizeof name, "%s_project_raw", prefix);
  line(name, "events/s", mr);
  snprintf(name, sizeof name, "%s_project_ratio", prefix);
  line(name, "keel/raw", mk / mr);
}

static void live_rounds_on(const char *prefix, keel_es *es) {
  static const struct {
    const char *suffix;
    int64_t timeout_ms;
  } kinds[] = {{"", KEEL_INFINITY}, {"_worker", 0}};
  double p50[2][32], p99[2][32];
  for (int i = 0; i < live_rounds; i++)
    for (int k = 0; k < 2; k++) {
      keel_live(es, kinds[k].timeout_ms, &p50[k][i], &p99[k][i]);
      fprintf(stderr, "  %s_live%s round %d: p50 %.3f ms, p99 %.3f ms\n", prefix, kinds[k].suffix,
              i + 1, p50[k][i], p99[k][i]);
    }
  for (int k = 0; k < 2; k++) {
    char name[64];
    snprintf(name, sizeof name, "%s_live%s_p50", prefix, kinds[k].suffix);
    line(name, "ms", median(p50[k], live_rounds));
    snprintf(name, sizeof name, "%s_live%s_p99", prefix, kinds[k].suffix);
    line(name, "ms", median(p99[k], live_rounds));
  }
}

static int g_argc;
static char **g_argv;

static void sqlite_benches(void) {
  bool c = wanted(g_argc, g_argv, "sub_catchup"), p = wanted(g_argc, g_argv, "sub_project"),
       l = wanted(g_argc, g_argv, "sub_live");
  if (!c && !p && !l) return;
  char path[600], url[700];
  snprintf(path, sizeof path, "%s/sub.db", dir);
  snprintf(url, sizeof url, "sqlite:%s", path);
  keel_es *es = open_url(url);
  fill(es);
  int64_t head;
  int rc = keel_es_head(es, &head);
  if (rc || head != EVENTS) die("fill: head", rc ? rc : (int)head);
  if (c) catchup_pairs("sub", es, head, path, raw_sqlite_read);
  if (p) project_pairs("sub", es, head, path, raw_sqlite_project);
  if (l) live_rounds_on("sub", es);
  keel_es_close(es);
  static const char *const ext[] = {"", "-wal", "-shm"};
  for (size_t i = 0; i < 3; i++) {
    char f[700];
    snprintf(f, sizeof f, "%s%s", path, ext[i]);
    unlink(f);
  }
}

#define PG_SCHEMA "keel_bench_sub"

static void pg_benches(void) {
  const char *base = getenv("BENCH_ES_PG_URL");
  if (!base || !*base) return;
  bool c = wanted(g_argc, g_argv, "sub_pg_catchup"), p = wanted(g_argc, g_argv, "sub_pg_project"),
       l = wanted(g_argc, g_argv, "sub_pg_live");
  if (!c && !p && !l) return;
  char url[1200];
  snprintf(url, sizeof url, "%s%coptions=-csearch_path%%3D" PG_SCHEMA, base,
           strchr(base, '?') ? '&' : '?');
  pg_admin_job admin = {
      .url = base, .sql = "DROP SCHEMA IF EXISTS " PG_SCHEMA " CASCADE; CREATE SCHEMA " PG_SCHEMA};
  keel_blocking(pg_admin, &admin);
  keel_es *es = open_url(url);
  fill(es);
  int64_t head;
  int rc = keel_es_head(es, &head);
  if (rc || head != EVENTS) die("fill (pg): head", rc ? rc : (int)head);
  if (c) catchup_pairs("sub_pg", es, head, url, raw_pg_read);
  if (p) project_pairs("sub_pg", es, head, url, raw_pg_project);
  if (l) live_rounds_on("sub_pg", es);
  keel_es_close(es);
  admin.sql = "DROP SCHEMA IF EXISTS " PG_SCHEMA " CASCADE";
  keel_blocking(pg_admin, &admin);
}

static void bench_main(void *unused) {
  (void)unused;
  sqlite_benches();
  pg_benches();
}

static int env_int(const char *name, int def, int max) {
  const char *v = getenv(name);
  int n = v ? atoi(v) : 0;
  return n > 0 ? (n > max ? max : n) : def;
}

int main(int argc, char **argv) {
  static const char *const known[] = {"sub_catchup",    "sub_project",    "sub_live",
                                      "sub_pg_catchup", "sub_pg_project", "sub_pg_live"};
  for (int a = 1; a < argc; a++) {
    bool ok = false;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
      ok |= strcmp(argv[a], known[i]) == 0;
    if (!ok) {
      fprintf(stderr, "bench_sub: unknown workload %s\n", argv[a]);
      return 2;
    }
  }
  rounds = env_int("BENCH_SUB_ROUNDS", 5, 31);
  live_rounds = env_int("BENCH_SUB_LIVE_ROUNDS", 3, 31);
  live_n = env_int("BENCH_SUB_LIVE", 2000, 100000);
  batch = (size_t)env_int("BENCH_SUB_BATCH", 1000, 10000);
  t_appended = calloc((size_t)live_n, sizeof *t_appended);
  t_handled = calloc((size_t)live_n, sizeof *t_handled);
  const char *t = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/keel-bench-sub-XXXXXX", t && *t ? t : "/tmp");
  if (!mkdtemp(dir)) die("mkdtemp", 0);
  g_argc = argc;
  g_argv = argv;
  setenv("LOG_LEVEL", "warn", 0);
  int rc = keel_run(bench_main, NULL, NULL);
  rmdir(dir);
  free(t_appended);
  free(t_handled);
  return rc;
}
