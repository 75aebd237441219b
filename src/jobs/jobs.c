/* jobs.c - a keel_jobs: starting it (tables, metrics, the supervisor with
 * the janitor and one runner per queue), stopping it in the reference's
 * order, and the operators' calls on single jobs and queues.
 *
 * Stop, in two halves. Drain (keel_jobs_drain, also a keel_service drain
 * phase): every runner is told to stop fetching and given the budget; they
 * run their jobs out at once (the budget is shared, not per queue), kill
 * what is left at its end and return those jobs to available. Stop: once
 * every runner has exited, the supervisor (and with it the janitor) is
 * stopped and the heartbeat row deleted, so other instances see a clean
 * exit; unless a runner left a job process that did not die of the kill,
 * when the heartbeat stays for the rescuers. The keel_jobs is reference
 * counted by its job processes, so such a process never uses freed memory.
 * The store is the caller's and stays open: it closes last.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>

#include "es/es_internal.h"
#include "jobs/jobs_internal.h"
#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/service.h"
#include "keel/supervisor.h"

enum { DEFAULT_CONCURRENCY = 10, DEFAULT_BUDGET_MS = 5000, LIST_DEFAULT = 100, LIST_MAX = 1000 };
/* How long keel_jobs_start waits for its runners' first fetches: past it
 * (a slow database) they go on in the background. */
enum { READY_WAIT_MS = 10000 };

static void on_remote(void *ud, const char *payload);
static void service_drain(void *ud, int64_t budget_ms);

static int64_t or_default(int64_t v, int64_t dflt) {
  return v > 0 || v == KEEL_INFINITY ? v : dflt; /* check_opts allows INFINITY for retention only */
}

static int check_opts(const keel_jobs_opts *o) {
  if (!o || !o->es || (o->nworkers && !o->workers) || (o->nqueues && !o->queues))
    return KEEL_EINVAL;
  if (o->instance && !keel__jobs_name_ok(o->instance)) return KEEL_EINVAL;
  /* durations: 0 is the default; only retention takes KEEL_INFINITY (keep
   * forever). Negative periods divided by zero or rescued live instances;
   * above ten years they overflow the additions to now. */
  const int64_t ten_years = 10LL * 366 * 24 * 3600 * 1000;
  const int64_t d[] = {o->poll_ms,    o->heartbeat_ms,   o->rescue_after_ms,
                       o->backoff_ms, o->backoff_max_ms, o->stale_ms};
  for (size_t i = 0; i < sizeof d / sizeof *d; i++)
    if (d[i] < 0 || d[i] > ten_years) return KEEL_EINVAL;
  if ((o->retention_ms < 0 && o->retention_ms != KEEL_INFINITY) || o->retention_ms > ten_years)
    return KEEL_EINVAL;
  for (size_t i = 0; i < o->nworkers; i++) {
    if (!keel__jobs_name_ok(o->workers[i].name) || !o->workers[i].perform) return KEEL_EINVAL;
    int64_t t = o->workers[i].timeout_ms; /* added to the deadline: bounded */
    if ((t < 0 && t != KEEL_INFINITY) || t > ten_years) return KEEL_EINVAL;
    for (size_t k = 0; k < i; k++)
      if (strcmp(o->workers[i].name, o->workers[k].name) == 0) return KEEL_EINVAL;
  }
  for (size_t i = 0; i < o->nqueues; i++) {
    if (!keel__jobs_name_ok(o->queues[i].name) || o->queues[i].concurrency < 0 ||
        o->queues[i].rate_per_s < 0)
      return KEEL_EINVAL;
    for (size_t k = 0; k < i; k++)
      if (strcmp(o->queues[i].name, o->queues[k].name) == 0) return KEEL_EINVAL;
  }
  return 0;
}

static keel_metric_family *family(keel_metrics *m, int kind, const char *name, const char *help,
                                  size_t nlabels) {
  static const char *const labels[] = {"queue", "worker"};
  keel_metric_family *f = NULL;
  int rc;
  if (kind == 0)
    rc = keel_metrics_counter(m, name, help, labels, nlabels, &f);
  else if (kind == 1)
    rc = keel_metrics_gauge(m, name, help, labels, nlabels, &f);
  else
    rc = keel_metrics_histogram(m, name, help, labels, nlabels, NULL, 0, &f);
  if (rc == KEEL_EEXIST) f = keel_metrics_find(m, name);
  return f;
}

static void metrics(keel_jobs *j) {
  keel_metrics *m = j->o.metrics;
  if (!m) return;
  j->f_enqueued = family(m, 0, "jobs_enqueued_total", "Jobs enqueued.", 2);
  j->f_completed = family(m, 0, "jobs_completed_total", "Jobs completed.", 2);
  j->f_failed = family(m, 0, "jobs_failed_total", "Failed attempts of jobs.", 2);
  j->f_discarded = family(m, 0, "jobs_discarded_total", "Jobs discarded, attempts spent.", 2);
  j->f_snoozed = family(m, 0, "jobs_snoozed_total", "Jobs snoozed by their worker.", 2);
  j->f_cancelled = family(m, 0, "jobs_cancelled_total", "Jobs cancelled by their worker.", 2);
  j->f_duration = family(m, 2, "jobs_duration_seconds", "Time a worker took per attempt.", 2);
  j->f_depth = family(m, 1, "jobs_queue_depth", "Jobs due and waiting, per queue.", 1);
  j->f_oldest =
      family(m, 1, "jobs_queue_oldest_seconds", "Age of the oldest due job, per queue.", 1);
}

static int start_runner(void *arg, const void *args, size_t len, keel_pid_t *pid) {
  (void)args, (void)len;
  jobs_queue *q = arg;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.link = true;
  so.name = "jobs.runner";
  return keel_spawn(keel__jobs_runner, q, &so, pid);
}

static int start_janitor(void *arg, const void *args, size_t len, keel_pid_t *pid) {
  (void)args, (void)len;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.link = true;
  so.name = "jobs.janitor";
  return keel_spawn(keel__jobs_janitor, arg, &so, pid);
}

static int start_tree(keel_jobs *j) {
  size_t n = j->o.nqueues + 1;
  keel_sup_child_spec *c = calloc(n, sizeof *c);
  char(*ids)[80] = calloc(n, sizeof *ids);
  if (!c || !ids) {
    free(c);
    free(ids);
    return KEEL_ENOMEM;
  }
  c[0] = (keel_sup_child_spec){
      .id = "janitor", .start = start_janitor, .arg = j, .restart = KEEL_SUP_TRANSIENT};
  for (size_t i = 0; i < j->o.nqueues; i++) {
    snprintf(ids[i + 1], sizeof ids[i + 1], "queue %s", j->queues[i].q.name);
    c[i + 1] = (keel_sup_child_spec){.id = ids[i + 1],
                                     .start = start_runner,
                                     .arg = &j->queues[i],
                                     .restart = KEEL_SUP_TRANSIENT};
  }
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE,
                        .intensity = 10,
                        .period_ms = 10000,
                        .children = c,
                        .nchildren = n};
  keel_sup_opts so = {0};
  keel_gs_exit why;
  int rc = keel_sup_start(&spec, &so, &j->sup, &why);
  free(c);
  free(ids);
  return rc;
}

int keel__jobs_lock(keel_jobs *j) {
  if (j->lock_fd >= 0 || keel__jobs_pg(j) || j->es->memory || !j->o.nqueues) return 0;
  char path[4096];
  if (snprintf(path, sizeof path, "%s-jobs.lock", j->es->path) >= (int)sizeof path)
    return KEEL_EINVAL;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return KEEL_EIO;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int busy = errno == EWOULDBLOCK;
    close(fd);
    return busy ? KEEL_ESTATE : KEEL_EIO;
  }
  j->lock_fd = fd;
  return 0;
}

void keel__jobs_unlock(keel_jobs *j) {
  if (j->lock_fd >= 0) close(j->lock_fd);
  j->lock_fd = -1;
}

static void free_jobs(keel_jobs *j) {
  if (!j) return;
  keel__jobs_panel_drop(j); /* no dashboard request inside it from here on */
  keel__jobs_unlock(j);
  keel__jobs_cron_free(j);
  pthread_mutex_destroy(&j->mu);
  keel__jobs_combine_destroy(&j->done);
  keel__jobs_combine_destroy(&j->enq);
  free(j->queues);
  free(j->admin_token);
  free(j->fetch_sql);
  free(j);
}

void keel__jobs_unref(keel_jobs *j) {
  if (atomic_fetch_sub(&j->refs, 1) == 1) free_jobs(j);
}

/* A name of 64 random bits after host and pid: two instances on one host
 * with recycled pids (containers all run pid 1) still differ. */
static void default_instance(keel_jobs *j) {
  uint64_t r = 0;
  unsigned char *p = (unsigned char *)&r;
  size_t got = 0;
  while (got < sizeof r) {
    ssize_t n = getrandom(p + got, sizeof r - got, 0);
    if (n <= 0) break;
    got += (size_t)n;
  }
  r ^= keel__jobs_random(j); /* no getrandom: the clock-seeded generator */
  char host[32] = {0};
  gethostname(host, sizeof host - 1);
  snprintf(j->instance, sizeof j->instance, "%s-%d-%016llx", host, (int)getpid(),
           (unsigned long long)r);
}

void keel__jobs_fetched(jobs_queue *q) {
  if (atomic_exchange(&q->fetched, true)) return; /* a restarted runner: start is long over */
  keel_jobs *j = q->jobs;
  if (atomic_fetch_sub(&j->not_fetched, 1) == 1)
    keel_reply(j->ready_to, j->ready_ref, keel_msg_new(0, 0));
}

/* Until every runner made its first fetch, so that a job enqueued when
 * start returns (or left from before) is not waiting for a runner still
 * opening its database connections: the runners' first round trips came
 * after start returned, and the first jobs of a steady stream waited up
 * to 100 ms for them on PostgreSQL (docs/decisions/0040). At most
 * READY_WAIT_MS; the runners go on either way. */
static void wait_ready(keel_jobs *j, bool armed) {
  if (!armed) return;
  keel_msg_t *m = NULL;
  if (keel_await(j->ready_ref, &m, READY_WAIT_MS) == 0) keel_msg_free(m);
}

int keel_jobs_start(const keel_jobs_opts *o, keel_jobs **out) {
  if (!out) return KEEL_EINVAL;
  *out = NULL;
  int rc = check_opts(o);
  if (rc) return rc;
  if (!keel_self()) return KEEL_ENOTPROC;
  keel_jobs *j = calloc(1, sizeof *j);
  if (!j) return KEEL_ENOMEM;
  j->lock_fd = -1;
  j->es = o->es;
  j->o = *o;
  j->o.poll_ms = or_default(o->poll_ms, 1000);
  j->o.heartbeat_ms = or_default(o->heartbeat_ms, 5000);
  j->o.rescue_after_ms = or_default(o->rescue_after_ms, 60000);
  j->o.backoff_ms = or_default(o->backoff_ms, 1000);
  j->o.backoff_max_ms = or_default(o->backoff_max_ms, 3600000);
  j->o.retention_ms = or_default(o->retention_ms, 7LL * 24 * 3600 * 1000);
  j->o.stale_ms = or_default(o->stale_ms, 300000);
  pthread_mutex_init(&j->mu, NULL);
  keel__jobs_combine_init(&j->done);
  keel__jobs_combine_init(&j->enq);
  atomic_init(&j->rng, (uint64_t)keel__es_unix_ms() ^ ((uint64_t)getpid() << 32) ^ keel_self());
  if (o->instance) {
    snprintf(j->instance, sizeof j->instance, "%s", o->instance);
  } else {
    default_instance(j);
  }
  atomic_init(&j->refs, 1);
  atomic_init(&j->abandoned, 0);
  atomic_init(&j->db_offset, 0);
  atomic_init(&j->drained, false);
  j->queues = calloc(o->nqueues ? o->nqueues : 1, sizeof *j->queues);
  j->fetch_sql = keel__jobs_fetch_sql(j);
  if (!j->queues || !j->fetch_sql) {
    free_jobs(j);
    return KEEL_ENOMEM;
  }
  for (size_t i = 0; i < o->nqueues; i++) {
    j->queues[i].jobs = j;
    j->queues[i].q = o->queues[i];
    if (!j->queues[i].q.concurrency) j->queues[i].q.concurrency = DEFAULT_CONCURRENCY;
    atomic_init(&j->queues[i].runner, 0);
    atomic_init(&j->queues[i].fetched, false);
  }
  atomic_init(&j->not_fetched, (int)o->nqueues);
  atomic_init(&j->cron_busy, false);
  metrics(j);
  rc = keel__jobs_cron_init(j);
  if (rc == 0) {
    rc = keel__jobs_lock(j);
    if (rc == KEEL_ESTATE)
      keel_log_error(NULL, "jobs: another live instance runs queues on this SQLite file",
                     KEEL_STR("lock", j->es->path));
  }
  if (rc == 0) rc = keel__jobs_tables(j->es);
  /* the first round before any runner: the heartbeat, and on SQLite the
   * jobs an earlier instance left running */
  if (rc == 0) rc = keel__jobs_janitor_round(j, false);
  /* armed before the runners exist, so no reply can come first */
  bool await_ready = false;
  if (rc == 0 && o->nqueues) {
    j->ready_to = keel_self();
    j->ready_ref = keel_make_ref();
    await_ready = j->ready_ref && keel_await_ref(j->ready_ref) == 0;
  }
  if (rc == 0) rc = start_tree(j);
  if (rc == 0 && o->service_drain) {
    rc = keel_service_on_drain("jobs", service_drain, j);
    j->on_service = rc == 0;
    if (rc && j->sup) keel_gs_stop(j->sup, KEEL_REASON_SHUTDOWN, NULL, 10000);
  }
  if (rc) {
    if (await_ready) keel_await_cancel(j->ready_ref);
    free_jobs(j);
    return rc;
  }
  /* KEEL_ENOENT (no listener) or KEEL_ENOMEM: this instance hears no other's
   * wake-ups and cancels; its poll and its janitor's kills step still act */
  keel__es_notify_jobs_hook_add(j->es, on_remote, j);
  wait_ready(j, await_ready);
  *out = j;
  return 0;
}

keel_pid_t keel_jobs_pid(const keel_jobs *j) {
  return j ? j->sup : 0;
}

static int forget_fn(keel_es_tx *tx, void *arg) {
  keel_jobs *j = arg;
  return keel_es_tx_exec(tx, "DELETE FROM keel_jobs_instances WHERE instance = $1",
                         (const char *[]){j->instance}, 1, NULL);
}

static bool is_down(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == *(keel_ref_t *)arg;
}

void keel_jobs_drain(keel_jobs *j, int64_t budget_ms) {
  if (!j || atomic_exchange(&j->drained, true)) return;
  int64_t budget = budget_ms > 0 ? budget_ms : DEFAULT_BUDGET_MS;
  keel_ref_t *refs = calloc(j->o.nqueues ? j->o.nqueues : 1, sizeof *refs);
  if (!refs && j->o.nqueues) {
    atomic_fetch_add(&j->abandoned, 1); /* not stopped in order: leave the rows to the rescuers */
    return;
  }
  for (size_t i = 0; refs && i < j->o.nqueues; i++) {
    keel_pid_t pid = atomic_load(&j->queues[i].runner);
    if (!pid || keel_monitor(pid, &refs[i]) != 0) continue;
    jobs_stop_msg sm = {.budget_ms = budget};
    keel_send(pid, keel_msg_copy(JOBS_TAG_STOP, &sm, sizeof sm));
  }
  for (size_t i = 0; refs && i < j->o.nqueues; i++) {
    if (!refs[i]) continue;
    keel_msg_t *m = NULL;
    /* the runner kills at the budget's end and then records the returns */
    if (keel_receive_match(is_down, &refs[i], &m, budget + 30000) == 0) {
      keel_msg_free(m);
    } else {
      keel_demonitor(refs[i]);
      atomic_fetch_add(&j->abandoned, 1); /* its jobs may run on: not a clean exit */
    }
  }
  free(refs);
}

static void service_drain(void *ud, int64_t budget_ms) {
  keel_jobs_drain(ud, budget_ms);
}

void keel_jobs_stop(keel_jobs *j, int64_t budget_ms) {
  if (!j) return;
  if (j->on_service) keel_service_off_drain(service_drain, j);
  keel__es_notify_jobs_hook_remove(j->es, on_remote, j); /* returns once no call uses j */
  keel_jobs_drain(j, budget_ms);
  if (j->sup && keel_is_alive(j->sup)) keel_gs_stop(j->sup, KEEL_REASON_SHUTDOWN, NULL, 10000);
  int left = atomic_load(&j->abandoned);
  if (left == 0)
    keel__es_transact_internal(j->es, forget_fn, j); /* a clean exit: nothing to rescue */
  else
    keel_log_warn(NULL,
                  "jobs: stopped with jobs that may still run; the heartbeat row stays for "
                  "the rescuers",
                  KEEL_STR("instance", j->instance), KEEL_INT("jobs", left));
  keel__jobs_unref(j); /* a job process left running holds j until it ends */
}

/* Wakes this instance's runners (any thread: the listener's calls it). */
static void kick_local(keel_jobs *j, const char *queue) {
  for (size_t i = 0; i < j->o.nqueues; i++) {
    if (queue && strcmp(queue, j->queues[i].q.name) != 0) continue;
    keel_pid_t pid = atomic_load(&j->queues[i].runner);
    if (pid) keel_send(pid, keel_msg_new(JOBS_TAG_KICK, 0));
  }
}

void keel__jobs_kill_attempt(keel_jobs *j, int64_t id, int attempt) {
  jobs_cancel_msg cm = {.id = id, .attempt = attempt};
  for (size_t i = 0; i < j->o.nqueues; i++) {
    keel_pid_t pid = atomic_load(&j->queues[i].runner);
    if (pid) keel_send(pid, keel_msg_copy(JOBS_TAG_CANCEL, &cm, sizeof cm));
  }
}

/* Another instance's message, on the listener's thread. "jobs": it
 * enqueued (or retried, resumed); the wake-up names no queue, so every
 * runner here looks once. JOBS_CANCEL_NOTE: it cancelled an attempt that
 * runs on the instance named last (the rest of the payload, whatever its
 * characters); if that is this one, its process is killed. */
static void on_remote(void *ud, const char *payload) {
  keel_jobs *j = ud;
  long long id = 0;
  int attempt = 0, at = 0;
  if (strcmp(payload, "jobs") == 0) {
    kick_local(j, NULL);
  } else if (sscanf(payload, JOBS_CANCEL_NOTE "%lld:%d:%n", &id, &attempt, &at) == 2 && at > 0 &&
             strcmp(payload + at, j->instance) == 0) {
    keel__jobs_kill_attempt(j, (int64_t)id, attempt);
  }
}

void keel_jobs_notify(keel_jobs *j, const char *queue) {
  if (!j) return;
  kick_local(j, queue);
  keel__es_notify_jobs_kick(j->es); /* PostgreSQL: the other instances, folded */
}

/* ---- operators ------------------------------------------------------------------------------ */

typedef struct op {
  keel_jobs *j;
  int64_t id;
  int what; /* 0 cancel, 1 retry, 2 pause, 3 resume */
  const char *queue;
  char queue_of[64];
  char instance_of[64]; /* cancel: the instance that ran it ("": it was waiting) */
  int attempt_of;
} op;

/* After an UPDATE that changed nothing: whether the job exists at all. */
static int why_not(keel_es_tx *tx, const char *id) {
  keel_es_rows rows = {0};
  int rc = keel_es_tx_exec(tx, "SELECT state FROM keel_jobs WHERE id = CAST($1 AS BIGINT)",
                           (const char *[]){id}, 1, &rows);
  if (rc == 0) rc = rows.nrows ? KEEL_ESTATE : KEEL_ENOENT;
  keel_es_rows_free(&rows);
  return rc;
}

/* PostgreSQL: tells the instance running a cancelled attempt, inside the
 * cancel's transaction, so the NOTIFY goes out if and only if the cancel
 * commits (and only then: an instance never kills an attempt whose cancel
 * rolled back). The channel is the store's (pg_listen.c names it after the
 * schema), where every instance's listener hears it. */
static int notify_cancel(keel_es_tx *tx, const op *o) {
  keel_es_rows rows = {0};
  int rc = keel_es_tx_exec(tx, "SELECT coalesce(current_schema(), '')", NULL, 0, &rows);
  char channel[64], note[192];
  if (rc == 0) keel__es_listen_channel_of(rows.nrows ? keel_es_rows_get(&rows, 0, 0) : "", channel);
  keel_es_rows_free(&rows);
  if (rc) return rc;
  snprintf(note, sizeof note, JOBS_CANCEL_NOTE "%lld:%d:%s", (long long)o->id, o->attempt_of,
           o->instance_of);
  return keel_es_tx_exec(tx, "SELECT pg_notify($1, $2)", (const char *[]){channel, note}, 2, NULL);
}

/* Cancel and retry are one UPDATE each, conditional on the state: a read
 * then a write let a job that completed in between be relabelled
 * (PostgreSQL, READ COMMITTED); the row's lock makes a cancel and the
 * attempt's completion one after the other, and the second finds the row
 * no longer running (the cancel: KEEL_ESTATE; the completion: fenced off).
 * A cancelled running job's instance and attempt come back from RETURNING
 * (a waiting job has no instance), so the kill names that attempt. An
 * attempt running on another instance keeps a deadline_at (now, on the
 * database's clock) as the mark that its process may still run there: that
 * instance's janitor kills it and clears the mark (janitor.c), the fallback
 * of the NOTIFY. */
static int op_fn(keel_es_tx *tx, void *arg) {
  op *o = arg;
  char id[24], now[24], dbnow[24];
  keel__jobs_i64(id, o->id);
  keel__jobs_i64(now, keel__jobs_now(o->j));
  keel__jobs_i64(dbnow, keel__jobs_db_now(o->j));
  if (o->what >= 2)
    return keel_es_tx_exec(tx,
                           "INSERT INTO keel_jobs_queues (queue, paused) VALUES ($1, "
                           "CAST($2 AS INTEGER)) ON CONFLICT (queue) DO UPDATE SET paused = "
                           "excluded.paused",
                           (const char *[]){o->queue, o->what == 2 ? "1" : "0"}, 2, NULL);
  const char *sql =
      o->what == 0
          ? "UPDATE keel_jobs SET state = 'cancelled', finished_at = CAST($2 AS BIGINT), "
            "deadline_at = CASE WHEN state = 'running' AND instance <> $3 THEN CAST($4 AS BIGINT) "
            "ELSE NULL END WHERE id = CAST($1 AS BIGINT) AND state IN ('available', 'running') "
            "RETURNING queue, attempt, instance"
          : "UPDATE keel_jobs SET state = 'available', run_at = CAST($2 AS BIGINT), finished_at "
            "= NULL, instance = NULL, max_attempts = CASE WHEN attempt >= max_attempts THEN "
            "attempt + 1 ELSE max_attempts END WHERE id = CAST($1 AS BIGINT) AND state IN "
            "('discarded', 'cancelled') RETURNING queue, attempt, instance";
  keel_es_rows rows = {0};
  int rc = keel_es_tx_exec(tx, sql, (const char *[]){id, now, o->j->instance, dbnow},
                           o->what == 0 ? 4 : 2, &rows);
  if (rc == 0 && rows.nrows == 0) rc = why_not(tx, id);
  if (rc == 0) {
    const char *inst = keel_es_rows_get(&rows, 0, 2);
    snprintf(o->queue_of, sizeof o->queue_of, "%s", keel_es_rows_get(&rows, 0, 0));
    o->attempt_of = (int)keel__jobs_atoi(keel_es_rows_get(&rows, 0, 1));
    snprintf(o->instance_of, sizeof o->instance_of, "%s", inst ? inst : "");
  }
  keel_es_rows_free(&rows);
  if (rc == 0 && o->what == 0 && keel__jobs_pg(o->j) && o->instance_of[0] &&
      strcmp(o->instance_of, o->j->instance) != 0)
    rc = notify_cancel(tx, o);
  return rc;
}

static int run_op(keel_jobs *j, op *o) {
  if (!j) return KEEL_EINVAL;
  o->j = j;
  return keel__es_transact_internal(j->es, op_fn, o);
}

int keel_jobs_cancel(keel_jobs *j, int64_t id) {
  op o = {.id = id, .what = 0};
  int rc = run_op(j, &o);
  /* running here: kill that attempt now. Elsewhere its outcome is fenced
   * off, and its instance kills it on the NOTIFY or, failing that, in its
   * janitor's next round (op_fn) */
  if (rc == 0 && strcmp(o.instance_of, j->instance) == 0) {
    jobs_queue *q = keel__jobs_queue_named(j, o.queue_of);
    keel_pid_t pid = q ? atomic_load(&q->runner) : 0;
    jobs_cancel_msg cm = {.id = id, .attempt = o.attempt_of};
    if (pid) keel_send(pid, keel_msg_copy(JOBS_TAG_CANCEL, &cm, sizeof cm));
  }
  return rc;
}

int keel_jobs_retry(keel_jobs *j, int64_t id) {
  op o = {.id = id, .what = 1};
  int rc = run_op(j, &o);
  if (rc == 0) keel_jobs_notify(j, o.queue_of);
  return rc;
}

static int pause_resume(keel_jobs *j, const char *queue, bool pause) {
  if (!keel__jobs_name_ok(queue)) return KEEL_EINVAL;
  op o = {.what = pause ? 2 : 3, .queue = queue};
  int rc = run_op(j, &o);
  if (rc == 0 && !pause) keel_jobs_notify(j, queue);
  return rc;
}

int keel_jobs_pause(keel_jobs *j, const char *queue) {
  return pause_resume(j, queue, true);
}

int keel_jobs_resume(keel_jobs *j, const char *queue) {
  return pause_resume(j, queue, false);
}

int keel_jobs_get(keel_jobs *j, int64_t id, json_t **out) {
  if (!j || !out) return KEEL_EINVAL;
  *out = NULL;
  char s[24];
  keel__jobs_i64(s, id);
  keel_es_rows rows = {0};
  int rc =
      keel_es_query(j->es, "SELECT " JOBS_JSON_COLS " FROM keel_jobs WHERE id = CAST($1 AS BIGINT)",
                    (const char *[]){s}, 1, &rows);
  if (rc == 0 && rows.nrows == 0) rc = KEEL_ENOENT;
  if (rc == 0 && !(*out = keel__jobs_json(&rows, 0))) rc = KEEL_ENOMEM;
  keel_es_rows_free(&rows);
  return rc;
}

int keel_jobs_list(keel_jobs *j, const keel_jobs_filter *f, json_t **out) {
  if (!j || !out) return KEEL_EINVAL;
  *out = NULL;
  keel_jobs_filter z = {0};
  if (!f) f = &z;
  if (f->limit > LIST_MAX || f->after_id < 0) return KEEL_EINVAL;
  char after[24], lim[24];
  keel__jobs_i64(after, f->after_id);
  keel__jobs_i64(lim, f->limit ? (int64_t)f->limit : LIST_DEFAULT);
  keel_es_rows rows = {0};
  int rc =
      keel_es_query(j->es,
                    "SELECT " JOBS_JSON_COLS " FROM keel_jobs WHERE id > CAST($1 AS BIGINT) "
                    "AND (CAST($2 AS TEXT) IS NULL OR queue = $2) AND (CAST($3 AS TEXT) IS NULL "
                    "OR worker = $3) AND (CAST($4 AS TEXT) IS NULL OR state = $4) ORDER BY id "
                    "LIMIT CAST($5 AS INTEGER)",
                    (const char *[]){after, f->queue, f->worker, f->state, lim}, 5, &rows);
  json_t *a = rc == 0 ? json_array() : NULL;
  if (rc == 0 && !a) rc = KEEL_ENOMEM;
  for (size_t i = 0; rc == 0 && i < rows.nrows; i++)
    if (json_array_append_new(a, keel__jobs_json(&rows, i)) != 0) rc = KEEL_ENOMEM;
  keel_es_rows_free(&rows);
  if (rc)
    json_decref(a);
  else
    *out = a;
  return rc;
}

int keel_jobs_maintain(keel_jobs *j) {
  return j ? keel__jobs_janitor_round(j, false) : KEEL_EINVAL;
}

jobs_queue *keel__jobs_queue_named(keel_jobs *j, const char *name) {
  for (size_t i = 0; name && i < j->o.nqueues; i++)
    if (strcmp(j->queues[i].q.name, name) == 0) return &j->queues[i];
  return NULL;
}
