/* jobs_internal.h - what the jobs' files share (not installed).
 *
 * src/jobs/ sits above the event store (DESIGN.md): every statement goes
 * through the store's transactions (keel__es_transact_internal, which may
 * write keel_-prefixed tables) and queries; there is no second pool or
 * second SQLite writer. The files:
 *   schema.c   the tables and the shared SQL helpers (clock, numbers, backends)
 *   enqueue.c  enqueue (alone or inside a service's transaction), unique jobs
 *   runner.c   a queue's runner: fetch, one process per job, timeouts, shutdown
 *   outcome.c  recording an attempt's outcome: complete, retry with backoff,
 *              discard, snooze, cancel (fenced by attempt and instance)
 *   janitor.c  the heartbeat, the rescue of lost instances' jobs, retention,
 *              the gauges and the health check
 *   jobs.c     start and stop, the operators' calls (cancel, retry, pause, get, list)
 *   admin.c    the /admin/jobs routes
 *   jobs_trace.c  the enqueue (producer) and perform (consumer) spans
 */
#ifndef KEEL_JOBS_INTERNAL_H
#define KEEL_JOBS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "keel/jobs.h"
#include "keel/metrics.h"
#include "keel/process.h"
#include "keel/trace.h"

/* One queue this instance runs. */
typedef struct jobs_queue {
  keel_jobs *jobs;
  keel_job_queue q;          /* concurrency defaulted */
  _Atomic keel_pid_t runner; /* 0 when none runs; seq_cst: written by the runner, read by
                                notify and cancel from any process */
  atomic_bool fetched;       /* the queue's first runner made its first fetch (jobs.ready) */
  /* the janitor's last look (under jobs->mu) */
  int64_t depth, oldest_ms;
  /* the dashboard panel's figures (panel.c; the janitor's round, under jobs->mu) */
  int64_t running, failed, paused;
} jobs_queue;

/* The janitor's steps (step_fails, step_next's index). */
enum {
  JOBS_STEP_RESCUE,
  JOBS_STEP_CRON,
  JOBS_STEP_PRUNE,
  JOBS_STEP_GAUGES,
  JOBS_STEP_PANEL,
  JOBS_STEP_KILLS, /* cancelled attempts still marked as running here (janitor.c) */
  JOBS_STEPS
};

/* Flat combining (combine.c): callers of one kind of statement queue
 * their items, one leads a batch of up to JOBS_COMBINE_MAX in one
 * statement. Entries live on the callers' stacks. */
enum { JOBS_COMBINE_MAX = 64 };
typedef struct jobs_combine_entry {
  struct jobs_combine_entry *next;
  void *item;
  keel_pid_t pid;
  keel_ref_t ref;
} jobs_combine_entry;
typedef struct jobs_combine {
  pthread_mutex_t mu;
  jobs_combine_entry *head, *tail; /* queued for the next batch */
  bool leading;                    /* a batch is being recorded */
  size_t most;                     /* the largest batch so far (the tests look) */
} jobs_combine;
/* Records a batch of n items (each caller's, n >= 1) in one statement;
 * may write into the items; its result is every caller's answer. */
typedef int (*jobs_combine_fn)(keel_jobs *j, void **items, size_t n);
void keel__jobs_combine_init(jobs_combine *c);
void keel__jobs_combine_destroy(jobs_combine *c);
/* Queues item, leads a batch or waits for the leader's answer; returns the
 * batch's result. A keel process; its exits are held meanwhile. */
int keel__jobs_combine(jobs_combine *c, keel_jobs *j, jobs_combine_fn fn, void *item);

struct keel_jobs {
  keel_es *es;
  keel_jobs_opts o; /* defaults filled in */
  char instance[64];
  jobs_queue *queues;
  keel_pid_t sup, janitor;
  pthread_mutex_t mu;       /* guards the queues' depth and oldest_ms */
  atomic_uint_fast64_t rng; /* relaxed: only needs to differ between calls */
  keel_metric_family *f_enqueued, *f_completed, *f_failed, *f_discarded, *f_snoozed, *f_cancelled,
      *f_duration, *f_depth, *f_oldest;
  char *admin_token;
  /* the dashboard panel (panel.c): registered; its figures looked at once (mu) */
  atomic_bool panel_on;
  bool panel_looked;
  /* cron (cron.c): the parsed entries and the last slot each looked at */
  struct keel_cron **cron;
  int64_t *cron_last_s;
  atomic_bool cron_busy; /* a round's cron part runs at most once at a time */
  /* SQLite: the flock on "<file>-jobs.lock" that makes this instance the
   * file's one runner of queues (-1: not held). Taken at start, given up
   * when the janitor dies (its exit hook), taken again by a restarted
   * janitor. Only its holder rescues: holding it proves every other
   * instance that ran queues on the file is gone. */
  int lock_fd;
  /* PostgreSQL: the database's clock minus the host's (ms), measured by the
   * janitor each round (keel__jobs_db_now). Relaxed: a lone number. */
  _Atomic int64_t db_offset;
  /* The owner's reference (dropped by keel_jobs_stop) plus one per live job
   * process (dropped by its exit hook): a job that outlives a stop (it
   * ignored the kill) still uses j, which is freed by the last of them. */
  atomic_int refs;
  /* Job processes a runner left behind at stop (they did not die of the
   * kill): their rows stay running and the heartbeat row stays, for the
   * rescuers; on SQLite the runner lock stays until they are gone. */
  atomic_int abandoned;
  atomic_bool drained; /* keel_jobs_drain ran (keel_jobs_stop's first half) */
  bool on_service;     /* registered as a keel_service drain phase */
  /* keel_jobs_start waits until every queue's runner made its first fetch:
   * the runner that brings not_fetched to 0 replies ready_ref to ready_to
   * (a late reply, after start gave up waiting, is dropped) */
  keel_pid_t ready_to;
  keel_ref_t ready_ref;
  atomic_int not_fetched;
  char *fetch_sql; /* the runners' claim (keel__jobs_fetch_sql) */
  /* the janitor's steps (janitor.c), under mu: consecutive failures and
   * the periodic round before which a failed step is not tried again */
  int step_fails[JOBS_STEPS];
  uint64_t step_next[JOBS_STEPS], rounds;
  /* The looks of the gauges and panel steps: a ticket taken before the
   * queries (looks, atomic) and the latest ticket whose figures were kept
   * (looked[step], under mu). Two rounds run at once (the janitor's
   * periodic one and keel_jobs_maintain), and the one that looked first
   * may finish last: its figures are older and are dropped. */
  atomic_uint_fast64_t looks;
  uint64_t looked[JOBS_STEPS];
  jobs_combine done; /* outcome.c: completions, batched */
  jobs_combine enq;  /* enqueue.c: PostgreSQL's plain enqueues, batched */
};

/* Drops a reference to j (the owner's, or a job process's); the last frees. */
void keel__jobs_unref(keel_jobs *j);

/* SQLite: takes the runner lock if this instance runs queues (0), or says
 * why not: KEEL_ESTATE (another live instance holds it), KEEL_EIO. 0 and
 * nothing taken on PostgreSQL, in memory, or without queues. */
int keel__jobs_lock(keel_jobs *j);
void keel__jobs_unlock(keel_jobs *j);

/* The normal exit text of a job process that recorded its outcome. */
#define JOBS_RECORDED "outcome recorded"

/* Job states as stored. */
#define JOBS_ST_AVAILABLE "available"
#define JOBS_ST_RUNNING   "running"
#define JOBS_ST_COMPLETED "completed"
#define JOBS_ST_DISCARDED "discarded"
#define JOBS_ST_CANCELLED "cancelled"

/* Messages to a runner (tags). */
enum {
  JOBS_TAG_KICK = 0x4a4f0001, /* look for jobs now */
  JOBS_TAG_TIMEOUT,           /* payload: the job process's pid: kill it (timeout) */
  JOBS_TAG_CANCEL,            /* payload: jobs_cancel_msg: kill that attempt if it runs here */
  JOBS_TAG_STOP,              /* payload: jobs_stop_msg */
  JOBS_TAG_CUTOFF,            /* the budget ran out: kill what still runs */
  JOBS_TAG_MAINTAIN,          /* to the janitor: a round now (a reply) */
  JOBS_TAG_ABANDON,           /* the kill's grace ran out: leave what still runs, exit */
};

/* A cancel names the attempt: a stale one (the job has since been retried
 * and fetched again) must not kill the next attempt. */
typedef struct jobs_cancel_msg {
  int64_t id;
  int attempt;
} jobs_cancel_msg;

/* A queue's runner made its first fetch (runner.c, once per queue: a
 * restarted runner's is not counted): the last of them wakes keel_jobs_start. */
void keel__jobs_fetched(jobs_queue *q);

/* The NOTIFY payload of a cancel of an attempt running on another instance
 * (PostgreSQL): JOBS_CANCEL_NOTE "<id>:<attempt>:<instance>" (jobs.c). */
#define JOBS_CANCEL_NOTE "jobs:cancel:"
/* Sends every runner here the kill of that attempt (a runner not running it
 * ignores it). Any thread. */
void keel__jobs_kill_attempt(keel_jobs *j, int64_t id, int attempt);

typedef struct jobs_stop_msg {
  int64_t budget_ms;
} jobs_stop_msg;

/* schema.c */
int keel__jobs_tables(keel_es *es);
int64_t keel__jobs_now(const keel_jobs *j);
/* The clock of heartbeats, rescue cutoffs and attempt deadlines: the
 * database's on PostgreSQL (the janitor's measured offset), the jobs' clock
 * on SQLite. */
int64_t keel__jobs_db_now(const keel_jobs *j);
void keel__jobs_i64(char out[24], int64_t v);
int64_t keel__jobs_atoi(const char *s);
bool keel__jobs_name_ok(const char *s);
bool keel__jobs_pg(const keel_jobs *j);
uint64_t keel__jobs_random(keel_jobs *j);
/* The counter of family f for (queue, worker), NULL without metrics. */
void keel__jobs_count(keel_jobs *j, keel_metric_family *f, const char *queue, const char *worker);

/* A job fetched by a runner (the fields outcome.c needs to record it). */
typedef struct jobs_row {
  int64_t id;
  int attempt, max_attempts, priority;
  int64_t inserted_at, run_at;
  char *queue, *worker, *args, *errors, *tags; /* malloc'd texts */
  char *traceparent;                           /* malloc'd; NULL: enqueued outside a trace */
} jobs_row;
void keel__jobs_row_free(jobs_row *r);

/* outcome.c: records an attempt's outcome, only if the job is still running
 * this attempt on this instance (else it is 0 and nothing changes: a
 * cancel, a rescue or a retry won). */
typedef enum jobs_outcome {
  JOBS_DONE,
  JOBS_FAILED,    /* error: a retry after backoff_ms, or discarded when spent */
  JOBS_SNOOZED,   /* again after delay_ms, the attempt given back */
  JOBS_CANCELLED, /* by the worker */
  JOBS_RETURNED,  /* cut off by shutdown: available now, the attempt given back */
} jobs_outcome;
int keel__jobs_record(keel_jobs *j, const jobs_row *r, jobs_outcome what, const char *error,
                      int64_t delay_ms, const char *instance);
/* In a transaction already open (the janitor's rescue). */
int keel__jobs_record_tx(keel_es_tx *tx, keel_jobs *j, const jobs_row *r, jobs_outcome what,
                         const char *error, int64_t delay_ms, const char *instance);
/* The default backoff after attempt `attempt` failed: full jitter. */
int64_t keel__jobs_backoff(keel_jobs *j, int attempt);

/* cron.c: parses opts.crons (start), enqueues the due slots (a janitor
 * round), the ms until the next slot (the janitor's wait; INT64_MAX: none),
 * frees. */
int keel__jobs_cron_init(keel_jobs *j);
int keel__jobs_cron_round(keel_jobs *j, int64_t now_ms);
int64_t keel__jobs_cron_wait(keel_jobs *j, int64_t now_ms);
void keel__jobs_cron_free(keel_jobs *j);

/* jobs_trace.c: the producer span of an enqueue, a child of parent (NULL:
 * the calling process's current span), only inside a trace (false, and
 * traceparent "", otherwise); traceparent gets its context for the row.
 * sent ends it (on: what send returned). perform starts the consumer span
 * of a job's run (the job process's current span), a child of the row's
 * traceparent; performed ends it with perform's answer. */
bool keel__jobs_span_send(keel_span *sp, const keel_span_ctx *parent, const char *queue,
                          const char *worker, char traceparent[56]);
void keel__jobs_span_sent(keel_span *sp, bool on, int rc, int64_t id, bool duplicate);
void keel__jobs_span_perform(keel_span *sp, const jobs_row *r);
void keel__jobs_span_performed(keel_span *sp, int rc, const char *error);

/* runner.c: the runner's entry point (arg: its jobs_queue). */
void keel__jobs_runner(void *arg);
/* The claim statement for j's workers (malloc'd; NULL: ENOMEM): it takes
 * only jobs of the workers registered here, and stamps each with its
 * attempt's deadline (runner.c says its parameters). */
char *keel__jobs_fetch_sql(const keel_jobs *j);
/* janitor.c. A periodic round skips a step that failed lately (backoff);
 * keel_jobs_maintain's round (periodic false) runs every step. */
void keel__jobs_janitor(void *arg);
int keel__jobs_janitor_round(keel_jobs *j, bool periodic);
/* janitor.c: a ticket for a look (gauges, panel) taken before its queries;
 * under mu, whether the look `ticket` of `step` is the latest to finish (and
 * then records it): figures of an older look that finished late are dropped. */
uint64_t keel__jobs_look(keel_jobs *j);
bool keel__jobs_fresher(keel_jobs *j, int step, uint64_t ticket);
/* jobs.c: the queue of j named name (NULL: none, or name NULL). */
jobs_queue *keel__jobs_queue_named(keel_jobs *j, const char *name);
/* panel.c: the dashboard's "jobs" panel: registered by keel_jobs_admin_routes,
 * its figures refreshed by the janitor's round (no-op while not registered),
 * unregistered before j is freed. */
int keel__jobs_panel_register(keel_jobs *j);
int keel__jobs_panel_round(keel_jobs *j, int64_t now);
void keel__jobs_panel_drop(keel_jobs *j);
/* The rows of a result as jobs_rows (columns: id, attempt, max_attempts,
 * priority, inserted_at, run_at, queue, worker, args, errors, tags,
 * traceparent; JOBS_ROW_NCOLS of them, so a column selected after them is
 * number JOBS_ROW_NCOLS). */
#define JOBS_ROW_COLS                                                                              \
  "id, attempt, max_attempts, priority, inserted_at, run_at, queue, worker, args, errors, tags, "  \
  "traceparent"
#define JOBS_ROW_NCOLS 12
int keel__jobs_rows(const keel_es_rows *rows, jobs_row **out, size_t *n);
/* The error text of an attempt past its deadline (janitor.c's rescue). */
#define JOBS_DEADLINE_ERROR "attempt deadline passed"
/* The error text of a lost instance's attempt. */
#define JOBS_LOST_ERROR "instance lost"
/* A row of keel_jobs as the public JSON object (SELECT JOBS_JSON_COLS). */
#define JOBS_JSON_COLS                                                                             \
  "id, queue, worker, args, state, priority, attempt, max_attempts, run_at, inserted_at, "         \
  "attempted_at, finished_at, instance, errors, tags"
json_t *keel__jobs_json(const keel_es_rows *rows, size_t row);

#endif
