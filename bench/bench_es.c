/* bench_es.c - the SQLite event store against raw SQLite inserts and selects
 * of the same rows, with the same durability (WAL, synchronous=FULL), in the
 * same run on the same disk.
 *
 * Three pairs, each run in alternating rounds (keel, raw, keel, raw...,
 * ROUNDS of each, default 5, $BENCH_ES_ROUNDS), each round on a fresh file
 * in $TMPDIR (or /tmp); the medians and their ratio are printed as JSON
 * lines {"bench": NAME, "unit": UNIT, "value": N}:
 *   es_batch100    100-event appends from one process, vs prepared INSERTs
 *                  of the same rows, 100 per transaction (events/s)
 *   es_single64    single-event appends from 64 processes at once (group
 *                  commit), vs single-row autocommit INSERTs from one thread,
 *                  each its own transaction and fsync (events/s)
 *   es_read_all    read_all in pages of 1000 over 50,000 events (rows decoded,
 *                  payloads left as text: they are parsed lazily), vs the
 *                  raw paged SELECT ... WHERE position > ? ORDER BY position
 *                  LIMIT 1000 reading every column (events/s)
 *   es_read_all_parsed  the same, but the reader touches every payload
 *                  (keel_es_event_payload), and the raw side parses every
 *                  payload with jansson too: the cost of parsing, shown
 *                  honestly (events/s)
 * The raw sides run on the blocking pool (they block); the raw table is the
 * event store's own (created by keel_es_open, so the same indexes and
 * triggers are maintained).
 *
 * PostgreSQL, only when $BENCH_ES_PG_URL is set (bench/compare-run.sh starts
 * a throwaway cluster for it): 50,000 events in a schema of their own, then
 *   es_pg_read_all     read_all in pages of 1000 (its xid8 horizon and its
 *                      REPEATABLE READ transaction per call included), vs
 *                      raw libpq: the paged SELECT of the same columns, one
 *                      autocommit statement per page; each page read by both
 *                      in turn, each timed (events/s)
 *   es_pg_horizon      the raw paged SELECT with read_all's horizon predicate
 *                      (AND tx < pg_snapshot_xmin(pg_current_snapshot()))
 *                      against the same SELECT without it, each page read
 *                      both ways in turn: the horizon's cost ("with" /
 *                      "without"; 1.0 is free)
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keel.h"

static int rounds = 5;
static char dir[256];
static const char *payload_text =
    "{\"order\":12345,\"total\":99.5,\"currency\":\"EUR\",\"lines\":3}";

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_es: %s: %d\n", what, rc);
  exit(2);
}

static void path_of(char *out, size_t len, const char *name, int round) {
  snprintf(out, len, "%s/%s-%d.db", dir, name, round);
}

static void remove_db(const char *path) {
  char p[700];
  unlink(path);
  snprintf(p, sizeof p, "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof p, "%s-shm", path);
  unlink(p);
}

static keel_es *open_store(const char *path) {
  char url[600];
  snprintf(url, sizeof url, "sqlite:%s", path);
  keel_es *es;
  int rc = keel_es_open(&(keel_es_opts){.url = url}, &es);
  if (rc) die("keel_es_open", rc);
  return es;
}

/* ---- raw ------------------------------------------------------------------------ */

typedef struct raw_job {
  const char *path;
  int batches, per_batch; /* per_batch 0: autocommit single rows (batches of them) */
  bool parse;             /* reads: parse every payload with jansson */
  long long rows;
  double secs;
} raw_job;

static sqlite3 *raw_open(const char *path) {
  sqlite3 *db;
  if (sqlite3_open(path, &db) != SQLITE_OK) die("sqlite3_open", 0);
  sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL, NULL);
  return db;
}

static void raw_insert(void *arg) {
  raw_job *j = arg;
  sqlite3 *db = raw_open(j->path);
  sqlite3_stmt *st;
  sqlite3_prepare_v2(
      db,
      "INSERT INTO events (stream, version, id, type, schema_version, payload, "
      "metadata, occurred_at, stored_at) VALUES (?, ?, ?, 'OrderPlaced', 1, ?, NULL, "
      "?, ?)",
      -1, &st, NULL);
  double t0 = now_s();
  long long n = 0;
  int per = j->per_batch ? j->per_batch : 1;
  for (int b = 0; b < j->batches; b++) {
    if (j->per_batch) sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    for (int k = 0; k < per; k++, n++) {
      char id[64], stream[32];
      snprintf(id, sizeof id, "%08llx-0000-4000-8000-%012llx", (unsigned long long)n & 0xffffffffu,
               (unsigned long long)n & 0xffffffffffffULL);
      snprintf(stream, sizeof stream, "raw-%d", j->per_batch ? b : (int)(n % 64));
      sqlite3_bind_text(st, 1, stream, -1, SQLITE_TRANSIENT);
      sqlite3_bind_int64(st, 2, j->per_batch ? k + 1 : n / 64 + 1);
      sqlite3_bind_text(st, 3, id, 36, SQLITE_TRANSIENT);
      sqlite3_bind_text(st, 4, payload_text, -1, SQLITE_STATIC);
      sqlite3_bind_int64(st, 5, (sqlite3_int64)time(NULL) * 1000);
      sqlite3_bind_int64(st, 6, (sqlite3_int64)time(NULL) * 1000);
      if (sqlite3_step(st) != SQLITE_DONE) die("raw insert", sqlite3_errcode(db));
      sqlite3_reset(st);
    }
    if (j->per_batch) sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  }
  j->secs = now_s() - t0;
  j->rows = n;
  sqlite3_finalize(st);
  sqlite3_close(db);
}

/* Parses a payload as a reader would (the raw side of es_read_all_parsed). */
static size_t parse_payload(const char *text, size_t len) {
  json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
  if (!v) die("raw read: a payload does not parse", 0);
  size_t k = json_object_size(v);
  json_decref(v);
  return k;
}

static void raw_read(void *arg) {
  raw_job *j = arg;
  /* without SQLite's per-call mutex, as keel's read connections (each is
   * used by one thread at a time) */
  sqlite3 *db;
  if (sqlite3_open_v2(j->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
    die("sqlite3_open", 0);
  sqlite3_stmt *st;
  sqlite3_prepare_v2(db,
                     "SELECT position, stream, version, id, type, schema_version, payload, "
                     "metadata, occurred_at, stored_at FROM events WHERE position > ? "
                     "ORDER BY position LIMIT 1000",
                     -1, &st, NULL);
  double t0 = now_s();
  long long n = 0, after = 0;
  size_t bytes = 0;
  for (;;) {
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    sqlite3_bind_int64(st, 1, after);
    int got = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
      after = sqlite3_column_int64(st, 0);
      /* each column as its type: integers as integers (reading them as
       * text would make SQLite format them, work keel does not do) */
      for (int c = 1; c < 10; c++) {
        if (sqlite3_column_type(st, c) == SQLITE_INTEGER) {
          bytes += (size_t)(sqlite3_column_int64(st, c) & 1);
          continue;
        }
        const unsigned char *t = sqlite3_column_text(st, c);
        if (t) bytes += (size_t)sqlite3_column_bytes(st, c);
        if (t && c == 6 && j->parse)
          bytes += parse_payload((const char *)t, (size_t)sqlite3_column_bytes(st, c));
      }
      got++;
    }
    sqlite3_reset(st);
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    n += got;
    if (got == 0) break;
  }
  j->secs = now_s() - t0;
  j->rows = n;
  if (bytes == 0) die("raw read: nothing", 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

/* ---- keel ------------------------------------------------------------------------ */

static double keel_batch100(const char *path, int batches) {
  keel_es *es = open_store(path);
  json_t *p = json_loads(payload_text, 0, NULL);
  keel_es_event_in ev[100];
  for (int k = 0; k < 100; k++)
    ev[k] = (keel_es_event_in){.type = "OrderPlaced", .payload = p};
  double t0 = now_s();
  for (int b = 0; b < batches; b++) {
    char stream[32];
    snprintf(stream, sizeof stream, "order-%d", b);
    int rc = keel_es_append(es, stream, KEEL_ES_NO_STREAM, ev, 100, NULL);
    if (rc) die("append", rc);
  }
  double secs = now_s() - t0;
  json_decref(p);
  keel_es_close(es);
  return batches * 100.0 / secs;
}

typedef struct single_arg {
  keel_es *es;
  keel_pid_t parent;
  int index, count;
} single_arg;

static void single_writer(void *arg) {
  single_arg *a = arg;
  json_t *p = json_loads(payload_text, 0, NULL);
  keel_es_event_in ev = {.type = "OrderPlaced", .payload = p};
  char stream[32];
  snprintf(stream, sizeof stream, "order-%d", a->index);
  for (int i = 0; i < a->count; i++) {
    int rc = keel_es_append(a->es, stream, KEEL_ES_ANY, &ev, 1, NULL);
    if (rc) die("append", rc);
  }
  json_decref(p);
  keel_send(a->parent, keel_msg_new(1, 0));
}

static double keel_single64(const char *path, int per_proc) {
  keel_es *es = open_store(path);
  enum { P = 64 };
  single_arg a[P];
  double t0 = now_s();
  for (int i = 0; i < P; i++) {
    a[i] = (single_arg){.es = es, .parent = keel_self(), .index = i, .count = per_proc};
    keel_spawn(single_writer, &a[i], NULL, NULL);
  }
  for (int i = 0; i < P; i++) {
    keel_msg_t *m;
    if (keel_receive(&m, 120000) != 0) die("single64: a writer is stuck", 0);
    keel_msg_free(m);
  }
  double secs = now_s() - t0;
  keel_es_close(es);
  return P * per_proc / secs;
}

/* Pages through the whole feed; parse: touch every payload. */
static double keel_read_all(const char *url, bool parse, long long *rows) {
  keel_es *es;
  int orc = keel_es_open(&(keel_es_opts){.url = url}, &es);
  if (orc) die("keel_es_open", orc);
  double t0 = now_s();
  long long n = 0;
  int64_t after = 0;
  for (;;) {
    keel_es_events evs;
    int rc = keel_es_read_all(es, after, 1000, NULL, &evs);
    if (rc) die("read_all", rc);
    if (evs.n == 0) {
      keel_es_events_free(&evs);
      break;
    }
    n += (long long)evs.n;
    after = evs.v[evs.n - 1].position;
    for (size_t i = 0; parse && i < evs.n; i++)
      if (json_object_size(keel_es_event_payload(&evs.v[i])) == 0) die("read_all: a payload", 0);
    keel_es_events_free(&evs);
  }
  double secs = now_s() - t0;
  keel_es_close(es);
  *rows = n;
  return n / secs;
}

/* ---- rounds -------------------------------------------------------------------------- */

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The medians of a pair (a, b) and their ratio a/b, as JSON lines. */
static void report_pair(const char *name, const char *a, const char *b, double *va, double *vb) {
  double ma = median(va, rounds), mb = median(vb, rounds);
  printf("{\"bench\": \"%s_%s\", \"unit\": \"events/s\", \"value\": %.1f}\n", name, a, ma);
  printf("{\"bench\": \"%s_%s\", \"unit\": \"events/s\", \"value\": %.1f}\n", name, b, mb);
  printf("{\"bench\": \"%s_ratio\", \"unit\": \"%s/%s\", \"value\": %.2f}\n", name, a, b, ma / mb);
  fflush(stdout);
}

static void report(const char *name, double *k, double *r) {
  report_pair(name, "keel", "raw", k, r);
}

static bool wanted(int argc, char **argv, const char *name) {
  if (argc < 2) return true;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return true;
  return false;
}

/* ---- reads on SQLite ------------------------------------------------------------------- */

/* 50,000 events in 50 streams of 1000, appended through keel. */
static void fill_reads(const char *url) {
  keel_es *es;
  int rc = keel_es_open(&(keel_es_opts){.url = url}, &es);
  if (rc) die("keel_es_open", rc);
  json_t *p = json_loads(payload_text, 0, NULL);
  static keel_es_event_in ev[1000];
  for (int e = 0; e < 1000; e++)
    ev[e] = (keel_es_event_in){.type = "OrderPlaced", .payload = p};
  for (int b = 0; b < 50; b++) {
    char stream[32];
    snprintf(stream, sizeof stream, "order-%d", b);
    if ((rc = keel_es_append(es, stream, KEEL_ES_NO_STREAM, ev, 1000, NULL))) die("fill", rc);
  }
  json_decref(p);
  keel_es_close(es);
}

static void sqlite_reads(const char *name, bool parse) {
  double k[32], r[32];
  char path[600], url[700];
  path_of(path, sizeof path, "read", 0);
  snprintf(url, sizeof url, "sqlite:%s", path);
  fill_reads(url);
  for (int i = 0; i < rounds; i++) {
    long long rows;
    k[i] = keel_read_all(url, parse, &rows);
    raw_job j = {.path = path, .parse = parse};
    keel_blocking(raw_read, &j);
    r[i] = (double)j.rows / j.secs;
    if (rows != 50000 || j.rows != 50000) die("read: wrong row count", (int)rows);
    fprintf(stderr, "  %s round %d: keel %.0f, raw %.0f events/s\n", name, i + 1, k[i], r[i]);
  }
  remove_db(path);
  report(name, k, r);
}

/* ---- reads on PostgreSQL ---------------------------------------------------------------- */

#define PG_SCHEMA "keel_bench_reads"
#define PG_COLS                                                                                    \
  "position, stream, version, id::text, type, schema_version, payload::text, metadata::text, "     \
  "occurred_at, stored_at"

static PGconn *pg_connect(const char *url) {
  PGconn *c = PQconnectdb(url);
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "bench_es: %s", PQerrorMessage(c));
    die("PostgreSQL: cannot connect", 0);
  }
  return c;
}

static void pg_exec(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
    fprintf(stderr, "bench_es: %s: %s", sql, PQresultErrorMessage(r));
    die("PostgreSQL", 0);
  }
  PQclear(r);
}

typedef struct pg_job {
  const char *url;
  const char *sql; /* pg_admin: the statements to run */
  long long rows;
  double secs, secs_with; /* pg_horizon_read: without and with the horizon */
} pg_job;

/* Runs job->sql (blocking pool: libpq's blocking calls). */
static void pg_admin(void *arg) {
  pg_job *j = arg;
  PGconn *c = pg_connect(j->url);
  PGresult *r = PQexec(c, "SET client_min_messages = warning"); /* no NOTICE of the DROP */
  PQclear(r);
  pg_exec(c, j->sql);
  PQfinish(c);
}

#define PG_PAGE    "SELECT " PG_COLS " FROM events WHERE position > $1::bigint "
#define PG_HORIZON "AND tx < pg_snapshot_xmin(pg_current_snapshot()) "
#define PG_ORDER   "ORDER BY position LIMIT 1000"

/* One page after *after as a user of libpq would read it: one autocommit
 * statement, every column's value touched. Returns its rows, moves *after,
 * adds the bytes seen to *bytes. */
static int pg_page(PGconn *c, const char *sql, char after[24], size_t *bytes) {
  const char *params[1] = {after};
  PGresult *r = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    fprintf(stderr, "bench_es: %s", PQresultErrorMessage(r));
    die("raw pg read", 0);
  }
  int rows = PQntuples(r);
  for (int i = 0; i < rows; i++)
    for (int col = 0; col < 10; col++)
      *bytes += PQgetisnull(r, i, col) ? 0 : (size_t)PQgetlength(r, i, col) + 1;
  if (rows) snprintf(after, 24, "%s", PQgetvalue(r, rows - 1, 0));
  PQclear(r);
  return rows;
}

/* One raw page on the blocking pool (libpq blocks), timed there: the hop
 * to the pool is not counted against raw. */
typedef struct pg_page_job {
  const char *url;
  PGconn *c;
  char after[24];
  int rows;
  size_t bytes;
  double secs;
} pg_page_job;

static void pg_page_run(void *arg) {
  pg_page_job *j = arg;
  double t0 = now_s();
  j->rows = pg_page(j->c, PG_PAGE PG_ORDER, j->after, &j->bytes);
  j->secs = now_s() - t0;
}

static void pg_page_connect(void *arg) {
  pg_page_job *j = arg;
  j->c = pg_connect(j->url);
}

static void pg_page_finish(void *arg) {
  PQfinish(((pg_page_job *)arg)->c);
}

/* es_pg_read_all, one round: the whole feed, each page read by keel
 * (keel_es_read_all: a pooled connection, its REPEATABLE READ transaction,
 * the hidden-streams probe, the horizon, the rows decoded) and by raw libpq
 * in turn, in alternating order, each timed: both sides see the machine at
 * the same moment, so its drift cancels out of the ratio. *keel and *raw
 * get events/s. */
static void pg_read_round(const char *url, double *keel, double *raw) {
  keel_es *es;
  int rc = keel_es_open(&(keel_es_opts){.url = url}, &es);
  if (rc) die("keel_es_open", rc);
  pg_page_job j = {.url = url};
  keel_blocking(pg_page_connect, &j);
  double tk = 0, tr = 0;
  long long nk = 0, nr = 0;
  int64_t after = 0;
  for (int page = 0;; page++) {
    int got_k = 0;
    for (int side = 0; side < 2; side++) {
      if ((page + side) % 2 == 0) {
        keel_es_events evs;
        double t0 = now_s();
        if ((rc = keel_es_read_all(es, after, 1000, NULL, &evs))) die("read_all", rc);
        tk += now_s() - t0;
        got_k = (int)evs.n;
        nk += (long long)evs.n;
        keel_es_events_free(&evs);
      } else {
        snprintf(j.after, sizeof j.after, "%lld", (long long)after);
        keel_blocking(pg_page_run, &j);
        tr += j.secs;
        nr += j.rows;
      }
    }
    if (got_k != j.rows) die("pg read: keel and raw disagree", got_k - j.rows);
    if (got_k == 0) break;
    after = strtoll(j.after, NULL, 10);
  }
  if (nk != 50000 || nr != 50000 || j.bytes == 0) die("pg read: wrong row count", (int)nk);
  keel_blocking(pg_page_finish, &j);
  keel_es_close(es);
  *keel = (double)nk / tk;
  *raw = (double)nr / tr;
}

/* es_pg_horizon: each page read twice on one connection, with and without
 * the horizon predicate, in alternating order, each timed: the two sides
 * see the same machine at the same moment, so a noisy machine's drift
 * cancels out of their ratio. */
static void pg_horizon_read(void *arg) {
  pg_job *j = arg;
  PGconn *c = pg_connect(j->url);
  size_t bytes = 0;
  char after[24] = "0", after2[24];
  j->rows = 0;
  j->secs = j->secs_with = 0;
  for (int page = 0;; page++) {
    int rows[2];
    for (int k = 0; k < 2; k++) {
      bool with = (page + k) % 2 == 1;
      snprintf(after2, sizeof after2, "%s", after);
      double t0 = now_s();
      rows[k] = pg_page(c, with ? PG_PAGE PG_HORIZON PG_ORDER : PG_PAGE PG_ORDER, after2, &bytes);
      *(with ? &j->secs_with : &j->secs) += now_s() - t0;
    }
    if (rows[0] != rows[1]) die("pg read: the horizon hid events", rows[0] - rows[1]);
    if (rows[0] == 0) break;
    j->rows += rows[0];
    snprintf(after, sizeof after, "%s", after2);
  }
  if (bytes == 0) die("raw pg read: nothing", 0);
  PQfinish(c);
}

static void pg_reads(const char *base) {
  char url[1200];
  snprintf(url, sizeof url, "%s%coptions=-csearch_path%%3D" PG_SCHEMA, base,
           strchr(base, '?') ? '&' : '?');
  pg_job admin = {.url = base,
                  .sql = "DROP SCHEMA IF EXISTS " PG_SCHEMA " CASCADE; CREATE SCHEMA " PG_SCHEMA};
  keel_blocking(pg_admin, &admin);
  fill_reads(url);
  double k[32], r[32], with[32], without[32];
  for (int i = 0; i < rounds; i++) {
    pg_read_round(url, &k[i], &r[i]);
    pg_job h = {.url = url};
    keel_blocking(pg_horizon_read, &h);
    if (h.rows != 50000) die("pg read (horizon): wrong row count", (int)h.rows);
    with[i] = (double)h.rows / h.secs_with;
    without[i] = (double)h.rows / h.secs;
    fprintf(stderr,
            "  es_pg_read_all round %d: keel %.0f, raw %.0f events/s; raw with the horizon "
            "%.0f, without %.0f\n",
            i + 1, k[i], r[i], with[i], without[i]);
  }
  report("es_pg_read_all", k, r);
  report_pair("es_pg_horizon", "with", "without", with, without);
  admin.sql = "DROP SCHEMA IF EXISTS " PG_SCHEMA " CASCADE";
  keel_blocking(pg_admin, &admin);
}

static int g_argc;
static char **g_argv;

/* ---- PostgreSQL write pairs (issue 9, pool part) -------------------------------------
 *
 * Run only when $BENCH_ES_PG_URL names a PostgreSQL database (bench/compare-run.sh
 * starts a throwaway cluster for them, with fsync and synchronous_commit on).
 * Each round runs on fresh schemas of their own (the store's tables, created by
 * keel_es_open, for both sides):
 *   es_pg_batch100x16  100-event appends from 16 processes at once (each its own
 *                      streams), vs 16 threads, each with its own libpq connection,
 *                      each committing multi-row INSERTs of the same 100 rows
 *   es_pg_single64     single-event appends from 64 processes at once, vs 64
 *                      threads/connections each committing single-row INSERTs
 * keel runs with its defaults: a pool of at most 10 connections (the raw side
 * has 16 or 64), and simple appends folded by its group commit (pg_group.c);
 * $BENCH_ES_PG_POOL sets pool_min and pool_max instead. */

static const char *pg_url;
static int pg_serial;

static void pg_quiet(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

static PGconn *pg_raw_connect(const char *url) {
  PGconn *c = PQconnectdb(url);
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "bench_es: %s\n", PQerrorMessage(c));
    exit(2);
  }
  PQsetNoticeProcessor(c, pg_quiet, NULL);
  return c;
}

static void pg_raw_exec(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
    fprintf(stderr, "bench_es: %s: %s\n", sql, PQresultErrorMessage(r));
    exit(2);
  }
  PQclear(r);
}

/* Runs sql on a connection of its own, on the blocking pool (libpq's
 * blocking calls never run on a scheduler thread). */
static void pg_exec_on_pool(void *sql) {
  PGconn *c = pg_raw_connect(pg_url);
  pg_raw_exec(c, sql);
  PQfinish(c);
}

/* A fresh schema with the store's tables; *url gets the URL that uses it. */
static void pg_fresh_schema(char *url, size_t len, char *schema, size_t slen) {
  snprintf(schema, slen, "bench_%d_%d", (int)getpid(), ++pg_serial);
  char sql[200];
  snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", schema, schema);
  keel_blocking(pg_exec_on_pool, sql);
  snprintf(url, len, "%s%coptions=-csearch_path%%3D%s", pg_url, strchr(pg_url, '?') ? '&' : '?',
           schema);
  keel_es *es;
  int rc = keel_es_open(&(keel_es_opts){.url = url}, &es);
  if (rc) die("keel_es_open (pg)", rc);
  keel_es_close(es);
}

static void pg_drop_schema(const char *schema) {
  char sql[200];
  snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", schema);
  keel_blocking(pg_exec_on_pool, sql);
}

/* -- raw: threads, each with its own connection -- */

typedef struct pg_raw_thread {
  const char *url;
  int index, txs, per_tx; /* per_tx rows per transaction (1: single-row autocommit) */
  pthread_barrier_t *start;
} pg_raw_thread;

static void *pg_raw_worker(void *arg) {
  pg_raw_thread *t = arg;
  PGconn *c = pg_raw_connect(t->url);
  size_t cap = 512 + (size_t)t->per_tx * 400;
  char *sql = malloc(cap);
  pthread_barrier_wait(t->start);
  for (int x = 0; x < t->txs; x++) {
    size_t len = (size_t)snprintf(sql, cap,
                                  "INSERT INTO events (position, stream, version, id, type, "
                                  "schema_version, payload, occurred_at, stored_at) VALUES ");
    long long now_ms = (long long)time(NULL) * 1000;
    for (int k = 0; k < t->per_tx; k++) {
      /* its own stream per batch, or per thread for single rows */
      int version = t->per_tx > 1 ? k + 1 : x + 1;
      unsigned long long n = ((unsigned long long)t->index << 32) | (unsigned)(x * t->per_tx + k);
      len +=
          (size_t)snprintf(sql + len, cap - len,
                           "%s(nextval('events_position_seq'), 'raw-%d-%d', %d, "
                           "'%08llx-0000-4000-8000-%012llx', 'OrderPlaced', 1, '%s', %lld, %lld)",
                           k ? "," : "", t->index, t->per_tx > 1 ? x : 0, version, n >> 32,
                           n & 0xffffffffffffULL, payload_text, now_ms, now_ms);
    }
    pg_raw_exec(c, sql); /* one statement: its own transaction, one commit */
  }
  free(sql);
  PQfinish(c);
  return NULL;
}

typedef struct pg_raw_job {
  const char *url;
  int threads, txs, per_tx;
  double secs;
} pg_raw_job;

static void pg_raw_run(void *arg) {
  pg_raw_job *j = arg;
  pthread_t tid[64];
  pg_raw_thread t[64];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, (unsigned)j->threads + 1);
  for (int i = 0; i < j->threads; i++) {
    t[i] = (pg_raw_thread){
        .url = j->url, .index = i, .txs = j->txs, .per_tx = j->per_tx, .start = &start};
    pthread_create(&tid[i], NULL, pg_raw_worker, &t[i]);
  }
  pthread_barrier_wait(&start); /* connections made: time the inserts only */
  double t0 = now_s();
  for (int i = 0; i < j->threads; i++)
    pthread_join(tid[i], NULL);
  j->secs = now_s() - t0;
  pthread_barrier_destroy(&start);
}

/* -- keel: processes sharing one store -- */

typedef struct pg_writer {
  keel_es *es;
  keel_pid_t parent;
  int index, appends, per_append;
} pg_writer;

static void pg_keel_writer(void *arg) {
  pg_writer *w = arg;
  json_t *p = json_loads(payload_text, 0, NULL);
  keel_es_event_in ev[100];
  for (int k = 0; k < w->per_append; k++)
    ev[k] = (keel_es_event_in){.type = "OrderPlaced", .payload = p};
  char stream[48];
  for (int x = 0; x < w->appends; x++) {
    snprintf(stream, sizeof stream, "order-%d-%d", w->index, w->per_append > 1 ? x : 0);
    int rc = keel_es_append(w->es, stream, w->per_append > 1 ? KEEL_ES_NO_STREAM : KEEL_ES_ANY, ev,
                            (size_t)w->per_append, NULL);
    if (rc) die("append (pg)", rc);
  }
  json_decref(p);
  keel_send(w->parent, keel_msg_new(1, 0));
}

static double pg_keel_run(const char *url, size_t pool, int procs, int appends, int per_append) {
  keel_es *es;
  int rc = keel_es_open(&(keel_es_opts){.url = url, .pool_min = pool, .pool_max = pool}, &es);
  if (rc) die("keel_es_open (pg)", rc);
  pg_writer w[64];
  double t0 = now_s();
  for (int i = 0; i < procs; i++) {
    w[i] = (pg_writer){
        .es = es, .parent = keel_self(), .index = i, .appends = appends, .per_append = per_append};
    keel_spawn(pg_keel_writer, &w[i], NULL, NULL);
  }
  for (int i = 0; i < procs; i++) {
    keel_msg_t *m;
    if (keel_receive(&m, 300000) != 0) die("pg: a writer is stuck", 0);
    keel_msg_free(m);
  }
  double secs = now_s() - t0;
  keel_es_close(es);
  return (double)procs * appends * per_append / secs;
}

/* One pair: `procs` writers (processes / threads), each `appends` commits of
 * per_append events. */
static void pg_pair(const char *name, int procs, int appends, int per_append) {
  double k[32], r[32];
  const char *ps = getenv("BENCH_ES_PG_POOL");
  size_t pool = ps && atoi(ps) > 0 ? (size_t)atoi(ps) : 0; /* 0: keel's default */
  for (int i = 0; i < rounds; i++) {
    char url[1400], schema[64];
    pg_fresh_schema(url, sizeof url, schema, sizeof schema);
    k[i] = pg_keel_run(url, pool, procs, appends, per_append);
    pg_drop_schema(schema);
    pg_fresh_schema(url, sizeof url, schema, sizeof schema);
    pg_raw_job j = {.url = url, .threads = procs, .txs = appends, .per_tx = per_append};
    keel_blocking(pg_raw_run, &j);
    r[i] = (double)procs * appends * per_append / j.secs;
    pg_drop_schema(schema);
    fprintf(stderr, "  %s round %d: keel %.0f, raw %.0f events/s (keel pool_max %zu)\n", name,
            i + 1, k[i], r[i], pool ? pool : (size_t)10);
  }
  report(name, k, r);
}

static void pg_write_benches(int argc, char **argv) {
  pg_url = getenv("BENCH_ES_PG_URL");
  if (!pg_url || !*pg_url) return;
  if (wanted(argc, argv, "es_pg_batch100x16")) pg_pair("es_pg_batch100x16", 16, 10, 100);
  if (wanted(argc, argv, "es_pg_single64")) pg_pair("es_pg_single64", 64, 20, 1);
}

static void bench_main(void *unused) {
  double k[32], r[32];
  char path[600];
  if (wanted(g_argc, g_argv, "es_batch100")) {
    for (int i = 0; i < rounds; i++) {
      path_of(path, sizeof path, "batch-keel", i);
      k[i] = keel_batch100(path, 100);
      remove_db(path);
      path_of(path, sizeof path, "batch-raw", i);
      keel_es_close(open_store(path)); /* the same schema */
      raw_job j = {.path = path, .batches = 100, .per_batch = 100};
      keel_blocking(raw_insert, &j);
      r[i] = (double)j.rows / j.secs;
      remove_db(path);
      fprintf(stderr, "  es_batch100 round %d: keel %.0f, raw %.0f events/s\n", i + 1, k[i], r[i]);
    }
    report("es_batch100", k, r);
  }
  if (wanted(g_argc, g_argv, "es_single64")) {
    for (int i = 0; i < rounds; i++) {
      path_of(path, sizeof path, "single-keel", i);
      k[i] = keel_single64(path, 30);
      remove_db(path);
      path_of(path, sizeof path, "single-raw", i);
      keel_es_close(open_store(path));
      raw_job j = {.path = path, .batches = 300, .per_batch = 0};
      keel_blocking(raw_insert, &j);
      r[i] = (double)j.rows / j.secs;
      remove_db(path);
      fprintf(stderr, "  es_single64 round %d: keel %.0f, raw %.0f events/s\n", i + 1, k[i], r[i]);
    }
    report("es_single64", k, r);
  }
  if (wanted(g_argc, g_argv, "es_read_all")) sqlite_reads("es_read_all", false);
  if (wanted(g_argc, g_argv, "es_read_all_parsed")) sqlite_reads("es_read_all_parsed", true);
  const char *pg = getenv("BENCH_ES_PG_URL");
  if (pg && *pg &&
      (wanted(g_argc, g_argv, "es_pg_read_all") || wanted(g_argc, g_argv, "es_pg_horizon")))
    pg_reads(pg);
  pg_write_benches(g_argc, g_argv);
}

int main(int argc, char **argv) {
  const char *t = getenv("TMPDIR");
  const char *rs = getenv("BENCH_ES_ROUNDS");
  if (rs && atoi(rs) > 0) rounds = atoi(rs) > 31 ? 31 : atoi(rs);
  snprintf(dir, sizeof dir, "%s/keel-bench-es-XXXXXX", t && *t ? t : "/tmp");
  if (!mkdtemp(dir)) die("mkdtemp", 0);
  g_argc = argc;
  g_argv = argv;
  setenv("LOG_LEVEL", "warn", 0);
  int rc = keel_run(bench_main, NULL, NULL);
  rmdir(dir);
  return rc;
}
