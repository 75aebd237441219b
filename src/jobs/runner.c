/* runner.c - a queue's runner: the keel process that fetches a queue's due
 * jobs and runs each in a process of its own.
 *
 * The runner traps exits and is linked to every job process it spawns, so
 * it hears of each one's end however it ends, and a crash of the runner
 * (or of the jobs' supervisor above it) takes its job processes with it.
 * It keeps a slot per running job (the fetched row, the timeout timer, why
 * it killed the process if it did). A job process records its own outcome
 * (outcome.c) and exits normally; any other exit is a failed attempt that
 * the runner records with the exit's reason ("timeout" when the runner
 * killed it at its worker's timeout). A process killed for a cancel records
 * nothing (the row is already cancelled), one cut off by shutdown is
 * returned to available without spending its attempt.
 *
 * Fetching: one statement claims up to the free slots' worth of due jobs,
 * marking them running for this instance with their attempt counted
 * (PostgreSQL: FOR UPDATE SKIP LOCKED in the subquery, so instances sharing
 * the queue skip each other's claimed rows instead of waiting or doubling;
 * SQLite: the store's one writer serialises the claims). The runner fetches
 * when told (an enqueue on this instance, an operator), when its poll_ms
 * passes, and after a job ends if its last fetch filled every slot (more may
 * be waiting). A rate limit caps starts per one-second window. After its
 * first fetch a runner says so (keel__jobs_fetched): keel_jobs_start
 * returns once every queue's runner has.
 *
 * Shutdown (JOBS_TAG_STOP): no more fetching; when the budget runs out, the
 * processes still running are killed and their jobs returned; the runner
 * exits normally once none runs, or KILL_GRACE_MS after the kill, leaving
 * the processes that did not die of it (they hold their exits) and their
 * rows running for the rescuers (jobs->abandoned).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "jobs/jobs_internal.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/timer.h"

enum { WHY_NONE = 0, WHY_TIMEOUT, WHY_CANCEL, WHY_SHUTDOWN };
enum { DEFAULT_TIMEOUT_MS = 60000, KILL_GRACE_MS = 1000 };

typedef struct slot {
  keel_pid_t pid; /* 0: free */
  jobs_row row;
  keel_ref_t tref;
  int why;
} slot;

typedef struct runner {
  jobs_queue *q;
  keel_jobs *j;
  slot *slots;
  int nslots, running;
  bool stopping, last_full, want;
  double window_start; /* the rate limit's current second (monotonic s) */
  int window_starts;
} runner;

/* ---- the job process ---------------------------------------------------------------------- */

typedef struct job_arg {
  keel_jobs *j;
  const keel_job_worker *w;
  jobs_row row;
  json_t *args, *tags;
} job_arg;

/* The job process's exit hook: it runs once the process is really gone
 * (after its runner heard of the exit), so it also drops the process's
 * reference to the jobs. */
static void job_arg_free(void *p) {
  job_arg *a = p;
  keel_jobs *j = a->j;
  keel__jobs_row_free(&a->row);
  json_decref(a->args);
  json_decref(a->tags);
  free(a);
  keel__jobs_unref(j);
}

int keel_job_snooze(keel_job *job, int64_t ms) {
  job->snooze_ms_ = ms < 0 ? 0 : ms;
  return KEEL_JOB_SNOOZE;
}

int keel_job_error(keel_job *job, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(job->error_, sizeof job->error_, fmt, ap);
  va_end(ap);
  return code;
}

static void observe_duration(keel_jobs *j, const jobs_row *r, double s) {
  keel_histogram *h;
  if (j->f_duration &&
      keel_histogram_get(j->f_duration, (const char *[]){r->queue, r->worker}, &h) == 0)
    keel_histogram_observe(h, s);
}

static void job_main(void *arg) {
  job_arg *a = arg;
  keel_jobs *j = a->j;
  a->args = json_loads(a->row.args, JSON_DECODE_ANY, NULL);
  a->tags = json_loads(a->row.tags, 0, NULL);
  if (!a->args) keel_exitf("job %lld: its args do not parse", (long long)a->row.id);
  keel_job job = {.id = a->row.id,
                  .queue = a->row.queue,
                  .worker = a->row.worker,
                  .args = a->args,
                  .tags = a->tags,
                  .attempt = a->row.attempt,
                  .max_attempts = a->row.max_attempts,
                  .inserted_at_ms = a->row.inserted_at,
                  .scheduled_at_ms = a->row.run_at,
                  .jobs = j};
  keel_span sp; /* current while the worker runs: its spans and log lines join the trace */
  keel__jobs_span_perform(&sp, &a->row);
  double t0 = keel__es_now_s();
  int rc = a->w->perform(&job, a->w->ud);
  observe_duration(j, &a->row, keel__es_now_s() - t0);
  jobs_outcome what = JOBS_DONE;
  int64_t delay = 0;
  const char *err = NULL;
  if (rc == KEEL_JOB_SNOOZE) {
    what = JOBS_SNOOZED;
    delay = job.snooze_ms_;
  } else if (rc == KEEL_JOB_CANCEL) {
    what = JOBS_CANCELLED;
  } else if (rc != 0) {
    what = JOBS_FAILED;
    err = job.error_[0] ? job.error_ : rc < 0 ? keel_err_name(rc) : "bad answer";
    delay = a->w->backoff ? a->w->backoff(&job, a->w->ud) : keel__jobs_backoff(j, job.attempt);
  }
  keel__jobs_span_performed(&sp, rc, err);
  rc = keel__jobs_record(j, &a->row, what, err, delay, j->instance);
  if (rc) keel_exitf("recording the outcome failed: %s", keel_err_name(rc));
  keel_exit(KEEL_REASON_NORMAL, JOBS_RECORDED); /* settle tells it from a worker's own exit */
}

/* ---- slots -------------------------------------------------------------------------------- */

static const keel_job_worker *find_worker(keel_jobs *j, const char *name) {
  for (size_t i = 0; i < j->o.nworkers; i++)
    if (strcmp(j->o.workers[i].name, name) == 0) return &j->o.workers[i];
  return NULL;
}

static slot *slot_of(runner *rn, keel_pid_t pid) {
  for (int i = 0; i < rn->nslots; i++)
    if (rn->slots[i].pid && rn->slots[i].pid == pid) return &rn->slots[i];
  return NULL;
}

static slot *take_slot(runner *rn) {
  for (int i = 0; i < rn->nslots; i++)
    if (!rn->slots[i].pid) return &rn->slots[i];
  return NULL;
}

/* Records a failed attempt the job's process could not record itself (a
 * crash, a timeout, an unknown worker), with the worker's backoff if it has
 * one. */
static void fail_now(runner *rn, jobs_row *r, const char *error) {
  const keel_job_worker *w = find_worker(rn->j, r->worker);
  int64_t delay;
  if (w && w->backoff) {
    keel_job job = {.id = r->id,
                    .queue = r->queue,
                    .worker = r->worker,
                    .attempt = r->attempt,
                    .max_attempts = r->max_attempts,
                    .inserted_at_ms = r->inserted_at,
                    .scheduled_at_ms = r->run_at,
                    .jobs = rn->j};
    delay = w->backoff(&job, w->ud);
  } else {
    delay = keel__jobs_backoff(rn->j, r->attempt);
  }
  int rc = keel__jobs_record(rn->j, r, JOBS_FAILED, error, delay, rn->j->instance);
  if (rc)
    keel_log_error(NULL, "jobs: recording a failed attempt failed", KEEL_INT("job", r->id),
                   KEEL_STR("error", keel_err_name(rc)));
}

/* Starts the job of row r (moved into the slot on success). */
static void start(runner *rn, jobs_row *r) {
  const keel_job_worker *w = find_worker(rn->j, r->worker);
  slot *s = take_slot(rn);
  job_arg *a = calloc(1, sizeof *a);
  jobs_row copy = {0};
  bool ok = w && s && a;
  if (ok) {
    copy = *r;
    copy.queue = strdup(r->queue);
    copy.worker = strdup(r->worker);
    copy.args = strdup(r->args);
    copy.errors = strdup(r->errors);
    copy.tags = strdup(r->tags);
    copy.traceparent = r->traceparent ? strdup(r->traceparent) : NULL;
    ok = copy.queue && copy.worker && copy.args && copy.errors && copy.tags &&
         (copy.traceparent || !r->traceparent);
  }
  keel_pid_t pid = 0;
  if (ok) {
    a->j = rn->j;
    a->w = w;
    a->row = copy;
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.link = true;
    so.name = r->worker;
    so.on_exit = job_arg_free;
    so.on_exit_arg = a;
    atomic_fetch_add(&rn->j->refs, 1); /* the process's, dropped by job_arg_free */
    ok = keel_spawn(job_main, a, &so, &pid) == 0;
    if (!ok) {
      keel__jobs_row_free(&a->row);
      atomic_fetch_sub(&rn->j->refs, 1); /* never below 1: the owner's is held */
    }
  } else {
    keel__jobs_row_free(&copy);
  }
  if (!ok) {
    free(a); /* its row was freed above; no process runs with it */
    fail_now(rn, r, w ? "the job's process could not be started" : "unknown worker");
    keel__jobs_row_free(r);
    return;
  }
  s->pid = pid;
  s->row = *r;
  memset(r, 0, sizeof *r);
  s->why = WHY_NONE;
  s->tref = 0;
  int64_t t = keel_timeout_or(w->timeout_ms, DEFAULT_TIMEOUT_MS);
  if (t != KEEL_INFINITY) {
    keel_msg_t *m = keel_msg_copy(JOBS_TAG_TIMEOUT, &pid, sizeof pid);
    if (m) keel_send_after(keel_self(), t, m, &s->tref);
  }
  rn->running++;
}

/* A job process ended. */
static void settle(runner *rn, slot *s, const keel_reason *why) {
  if (s->tref) keel_cancel_timer(s->tref);
  if (why->kind == KEEL_REASON_NORMAL && (!why->text || strcmp(why->text, JOBS_RECORDED) != 0)) {
    /* the worker ended its process itself (keel_exit): no outcome was
     * recorded, and the row would stay running for as long as this
     * instance lives. A failed attempt (fenced: nothing if one was) */
    fail_now(rn, &s->row, "exited without recording an outcome");
  } else if (why->kind != KEEL_REASON_NORMAL) {
    if (s->why == WHY_SHUTDOWN) {
      keel__jobs_record(rn->j, &s->row, JOBS_RETURNED, NULL, 0, rn->j->instance);
    } else if (s->why != WHY_CANCEL) {
      char err[256];
      if (s->why == WHY_TIMEOUT)
        snprintf(err, sizeof err, "timeout");
      else
        snprintf(err, sizeof err, "crashed: %s%s%s", keel_reason_name(why->kind),
                 why->text ? ": " : "", why->text ? why->text : "");
      fail_now(rn, &s->row, err);
    }
  }
  keel__jobs_row_free(&s->row);
  s->pid = 0;
  rn->running--;
  /* more may wait: fetch again once a quarter of the slots are free (one
   * claim per few jobs rather than per job; idle slots only while others
   * still run) */
  int batch = rn->nslots / 4 > 1 ? rn->nslots / 4 : 1;
  if (rn->last_full && rn->nslots - rn->running >= batch) rn->want = true;
}

static void kill_slot(slot *s, int why, const char *text) {
  if (!s || !s->pid || s->why) return;
  s->why = why;
  keel_exit_signal(s->pid, KEEL_REASON_KILL, text);
}

/* ---- fetching ----------------------------------------------------------------------------- */

typedef struct fetch {
  runner *rn;
  int n;
  jobs_row *rows;
  size_t nrows;
} fetch;

/* The claim: $1 the jobs' clock, $2 this instance, $3 the queue, $4 how
 * many, $5 the database's clock (keel__jobs_db_now), then for each worker
 * registered here its name and its attempt's allowance (timeout plus
 * rescue_after_ms; NULL without a timeout). Only jobs of those workers are
 * claimed: during a rolling deploy an old instance leaves a new worker's
 * jobs to the instances that have it, instead of spending their attempts as
 * "unknown worker". Each claimed row gets deadline_at, past which any
 * janitor takes the attempt back (janitor.c). Built once per keel_jobs: the
 * text is constant, so a statement cache keeps one plan. */
char *keel__jobs_fetch_sql(const keel_jobs *j) {
  size_t nw = j->o.nworkers, cap = 1024 + nw * 96;
  char *sql = malloc(cap);
  if (!sql) return NULL;
  size_t at = (size_t)snprintf(sql, cap,
                               "UPDATE keel_jobs SET state = 'running', attempt = attempt + 1, "
                               "attempted_at = CAST($1 AS BIGINT), instance = $2, deadline_at = "
                               "CASE worker");
  for (size_t i = 0; i < nw; i++)
    at += (size_t)snprintf(sql + at, cap - at,
                           " WHEN $%zu THEN CAST($5 AS BIGINT) + CAST($%zu AS BIGINT)", 6 + 2 * i,
                           7 + 2 * i);
  at += (size_t)snprintf(sql + at, cap - at,
                         " ELSE NULL END WHERE id IN (SELECT id FROM keel_jobs WHERE state = "
                         "'available' AND queue = $3 AND run_at <= CAST($1 AS BIGINT) AND worker "
                         "IN (");
  for (size_t i = 0; i < nw; i++)
    at += (size_t)snprintf(sql + at, cap - at, "%s$%zu", i ? ", " : "", 6 + 2 * i);
  snprintf(sql + at, cap - at,
           ") AND NOT EXISTS (SELECT 1 FROM keel_jobs_queues WHERE queue = $3 AND paused = 1) "
           "ORDER BY priority, run_at, id LIMIT CAST($4 AS INTEGER)%s) RETURNING " JOBS_ROW_COLS,
           keel__jobs_pg(j) ? " FOR UPDATE SKIP LOCKED" : "");
  return sql;
}

/* The claim: one statement, lazy (no fsync of its own: a claim lost with
 * the machine only lets the job run again, docs/decisions/0036), one round
 * trip on PostgreSQL. */
static int claim(fetch *f) {
  keel_jobs *j = f->rn->j;
  size_t nw = j->o.nworkers, np = 5 + 2 * nw;
  const char **p = calloc(np, sizeof *p);
  char(*allow)[24] = calloc(nw, sizeof *allow);
  if (!p || !allow) {
    free(p);
    free(allow);
    return KEEL_ENOMEM;
  }
  char now[24], n[24], dbnow[24];
  keel__jobs_i64(now, keel__jobs_now(j));
  keel__jobs_i64(n, f->n);
  keel__jobs_i64(dbnow, keel__jobs_db_now(j));
  p[0] = now, p[1] = j->instance, p[2] = f->rn->q->q.name, p[3] = n, p[4] = dbnow;
  for (size_t i = 0; i < nw; i++) {
    int64_t t = keel_timeout_or(j->o.workers[i].timeout_ms, DEFAULT_TIMEOUT_MS);
    keel__jobs_i64(allow[i], t + j->o.rescue_after_ms);
    p[5 + 2 * i] = j->o.workers[i].name;
    p[6 + 2 * i] = t == KEEL_INFINITY ? NULL : allow[i];
  }
  keel_es_rows rows = {0};
  int rc = keel__es_exec_lazy(j->es, j->fetch_sql, p, np, &rows);
  free(p);
  free(allow);
  free(f->rows);
  f->rows = NULL;
  f->nrows = 0;
  if (rc == 0) rc = keel__jobs_rows(&rows, &f->rows, &f->nrows);
  keel_es_rows_free(&rows);
  return rc;
}

static int by_priority(const void *a, const void *b) {
  const jobs_row *x = a, *y = b;
  if (x->priority != y->priority) return x->priority < y->priority ? -1 : 1;
  if (x->run_at != y->run_at) return x->run_at < y->run_at ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* How many starts the rate limit allows now (INT32_MAX: no limit). */
static int allowed(runner *rn) {
  double rate = rn->q->q.rate_per_s;
  if (rate <= 0) return rn->nslots;
  double now = keel__es_now_s();
  if (now - rn->window_start >= 1.0) {
    rn->window_start = now;
    rn->window_starts = 0;
  }
  int cap = rate < 1 ? 1 : (int)rate;
  return cap - rn->window_starts;
}

static void fetch_and_start(runner *rn) {
  if (!rn->j->o.nworkers) return; /* no worker here: nothing it could run */
  int n = rn->nslots - rn->running;
  int a = allowed(rn);
  if (a < n) n = a;
  if (n <= 0) return;
  fetch f = {.rn = rn, .n = n};
  int rc = claim(&f);
  if (rc) {
    keel_log_warn(NULL, "jobs: fetching failed", KEEL_STR("queue", rn->q->q.name),
                  KEEL_STR("error", keel_err_name(rc)));
    free(f.rows);
    return;
  }
  if (f.nrows) qsort(f.rows, f.nrows, sizeof *f.rows, by_priority);
  for (size_t i = 0; i < f.nrows; i++)
    start(rn, &f.rows[i]);
  free(f.rows);
  rn->window_starts += (int)f.nrows;
  rn->last_full = (int)f.nrows == n;
  rn->want = rn->last_full && rn->running < rn->nslots; /* the rate limit held it back */
}

/* Jobs this instance left running on this queue (the runner crashed and was
 * restarted): their processes died with it. */
static void recover_own(runner *rn) {
  keel_es_rows rows = {0};
  int rc = keel_es_query(rn->j->es,
                         "SELECT " JOBS_ROW_COLS " FROM keel_jobs WHERE state = 'running' AND "
                         "instance = $1 AND queue = $2",
                         (const char *[]){rn->j->instance, rn->q->q.name}, 2, &rows);
  jobs_row *v = NULL;
  size_t n = 0;
  if (rc == 0) rc = keel__jobs_rows(&rows, &v, &n);
  keel_es_rows_free(&rows);
  for (size_t i = 0; i < n; i++) {
    fail_now(rn, &v[i], "runner restarted");
    keel__jobs_row_free(&v[i]);
  }
  free(v);
}

/* ---- the loop ----------------------------------------------------------------------------- */

/* The runner's exit, however it exits (a kill too): it forgets itself and
 * frees its slots. */
static void runner_exit(void *arg) {
  runner *rn = arg;
  atomic_store(&rn->q->runner, 0);
  for (int i = 0; i < rn->nslots; i++)
    keel__jobs_row_free(&rn->slots[i].row);
  free(rn->slots);
  free(rn);
}

/* Shutdown's end: kill what still runs (its jobs are returned as the
 * exits come in). A process that holds its exits (or is stuck in C) does
 * not die of the kill: after a grace the runner leaves it (JOBS_TAG_ABANDON). */
static void cut_off(runner *rn, const char *text) {
  for (int i = 0; i < rn->nslots; i++)
    kill_slot(&rn->slots[i], WHY_SHUTDOWN, text);
  keel_msg_t *g = rn->running ? keel_msg_new(JOBS_TAG_ABANDON, 0) : NULL;
  if (g) keel_send_after(keel_self(), KILL_GRACE_MS, g, NULL);
}

/* One message: true to go on, false when the runner is done. */
static bool handle(runner *rn, keel_msg_t *m) {
  keel_pid_t pid;
  keel_reason why;
  switch (keel_msg_kind_of(m)) {
  case KEEL_MSG_EXIT:
    keel_msg_exit_info(m, &pid, &why);
    slot *s = slot_of(rn, pid);
    if (s) {
      settle(rn, s, &why);
    } else {
      /* the supervisor (or a linked caller) ends us: cut the jobs off */
      rn->stopping = true;
      cut_off(rn, "shutdown");
    }
    break;
  case KEEL_MSG_USER:
    switch (keel_msg_tag(m)) {
    case JOBS_TAG_KICK: rn->want = true; break;
    case JOBS_TAG_TIMEOUT:
      if (keel_msg_size(m) == sizeof pid) {
        memcpy(&pid, keel_msg_data(m), sizeof pid);
        kill_slot(slot_of(rn, pid), WHY_TIMEOUT, "timeout");
      }
      break;
    case JOBS_TAG_CANCEL:
      if (keel_msg_size(m) == sizeof(jobs_cancel_msg)) {
        jobs_cancel_msg cm;
        memcpy(&cm, keel_msg_data(m), sizeof cm);
        /* the attempt the cancel stopped, not a later one of the same job */
        for (int i = 0; i < rn->nslots; i++)
          if (rn->slots[i].pid && rn->slots[i].row.id == cm.id &&
              rn->slots[i].row.attempt == cm.attempt)
            kill_slot(&rn->slots[i], WHY_CANCEL, "cancelled");
      }
      break;
    case JOBS_TAG_STOP:
      if (!rn->stopping && keel_msg_size(m) == sizeof(jobs_stop_msg)) {
        jobs_stop_msg sm;
        memcpy(&sm, keel_msg_data(m), sizeof sm);
        rn->stopping = true;
        keel_msg_t *c = keel_msg_new(JOBS_TAG_CUTOFF, 0);
        if (c) keel_send_after(keel_self(), sm.budget_ms > 0 ? sm.budget_ms : 1, c, NULL);
      }
      break;
    case JOBS_TAG_CUTOFF: cut_off(rn, "shutdown: the budget ran out"); break;
    case JOBS_TAG_ABANDON:
      if (rn->running) {
        /* their rows stay running under this instance's name, and stop
         * keeps the heartbeat row: once it is old, a rescuer takes them
         * (PostgreSQL), or the next runner of the file once they are gone
         * (SQLite: the lock is kept until then). Returning them now would
         * let another instance start them while these still run. */
        atomic_fetch_add(&rn->j->abandoned, rn->running);
        keel_log_error(NULL, "jobs: job processes did not die of the shutdown's kill; left running",
                       KEEL_STR("queue", rn->q->q.name), KEEL_INT("jobs", rn->running));
        keel_msg_free(m);
        return false;
      }
      break;
    }
    break;
  default: break;
  }
  keel_msg_free(m);
  return !(rn->stopping && rn->running == 0);
}

void keel__jobs_runner(void *arg) {
  jobs_queue *q = arg;
  runner *rn = calloc(1, sizeof *rn);
  if (rn) rn->slots = calloc((size_t)q->q.concurrency, sizeof *rn->slots);
  if (!rn || !rn->slots) {
    free(rn);
    keel_exit(KEEL_REASON_ERROR, "jobs runner: no memory");
  }
  rn->q = q;
  rn->j = q->jobs;
  rn->nslots = q->q.concurrency;
  rn->want = true;
  keel_trap_exit(true);
  if (keel_on_exit(runner_exit, rn) != 0) {
    runner_exit(rn);
    keel_exit(KEEL_REASON_ERROR, "jobs runner: no memory");
  }
  atomic_store(&q->runner, keel_self());
  /* A kill (the test's, or a supervisor's brutal one) takes effect only
   * while the runner waits for messages: dying inside a database call would
   * leave its result behind. The calls are bounded by the store's timeouts. */
  keel_hold_exits(true);
  recover_own(rn);
  rn->window_start = keel__es_now_s();
  for (bool first = true;; first = false) {
    if (!rn->stopping && rn->want && rn->running < rn->nslots) {
      rn->want = rn->last_full && rn->running < rn->nslots; /* the rate limit held it back */
      fetch_and_start(rn);
    }
    if (first) keel__jobs_fetched(rn->q); /* keel_jobs_start returns */
    int64_t wait = rn->j->o.poll_ms;
    if (rn->want && !rn->stopping && rn->running < rn->nslots)
      wait = rn->q->q.rate_per_s > 0 ? 1000 / (int64_t)(rn->q->q.rate_per_s + 1) + 1 : 0;
    keel_msg_t *m = NULL;
    keel_hold_exits(false);
    int rc = keel_receive(&m, wait == 0 ? KEEL_NOWAIT : wait);
    keel_hold_exits(true);
    if (rc == KEEL_ETIMEDOUT) {
      rn->want = true;
      continue;
    }
    if (rc || !handle(rn, m)) return;
  }
}
