/* bench_jobs.c - durable jobs (keel/jobs.h): no-op jobs enqueued and run
 * per second, and pickup latency (enqueue to the worker's start).
 *
 * Throughput: 8 processes enqueue 500 no-op jobs each (4000) into a queue
 * of concurrency 20 that runs them meanwhile; timed from the first enqueue
 * to the 4000th completion recorded (jobs_completed_total). The anchor in
 * the same run, alternating rounds with keel's ($BENCH_JOBS_ROUNDS, default
 * 3): raw sqlite3 doing each job's three durable writes (INSERT, the claim's
 * UPDATE, the completion's UPDATE, each its own transaction, WAL,
 * synchronous=FULL as keel) from one thread, no batching; BullMQ on Redis
 * is bench/jobs/run.sh's anchor (make bench-jobs, with --one). Pickup: 500 jobs
 * enqueued one at a time 2 ms apart; the worker records now minus the
 * time before the enqueue call (carried in args); p50 and p99 per round.
 * Medians over rounds as JSON lines {"bench", "unit", "value"}:
 *   jobs_sqlite_throughput_keel, jobs_sqlite_throughput_raw (jobs/s),
 *   jobs_sqlite_throughput_ratio, jobs_sqlite_pickup_p50, _p99 (ms);
 * and with $BENCH_ES_PG_URL (a schema of its own): jobs_pg_throughput_keel,
 * jobs_pg_pickup_p50, jobs_pg_pickup_p99 (no raw anchor on PostgreSQL yet).
 *
 * `bench_jobs --one sqlite|pg` runs one round of keel's side only, for
 * bench/jobs/run.sh, which alternates it with BullMQ (bench/node/bullmq.js,
 * the same workloads): jobs_<backend>_throughput, jobs_<backend>_steady (the
 * pickup run's jobs/s, first enqueue to last start), jobs_<backend>_pickup_p50
 * and _p99; pg takes $BENCH_ES_PG_URL. BENCH_JOBS_NO_PREPARE=1 runs keel's
 * statements unnamed on PostgreSQL (keel_es_opts.no_prepare), the base of
 * decision 0041.
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
#include "keel/jobs.h"

enum { ENQUEUERS = 8, PER = 500, PICKUP_N = 500, MAX_LAT = 1000 };
#define PG_SCHEMA "bench_jobs"

static int rounds = 3;
static char url[1200];
static char dir[256];
static bool pg;
static bool one; /* --one: a single round of keel's side */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_jobs: %s: %s\n", what, keel_strerror(rc));
  exit(2);
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void emit(const char *name, const char *unit, double v) {
  printf("{\"bench\": \"%s\", \"unit\": \"%s\", \"value\": %.*f}\n", name, unit, v < 100 ? 3 : 1,
         v);
  fflush(stdout);
}

/* ---- keel ------------------------------------------------------------------------------ */

static double lat[MAX_LAT];
static double lat_at[MAX_LAT]; /* when the job was enqueued, ms into the run (BENCH_JOBS_SLOW) */
static int64_t pickup_t0;
static atomic_int nlat;

static int noop(keel_job *job, void *ud) {
  (void)ud;
  json_t *t = json_object_get(job->args, "t");
  if (t) {
    int i = atomic_fetch_add(&nlat, 1);
    if (i < MAX_LAT) {
      lat[i] = (double)(now_ns() - json_integer_value(t)) / 1e6;
      lat_at[i] = (double)(json_integer_value(t) - pickup_t0) / 1e6;
    }
  }
  return 0;
}

static const keel_job_worker workers[] = {{.name = "noop", .perform = noop}};
static const keel_job_queue queues[] = {{.name = "default", .concurrency = 20}};

typedef struct enq {
  keel_jobs *j;
  keel_pid_t parent;
} enq;

static void enqueuer(void *arg) {
  enq *e = arg;
  for (int i = 0; i < PER; i++)
    if (keel_jobs_enqueue(e->j, &(keel_job_new){.worker = "noop"}, NULL, NULL) != 0)
      die("enqueue", KEEL_EIO);
  keel_send(e->parent, keel_msg_new(1, 0));
}

static double completed(keel_metrics *m) {
  keel_counter *c;
  keel_metric_family *f = keel_metrics_find(m, "jobs_completed_total");
  if (!f || keel_counter_get(f, (const char *[]){"default", "noop"}, &c) != 0) return 0;
  return keel_counter_value(c);
}

static keel_es *open_store(void) {
  keel_es *es = NULL;
  /* BENCH_JOBS_NO_PREPARE=1: keel's statements unnamed (decision 0041's base) */
  const char *np = getenv("BENCH_JOBS_NO_PREPARE");
  int rc = keel_es_open(&(keel_es_opts){.url = url, .no_prepare = np && *np == '1'}, &es);
  if (rc) die("keel_es_open", rc);
  return es;
}

static keel_jobs *start(keel_es *es, keel_metrics *m) {
  keel_jobs *j = NULL;
  int rc = keel_jobs_start(&(keel_jobs_opts){.es = es,
                                             .workers = workers,
                                             .nworkers = 1,
                                             .queues = queues,
                                             .nqueues = 1,
                                             .metrics = m,
                                             .instance = "bench"},
                           &j);
  if (rc) die("keel_jobs_start", rc);
  return j;
}

static double keel_throughput(void) {
  keel_es *es = open_store();
  keel_metrics *m = NULL;
  keel_metrics_new(&m, 0);
  keel_jobs *j = start(es, m);
  double base = completed(m);
  enq e = {.j = j, .parent = keel_self()};
  int64_t t0 = now_ns();
  for (int i = 0; i < ENQUEUERS; i++)
    keel_spawn(enqueuer, &e, NULL, NULL);
  for (int i = 0; i < ENQUEUERS; i++) {
    keel_msg_t *msg = NULL;
    keel_receive(&msg, KEEL_INFINITY);
    keel_msg_free(msg);
  }
  while (completed(m) - base < ENQUEUERS * PER)
    keel_sleep(1);
  double s = (double)(now_ns() - t0) / 1e9;
  keel_jobs_stop(j, 1000);
  keel_es_close(es);
  keel_metrics_free(m);
  return ENQUEUERS * PER / s;
}

/* *steady: jobs/s from the first enqueue to the last start. */
static void keel_pickup(double *p50, double *p99, double *steady) {
  keel_es *es = open_store();
  keel_jobs *j = start(es, NULL);
  atomic_store(&nlat, 0);
  int64_t t0 = now_ns();
  pickup_t0 = t0;
  for (int i = 0; i < PICKUP_N; i++) {
    json_t *a = json_pack("{s:I}", "t", (json_int_t)now_ns());
    if (keel_jobs_enqueue(j, &(keel_job_new){.worker = "noop", .args = a}, NULL, NULL) != 0)
      die("enqueue", KEEL_EIO);
    json_decref(a);
    keel_sleep(2);
  }
  while (atomic_load(&nlat) < PICKUP_N)
    keel_sleep(1);
  *steady = PICKUP_N / ((double)(now_ns() - t0) / 1e9);
  keel_jobs_stop(j, 1000);
  keel_es_close(es);
  int n = PICKUP_N;
  /* BENCH_JOBS_SLOW=MS: each pickup slower than MS on stderr, with when its
   * job was enqueued (to tell a periodic stall from a random one) */
  const char *slow = getenv("BENCH_JOBS_SLOW");
  for (int i = 0; slow && i < n; i++)
    if (lat[i] > atof(slow))
      fprintf(stderr, "bench_jobs: slow pickup %.1f ms, enqueued at %.0f ms\n", lat[i], lat_at[i]);
  qsort(lat, (size_t)n, sizeof *lat, cmp_d);
  *p50 = lat[n / 2];
  *p99 = lat[(n * 99) / 100];
}

/* ---- raw sqlite3 ---------------------------------------------------------------------------- */

static void ok(int rc, sqlite3 *db) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    fprintf(stderr, "sqlite: %s\n", sqlite3_errmsg(db));
    exit(2);
  }
}

static void step(sqlite3_stmt *st, sqlite3 *db) {
  ok(sqlite3_step(st), db);
  sqlite3_reset(st);
}

static double raw_throughput(int round) {
  char path[400];
  snprintf(path, sizeof path, "%s/raw-%d.db", dir, round);
  sqlite3 *db;
  ok(sqlite3_open(path, &db), db);
  ok(sqlite3_exec(db,
                  "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE jobs (id "
                  "INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT, worker TEXT, args TEXT, "
                  "state TEXT, attempt INTEGER, run_at BIGINT, instance TEXT, finished_at "
                  "BIGINT)",
                  NULL, NULL, NULL),
     db);
  sqlite3_stmt *ins, *claim, *done;
  ok(sqlite3_prepare_v2(db,
                        "INSERT INTO jobs (queue, worker, args, state, attempt, run_at) "
                        "VALUES ('default', 'noop', '{}', 'available', 0, ?1)",
                        -1, &ins, NULL),
     db);
  ok(sqlite3_prepare_v2(db,
                        "UPDATE jobs SET state = 'running', attempt = attempt + 1, instance "
                        "= 'raw' WHERE id = ?1",
                        -1, &claim, NULL),
     db);
  ok(sqlite3_prepare_v2(db, "UPDATE jobs SET state = 'completed', finished_at = ?2 WHERE id = ?1",
                        -1, &done, NULL),
     db);
  int n = ENQUEUERS * PER;
  int64_t t0 = now_ns();
  for (int i = 0; i < n; i++) {
    sqlite3_bind_int64(ins, 1, t0);
    step(ins, db);
    sqlite3_int64 id = sqlite3_last_insert_rowid(db);
    sqlite3_bind_int64(claim, 1, id);
    step(claim, db);
    sqlite3_bind_int64(done, 1, id);
    sqlite3_bind_int64(done, 2, t0);
    step(done, db);
  }
  double s = (double)(now_ns() - t0) / 1e9;
  sqlite3_finalize(ins);
  sqlite3_finalize(claim);
  sqlite3_finalize(done);
  sqlite3_close(db);
  return n / s;
}

/* ---- the run --------------------------------------------------------------------------------- */

/* One round of keel's side (--one), its figures unsummarised: run.sh takes
 * the medians over its alternating rounds. */
static void bench_one(void *arg) {
  (void)arg;
  const char *pre = pg ? "jobs_pg" : "jobs_sqlite";
  char name[64];
  double p50, p99, steady;
  if (!pg) snprintf(url, sizeof url, "sqlite:%s/keel.db", dir);
  double k = keel_throughput();
  if (!pg) snprintf(url, sizeof url, "sqlite:%s/pickup.db", dir);
  keel_pickup(&p50, &p99, &steady);
  snprintf(name, sizeof name, "%s_throughput", pre);
  emit(name, "jobs/s", k);
  snprintf(name, sizeof name, "%s_steady", pre);
  emit(name, "jobs/s", steady);
  snprintf(name, sizeof name, "%s_pickup_p50", pre);
  emit(name, "ms", p50);
  snprintf(name, sizeof name, "%s_pickup_p99", pre);
  emit(name, "ms", p99);
}

static void bench(void *arg) {
  (void)arg;
  double k[16], r[16], ratio[16], p50[16], p99[16], steady;
  const char *pre = pg ? "jobs_pg" : "jobs_sqlite";
  char name[64];
  for (int i = 0; i < rounds; i++) {
    if (!pg) {
      snprintf(url, sizeof url, "sqlite:%s/keel-%d.db", dir, i);
      k[i] = keel_throughput();
      r[i] = raw_throughput(i);
      ratio[i] = k[i] / r[i];
      fprintf(stderr, "round %d: keel %.0f jobs/s, raw %.0f jobs/s\n", i, k[i], r[i]);
      snprintf(url, sizeof url, "sqlite:%s/pickup-%d.db", dir, i);
    } else {
      k[i] = keel_throughput();
      fprintf(stderr, "round %d: keel %.0f jobs/s\n", i, k[i]);
    }
    keel_pickup(&p50[i], &p99[i], &steady);
    fprintf(stderr, "round %d: pickup p50 %.2f ms, p99 %.2f ms\n", i, p50[i], p99[i]);
  }
  snprintf(name, sizeof name, "%s_throughput_keel", pre);
  emit(name, "jobs/s", median(k, rounds));
  if (!pg) {
    emit("jobs_sqlite_throughput_raw", "jobs/s", median(r, rounds));
    emit("jobs_sqlite_throughput_ratio", "keel/raw", median(ratio, rounds));
  }
  snprintf(name, sizeof name, "%s_pickup_p50", pre);
  emit(name, "ms", median(p50, rounds));
  snprintf(name, sizeof name, "%s_pickup_p99", pre);
  emit(name, "ms", median(p99, rounds));
}

static void pg_schema(const char *base) {
  PGconn *c = PQconnectdb(base);
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "bench_jobs: %s\n", PQerrorMessage(c));
    exit(2);
  }
  PGresult *r = PQexec(c, "SET client_min_messages = warning; DROP SCHEMA IF EXISTS " PG_SCHEMA
                          " CASCADE; CREATE SCHEMA " PG_SCHEMA);
  PQclear(r);
  PQfinish(c);
  snprintf(url, sizeof url, "%s%coptions=-csearch_path%%3D" PG_SCHEMA, base,
           strchr(base, '?') ? '&' : '?');
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--one") == 0 &&
      (strcmp(argv[2], "sqlite") == 0 || strcmp(argv[2], "pg") == 0)) {
    one = true;
    pg = strcmp(argv[2], "pg") == 0;
  } else if (argc != 1) {
    fprintf(stderr, "usage: bench_jobs [--one sqlite|pg]\n");
    return 2;
  }
  const char *r = getenv("BENCH_JOBS_ROUNDS");
  if (r && atoi(r) > 0 && atoi(r) <= 16) rounds = atoi(r);
  const char *t = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/keel-bench-jobs-XXXXXX", t && *t ? t : "/tmp");
  if (!mkdtemp(dir)) die("mkdtemp", KEEL_EIO);
  keel_log_set_level(KEEL_LOG_WARN);
  const char *base = getenv("BENCH_ES_PG_URL");
  int rc;
  if (one) {
    if (pg && !(base && *base)) {
      fprintf(stderr, "bench_jobs: --one pg needs BENCH_ES_PG_URL\n");
      return 2;
    }
    if (pg) pg_schema(base);
    rc = keel_run(bench_one, NULL, NULL);
  } else
    rc = keel_run(bench, NULL, NULL);
  if (!one && rc == 0 && base && *base) {
    pg = true;
    pg_schema(base);
    rc = keel_run(bench, NULL, NULL);
  }
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "bench_jobs: could not remove %s\n", dir);
  return rc ? 1 : 0;
}
