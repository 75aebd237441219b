/* keel/alerts.h - the alert manager: anomaly alerts on mailboxes, restart
 * rate and error-log rate, computed by keel itself on an interval.
 *
 * keel_alerts_start() spawns one keel process (labelled "keel_alerts") that
 * wakes every interval_ms, whether or not anybody polls, and
 *
 *   - samples every process's mailbox depth and learns, per process, its
 *     normal depth (a running mean and standard deviation). Once a process
 *     has min_samples samples, a sample above mean + k * stddev (and at
 *     least `floor`) fires a "high_queue_size" alert for it;
 *   - counts child restarts per supervisor (from keel_sup_subscribe) over the
 *     last minute: restarts_per_min or more fires "high_restart_rate";
 *   - counts error and fatal log lines (keel_log_stats_get deltas) over the
 *     last error_window_ms (a minute): errors_per_min or more fires
 *     "high_error_rate", whose message carries the newest error line's
 *     message and request id and, after a cooldown, how many error lines
 *     there were since the previous such alert (keel_log_last_error);
 *   - compares the open file descriptors with the soft RLIMIT_NOFILE:
 *     fd_percent of it or more fires "high_fd_usage" (a node that will soon
 *     refuse connections, or already does);
 *   - every health_interval_ms, runs the detailed health probe
 *     (keel/health.h) in a process of its own and fires "health_status" when
 *     the node turns degraded (warning) or unhealthy (critical), naming the
 *     checks that are not ok; a change of status resolves the alert and,
 *     unless the node is healthy again, fires the new one.
 *
 * An alert stays active until its value falls back (the sample no longer
 * exceeds the threshold, the rate drops under it, or the process exits):
 * then it resolves. After an alert fired, the same process and type cannot
 * fire again for cooldown_ms. Each change is sent to every subscribed process
 * (a message whose payload is a keel_alert, see keel_alert_msg) and written
 * to the log as the event "alert_triggered" (warn) or "alert_resolved"
 * (info). keel_alerts_active / keel_alerts_active_json list what is active
 * now, for the health endpoint. docs/alerts.md has the details and the JSON
 * shapes.
 *
 *   keel_alerts_opts o;
 *   keel_alerts_opts_init(&o);
 *   o.k = 3.0;
 *   keel_alerts_start(&o);
 *   keel_alerts_subscribe(keel_self());   // then receive alert messages
 */
#ifndef KEEL_ALERTS_H
#define KEEL_ALERTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/error.h"
#include "keel/message.h"
#include "keel/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum keel_alert_type {
  KEEL_ALERT_QUEUE_SIZE = 1,   /* "high_queue_size": a mailbox deeper than its learned normal */
  KEEL_ALERT_RESTART_RATE = 2, /* "high_restart_rate": a supervisor restarting children often */
  KEEL_ALERT_ERROR_RATE = 3,   /* "high_error_rate": error + fatal log lines, node-wide */
  KEEL_ALERT_FD_USAGE = 4,     /* "high_fd_usage": open descriptors near the limit, node-wide */
  KEEL_ALERT_TEST = 5,         /* "test_alert": never raised by the manager; sent by hand to
                                  check delivery (keel/alert_sink.h, POST /admin/alerts/test) */
  KEEL_ALERT_HEALTH = 6,       /* "health_status": the node's health (keel/health.h, the detailed
                                  probe) is degraded or unhealthy, node-wide */
} keel_alert_type;

/* How urgent an alert is. Each type has its own (keel_alert_type_severity);
 * a sink may take only those at or above a minimum (keel/alert_sink.h). */
typedef enum keel_alert_severity {
  KEEL_ALERT_INFO = 1,     /* "info": for the record (the test alert) */
  KEEL_ALERT_WARNING = 2,  /* "warning": look at it today (queue size, restart rate, degraded) */
  KEEL_ALERT_CRITICAL = 3, /* "critical": look at it now (error rate, descriptors, unhealthy) */
} keel_alert_severity;

/* "info", "warning", "critical"; "unknown" for anything else. Static. */
const char *keel_alert_severity_name(keel_alert_severity s);
/* The name (any case) <-> the enum; 0 for an unknown name or NULL. */
keel_alert_severity keel_alert_severity_parse(const char *name);
/* A type's severity: high_queue_size, high_restart_rate: warning;
 * high_error_rate, high_fd_usage: critical; health_status: warning when
 * degraded and critical when unhealthy (this gives warning; the alert
 * itself says which); test_alert: info. */
keel_alert_severity keel_alert_type_severity(keel_alert_type type);

/* "high_queue_size", "high_restart_rate", "high_error_rate", "high_fd_usage",
 * "test_alert", "health_status"; "unknown" for
 * anything else. Static strings. */
const char *keel_alert_type_name(keel_alert_type type);

/* One alert. Plain data (no pointers): it travels as a message payload. */
typedef struct keel_alert {
  char id[24]; /* "alert-<n>": unique for the life of the OS process */
  keel_alert_type type;
  keel_alert_severity severity; /* its type's (keel_alert_type_severity); health_status:
                                   critical when unhealthy */
  keel_pid_t pid;               /* queue size: the process; restart rate: the supervisor;
                                   error rate, fd usage: 0 (node-wide) */
  char name[64];                /* its registered name, else its label, else "" */
  double threshold;    /* queue size: mean + k * stddev; rates: the configured per-minute limit;
                          fd usage: fd_percent of the soft limit, in descriptors;
                          health: 1 (degraded) */
  double value;        /* queue size: the depth sampled; rates: events in the last 60 s;
                          fd usage: the open descriptors; health: 1 degraded,
                          2 unhealthy (resolved: 0 healthy, or the new status).
                          In keel_alerts_active: the latest value; in a resolved
                          event: the value that resolved it (0 when the process exited) */
  double mean, stddev; /* queue size: the learned baseline at trigger time; else 0 */
  char message[200];   /* human-readable, e.g. "Queue size exceeded threshold: 500 > 1.3
                          (process: worker <0.12.1>)"; in a resolved event, why it resolved */
  int64_t time_ms;     /* wall clock (Unix epoch, ms) when it fired */
  int64_t resolved_ms; /* resolved event: wall clock when it resolved; else 0 */
  int64_t duration_ms; /* resolved event: how long it was active; else 0 */
} keel_alert;

/* Tags of the messages subscribers receive (kind KEEL_MSG_USER, sent by the
 * manager process). The payload is exactly one keel_alert. */
#define KEEL_ALERTS_MSG_TRIGGERED 0x4b4c4101u
#define KEEL_ALERTS_MSG_RESOLVED  0x4b4c4102u

/* If m is an alert message, copies its alert into *out (may be NULL) and
 * returns KEEL_ALERTS_EV_TRIGGERED or KEEL_ALERTS_EV_RESOLVED; otherwise
 * returns KEEL_EINVAL and leaves *out alone. m is borrowed. Any thread. */
enum { KEEL_ALERTS_EV_TRIGGERED = 1, KEEL_ALERTS_EV_RESOLVED = 2 };
int keel_alert_msg(const keel_msg_t *m, keel_alert *out);

typedef struct keel_alerts_opts {
  double k;                /* sensitivity: standard deviations above the mean; 0: 2.0 */
  uint32_t min_samples;    /* samples a process needs before it may alert; 0: 30 */
  int64_t cooldown_ms;     /* after an alert fired, the same process and type do not fire
                              again within this; 0: 10000; <0: no cooldown */
  int64_t interval_ms;     /* sampling interval; 0: 1000; <0: never on its own (tests: only
                              keel_alerts_sweep_now samples) */
  uint64_t floor;          /* a mailbox shallower than this never alerts; 0: 10; 1: no floor */
  uint32_t window;         /* baseline memory in samples (horizon of the exponentially
                              weighted statistics); 0: 1000 */
  int restarts_per_min;    /* per supervisor: this many restarts within 60 s alert; 0: 5; <0: off */
  int errors_per_min;      /* error + fatal log lines within error_window_ms (60 s unless set)
                              alert; 0: 10; <0: off */
  int64_t error_window_ms; /* the error rate's window; 0: 60000 (the reference's error
                              alert: errors_per_min 5, error_window_ms 300000) */
  int64_t error_cooldown_ms;  /* the error alert's own cooldown; 0: cooldown_ms (the
                                 reference: 900000); <0: none */
  int64_t health_interval_ms; /* how often the health probe runs (on the clock below, at
                                 a sweep); 0: 15000; <0: never (no health alerts) */
  int fd_percent;             /* open descriptors at this percent of the soft limit alert
                                 (threshold: that many descriptors; value: open ones);
                                 0: 90; <0: off; above 100: KEEL_EINVAL */
  /* The monotonic clock (ms) behind cooldowns, rates and durations, for tests
   * that must not depend on time; NULL: CLOCK_MONOTONIC. Called only by the
   * manager process. Alert times (time_ms) always use the wall clock. */
  int64_t (*clock_ms)(void *ud);
  void *clock_ud;
} keel_alerts_opts;

/* Fills *o with defaults (all zero: every field takes its default). */
void keel_alerts_opts_init(keel_alerts_opts *o);

/* Starts the alert manager process (a gen_server) with options o (copied;
 * may be NULL) and returns once it runs. It runs until keel_alerts_stop or
 * the end of the runtime; note that, like any process, it keeps keel_rt_wait
 * from returning. Errors: KEEL_ESTATE (already running, or the runtime is
 * not), KEEL_EINVAL (k < 0 or not finite), KEEL_ENOMEM, KEEL_ENOTPROC (from a
 * scheduler thread outside a process, a runtime hook, which must not wait).
 * Any thread once the runtime runs. */
int keel_alerts_start(const keel_alerts_opts *o);

/* Stops the manager and waits until it is gone (from a process: by a
 * monitor, up to 30 s, after which it is killed; from any other thread: by
 * polling, up to 10 s). Active alerts are dropped without resolved events;
 * subscriptions end. Returns 0, KEEL_ESTATE (not running) or KEEL_ETIMEDOUT.
 * Not from the manager's own callbacks. */
int keel_alerts_stop(void);

/* Whether the manager runs. Any thread. */
bool keel_alerts_running(void);

/* Sends alert messages to process `pid` from now on (once, however often it
 * subscribes). The manager monitors it and forgets it when it exits. From a
 * process the call waits until the subscription is in place; from any other
 * thread it only queues the request. Errors: KEEL_ESTATE (not running),
 * KEEL_EINVAL (pid 0), KEEL_ENOMEM, KEEL_ETIMEDOUT. */
int keel_alerts_subscribe(keel_pid_t pid);

/* Stops sending alert messages to `pid`. Same waiting rule and errors as
 * subscribe, plus KEEL_ENOENT (from a process: it was not subscribed). */
int keel_alerts_unsubscribe(keel_pid_t pid);

/* Runs one sweep now (sample, fire, resolve) and returns when it is done,
 * so that a test can drive the manager without depending on time. The
 * regular interval is not shifted. Errors: KEEL_ENOTPROC (needs a calling
 * process), KEEL_ESTATE (not running), KEEL_ETIMEDOUT (no answer in 30 s). */
int keel_alerts_sweep_now(void);

/* Copies up to max active alerts (oldest first) into out (may be NULL when
 * max is 0) and returns how many are active. Any thread; never waits for
 * the manager (it reads a snapshot under a mutex). */
size_t keel_alerts_active(keel_alert *out, size_t max);

/* The active alerts as a JSON array (oldest first), "[]" when there are none
 * or the manager is not running:
 *   [{"id":"alert-3","type":"high_queue_size",
 *     "process":{"pid":"<0.12.1>","name":"worker"},"threshold":1.3,"value":500,
 *     "mean":0.2,"stddev":0.5,"message":"...","time":"2026-11-22T01:02:03.456Z"}]
 * ("process" is null for node-wide alerts). The caller frees the result
 * with free(). NULL on ENOMEM. Any thread. */
char *keel_alerts_active_json(void);

/* The same, with the signature of a health section provider:
 * keel_health_set_section("alerts", keel_alerts_health_section, NULL).
 * ud is ignored. */
char *keel_alerts_health_section(void *ud);

typedef struct keel_alerts_stats {
  bool running;
  size_t tracked;     /* processes with learned statistics (follows the live processes) */
  size_t table_slots; /* slots of the statistics hash table (memory: ~48 bytes each) */
  size_t supervisors; /* supervisors with restarts in the last minute or an active alert */
  size_t subscribers;
  size_t active; /* active alerts */
  uint64_t sweeps;
  uint64_t fired; /* alerts triggered */
  uint64_t resolved;
  uint64_t suppressed;    /* would have fired but the cooldown held them back */
  uint64_t last_sweep_us; /* how long the last sweep took (wall time) */
} keel_alerts_stats;

/* Fills *out (zeros and running = false when the manager is not running).
 * Values are those after the last completed sweep or request. Any thread. */
void keel_alerts_stats_get(keel_alerts_stats *out);

#ifdef __cplusplus
}
#endif
#endif
