/* outcome.c - recording what an attempt came to.
 *
 * Every outcome is one UPDATE of the job's row, fenced: it applies only
 * while the row is still running this very attempt on this very instance
 * (state, attempt, instance in the WHERE). Whatever changed the row since
 * (an operator's cancel, a rescue by another instance that found this one
 * lost, the retry that followed it) wins, and the late outcome changes
 * nothing: so a job's completion is recorded once, by its current attempt.
 *
 * A failure appends {attempt, at, error} to the job's error history (a JSON
 * array kept in the row, also when the job is discarded) and either
 * schedules the next attempt after the backoff or, with every attempt
 * spent, discards the job. The default backoff is exponential with full
 * jitter (a random delay in [0, min(max, base * 2^(attempt-1))], AWS's
 * "full jitter": retries of many jobs that failed together spread out).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "jobs/jobs_internal.h"
#include "keel/error.h"
#include "keel/message.h"
#include "keel/process.h"

int64_t keel__jobs_backoff(keel_jobs *j, int attempt) {
  int64_t cap = j->o.backoff_ms;
  for (int i = 1; i < attempt && cap < j->o.backoff_max_ms; i++)
    cap *= 2;
  if (cap > j->o.backoff_max_ms) cap = j->o.backoff_max_ms;
  return (int64_t)(keel__jobs_random(j) % (uint64_t)(cap + 1));
}

/* The error history with one more entry, as text (malloc'd; NULL: ENOMEM). */
static char *errors_plus(const char *history, int attempt, int64_t at, const char *error) {
  json_t *a = json_loads(history ? history : "[]", 0, NULL);
  if (!json_is_array(a)) {
    json_decref(a);
    a = json_array();
  }
  json_array_append_new(a, json_pack("{s:i,s:I,s:s}", "attempt", attempt, "at", (json_int_t)at,
                                     "error", error ? error : "error"));
  char *s = json_dumps(a, JSON_COMPACT);
  json_decref(a);
  return s;
}

typedef struct rec {
  keel_jobs *j;
  const jobs_row *r;
  jobs_outcome what;
  const char *error, *instance;
  int64_t delay_ms;
  bool discarded;
  int64_t changed;
} rec;

static int record_in(keel_es_tx *tx, rec *c) {
  const jobs_row *r = c->r;
  int64_t now = keel__jobs_now(c->j);
  char id[24], att[24], t[24], at[24];
  keel__jobs_i64(id, r->id);
  keel__jobs_i64(att, r->attempt);
  keel__jobs_i64(t, now);
  const char *fence = " WHERE id = CAST($1 AS BIGINT) AND state = 'running' AND "
                      "attempt = CAST($2 AS INTEGER) AND instance = $3";
  char sql[512];
  char *errs = NULL;
  const char *p[6] = {id, att, c->instance, t, NULL, NULL};
  size_t np = 4;
  c->discarded = false;
  switch (c->what) {
  case JOBS_DONE:
    snprintf(sql, sizeof sql,
             "UPDATE keel_jobs SET state = 'completed', finished_at = "
             "CAST($4 AS BIGINT)%s",
             fence);
    break;
  case JOBS_CANCELLED:
    snprintf(sql, sizeof sql,
             "UPDATE keel_jobs SET state = 'cancelled', finished_at = "
             "CAST($4 AS BIGINT)%s",
             fence);
    break;
  case JOBS_SNOOZED:
  case JOBS_RETURNED:
    keel__jobs_i64(at, now + (c->what == JOBS_SNOOZED ? c->delay_ms : 0));
    p[3] = at;
    snprintf(sql, sizeof sql,
             "UPDATE keel_jobs SET state = 'available', attempt = attempt - 1, "
             "run_at = CAST($4 AS BIGINT), instance = NULL%s",
             fence);
    break;
  case JOBS_FAILED:
    errs = errors_plus(r->errors, r->attempt, now, c->error);
    if (!errs) return KEEL_ENOMEM;
    p[4] = errs;
    np = 5;
    c->discarded = r->attempt >= r->max_attempts;
    if (c->discarded) {
      snprintf(sql, sizeof sql,
               "UPDATE keel_jobs SET state = 'discarded', finished_at = "
               "CAST($4 AS BIGINT), errors = $5%s",
               fence);
    } else {
      keel__jobs_i64(at, now + (c->delay_ms > 0 ? c->delay_ms : 0));
      p[3] = at;
      snprintf(sql, sizeof sql,
               "UPDATE keel_jobs SET state = 'available', run_at = "
               "CAST($4 AS BIGINT), errors = $5, instance = NULL%s",
               fence);
    }
    break;
  }
  keel_es_rows rows = {0};
  int rc = keel_es_tx_exec(tx, sql, p, np, &rows);
  c->changed = rc == 0 ? rows.changed : 0;
  keel_es_rows_free(&rows);
  free(errs);
  return rc;
}

static int record_fn(keel_es_tx *tx, void *arg) {
  return record_in(tx, arg);
}

static void count(rec *c) {
  if (c->changed != 1) return;
  keel_jobs *j = c->j;
  const char *q = c->r->queue, *w = c->r->worker;
  switch (c->what) {
  case JOBS_DONE: keel__jobs_count(j, j->f_completed, q, w); break;
  case JOBS_CANCELLED: keel__jobs_count(j, j->f_cancelled, q, w); break;
  case JOBS_SNOOZED: keel__jobs_count(j, j->f_snoozed, q, w); break;
  case JOBS_RETURNED: break;
  case JOBS_FAILED:
    keel__jobs_count(j, j->f_failed, q, w);
    if (c->discarded) keel__jobs_count(j, j->f_discarded, q, w);
    break;
  }
}

/* ---- completions, batched ------------------------------------------------------------ */

/* Completions are most outcomes, and each was a transaction of its own: on
 * SQLite a request to the writer with its savepoint, on PostgreSQL a
 * transaction and a commit per job. They are recorded in batches by flat
 * combining (combine.c): the completions that finish while one batch is
 * recorded make the next, one statement; a lone completion waits for
 * nothing. */

/* The batch's completions in one statement (one round trip on
 * PostgreSQL, where a statement per completion cost one each): $1 the time,
 * $2 a JSON array of [id, attempt, instance], one per completion. Each row
 * is fenced as record_in's UPDATE is, and RETURNING says which rows
 * changed: the others were cancelled, rescued or retried meanwhile. */
static const char *const done_sql_pg =
    "UPDATE keel_jobs SET state = 'completed', finished_at = CAST($1 AS BIGINT) FROM (SELECT "
    "CAST(x->>0 AS BIGINT) AS id, CAST(x->>1 AS INTEGER) AS attempt, x->>2 AS instance FROM "
    "json_array_elements(CAST($2 AS json)) AS x) AS v WHERE keel_jobs.id = v.id AND "
    "keel_jobs.state = 'running' AND keel_jobs.attempt = v.attempt AND keel_jobs.instance = "
    "v.instance RETURNING keel_jobs.id";
static const char *const done_sql_sqlite =
    "UPDATE keel_jobs SET state = 'completed', finished_at = CAST($1 AS BIGINT) FROM (SELECT "
    "json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS attempt, "
    "json_extract(value, '$[2]') AS instance FROM json_each($2)) AS v WHERE keel_jobs.id = v.id "
    "AND keel_jobs.state = 'running' AND keel_jobs.attempt = v.attempt AND keel_jobs.instance = "
    "v.instance RETURNING keel_jobs.id";

/* Records the batch (each rec's changed set), in a lazy transaction: a
 * completion lost with the machine only lets the job run again
 * (docs/decisions/0036). */
static int record_batch(keel_jobs *j, void **items, size_t n) {
  json_t *a = json_array();
  for (size_t i = 0; a && i < n; i++) {
    const rec *c = items[i];
    if (json_array_append_new(
            a, json_pack("[I,i,s]", (json_int_t)c->r->id, c->r->attempt, c->instance)) != 0) {
      json_decref(a);
      a = NULL;
    }
  }
  char *list = a ? json_dumps(a, JSON_COMPACT) : NULL;
  json_decref(a);
  if (!list) return KEEL_ENOMEM;
  char now[24];
  keel__jobs_i64(now, keel__jobs_now(j));
  keel_es_rows rows = {0};
  int rc = keel__es_exec_lazy(j->es, keel__jobs_pg(j) ? done_sql_pg : done_sql_sqlite,
                              (const char *[]){now, list}, 2, &rows);
  free(list);
  for (size_t i = 0; i < n; i++) {
    rec *c = items[i];
    c->discarded = false;
    c->changed = 0;
    for (size_t k = 0; rc == 0 && k < rows.nrows && !c->changed; k++)
      c->changed = keel__jobs_atoi(keel_es_rows_get(&rows, k, 0)) == c->r->id;
  }
  keel_es_rows_free(&rows);
  return rc;
}

int keel__jobs_record(keel_jobs *j, const jobs_row *r, jobs_outcome what, const char *error,
                      int64_t delay_ms, const char *instance) {
  rec c = {
      .j = j, .r = r, .what = what, .error = error, .instance = instance, .delay_ms = delay_ms};
  int rc = what == JOBS_DONE ? keel__jobs_combine(&j->done, j, record_batch, &c)
                             : keel__es_transact_internal(j->es, record_fn, &c);
  if (rc == 0) count(&c);
  return rc;
}

int keel__jobs_record_tx(keel_es_tx *tx, keel_jobs *j, const jobs_row *r, jobs_outcome what,
                         const char *error, int64_t delay_ms, const char *instance) {
  rec c = {
      .j = j, .r = r, .what = what, .error = error, .instance = instance, .delay_ms = delay_ms};
  int rc = record_in(tx, &c);
  /* counted now: the janitor's transaction commits or its next round
   * rescues the same job again (an overcount only on a failed commit) */
  if (rc == 0) count(&c);
  return rc;
}
