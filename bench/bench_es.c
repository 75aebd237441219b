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
 *                  payloads parsed), vs the raw paged SELECT ... WHERE
 *                  position > ? ORDER BY position LIMIT 1000 reading every
 *                  column (events/s)
 * The raw sides run on the blocking pool (they block); the raw table is the
 * event store's own (created by keel_es_open, so the same indexes and
 * triggers are maintained).
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

static void raw_read(void *arg) {
  raw_job *j = arg;
  sqlite3 *db = raw_open(j->path);
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
      for (int c = 1; c < 10; c++) {
        const unsigned char *t = sqlite3_column_text(st, c);
        if (t) bytes += (size_t)sqlite3_column_bytes(st, c);
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

static double keel_read_all(const char *path, long long *rows) {
  keel_es *es = open_store(path);
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

static void report(const char *name, double *k, double *r) {
  double mk = median(k, rounds), mr = median(r, rounds);
  printf("{\"bench\": \"%s_keel\", \"unit\": \"events/s\", \"value\": %.1f}\n", name, mk);
  printf("{\"bench\": \"%s_raw\", \"unit\": \"events/s\", \"value\": %.1f}\n", name, mr);
  printf("{\"bench\": \"%s_ratio\", \"unit\": \"keel/raw\", \"value\": %.2f}\n", name, mk / mr);
  fflush(stdout);
}

static bool wanted(int argc, char **argv, const char *name) {
  if (argc < 2) return true;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return true;
  return false;
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
  if (wanted(g_argc, g_argv, "es_read_all")) {
    path_of(path, sizeof path, "read", 0);
    keel_es *es = open_store(path);
    json_t *p = json_loads(payload_text, 0, NULL);
    keel_es_event_in ev[1000];
    for (int e = 0; e < 1000; e++)
      ev[e] = (keel_es_event_in){.type = "OrderPlaced", .payload = p};
    for (int b = 0; b < 50; b++) {
      char stream[32];
      snprintf(stream, sizeof stream, "order-%d", b);
      int rc = keel_es_append(es, stream, KEEL_ES_NO_STREAM, ev, 1000, NULL);
      if (rc) die("fill", rc);
    }
    json_decref(p);
    keel_es_close(es);
    for (int i = 0; i < rounds; i++) {
      long long rows;
      k[i] = keel_read_all(path, &rows);
      raw_job j = {.path = path};
      keel_blocking(raw_read, &j);
      r[i] = (double)j.rows / j.secs;
      if (rows != 50000 || j.rows != 50000) die("read: wrong row count", (int)rows);
      fprintf(stderr, "  es_read_all round %d: keel %.0f, raw %.0f events/s\n", i + 1, k[i], r[i]);
    }
    remove_db(path);
    report("es_read_all", k, r);
  }
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
