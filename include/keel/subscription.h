/* keel/subscription.h - subscriptions to the event store's global feed:
 * catch up from a checkpoint, then follow live appends, never skipping an
 * event, never moving the checkpoint back.
 *
 * A subscription is a gen_server (start it under a supervisor with
 * keel_sub_child, or alone with keel_sub_start). It reads the feed
 * (keel_es_read_all, with the subscription's filter) after its checkpoint,
 * in pages of `batch` events, hands each event to the handler in global
 * order, and stores the checkpoint in the store's own database
 * (compare-and-set: it never goes down). Between pages it serves calls
 * (status, pause, resume, retry); when the feed has nothing more it waits
 * for an append (the store's notifications) or, at the latest, poll_ms.
 *
 * TWO KINDS OF HANDLER (exactly one is set):
 *   project  a transactional projection: called inside the transaction that
 *            also moves the checkpoint (keel_es_transact), with tx to write
 *            its read model. Each event is applied exactly once to that
 *            read model, across crashes: the rows and the checkpoint commit
 *            together or not at all. It runs where keel_es_transact's
 *            function runs (on SQLite the store's writer thread: quick, no
 *            waiting, no keel process calls; keel/eventstore.h).
 *   handle   a side effect (a mail, a call to another service): called in
 *            the subscription's process. At least once: after a crash, the
 *            events after the last stored checkpoint are handed out again;
 *            deduplicate with ev->id. handle_batch is the same for handlers
 *            that want pages.
 *
 * FAILURES. A handler answers 0, or an error (negative). An event that
 * fails is retried after a backoff (exponential from backoff_ms, capped at
 * backoff_max_ms, full jitter: a random delay between 0 and the cap) up to
 * max_attempts times in all, the subscription serving calls while it waits.
 * Then, by on_failure:
 *   KEEL_SUB_PARK  (default) the event is parked in the dead-letter table
 *                  (keel_sub_parked) with its error, attempts, first and last
 *                  failure, and the LATER EVENTS OF ITS STREAM WAIT BEHIND IT
 *                  (parked as "waiting", not handled) while other streams go
 *                  on: a stream's events are never handled out of order.
 *                  keel_sub_retry hands the parked event (then its waiting
 *                  followers, in order) to the handler again;
 *                  keel_sub_resolve gives it up and releases its followers.
 *   KEEL_SUB_SKIP  parked the same way, but the stream's later events go on.
 *   KEEL_SUB_STOP  the subscription stops with the error (its supervisor
 *                  decides what next); the checkpoint stays before the event.
 * The checkpoint never passes an event that was neither handled nor parked:
 * parking and the checkpoint move commit together. Two circuit breakers
 * (keel_sub_opts.breaker_failures, db_breaker_failures) stop a subscription
 * from hammering a handler's dead dependency or a failing database.
 *
 * OPERATORS: keel_sub_status_get, pause / resume, the dead letters
 * (keel_sub_parked, keel_sub_retry, keel_sub_resolve) in C or over HTTP
 * (keel_sub_admin_routes), blue/green rebuilds (keel_sub_switch).
 */
#ifndef KEEL_SUBSCRIPTION_H
#define KEEL_SUBSCRIPTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/eventstore.h"
#include "keel/http.h"
#include "keel/metrics.h"
#include "keel/supervisor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum keel_sub_from {
  KEEL_SUB_FROM_CHECKPOINT = 0, /* the stored checkpoint; none: the beginning */
  KEEL_SUB_FROM_BEGINNING,      /* position 0, whatever is stored (a group: a partition with
                                   a checkpoint resumes from it; a new group starts at 0) */
  KEEL_SUB_FROM_END,            /* the head when it starts (a stored checkpoint wins) */
  KEEL_SUB_FROM_POSITION,       /* after opts.position (a stored checkpoint wins) */
} keel_sub_from;

typedef enum keel_sub_checkpoint {
  KEEL_SUB_CHECKPOINT_BATCH = 0, /* after every page (the default) */
  KEEL_SUB_CHECKPOINT_EVENT,     /* after every event */
  KEEL_SUB_CHECKPOINT_PERIODIC,  /* every checkpoint_ms, and when it stops */
} keel_sub_checkpoint;

typedef enum keel_sub_on_failure {
  KEEL_SUB_PARK = 0,
  KEEL_SUB_SKIP,
  KEEL_SUB_STOP,
} keel_sub_on_failure;

typedef int (*keel_sub_handle_fn)(const keel_es_event *ev, void *ud);
/* 0: all n handled; an error: evs[*done] failed, those before it were handled. */
typedef int (*keel_sub_batch_fn)(const keel_es_event *evs, size_t n, size_t *done, void *ud);
typedef int (*keel_sub_project_fn)(keel_es_tx *tx, const keel_es_event *ev, void *ud);

/* Zeroed fields are the defaults. Borrowed for the subscription's life
 * (filter strings included). */
typedef struct keel_sub_opts {
  const char *name; /* required, 1-59 bytes of [A-Za-z0-9_.-]: the checkpoint's key,
                       the metrics' label, the registered name "sub.<name>" */
  keel_es *es;      /* required */
  keel_es_filter filter;
  keel_sub_project_fn project; /* exactly one of project, handle, handle_batch */
  keel_sub_handle_fn handle;
  keel_sub_batch_fn handle_batch;
  void *ud;
  keel_sub_from from;
  int64_t position;               /* KEEL_SUB_FROM_POSITION */
  size_t batch;                   /* events per page; 0: 100; at most 10000 */
  keel_sub_checkpoint checkpoint; /* handle/handle_batch only: project checkpoints every page */
  int64_t checkpoint_ms;          /* KEEL_SUB_CHECKPOINT_PERIODIC; 0: 1000 */
  keel_sub_on_failure on_failure;
  int max_attempts;       /* tries of one event in all; 0: 6 (one and five retries) */
  int64_t backoff_ms;     /* 0: 100 */
  int64_t backoff_max_ms; /* 0: 30000 */
  int64_t poll_ms; /* re-read the feed at least this often when nothing wakes it; 0: 1000 */
  /* handle/handle_batch: a hand-out that takes longer fails (KEEL_ETIMEDOUT,
   * retried like any failure) and the handler's process is killed. The
   * handler then runs in a worker process of the subscription (so it can be
   * killed), not in the subscription's own. 0: 30000 (reference 004's
   * processing_timeout); KEEL_INFINITY: no timeout, the handler runs in the
   * subscription's process. A projection has none (its statements have the
   * store's statement_timeout on PostgreSQL). */
  int64_t handler_timeout_ms;
  keel_metrics *metrics; /* sub_* metrics with a subscription label; NULL: none */
  /* A GROUP: partitions > 0 splits the feed by stream into that many
   * partitions (FNV-1a of the stream id, modulo partitions: a stream's
   * events stay in order in one partition), each a subscription of its own
   * named "<name>.p<i>" with its own checkpoint and dead letters. Every
   * instance that starts the group (same name, same store) takes a fair
   * share (ceil(partitions / live instances)). On PostgreSQL a partition
   * is owned through an advisory lock held on a connection of its own (a
   * monitored session: when the instance dies or its connection drops, the
   * lock goes and a survivor takes the partition); its checkpoint carries
   * the owner's fencing token, so an instance that lost a partition without
   * knowing it yet cannot commit a checkpoint or a projection's rows. On
   * SQLite one instance owns every partition. See docs/subscriptions.md. */
  int partitions;             /* 0: not a group; at most 1024; name at most 50 bytes */
  const char *member;         /* this instance's id (not starting with '#'); NULL: "<hostname>-<pid>" */
  int64_t rebalance_ms;       /* how often ownership is checked; 0: 1000 */
  int64_t member_timeout_ms;  /* an instance silent this long is gone; 0: 5000 */
  /* CIRCUIT BREAKERS (docs/subscriptions.md, "Circuit breakers").
   * The handler's: breaker_failures failed attempts IN A ROW, across events
   * (a success resets the count), open it: no event is handed out for
   * breaker_open_ms, then one probe (half-open): a success closes it, a
   * failure opens it again. The attempts of the event in hand still count
   * towards max_attempts (it is parked when they are spent, and the
   * breaker still holds the next event back). breaker_failures 0: 20 (more
   * than one poison event's max_attempts, so a single bad event parks
   * without opening it); < 0: no breaker. breaker_open_ms 0: 30000.
   * The database's: a failed read of the feed or of the dead letters is
   * tried again after poll_ms, doubled for each further failure in a row
   * up to db_backoff_max_ms (0: 30000); db_breaker_failures failures in a
   * row (0: 3) show it open (status, health, metrics, log) until a read
   * succeeds. */
  int breaker_failures;
  int64_t breaker_open_ms;
  int db_breaker_failures;
  int64_t db_backoff_max_ms;
} keel_sub_opts;

/* Starts a subscription (linked to the caller when link), or a group's
 * member (opts.partitions > 0: a coordinator, "sub.<name>", that starts its
 * partitions). A subscription has read its checkpoint when this returns. Errors: KEEL_EINVAL (opts), KEEL_EEXIST (a
 * subscription of that name runs in this node), KEEL_EIO (the database),
 * and keel_gs_start's. */
int keel_sub_start(const keel_sub_opts *opts, bool link, keel_pid_t *out);

/* A child spec that starts the subscription under a supervisor (id = name). */
keel_sup_child_spec keel_sub_child(const keel_sub_opts *opts);

/* Stops it (the handler finishes the event in hand; the checkpoint is
 * stored). Errors as keel_gs_stop; KEEL_ENOPROC when none runs. */
int keel_sub_stop(const char *name, int64_t timeout_ms);

typedef enum keel_sub_state {
  KEEL_SUB_CATCHING_UP = 1, /* the last page was full: more is waiting */
  KEEL_SUB_LIVE,            /* at the head, waiting for appends */
  KEEL_SUB_RETRYING,        /* waiting out a backoff before retrying an event */
  KEEL_SUB_PAUSED,
  KEEL_SUB_RETIRED, /* a group a blue/green switch replaced: it runs nothing */
} keel_sub_state;

typedef enum keel_sub_breaker {
  KEEL_SUB_BREAKER_CLOSED = 0, /* events are handed out */
  KEEL_SUB_BREAKER_OPEN,       /* too many failures in a row: waiting */
  KEEL_SUB_BREAKER_HALF_OPEN,  /* one probe is being tried */
} keel_sub_breaker;

/* "closed", "open", "half_open". */
const char *keel_sub_breaker_name(keel_sub_breaker b);

typedef struct keel_sub_status {
  keel_sub_state state;
  int64_t checkpoint;     /* every event at or below it is handled or parked */
  int64_t stored;         /* the checkpoint as stored (periodic: may trail) */
  int64_t head;           /* the store's head when last read */
  int64_t lag;            /* head - checkpoint */
  double lag_seconds;     /* since the oldest unhandled event was stored (0: none) */
  uint64_t handled;       /* events handled since start */
  uint64_t failures;      /* failed attempts since start */
  uint64_t parked;        /* events parked (failed or waiting) now */
  int attempts;           /* RETRYING: attempts so far of the event in hand */
  uint64_t failures_last_minute;
  bool caught_up;         /* has been at the head since it started */
  keel_sub_breaker breaker;    /* the handler's circuit breaker */
  keel_sub_breaker db_breaker; /* the database's */
  int db_errors;               /* database failures in a row (0: the last read passed) */
} keel_sub_status;

int keel_sub_status_get(const char *name, keel_sub_status *out);
int keel_sub_pause(const char *name);
int keel_sub_resume(const char *name);

/* "catching_up", "live", "retrying", "paused". */
const char *keel_sub_state_name(keel_sub_state s);

/* ---- health ------------------------------------------------------------------ */

/* Zeroed: eventsource-py's production thresholds (reference 004). */
typedef struct keel_sub_health_opts {
  int64_t lag_warning;        /* events behind the head; 0: 5000 */
  int64_t lag_critical;       /* 0: 50000 */
  double errors_per_minute;   /* failed attempts in the last minute: warning above; 0: 10 */
  bool hold_readiness;        /* the check is required, and critical until the
                                 subscription has caught up once since it started
                                 (a node is not ready while it replays) */
} keel_sub_health_opts;

/* Registers the health check "sub.<name>" (keel/health.h): critical when the
 * subscription does not run or its lag passes lag_critical; warning when
 * its lag passes lag_warning, it has parked events, it is paused, its
 * failures in the last minute pass errors_per_minute, or a circuit breaker
 * is open or half-open (the handler's or the database's: the subscription
 * is degraded but recovers by itself); ok otherwise. The
 * details carry state, checkpoint, head, lag, lag_seconds, parked,
 * failures_last_minute, breaker, db_breaker and db_errors. o may be NULL. Errors:
 * keel_health_register_check's. */
int keel_sub_health_register(const char *name, const keel_sub_health_opts *o);

/* ---- the dead-letter table ------------------------------------------------ */

typedef struct keel_sub_parked_event {
  int64_t position;
  char stream[256];
  char event_id[37];
  char type[256];
  bool waiting;            /* behind an earlier failed event of its stream */
  char error[256];         /* the last failure's description ("" when waiting) */
  int attempts;
  int64_t first_failure_ms, last_failure_ms; /* Unix ms (0 when waiting) */
} keel_sub_parked_event;

/* The subscription's parked events in position order (at most max; *n gets
 * how many). Reads the table: the subscription need not run. */
int keel_sub_parked(keel_es *es, const char *name, keel_sub_parked_event *out, size_t max,
                    size_t *n);

/* Hands a parked, failed event to the handler again (then the events
 * waiting behind it, in order; a new failure parks it again). Through the
 * running subscription. Errors: KEEL_ENOENT (no such failed event),
 * KEEL_ENOPROC (the subscription does not run). */
int keel_sub_retry(const char *name, int64_t position);
/* Gives a parked, failed event up (it is removed, logged) and hands the
 * events waiting behind it to the handler. Same errors. */
int keel_sub_resolve(const char *name, int64_t position);

/* ---- blue/green rebuilds ------------------------------------------------------ */

/* A rebuild builds a new version of a projection beside the live one: the
 * caller starts the new version as a subscription of its own (a new name,
 * e.g. "totals.v2", so it starts from the beginning; a project writing a
 * new table), under its supervisor like any other; while it catches up the
 * live version goes on writing its own table. keel_sub_switch then waits
 * until the new version has caught up, pauses the live one, waits until
 * the new one has passed the live one's checkpoint, runs the caller's
 * cutover in ONE transaction (swap a view, a config row; drop the old
 * table), and stops the live one (keel_sub_stop: a normal exit, so give
 * its child spec restart KEEL_SUP_TRANSIENT or TEMPORARY, or the
 * supervisor starts it again). Readers see the old read model or the new,
 * never a mix. docs/subscriptions.md, "Rebuilding a projection".
 *
 * GROUPS (o->partitions > 0): the new group runs beside the live one on the
 * instances (each starts both). The switch waits until every partition of
 * the new group has reached the head as it was at the call, then RETIRES
 * the live group in the database (its partitions' checkpoints are fenced,
 * so its read model stops moving on every instance at once; each
 * instance's coordinator stops its partitions on its next round and idles,
 * with state KEEL_SUB_RETIRED: it need not be stopped, and an instance
 * still running the old code starting it again runs nothing), waits until
 * the new group's checkpoints have passed the live one's, and runs the
 * cutover in one transaction. On failure the retirement is undone and the
 * live group's coordinators take their partitions again. A retired group's
 * name cannot be used again for a group. */
typedef struct keel_sub_switch_opts {
  keel_es *es;           /* required: the store the cutover runs on */
  const char *live;      /* required: the running version's name */
  const char *next;      /* required: the new version's name (running) */
  keel_es_tx_fn cutover; /* required: the switch, in one transaction */
  void *ud;              /* cutover's argument */
  int64_t timeout_ms;    /* for the whole switch; 0: KEEL_INFINITY */
  /* 0: live and next are plain subscriptions. > 0: they are groups
   * (opts.partitions > 0, on any number of instances), next with this many
   * partitions (live's may differ). See below. */
  int partitions;
} keel_sub_switch_opts;

/* Switches from o->live to o->next as above; returns when the cutover has
 * committed and the live version stopped. Call from a keel process (it
 * waits, polling the status board every 10 ms). On any failure the live
 * version is resumed and keeps serving, the new one keeps running (call
 * again). Errors: KEEL_EINVAL (opts), KEEL_ENOPROC (either does not run),
 * KEEL_ETIMEDOUT, the cutover's or keel_es_transact's error. */
int keel_sub_switch(const keel_sub_switch_opts *o);

/* For a rebuild's handler: true when the subscription `live` runs and has
 * already handled (or parked) ev, i.e. its checkpoint is at or past ev's
 * position. A new version's handler then does its read-model work but no
 * side effects (no mail twice). Once the live version has stopped
 * (after the switch) it is false. An event the new version reaches before
 * the live one is not a replay: its side effect may then happen twice (at
 * least once, as always; deduplicate with ev->id), never zero times. Any
 * thread; it reads the status board. */
bool keel_sub_replaying(const char *live, const keel_es_event *ev);

/* ---- the admin endpoint ------------------------------------------------------ */

/* Borrowed while the router serves. */
typedef struct keel_sub_admin_opts {
  keel_es *es; /* required: the store whose dead letters are read */
  /* NULL or "": the POSTs are open to whoever reaches the router (keel's
   * admin port convention: it listens apart from the API and must not be
   * exposed publicly). Set: each POST needs "Authorization: Bearer
   * <token>" (401 otherwise); the GETs stay open like /health and
   * /metrics. */
  const char *token;
} keel_sub_admin_opts;

/* Adds the operators' routes for subscriptions to r (an admin router):
 *   GET  /admin/subscriptions                    every subscription running in
 *        this node (the status board), sorted by name: {"subscriptions":
 *        [{"name", "state", "checkpoint", "lag", "breaker", ...}]}
 *   GET  /admin/subscriptions/:name/parked       its dead letters from the
 *        table (it need not run), ?limit= (1-1000, default 100):
 *        {"subscription", "parked": [{"position", "stream", "event_id",
 *        "type", "status": "failed"|"waiting", "error", "attempts",
 *        "first_failure_ms", "last_failure_ms"}]}
 *   POST /admin/subscriptions/:name/parked/:position/retry    keel_sub_retry
 *   POST /admin/subscriptions/:name/parked/:position/resolve  keel_sub_resolve
 *        200 {"subscription", "position", "action"}; 404 no such failed
 *        event; 409 the subscription does not run in this node; 400 a bad
 *        name or position; 401 without the token.
 * It also registers the dashboard's panel "subscriptions" (GET
 * /admin/panels/subscriptions on the admin port, docs/dashboard.md): a row
 * per subscription running in this node with state, lag, lag_seconds,
 * events_per_sec, parked, failures_last_minute and breaker.
 * Errors: KEEL_EINVAL (r, o or o->es NULL), keel_http_route's,
 * keel_admin_panel_register's. */
int keel_sub_admin_routes(keel_http_router *r, const keel_sub_admin_opts *o);

#ifdef __cplusplus
}
#endif
#endif
