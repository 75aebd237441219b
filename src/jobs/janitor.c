/* janitor.c - the instance's housekeeping, one round every heartbeat_ms:
 *
 *   heartbeat  this instance's row in keel_jobs_instances says it lives;
 *   rescue     a running job whose instance has not beaten for
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
 *              the health check's figures).
 * The rounds run in the janitor process (under the jobs' supervisor) and,
 * on demand, in keel_jobs_maintain's caller; every step is one statement or
 * one transaction, so two rounds at once (two instances) are harmless.
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
  int64_t cutoff; /* heartbeats older than this are lost */
  int rescued;
} rescue;

static int rescue_fn(keel_es_tx *tx, void *arg) {
  rescue *r = arg;
  keel_jobs *j = r->j;
  r->rescued = 0;
  char cut[24];
  keel__jobs_i64(cut, r->cutoff);
  int rc = keel_es_tx_lock(tx, "keel_jobs rescue");
  keel_es_rows rows = {0};
  if (rc == 0)
    rc = keel_es_tx_exec(tx,
                         "SELECT " JOBS_ROW_COLS ", instance FROM keel_jobs WHERE state = "
                         "'running' AND instance <> $1 AND instance NOT IN (SELECT instance FROM "
                         "keel_jobs_instances WHERE heartbeat_at >= CAST($2 AS BIGINT)) "
                         "ORDER BY id LIMIT 1000",
                         (const char *[]){j->instance, cut}, 2, &rows);
  jobs_row *v = NULL;
  size_t n = 0;
  if (rc == 0) rc = keel__jobs_rows(&rows, &v, &n);
  for (size_t i = 0; i < n && rc == 0; i++) {
    const char *inst = keel_es_rows_get(&rows, i, 11);
    rc = keel__jobs_record_tx(tx, j, &v[i], JOBS_FAILED, "instance lost",
                              keel__jobs_backoff(j, v[i].attempt), inst ? inst : "");
    r->rescued++;
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

static int heartbeat(keel_jobs *j, int64_t at) {
  char now[24];
  keel__jobs_i64(now, at);
  return exec1(j,
               "INSERT INTO keel_jobs_instances (instance, heartbeat_at, started_at) VALUES ($1, "
               "CAST($2 AS BIGINT), CAST($2 AS BIGINT)) ON CONFLICT (instance) DO UPDATE SET "
               "heartbeat_at = excluded.heartbeat_at",
               (const char *[]){j->instance, now}, 2);
}

static int prune(keel_jobs *j, int64_t now) {
  if (j->o.retention_ms == KEEL_INFINITY) return 0;
  char t[24], n[24];
  keel__jobs_i64(t, now - j->o.retention_ms);
  keel__jobs_i64(n, now);
  /* a finished job whose unique key still holds (unique_period longer than
   * the retention) stays until its period ends: deleting it would let a
   * duplicate in early */
  return exec1(j,
               "DELETE FROM keel_jobs WHERE state IN ('completed', 'discarded', 'cancelled') AND "
               "finished_at < CAST($1 AS BIGINT) AND (unique_until IS NULL OR unique_until < "
               "CAST($2 AS BIGINT))",
               (const char *[]){t, n}, 2);
}

static void set_gauge(keel_metric_family *f, const char *queue, double v) {
  keel_gauge *g;
  if (f && keel_gauge_get(f, (const char *[]){queue}, &g) == 0) keel_gauge_set(g, v);
}

static int gauges(keel_jobs *j, int64_t now) {
  char t[24];
  keel__jobs_i64(t, now);
  keel_es_rows rows = {0};
  int rc = keel_es_query(j->es,
                         "SELECT queue, COUNT(*), MIN(run_at) FROM keel_jobs WHERE state = "
                         "'available' AND run_at <= CAST($1 AS BIGINT) GROUP BY queue",
                         (const char *[]){t}, 1, &rows);
  if (rc) return rc;
  pthread_mutex_lock(&j->mu);
  for (size_t i = 0; i < j->o.nqueues; i++)
    j->queues[i].depth = 0, j->queues[i].oldest_ms = 0;
  for (size_t r = 0; r < rows.nrows; r++) {
    const char *q = keel_es_rows_get(&rows, r, 0);
    int64_t depth = keel__jobs_atoi(keel_es_rows_get(&rows, r, 1));
    int64_t oldest = now - keel__jobs_atoi(keel_es_rows_get(&rows, r, 2));
    for (size_t i = 0; i < j->o.nqueues; i++)
      if (strcmp(j->queues[i].q.name, q) == 0)
        j->queues[i].depth = depth, j->queues[i].oldest_ms = oldest;
  }
  for (size_t i = 0; i < j->o.nqueues; i++) {
    set_gauge(j->f_depth, j->queues[i].q.name, (double)j->queues[i].depth);
    set_gauge(j->f_oldest, j->queues[i].q.name, (double)j->queues[i].oldest_ms / 1000.0);
  }
  pthread_mutex_unlock(&j->mu);
  keel_es_rows_free(&rows);
  return 0;
}

int keel__jobs_janitor_round(keel_jobs *j) {
  int64_t now = keel__jobs_now(j);
  int rc = heartbeat(j, now);
  /* PostgreSQL: instances silent for rescue_after_ms are lost. SQLite: the
   * holder of the file's runner lock knows every other runner is gone, and
   * nobody else rescues (an instance that only enqueues, or a second one
   * refused the lock, must not take a live runner's jobs) */
  rescue r = {.j = j, .cutoff = keel__jobs_pg(j) ? now - j->o.rescue_after_ms : INT64_MAX};
  bool may_rescue = keel__jobs_pg(j) || j->lock_fd >= 0;
  if (rc == 0 && may_rescue) rc = keel__es_transact_internal(j->es, rescue_fn, &r);
  if (rc == 0 && r.rescued)
    keel_log_warn(NULL, "jobs: rescued the jobs of lost instances", KEEL_INT("jobs", r.rescued));
  if (rc == 0) rc = keel__jobs_cron_round(j, now);
  if (rc == 0) rc = prune(j, now);
  if (rc == 0) rc = gauges(j, now);
  if (rc == 0) rc = keel__jobs_panel_round(j, now);
  if (rc == 0 && r.rescued) keel_jobs_notify(j, NULL);
  return rc;
}

static void janitor_gone(void *arg) {
  keel__jobs_unlock(arg); /* the instance died with it, or stops: another may run the file */
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
    int rc = keel__jobs_janitor_round(j);
    keel_hold_exits(false);
    if (rc)
      keel_log_warn(NULL, "jobs: the janitor's round failed", KEEL_STR("error", keel_err_name(rc)));
    /* until the next heartbeat, or the next cron slot if sooner */
    int64_t wait = keel__jobs_cron_wait(j, keel__jobs_now(j));
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
