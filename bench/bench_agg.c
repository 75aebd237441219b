/* bench_agg.c - aggregates: what a load costs with and without a snapshot,
 * and what a command costs against the bare append it ends in.
 *
 * On $DATABASE_URL when set (a postgresql:// URL: each run in a schema of its
 * own, dropped after), else a SQLite file in $TMPDIR (synchronous=FULL, the
 * default). Prints one JSON line per figure: {"bench", "unit", "value"}:
 *   agg_load_replay_10k_ms     a 10,000-event account folded from its events
 *   agg_load_snapshot_10k_ms   the same account from a snapshot + 50 events
 *   agg_execute_1proc / es_append_exact_1proc   commands (one event each,
 *       snapshot every 100) against appends with an exact expected version,
 *       one process, per second; and their ratio
 *   es_snapshot_load_1proc, es_read_stream_tail_1proc  the two reads of a
 *       load, alone, per second
 *   agg_execute_8proc_distinct  8 processes, one aggregate each, commands/s
 *   agg_execute_8proc_same      8 processes, one aggregate, commands/s, and
 *   agg_conflicts_per_command   the retries that cost
 * Medians of BENCH_AGG_ROUNDS (default 3) rounds for the load figures.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keel.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void must(int rc, const char *what) {
  if (rc) {
    fprintf(stderr, "bench_agg: %s: %s\n", what, keel_strerror(rc));
    exit(2);
  }
}

static void emit(const char *name, const char *unit, double v) {
  printf("{\"bench\": \"%s\", \"unit\": \"%s\", \"value\": %.3f}\n", name, unit, v);
  fflush(stdout);
}

/* ---- the account ------------------------------------------------------------------ */

typedef struct account {
  int64_t balance, n;
} account;

static void *init(void *ud) {
  (void)ud;
  return calloc(1, sizeof(account));
}
static void destroy(void *s, void *ud) {
  (void)ud;
  free(s);
}
static int apply(void *s, const keel_es_event *e, void *ud) {
  (void)ud;
  account *a = s;
  a->balance += json_integer_value(json_object_get(keel_es_event_payload(e), "amount"));
  a->n++;
  return 0;
}
static json_t *encode(const void *s, void *ud) {
  (void)ud;
  const account *a = s;
  return json_pack("{s:I,s:I}", "balance", (json_int_t)a->balance, "n", (json_int_t)a->n);
}
static void *decode(const json_t *j, void *ud) {
  (void)ud;
  account *a = calloc(1, sizeof *a);
  json_int_t b, n;
  if (!a || json_unpack((json_t *)j, "{s:I,s:I}", "balance", &b, "n", &n) != 0) {
    free(a);
    return NULL;
  }
  a->balance = b;
  a->n = n;
  return a;
}
static int deposit(const void *s, const void *cmd, keel_agg_decision *d) {
  (void)s;
  return keel_agg_emit(d, "Deposited", json_pack("{s:I}", "amount", *(const json_int_t *)cmd));
}

static const keel_agg_def plain = {
    .category = "acct", .init = init, .apply = apply, .destroy = destroy};
static const keel_agg_def snapshotted = {.category = "acct",
                                         .init = init,
                                         .apply = apply,
                                         .destroy = destroy,
                                         .encode = encode,
                                         .decode = decode,
                                         .snapshot_every = 100,
                                         .max_retries = 1000};

/* ---- the store ---------------------------------------------------------------------- */

static char url[1200], schema[64], dir[256];
static int rounds = 3;

static keel_es *open_store(void) {
  const char *pg = getenv("DATABASE_URL");
  if (pg && strncmp(pg, "postgres", 8) == 0) {
    snprintf(schema, sizeof schema, "bench_agg_%d", (int)getpid());
    PGconn *c = PQconnectdb(pg);
    char sql[200];
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", schema, schema);
    PQclear(PQexec(c, sql));
    PQfinish(c);
    snprintf(url, sizeof url, "%s%coptions=-csearch_path%%3D%s", pg, strchr(pg, '?') ? '&' : '?',
             schema);
  } else {
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/bench-agg-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) exit(2);
    snprintf(url, sizeof url, "sqlite:%s/es.db", dir);
  }
  keel_es *es;
  must(keel_es_open(&(keel_es_opts){.url = url}, &es), "open");
  return es;
}

static void close_store(keel_es *es) {
  keel_es_close(es);
  if (schema[0]) {
    PGconn *c = PQconnectdb(getenv("DATABASE_URL"));
    char sql[128];
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", schema);
    PQclear(PQexec(c, sql));
    PQfinish(c);
  } else {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_agg: could not remove %s\n", dir);
  }
}

static void append_n(keel_es *es, const char *stream, int n) {
  keel_es_event_in ev[100];
  json_t *p = json_pack("{s:i}", "amount", 1);
  for (int k = 0; k < 100; k++)
    ev[k] = (keel_es_event_in){.type = "Deposited", .payload = p};
  for (int done = 0; done < n; done += 100)
    must(keel_es_append(es, stream, KEEL_ES_ANY, ev, n - done < 100 ? (size_t)(n - done) : 100,
                        NULL),
         "append");
  json_decref(p);
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median_load_ms(keel_es *es, const keel_agg_def *def, const char *id) {
  double t[16];
  for (int r = 0; r < rounds; r++) {
    void *s;
    double t0 = now_s();
    must(keel_agg_load(es, def, id, &s, NULL), "load");
    t[r] = (now_s() - t0) * 1000;
    destroy(s, NULL);
  }
  qsort(t, (size_t)rounds, sizeof t[0], cmp);
  return t[rounds / 2];
}

/* ---- concurrent commands --------------------------------------------------------------- */

typedef struct worker {
  keel_es *es;
  keel_pid_t parent;
  char id[32];
  int count, attempts;
} worker;

static void work(void *arg) {
  worker *w = arg;
  json_int_t one = 1;
  for (int i = 0; i < w->count; i++) {
    keel_agg_result r;
    must(keel_agg_execute(w->es, &snapshotted, w->id, deposit, &one, &r), "execute");
    w->attempts += r.attempts;
  }
  keel_msg_t *m = keel_msg_new(1, 0);
  keel_send(w->parent, m);
}

static double run_workers(keel_es *es, int n, int count, bool same, double *conflicts) {
  worker w[8];
  double t0 = now_s();
  for (int i = 0; i < n; i++) {
    w[i] = (worker){.es = es, .parent = keel_self(), .count = count};
    snprintf(w[i].id, sizeof w[i].id, same ? "shared" : "own-%d", i);
    must(keel_spawn(work, &w[i], NULL, NULL), "spawn");
  }
  for (int i = 0; i < n; i++) {
    keel_msg_t *m;
    must(keel_receive(&m, KEEL_INFINITY), "receive");
    keel_msg_free(m);
  }
  double dt = now_s() - t0;
  int attempts = 0;
  for (int i = 0; i < n; i++)
    attempts += w[i].attempts;
  if (conflicts) *conflicts = (double)(attempts - n * count) / (n * count);
  return n * count / dt;
}

static void bench(void *unused) {
  (void)unused;
  keel_es *es = open_store();
  /* loads: 10,000 events, then a snapshot 50 events before the head */
  append_n(es, "acct-big", 10000);
  emit("agg_load_replay_10k_ms", "ms", median_load_ms(es, &plain, "big"));
  void *s;
  must(keel_agg_load(es, &plain, "big", &s, NULL), "load");
  ((account *)s)->balance -= 50;
  ((account *)s)->n -= 50;
  json_t *j = encode(s, NULL);
  destroy(s, NULL);
  must(keel_es_snapshot_save(es, "acct-big", 9950, 1, j, NULL), "snapshot");
  json_decref(j);
  emit("agg_load_snapshot_10k_ms", "ms", median_load_ms(es, &snapshotted, "big"));

  /* one process: commands against bare appends */
  enum { N1 = 1000 };
  json_int_t one = 1;
  double t0 = now_s();
  for (int i = 0; i < N1; i++)
    must(keel_agg_execute(es, &snapshotted, "one", deposit, &one, NULL), "execute");
  double agg = N1 / (now_s() - t0);
  json_t *p = json_pack("{s:i}", "amount", 1);
  keel_es_event_in ev = {.type = "Deposited", .payload = p};
  t0 = now_s();
  for (int i = 0; i < N1; i++)
    must(keel_es_append(es, "acct-raw", i, &ev, 1, NULL), "append");
  double raw = N1 / (now_s() - t0);
  json_decref(p);
  /* the two reads of a load, alone */
  t0 = now_s();
  for (int i = 0; i < N1; i++) {
    keel_es_snapshot sn;
    must(keel_es_snapshot_load(es, "acct-one", &sn), "snapshot load");
    keel_es_snapshot_free(&sn);
  }
  emit("es_snapshot_load_1proc", "loads/s", N1 / (now_s() - t0));
  t0 = now_s();
  for (int i = 0; i < N1; i++) {
    keel_es_events evs;
    must(keel_es_read_stream(es, "acct-one", &(keel_es_read_opts){.from = 990}, &evs), "read");
    keel_es_events_free(&evs);
  }
  emit("es_read_stream_tail_1proc", "reads/s", N1 / (now_s() - t0));
  emit("agg_execute_1proc", "commands/s", agg);
  emit("es_append_exact_1proc", "appends/s", raw);
  emit("agg_execute_vs_append_1proc", "ratio", agg / raw);

  emit("agg_execute_8proc_distinct", "commands/s", run_workers(es, 8, 250, false, NULL));
  double conflicts = 0;
  emit("agg_execute_8proc_same", "commands/s", run_workers(es, 8, 100, true, &conflicts));
  emit("agg_conflicts_per_command", "retries", conflicts);
  close_store(es);
}

int main(void) {
  const char *r = getenv("BENCH_AGG_ROUNDS");
  if (r && atoi(r) > 0 && atoi(r) <= 15) rounds = atoi(r);
  int rc = keel_run(bench, NULL, NULL);
  return rc ? 1 : 0;
}
