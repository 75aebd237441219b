/* janitor.c - the instance's housekeeping, one round every heartbeat_ms:
 *
 *   heartbeat  this instance's row in keel_jobs_instances says it lives;
 *   rescue     a running job past its attempt's deadline (rescue_fn), or
 *              one whose instance has not beaten for
 *              rescue_after_ms (or has no row: it stopped or never wrote)
 *              goes back to available, a failed attempt "instance lost"
 *              (discarded when it was the last), fenced like every outcome
 *              by the lost instance's name and the attempt: so a job runs on
 *              one instance at a time, unless an instance is declared lost
 *              while it still runs (a pause longer than rescue_after_ms: set
 *              it well above the heartbeat). On SQLite there is one instance
 *              per file: every other instance is lost at once;
 *   retention  finished jobs older than retention_ms are deleted;
 *   gauges     depth and the oldest due job's age per queue (metrics, and
 *              the health check's figures);
 *   kills      attempts running here that another instance cancelled are
 *              killed (the fallback of the cancel's NOTIFY).
 * The rounds run in the janitor process (under the jobs' supervisor) and,
 * on demand, in keel_jobs_maintain's caller; every step is one statement or
 * short transactions, so two rounds at once (two instances) are harmless.
 * The steps are independent: one that fails is logged and the others still
 * run; in the periodic rounds a failing step backs off (step_due).
 * Heartbeats, the rescue's cutoff and attempts' deadlines are on the
 * database's clock on PostgreSQL (several hosts), the jobs' on SQLite.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "jobs/jobs_internal.h"
#include "keel/error.h"
#include "keel/health.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/process.h"

typedef struct rescue {
  keel_jobs *j;
  int64_t cutoff; /* heartbeats older than this are lost (the database's clock) */
  int64_t now;    /* attempts whose deadline_at is before this are stuck (the same clock) */
  int lost, stuck;
} rescue;

/* Two kinds of running rows go back (a failed attempt, with the backoff;
 * discarded when it was the last), each fenced by the row's instance and
 * attempt like every outcome:
 *   lost   its instance has not beaten since cutoff (or has no row);
 *   stuck  its attempt is past deadline_at (its worker's timeout plus
 *          rescue_after_ms, stamped by the fetch), whatever its instance:
 *          the instance's runner kills an attempt at its timeout and
 *          records it, so a row still running long after is one whose
 *          outcome could not be written (the database away longer than the
 *          retries) or whose claim's answer was lost (a COMMIT that
 *          succeeded while the connection died): nobody runs it. river's
 *          stuck-job rescuer and Oban's Lifeline do the same. */
static int rescue_fn(keel_es_tx *tx, void *arg) {
  rescue *r = arg;
  keel_jobs *j = r->j;
  r->lost = r->stuck = 0;
  char cut[24], now[24];
  keel__jobs_i64(cut, r->cutoff);
  keel__jobs_i64(now, r->now);
  int rc = keel_es_tx_lock(tx, "keel_jobs rescue");
  keel_es_rows rows = {0};
  if (rc == 0)
    rc = keel_es_tx_exec(tx,
                         "SELECT " JOBS_ROW_COLS ", instance, CASE WHEN deadline_at < CAST($3 AS "
                         "BIGINT) THEN 1 ELSE 0 END FROM keel_jobs WHERE state = 'running' AND "
                         "((instance <> $1 AND instance NOT IN (SELECT instance FROM "
                         "keel_jobs_instances WHERE heartbeat_at >= CAST($2 AS BIGINT))) OR "
                         "deadline_at < CAST($3 AS BIGINT)) ORDER BY id LIMIT 1000",
                         (const char *[]){j->instance, cut, now}, 3, &rows);
  jobs_row *v = NULL;
  size_t n = 0;
  if (rc == 0) rc = keel__jobs_rows(&rows, &v, &n);
  for (size_t i = 0; i < n && rc == 0; i++) {
    const char *inst = keel_es_rows_get(&rows, i, JOBS_ROW_NCOLS);
    bool stuck = keel__jobs_atoi(keel_es_rows_get(&rows, i, JOBS_ROW_NCOLS + 1)) == 1;
    rc = keel__jobs_record_tx(tx, j, &v[i], JOBS_FAILED,
                              stuck ? JOBS_DEADLINE_ERROR : JOBS_LOST_ERROR,
                              keel__jobs_backoff(j, v[i].attempt), inst ? inst : "");
    if (stuck)
      r->stuck++;
    else
      r->lost++;
  }
  for (size_t i = 0; i < n; i++)
    keel__jobs_row_free(&v[i]);
  free(v);
  keel_es_rows_free(&rows);
  if (rc == 0)
    rc = keel_es_tx_exec(tx,
                         "DELETE FROM keel_jobs_instances WHERE heartbeat_at < CAST($2 AS BIGINT) "
                         "AND instance <> $1",
                         (const char *[]){j->instance, cut}, 2, NULL);
  return rc;
}

typedef struct one_stmt {
  const char *sql;
  const char *const *p;
  size_t n;
} one_stmt;

static int one_fn(keel_es_tx *tx, void *arg) {
  one_stmt *s = arg;
  return keel_es_tx_exec(tx, s->sql, s->p, s->n, NULL);
}

/* One statement in an internal transaction (keel's tables). */
static int exec1(keel_jobs *j, const char *sql, const char *const *p, size_t n) {
  one_stmt s = {sql, p, n};
  return keel__es_transact_internal(j->es, one_fn, &s);
}

/* PostgreSQL: the database's clock minus the host's, from one query timed
 * on the host (the midpoint of the round trip), so every instance's
 * heartbeats and deadlines are on the database's clock whatever its own
 * host's says. */
static int measure_db_clock(keel_jobs *j) {
  if (!keel__jobs_pg(j)) return 0;
  keel_es_rows rows = {0};
  int64_t t0 = keel__es_unix_ms();
  int rc = keel_es_query(
      j->es, "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)", NULL, 0, &rows);
  int64_t t1 = keel__es_unix_ms();
  if (rc == 0 && rows.nrows == 1) {
    int64_t db = keel__jobs_atoi(keel_es_rows_get(&rows, 0, 0));
    atomic_store_explicit(&j->db_offset, db - (t0 + (t1 - t0) / 2), memory_order_relaxed);
  }
  keel_es_rows_free(&rows);
  return rc;
}

static int heartbeat(keel_jobs *j) {
  char now[24];
  keel__jobs_i64(now, keel__jobs_db_now(j));
  return exec1(j,
               "INSERT INTO keel_jobs_instances (instance, heartbeat_at, started_at) VALUES ($1, "
               "CAST($2 AS BIGINT), CAST($2 AS BIGINT)) ON CONFLICT (instance) DO UPDATE SET "
               "heartbeat_at = excluded.heartbeat_at",
               (const char *[]){j->instance, now}, 2);
}

enum { PRUNE_BATCH = 1000, PRUNE_BATCHES = 50 };

typedef struct prune_batch {
  const char *sql;
  const char *const *p;
  int64_t deleted;
} prune_batch;

/* A finished job whose unique key still holds (unique_period longer than
 * the retention) stays until its period ends: deleting it would let a
 * duplicate in early. PostgreSQL: the batch skips rows another pruner's
 * batch holds (FOR UPDATE SKIP LOCKED, as the runners' claim), so two
 * pruners at once (two instances, or the janitor process and
 * keel_jobs_maintain) take disjoint rows. Without it the second waited on
 * the first's rows, found them deleted, deleted fewer than a batch and
 * stopped while rows past the retention remained (decision 0037). SQLite's
 * one writer runs batches one after the other: each sees the last's
 * deletes. */
#define PRUNE_SQL                                                                                  \
  "DELETE FROM keel_jobs WHERE id IN (SELECT id FROM keel_jobs WHERE state IN ('completed', "      \
  "'discarded', 'cancelled') AND finished_at < CAST($1 AS BIGINT) AND (unique_until IS NULL OR "   \
  "unique_until < CAST($2 AS BIGINT)) ORDER BY finished_at LIMIT CAST($3 AS INTEGER)"

static int prune_fn(keel_es_tx *tx, void *arg) {
  prune_batch *b = arg;
  keel_es_rows rows = {0};
  int rc = keel_es_tx_exec(tx, b->sql, b->p, 3, &rows);
  b->deleted = rc == 0 ? rows.changed : 0;
  keel_es_rows_free(&rows);
  return rc;
}

/* In batches of PRUNE_BATCH rows, each its own short transaction: a first
 * prune of a large backlog as one DELETE could pass PostgreSQL's
 * statement_timeout every round and never finish, and held SQLite's writer
 * for its whole length. At most PRUNE_BATCHES a round; the rest next round.
 * A batch short of PRUNE_BATCH took every row past the retention that no
 * other pruner holds: those the other deletes, so once every pruner has
 * returned none is left. */
static int prune(keel_jobs *j, int64_t now) {
  if (j->o.retention_ms == KEEL_INFINITY) return 0;
  char t[24], n[24], lim[24];
  keel__jobs_i64(t, now - j->o.retention_ms);
  keel__jobs_i64(n, now);
  keel__jobs_i64(lim, PRUNE_BATCH);
  prune_batch b = {.sql = keel__jobs_pg(j) ? PRUNE_SQL " FOR UPDATE SKIP LOCKED)" : PRUNE_SQL ")",
                   .p = (const char *[]){t, n, lim}};
  int rc = 0;
  for (int i = 0; i < PRUNE_BATCHES && rc == 0; i++) {
    rc = keel__es_transact_internal(j->es, prune_fn, &b);
    if (rc == 0 && b.deleted < PRUNE_BATCH) break;
  }
  return rc;
}

typedef struct kills {
  keel_jobs *j;
  const keel_es_rows *rows;
} kills;

static int unmark_fn(keel_es_tx *tx, void *arg) {
  kills *k = arg;
  for (size_t i = 0; i < k->rows->nrows; i++) {
    int rc =
        keel_es_tx_exec(tx,
                        "UPDATE keel_jobs SET deadline_at = NULL WHERE id = CAST($1 AS BIGINT) "
                        "AND attempt = CAST($2 AS INTEGER) AND state = 'cancelled' AND "
                        "instance = $3",
                        (const char *[]){keel_es_rows_get(k->rows, i, 0),
                                         keel_es_rows_get(k->rows, i, 1), k->j->instance},
                        3, NULL);
    if (rc) return rc;
  }
  return 0;
}

/* The fallback of a cancel's NOTIFY (jobs.c, op_fn): attempts of this
 * instance cancelled by another one keep a deadline_at, the mark that their
 * process may still run here (no listener, a NOTIFY lost with a dropped
 * connection, SQLite where the canceller is another process on the file).
 * Their kills go to the runners (each kills the attempt if it still runs
 * it), then the marks are cleared: a kill sent to a live runner arrives,
 * and a runner that died took its job processes with it. A job its worker
 * cancelled keeps its deadline_at too and is matched once, harmlessly (its
 * process is ending). */
static int kill_cancelled(keel_jobs *j, int64_t now) {
  (void)now;
  if (!j->o.nqueues) return 0;
  keel_es_rows rows = {0};
  int rc = keel_es_query(j->es,
                         "SELECT id, attempt FROM keel_jobs WHERE state = 'cancelled' AND "
                         "instance = $1 AND deadline_at IS NOT NULL",
                         (const char *[]){j->instance}, 1, &rows);
  if (rc == 0 && rows.nrows) {
    for (size_t i = 0; i < rows.nrows; i++)
      keel__jobs_kill_attempt(j, keel__jobs_atoi(keel_es_rows_get(&rows, i, 0)),
                              (int)keel__jobs_atoi(keel_es_rows_get(&rows, i, 1)));
    rc = keel__es_transact_internal(j->es, unmark_fn, &(kills){.j = j, .rows = &rows});
  }
  keel_es_rows_free(&rows);
  return rc;
}

static void set_gauge(keel_metric_family *f, const char *queue, double v) {
  keel_gauge *g;
  if (f && keel_gauge_get(f, (const char *[]){queue}, &g) == 0) keel_gauge_set(g, v);
}

uint64_t keel__jobs_look(keel_jobs *j) {
  return atomic_fetch_add_explicit(&j->looks, 1, memory_order_relaxed) + 1;
}

bool keel__jobs_fresher(keel_jobs *j, int step, uint64_t ticket) {
  if (ticket < j->looked[step]) return false;
  j->looked[step] = ticket;
  return true;
}

static int gauges(keel_jobs *j, int64_t now) {
  uint64_t ticket = keel__jobs_look(j);
  char t[24];
  keel__jobs_i64(t, now);
  keel_es_rows rows = {0};
  int rc = keel_es_query(j->es,
                         "SELECT queue, COUNT(*), MIN(run_at) FROM keel_jobs WHERE state = "
                         "'available' AND run_at <= CAST($1 AS BIGINT) GROUP BY queue",
                         (const char *[]){t}, 1, &rows);
  if (rc) return rc;
  pthread_mutex_lock(&j->mu);
  if (!keel__jobs_fresher(j, JOBS_STEP_GAUGES, ticket)) {
    pthread_mutex_unlock(&j->mu);
    keel_es_rows_free(&rows);
    return 0;
  }
  for (size_t i = 0; i < j->o.nqueues; i++)
    j->queues[i].depth = 0, j->queues[i].oldest_ms = 0;
  for (size_t r = 0; r < rows.nrows; r++) {
    jobs_queue *q = keel__jobs_queue_named(j, keel_es_rows_get(&rows, r, 0));
    if (!q) continue;
    q->depth = keel__jobs_atoi(keel_es_rows_get(&rows, r, 1));
    q->oldest_ms = now - keel__jobs_atoi(keel_es_rows_get(&rows, r, 2));
  }
  for (size_t i = 0; i < j->o.nqueues; i++) {
    set_gauge(j->f_depth, j->queues[i].q.name, (double)j->queues[i].depth);
    set_gauge(j->f_oldest, j->queues[i].q.name, (double)j->queues[i].oldest_ms / 1000.0);
  }
  pthread_mutex_unlock(&j->mu);
  keel_es_rows_free(&rows);
  return 0;
}

/* Backoff of a failing step in the periodic rounds: after its k-th failure
 * in a row it waits 2^(k-1) - 1 rounds (at most STEP_BACKOFF_MAX), so a step
 * that fails every time (a prune past statement_timeout, a cron entry that
 * cannot enqueue) does not load a struggling database each heartbeat; the
 * heartbeat itself is never held back. */
enum { STEP_BACKOFF_MAX = 32 };

static bool step_due(keel_jobs *j, int step, bool periodic) {
  pthread_mutex_lock(&j->mu);
  bool due = !periodic || j->rounds >= j->step_next[step];
  pthread_mutex_unlock(&j->mu);
  return due;
}

static const char *const step_names[] = {"rescue", "cron", "prune", "gauges", "panel", "kills"};

static int step_done(keel_jobs *j, int step, int rc) {
  pthread_mutex_lock(&j->mu);
  if (rc == 0) {
    j->step_fails[step] = 0;
    j->step_next[step] = 0;
  } else {
    int k = j->step_fails[step] < 16 ? ++j->step_fails[step] : j->step_fails[step];
    uint64_t wait = ((uint64_t)1 << (k - 1)) - 1;
    j->step_next[step] = j->rounds + 1 + (wait < STEP_BACKOFF_MAX ? wait : STEP_BACKOFF_MAX);
  }
  pthread_mutex_unlock(&j->mu);
  if (rc)
    keel_log_warn(NULL, "jobs: a janitor step failed", KEEL_STR("step", step_names[step]),
                  KEEL_STR("error", keel_err_name(rc)));
  return rc;
}

/* Each step on its own: one that fails does not keep the others from
 * running this round. The first failure is returned. */
int keel__jobs_janitor_round(keel_jobs *j, bool periodic) {
  int64_t now = keel__jobs_now(j);
  int first = measure_db_clock(j);
  int rc = heartbeat(j);
  if (rc) keel_log_warn(NULL, "jobs: the heartbeat failed", KEEL_STR("error", keel_err_name(rc)));
  if (!first) first = rc;
  /* PostgreSQL: instances silent for rescue_after_ms (on the database's
   * clock) are lost. SQLite: the holder of the file's runner lock knows
   * every other runner is gone, and nobody else rescues (an instance that
   * only enqueues, or a second one refused the lock, must not take a live
   * runner's jobs); attempts past their deadline are taken back on both */
  int64_t dbnow = keel__jobs_db_now(j);
  rescue r = {
      .j = j, .cutoff = keel__jobs_pg(j) ? dbnow - j->o.rescue_after_ms : INT64_MAX, .now = dbnow};
  bool may_rescue = keel__jobs_pg(j) || j->lock_fd >= 0;
  if (may_rescue && step_due(j, JOBS_STEP_RESCUE, periodic)) {
    rc = step_done(j, JOBS_STEP_RESCUE, keel__es_transact_internal(j->es, rescue_fn, &r));
    if (!first) first = rc;
  }
  if (r.lost)
    keel_log_warn(NULL, "jobs: rescued the jobs of lost instances", KEEL_INT("jobs", r.lost));
  if (r.stuck)
    keel_log_warn(NULL, "jobs: took back attempts past their deadline", KEEL_INT("jobs", r.stuck));
  /* the steps after the rescue, in this order, each (j, now) */
  static int (*const steps[])(keel_jobs *, int64_t) = {
      [JOBS_STEP_CRON] = keel__jobs_cron_round,
      [JOBS_STEP_PRUNE] = prune,
      [JOBS_STEP_GAUGES] = gauges,
      [JOBS_STEP_PANEL] = keel__jobs_panel_round,
      [JOBS_STEP_KILLS] = kill_cancelled,
  };
  for (int step = JOBS_STEP_CRON; step < JOBS_STEPS; step++) {
    if (!step_due(j, step, periodic)) continue;
    rc = step_done(j, step, steps[step](j, now));
    if (!first) first = rc;
  }
  if (periodic) {
    pthread_mutex_lock(&j->mu);
    j->rounds++;
    pthread_mutex_unlock(&j->mu);
  }
  if (r.lost || r.stuck) keel_jobs_notify(j, NULL);
  return first;
}

static void janitor_gone(void *arg) {
  keel_jobs *j = arg;
  /* the instance died with it, or stops: another may run the file; unless a
   * stop left job processes running (they still run the file's jobs: the
   * lock goes when the last of them frees j) */
  if (atomic_load(&j->abandoned) == 0) keel__jobs_unlock(j);
}

void keel__jobs_janitor(void *arg) {
  keel_jobs *j = arg;
  /* a restarted janitor takes the runner lock again; if another instance
   * took it meanwhile, this one goes on without rescuing */
  keel__jobs_lock(j);
  keel_on_exit(janitor_gone, j);
  for (;;) {
    /* a round is short and bounded; dying inside it (the supervisor's
     * shutdown) would leave a read's result behind */
    keel_hold_exits(true);
    keel__jobs_janitor_round(j, true); /* each failed step is logged */
    keel_hold_exits(false);
    /* until the next heartbeat, or the next cron slot if sooner; a slot
     * that failed to enqueue is due at once, so while the cron step fails
     * the heartbeat paces it (a tight loop against a database that is down
     * otherwise) */
    pthread_mutex_lock(&j->mu);
    bool cron_failing = j->step_fails[JOBS_STEP_CRON] > 0;
    pthread_mutex_unlock(&j->mu);
    int64_t wait = cron_failing ? j->o.heartbeat_ms : keel__jobs_cron_wait(j, keel__jobs_now(j));
    if (wait > j->o.heartbeat_ms) wait = j->o.heartbeat_ms;
    keel_msg_t *m = NULL;
    if (keel_receive(&m, wait > 0 ? wait : KEEL_NOWAIT) == 0) keel_msg_free(m);
  }
}

/* ---- the health check ------------------------------------------------------------------- */

static keel_health_status check(void *ud, keel_health_result *res) {
  keel_jobs *j = ud;
  json_t *qs = json_object();
  const char *worst = NULL;
  int64_t worst_ms = 0;
  pthread_mutex_lock(&j->mu);
  for (size_t i = 0; i < j->o.nqueues; i++) {
    jobs_queue *q = &j->queues[i];
    json_object_set_new(qs, q->q.name,
                        json_pack("{s:I,s:I}", "depth", (json_int_t)q->depth, "oldest_ms",
                                  (json_int_t)q->oldest_ms));
    if (q->oldest_ms > worst_ms) worst_ms = q->oldest_ms, worst = q->q.name;
  }
  keel_health_status st = KEEL_HEALTH_OK;
  if (worst && worst_ms >= j->o.stale_ms) {
    st = KEEL_HEALTH_WARNING;
    keel_health_result_message(res, "queue %s: its oldest due job has waited %lld ms", worst,
                               (long long)worst_ms);
  }
  pthread_mutex_unlock(&j->mu);
  json_t *d = json_pack("{s:o}", "queues", qs);
  res->details = d ? json_dumps(d, JSON_COMPACT) : NULL;
  json_decref(d);
  return st;
}

int keel_jobs_health_register(keel_jobs *j, const char *name) {
  if (!j) return KEEL_EINVAL;
  return keel_health_register(name ? name : "jobs", check, j, false, 0);
}
