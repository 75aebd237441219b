/* keel/jobs.h - durable background jobs: queues with retries and schedules,
 * in the event store's database (SQLite by default, PostgreSQL to scale out).
 *
 *   static int send_mail(keel_job *job, void *ud) { ... return 0; }
 *   keel_job_worker w[] = {{.name = "mail", .perform = send_mail, .timeout_ms = 10000}};
 *   keel_job_queue q[] = {{.name = "default", .concurrency = 10}};
 *   keel_jobs *jobs;
 *   keel_jobs_start(&(keel_jobs_opts){.es = es, .workers = w, .nworkers = 1,
 *                                     .queues = q, .nqueues = 1}, &jobs);
 *   json_t *args = json_pack("{s:s}", "to", "ada@example.com");
 *   keel_jobs_enqueue(jobs, &(keel_job_new){.worker = "mail", .args = args}, NULL);
 *   json_decref(args);                     // enqueue borrows what it is given
 *   ...
 *   keel_jobs_stop(jobs, 5000);            // after the HTTP server drained
 *
 * A JOB is a row of keel_jobs: a worker name, JSON args, a queue, a
 * priority, the time it may run (run_at), its attempts and their error
 * history. States: available (waiting for run_at or a free slot), running,
 * completed, discarded (max_attempts spent; its errors are kept), cancelled.
 *
 * RUNNING. Each queue this instance serves has a runner, a keel process
 * under the jobs' supervisor, which fetches available jobs (PostgreSQL:
 * FOR UPDATE SKIP LOCKED, so instances sharing the database never fetch
 * the same job; SQLite: one instance) up to the queue's concurrency, and runs
 * each in a keel process of its own, linked to it. A worker answers 0 (the
 * job completed), keel_job_snooze's answer (run again later, no attempt
 * spent), KEEL_JOB_CANCEL (cancelled), or an error: a failed attempt, retried
 * after a backoff (exponential, full jitter; the worker may supply its
 * own) until max_attempts, then discarded. A process that crashes, or runs
 * past its worker's timeout (it is killed), is a failed attempt too, with
 * the crash reason or "timeout" as its error. Jobs are at least once: a
 * worker's side effects should be idempotent (job->id is stable).
 *
 * INSTANCES. Each keel_jobs writes a heartbeat row; a job whose instance's
 * heartbeat is older than rescue_after_ms goes back to available (a failed
 * attempt, "instance lost"). An attempt still running rescue_after_ms after
 * its worker's timeout goes back too, whatever its instance ("attempt
 * deadline passed": its outcome could not be written, or its claim's answer
 * was lost). A job's outcome is recorded only by the attempt that is
 * current (fenced by attempt and instance): a rescued job's late completion
 * from the lost instance is refused. An instance claims only jobs of the
 * workers it has (a rolling deploy's old instances leave new workers' jobs).
 *
 * TIME. Every stored time is Unix milliseconds from opts.now (the real clock
 * by default), so a test can drive schedules, backoffs and retention with a
 * clock of its own; worker timeouts and polling use the real clock.
 * Heartbeats, the rescue's cutoff and attempts' deadlines are on the
 * database's clock on PostgreSQL (instances on several hosts), on opts.now
 * on SQLite (one host).
 *
 * Calls wait only the calling keel process (they go through the event
 * store's calls). Call from a keel process.
 */
#ifndef KEEL_JOBS_H
#define KEEL_JOBS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/eventstore.h"
#include "keel/http.h"
#include "keel/metrics.h"
#include "keel/process.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_jobs keel_jobs;

/* A job being performed: given to the worker, valid during its perform
 * call only. */
typedef struct keel_job {
  int64_t id;
  const char *queue, *worker;
  json_t *args; /* borrowed (the job's): do not modify */
  json_t *tags; /* a JSON array of strings, borrowed */
  int attempt;  /* 1 for the first attempt */
  int max_attempts;
  int64_t inserted_at_ms, scheduled_at_ms; /* the jobs' clock */
  keel_jobs *jobs;
  /* keel's: set by keel_job_snooze and keel_job_error. A backoff function
   * called after a crash or a timeout gets args and tags NULL. */
  int64_t snooze_ms_;
  char error_[256];
} keel_job;

/* A worker's answers besides 0 (completed) and a negative KEEL_E* (failed).
 * Values no errno has, so that a worker's `return errno;` (a positive
 * errno) is a failed attempt ("bad answer"), never a snooze or a cancel. */
#define KEEL_JOB_SNOOZE 0x4b4a5301 /* returned by keel_job_snooze */
#define KEEL_JOB_CANCEL 0x4b4a4302 /* the job is cancelled: never run again */

/* Asks for the job to run again in ms (>= 0) without spending an attempt;
 * returns KEEL_JOB_SNOOZE, for `return keel_job_snooze(job, 60000);`. */
int keel_job_snooze(keel_job *job, int64_t ms);
/* Sets the failed attempt's error text (printf; cut at 255 bytes) and
 * returns code (a negative KEEL_E*; without this call the error text is
 * keel_err_name(code)). */
int keel_job_error(keel_job *job, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef int (*keel_job_fn)(keel_job *job, void *ud);
/* The delay in ms before the next attempt after job->attempt failed. */
typedef int64_t (*keel_job_backoff_fn)(const keel_job *job, void *ud);

/* A worker: a named handler. Borrowed (name included) until keel_jobs_stop. */
typedef struct keel_job_worker {
  const char *name; /* 1-63 bytes; the jobs' "worker" */
  keel_job_fn perform;
  void *ud;
  int64_t timeout_ms;          /* an attempt longer than this is killed and fails;
                                  0: 60000; KEEL_INFINITY: none (and no deadline) */
  keel_job_backoff_fn backoff; /* NULL: opts' exponential backoff with full jitter */
} keel_job_worker;

/* A queue this instance runs. Borrowed until keel_jobs_stop. */
typedef struct keel_job_queue {
  const char *name;  /* 1-63 bytes */
  int concurrency;   /* jobs running at once on this instance; 0: 10 */
  double rate_per_s; /* at most this many starts per second on this instance; 0: no limit */
} keel_job_queue;

struct keel_job_new;

/* A cron entry: its job is enqueued at every slot of expr (keel/cron.h's
 * syntax: five fields, ranges, steps, lists, names, @hourly and friends, in
 * UTC or a named zone), once across every instance sharing the database: the
 * slot's job has the unique key "cron:<name>:<slot, Unix s>" (held for a
 * day), so the instances that see the slot enqueue it once. Slots are
 * looked at from the instance's start on (a slot missed while no instance
 * ran is not caught up), by the janitor, which wakes at the next slot.
 * Borrowed until keel_jobs_stop. */
typedef struct keel_job_cron {
  const char *name; /* 1-40 bytes, unique among the entries */
  const char *expr;
  const char *tz;                 /* NULL or "UTC": UTC; else an IANA name ("Europe/Paris") */
  const struct keel_job_new *job; /* what to enqueue (its run_at, run_in and unique
                                     fields are the slot's) */
} keel_job_cron;

/* Zeroed: the defaults. Borrowed until keel_jobs_stop. */
typedef struct keel_jobs_opts {
  keel_es *es; /* required: the database (its tables are created at start) */
  const keel_job_worker *workers;
  size_t nworkers;
  const keel_job_queue *queues; /* the queues run here; none: enqueue only */
  size_t nqueues;
  const char *instance;     /* this instance's name (1-63 bytes, unique among those sharing
                               the database); NULL: host-pid-<64 random bits> */
  int64_t poll_ms;          /* a runner looks for due jobs at least this often; 0: 1000 */
  int64_t heartbeat_ms;     /* the heartbeat, rescue, pruning and gauges period; 0: 5000 */
  int64_t rescue_after_ms;  /* an instance silent this long is lost, and an attempt
                               running this long past its worker's timeout is taken back;
                               0: 60000 */
  int64_t backoff_ms;       /* the default backoff: a random delay in [0, min(max,
                               backoff_ms * 2^(attempt-1))]; 0: 1000 */
  int64_t backoff_max_ms;   /* 0: 3600000 */
  int64_t retention_ms;     /* completed, discarded and cancelled jobs are deleted this long
                               after they finished; 0: 7 days; KEEL_INFINITY: kept */
  int64_t stale_ms;         /* the health check warns when a queue's oldest due job has
                               waited this long; 0: 300000 */
  keel_metrics *metrics;    /* jobs_* metrics here; NULL: none */
  int64_t (*now)(void *ud); /* the jobs' clock, Unix ms; NULL: the real clock */
  void *now_ud;
  const keel_job_cron *crons; /* cron entries; a bad expression or zone fails start
                                 (KEEL_EINVAL, logged with the cron module's message) */
  size_t ncrons;
  /* Under keel_service_main: stop the runners in its drain phases
   * (keel_service_on_drain), once the API has drained, with what is left of
   * SHUTDOWN_TIMEOUT (keel_jobs_drain); keel_jobs_stop in the service's stop
   * hook then only frees, before the store closes. */
  bool service_drain;
} keel_jobs_opts;

/* Creates the tables if needed (keel_jobs, keel_jobs_instances,
 * keel_jobs_queues), writes the heartbeat and starts the runners under a
 * supervisor of their own (keel_jobs_pid), and returns once each runner has
 * made its first fetch (so a job waiting at start is already claimed), or
 * after 10 s of waiting for them (a slow database: they go on in the
 * background). Jobs left waiting may so start running before this returns:
 * set up what workers use before calling it. Called from a gen_server's
 * init, mind that the wait can outlast init's default timeout (5 s) on a
 * slow database. On SQLite one instance runs a
 * file's queues: it holds an flock on "<file>-jobs.lock" while its janitor
 * lives, and returns the jobs an earlier instance left running to available
 * at once (the lock proves that instance gone); instances without queues
 * (that only enqueue) may be many and never rescue. *out is the caller's:
 * keel_jobs_stop frees it. Errors: KEEL_EINVAL (no es, a bad name, a
 * duplicate worker or queue, a negative or over-ten-years duration),
 * KEEL_ESTATE (SQLite: another live instance runs queues on the file),
 * KEEL_ENOMEM, the store's (KEEL_EIO, KEEL_ETIMEDOUT), KEEL_ENOTPROC. */
int keel_jobs_start(const keel_jobs_opts *o, keel_jobs **out);

/* Shutdown's first half, after the HTTP server has drained: the runners
 * stop fetching, running jobs get budget_ms (0: 5000) to finish, those
 * still running then are killed and returned to available without spending
 * an attempt. A job process that does not die of the kill (it holds its
 * exits) is left after a second: its row stays running, for the rescuers.
 * Enqueues, the janitor and the heartbeat go on. Once per j (later calls
 * return at once); a keel process. NULL is ignored. */
void keel_jobs_drain(keel_jobs *j, int64_t budget_ms);

/* Shutdown: keel_jobs_drain(j, budget_ms) if it has not run, then the
 * supervisor is stopped, the heartbeat row deleted (other instances see a
 * clean exit: nothing to rescue) and j freed. When a job process was left
 * running, the heartbeat row stays (the rescuers take its job once it is
 * rescue_after_ms old; on SQLite the file's runner lock is held until the
 * process ends) and j is freed when that process ends. The store stays
 * open (close it after). NULL is ignored. */
void keel_jobs_stop(keel_jobs *j, int64_t budget_ms);

/* The jobs' supervisor (a crash of it takes the runners and their jobs
 * with it: the jobs stay running in the database until rescued). */
keel_pid_t keel_jobs_pid(const keel_jobs *j);

/* A job to enqueue. Zeroed except worker: the defaults. Borrowed. */
typedef struct keel_job_new {
  const char *worker;      /* required, 1-63 bytes */
  json_t *args;            /* any JSON value; NULL: {} */
  const char *queue;       /* NULL: "default" */
  int priority;            /* lower runs first; 0..9 */
  int64_t run_at_ms;       /* Unix ms on the jobs' clock; 0: now (+ run_in_ms) */
  int64_t run_in_ms;       /* >= 0 */
  int max_attempts;        /* 0: 20 */
  const char *const *tags; /* NULL-terminated; NULL: none */
  /* Unique jobs: a duplicate enqueue returns the existing job's id (and
   * *duplicate true) instead of inserting. By unique_key, or with
   * unique_args by (worker, queue, args); within unique_period_ms of the
   * first's enqueue, or, when 0, while the first is available or running. */
  const char *unique_key;
  bool unique_args;
  int64_t unique_period_ms;
} keel_job_new;

/* Enqueues a job in a transaction of its own and wakes this instance's
 * runner of its queue. *id (may be NULL) gets the job's id, *duplicate
 * (may be NULL) whether it was a unique duplicate. Call from a keel
 * process. Errors: KEEL_EINVAL (worker, queue, priority, times, args not
 * serialisable), KEEL_ENOTPROC (PostgreSQL: not called from a process, as
 * the batching needs one), the store's. */
int keel_jobs_enqueue(keel_jobs *j, const keel_job_new *n, int64_t *id, bool *duplicate);

/* The same inside a keel_es_transact's fn (a transactional outbox: the job
 * exists if and only if the transaction's events do). Runs where that fn
 * runs (on SQLite the writer thread): nothing is woken; call
 * keel_jobs_notify after the transaction for a prompt pickup (else the
 * runners find it within poll_ms). A unique job takes a lock
 * (keel_es_tx_lock) on its key: take your own locks before it. */
int keel_jobs_enqueue_tx(keel_jobs *j, keel_es_tx *tx, const keel_job_new *n, int64_t *id,
                         bool *duplicate);

/* Wakes this instance's runner of queue (NULL: every queue). Any process. */
void keel_jobs_notify(keel_jobs *j, const char *queue);

/* Cancels a job that is available or running, in one conditional UPDATE:
 * of a cancel and the attempt's completion one wins, and 0 says the cancel
 * did (the completion is then ignored: the job ends cancelled), KEEL_ESTATE
 * that the job had finished. A running attempt is killed (that attempt
 * only): on this instance at once; on another, on the NOTIFY the cancel's
 * transaction sends (PostgreSQL), else by that instance's janitor within a
 * heartbeat. Errors: KEEL_ENOENT (no such job), KEEL_ESTATE (it has
 * finished). */
int keel_jobs_cancel(keel_jobs *j, int64_t id);
/* Makes a discarded or cancelled job available now, with one more attempt
 * if it had spent them all. Errors: KEEL_ENOENT, KEEL_ESTATE (not finished
 * that way). */
int keel_jobs_retry(keel_jobs *j, int64_t id);

/* Pauses or resumes a queue for every instance sharing the database
 * (running jobs go on; nothing more is fetched). Errors: KEEL_EINVAL, the
 * store's. */
int keel_jobs_pause(keel_jobs *j, const char *queue);
int keel_jobs_resume(keel_jobs *j, const char *queue);

/* A job as a JSON object (a new reference): {id, queue, worker, args, state,
 * priority, attempt, max_attempts, run_at, inserted_at, attempted_at,
 * finished_at, instance, errors: [{attempt, at, error}], tags}. Errors:
 * KEEL_ENOENT. */
int keel_jobs_get(keel_jobs *j, int64_t id, json_t **out);

typedef struct keel_jobs_filter {
  const char *queue, *worker, *state; /* NULL: any */
  int64_t after_id;                   /* ids above this; 0: from the first */
  size_t limit;                       /* 0: 100; at most 1000 */
} keel_jobs_filter;
/* Jobs by id as a JSON array of keel_jobs_get's objects (a new reference). */
int keel_jobs_list(keel_jobs *j, const keel_jobs_filter *f, json_t **out);

/* Runs the janitor's round now (heartbeat, rescue of lost instances' jobs
 * and of attempts past their deadline, cron, retention, gauges) rather than
 * at its next period, every step even one backing off after failures: for
 * tests and operators. The steps run independently; the first step's error
 * is returned. */
int keel_jobs_maintain(keel_jobs *j);

/* Registers a health check `name` (NULL: "jobs"; not required): warning
 * when a queue's oldest due job has waited stale_ms, its details
 * {queues: {name: {depth, oldest_ms}}}. Unregister before keel_jobs_stop. */
int keel_jobs_health_register(keel_jobs *j, const char *name);

/* Adds the operators' routes to r (the admin port's router):
 *   GET  /admin/jobs?queue=&worker=&state=&after=&limit=   keel_jobs_list,
 *        200 {"jobs": [...]}
 *   GET  /admin/jobs/:id                                   keel_jobs_get
 *   POST /admin/jobs/:id/retry, POST /admin/jobs/:id/cancel
 *        200 {"id", "action"}; 404 no such job; 409 not in a state for it;
 *        401 without the token.
 * token (copied; NULL or "": none) is required as "Authorization: Bearer"
 * by the POST routes, as keel_sub_admin_routes' token. j must outlive r.
 * It also registers the dashboard's panel "jobs" (GET /admin/panels/jobs on
 * the admin port, docs/dashboard.md): a row per queue this instance runs
 * with depth, oldest_s, running (every instance), concurrency,
 * failed_last_hour (discarded) and paused, refreshed by the janitor's round
 * (heartbeat_ms; null before its first); keel_jobs_stop unregisters it.
 * Errors: KEEL_EINVAL, KEEL_ENOMEM, keel_http_route's,
 * keel_admin_panel_register's. */
int keel_jobs_admin_routes(keel_jobs *j, keel_http_router *r, const char *token);

#ifdef __cplusplus
}
#endif
#endif
